//! A member's own record (roles, load, capacity, version, tags,
//! addresses) and the book of every member's latest record, which foca
//! fills as a custom broadcast: newer versions replace older ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use foca::{BroadcastHandler, Invalidates};
use serde::{Deserialize, Serialize};

use super::{MemberId, MembershipError};

/// Most tags and addresses a member may advertise, and their longest text.
pub const MAX_TAGS: usize = 16;
pub const MAX_ADDRS: usize = 8;
pub const MAX_TEXT: usize = 128;

/// What a member says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub host: String,
    /// Increases with every change; older versions are ignored.
    pub version: u64,
    /// May be elected aggregator.
    pub eligible: bool,
    /// Currently serves as aggregator.
    pub aggregator: bool,
    /// Relay load, percent of capacity.
    pub load_pct: u8,
    /// Nodes it can serve as aggregator.
    pub capacity: u32,
    /// Nodes attached to it while aggregator.
    pub attached: u32,
    pub agent_version: String,
    pub tags: Vec<String>,
    /// Where peers reach it (multiaddrs).
    pub addrs: Vec<String>,
    /// host:port of its data-plane (QUIC) listener when it may relay.
    pub relay: String,
}

impl MemberInfo {
    pub(super) fn check(&self) -> Result<(), MembershipError> {
        let text_ok = |s: &String| s.len() <= MAX_TEXT;
        if starling_proto::batch::check_host_id(&self.host).is_err()
            || self.tags.len() > MAX_TAGS
            || self.addrs.len() > MAX_ADDRS
            || !text_ok(&self.agent_version)
            || !self.tags.iter().all(text_ok)
            || !self.addrs.iter().all(text_ok)
            || !text_ok(&self.relay)
            || self.load_pct > 100
        {
            return Err(MembershipError::BadInfo);
        }
        Ok(())
    }
}

/// Dissemination key of an info record: newer versions replace older ones.
#[derive(Debug, Clone)]
pub struct InfoKey {
    host: String,
    version: u64,
}

impl Invalidates for InfoKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.host == other.host && self.version >= other.version
    }
}

/// The latest info record of every member heard of. Shared between foca
/// (which feeds it) and [`CellMembership`] (which reads it).
#[derive(Debug, Default, Clone)]
pub struct InfoBook {
    infos: Arc<Mutex<HashMap<String, MemberInfo>>>,
    /// Records taken so far (part of [`CellMembership::generation`]).
    pub(super) taken: Arc<std::sync::atomic::AtomicU64>,
}

impl InfoBook {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MemberInfo>> {
        self.infos.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BroadcastHandler<MemberId> for InfoBook {
    type Key = InfoKey;
    type Error = MembershipError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&MemberId>,
    ) -> Result<Option<InfoKey>, MembershipError> {
        let info: MemberInfo =
            postcard::from_bytes(data).map_err(|e| MembershipError::Decode(e.to_string()))?;
        info.check()?;
        let mut infos = self.lock();
        if infos
            .get(&info.host)
            .is_some_and(|known| known.version >= info.version)
        {
            return Ok(None);
        }
        let key = InfoKey {
            host: info.host.clone(),
            version: info.version,
        };
        infos.insert(info.host.clone(), info);
        self.taken
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(key))
    }
}
