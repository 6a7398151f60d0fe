//! The revocation half of the mesh driver: re-reading the fleet's
//! revocation list when its file changes, and dropping admitted peers it
//! revokes. Methods of [`Mesh`]; the list's checks are in `enrol`.

use std::time::{Instant, SystemTime};

use libp2p::PeerId;

use super::Mesh;
use crate::enrol::{AdmissionError, RevocationError};
use crate::trust::REVOCATION_CHECK;

impl Mesh {
    /// Re-reads the revocation list when its file changed; a newer list
    /// is put in force and every admitted peer is checked against it.
    pub(super) fn reload_revocations(&mut self, now: Instant) {
        if self
            .last_revocation_check
            .is_some_and(|t| now.duration_since(t) < REVOCATION_CHECK)
        {
            return;
        }
        self.last_revocation_check = Some(now);
        let Some(file) = self.revocation_file.as_mut() else {
            return;
        };
        let der = match file.read_if_changed() {
            Ok(Some(der)) => der,
            // Unchanged, or no list yet: nothing is revoked.
            Ok(None) => return,
            Err(e) => {
                tracing::error!(path = %file.path().display(), error = %e, "revocation list unreadable; the one in force stays");
                return;
            }
        };
        match self.enrolment.set_revocations(&der) {
            Ok(applied) => {
                if applied.self_revoked {
                    tracing::error!(
                        number = applied.number,
                        "this host's certificate is revoked; its peers will drop it"
                    );
                }
                tracing::info!(
                    number = applied.number,
                    revoked = applied.revoked,
                    "revocation list in force"
                );
                self.recheck_admitted();
            }
            Err(e @ RevocationError::Stale { .. }) => {
                tracing::debug!(error = %e, "revocation list not newer")
            }
            Err(e) => {
                tracing::error!(path = %file.path().display(), error = %e, "revocation list refused; the one in force stays")
            }
        }
    }

    /// Checks every admitted peer's chain again (after revocations
    /// changed) and drops those that no longer pass; sink adverts are
    /// believed again only after a fresh check.
    fn recheck_admitted(&mut self) {
        self.sinks.forget_verified();
        let now = SystemTime::now();
        let failed: Vec<(PeerId, AdmissionError)> = self
            .chains
            .iter()
            .filter_map(|(peer, chain)| {
                self.enrolment
                    .admit(peer, chain, now)
                    .err()
                    .map(|e| (*peer, e))
            })
            .collect();
        for (peer, error) in failed {
            let reason = if error == AdmissionError::Revoked {
                "revoked"
            } else {
                "enrolment"
            };
            let _ = self.table.on_checked(
                peer,
                Err(error.clone()),
                Instant::now(),
                self.config.block_for,
            );
            self.refuse(peer, reason, &error.to_string());
        }
    }
}
