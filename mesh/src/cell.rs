//! Locality cells: the unit of full membership.
//!
//! A node's base cell comes from config or from the network it sits in. A
//! cell that outgrows `max_cell_size` splits into 2^k sub-cells by a hash of
//! the member id, so every member computes the same assignment with no
//! coordination (docs/mesh.md states the rule).

use std::fmt;
use std::net::IpAddr;

use ring::digest::{digest, SHA256};

/// Deepest split: 2^16 sub-cells of `max_cell_size` members each is far
/// beyond any fleet.
pub const MAX_SPLIT_BITS: u8 = 16;

/// A cell label: the base cell and how many hash bits split it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellId {
    /// `zone:<label>` from config, or `net:<prefix>` from the address.
    pub base: String,
    /// Number of hash bits the base cell is split by (0: not split).
    pub split_bits: u8,
    /// Which sub-cell (the first `split_bits` bits of the member's hash).
    pub index: u32,
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.split_bits == 0 {
            f.write_str(&self.base)
        } else {
            write!(f, "{}/{}:{}", self.base, self.split_bits, self.index)
        }
    }
}

/// The base cell of a node: the configured zone, else its network prefix
/// (/24 for IPv4, /48 for IPv6).
pub fn base_cell(configured_zone: Option<&str>, address: IpAddr) -> String {
    if let Some(zone) = configured_zone.filter(|z| !z.is_empty()) {
        return format!("zone:{zone}");
    }
    match address {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("net:{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("net:{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

/// The first 32 bits of SHA-256(base, member): the member's place in the
/// base cell's split.
fn member_hash(base: &str, member: &str) -> u32 {
    let mut input = Vec::with_capacity(base.len() + member.len() + 1);
    input.extend_from_slice(base.as_bytes());
    input.push(0);
    input.extend_from_slice(member.as_bytes());
    let d = digest(&SHA256, &input);
    let b = d.as_ref();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The sub-cell of `member` when `base` is split by `split_bits` bits.
pub fn cell_of(base: &str, member: &str, split_bits: u8) -> CellId {
    let bits = split_bits.min(MAX_SPLIT_BITS);
    let index = if bits == 0 {
        0
    } else {
        member_hash(base, member) >> (32 - u32::from(bits))
    };
    CellId {
        base: base.to_owned(),
        split_bits: bits,
        index,
    }
}

/// The split depth a member should use next, from the size of its own
/// (sub-)cell as it sees it. Splits when the sub-cell exceeds `max`;
/// merges only when the merged sub-cell would hold less than half of
/// `max`, so sizes near the bound do not flap.
pub fn next_split_bits(current_bits: u8, own_cell_members: usize, max: usize) -> u8 {
    let max = max.max(2);
    if own_cell_members > max && current_bits < MAX_SPLIT_BITS {
        return current_bits + 1;
    }
    // Merging two sibling sub-cells roughly doubles the membership.
    if current_bits > 0 && own_cell_members.saturating_mul(2) < max / 2 {
        return current_bits - 1;
    }
    current_bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_cell_prefers_the_configured_zone() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(base_cell(Some("eu-west-1a"), ip), "zone:eu-west-1a");
        assert_eq!(base_cell(None, ip), "net:10.1.2.0/24");
        assert_eq!(base_cell(Some(""), ip), "net:10.1.2.0/24");
        let v6: IpAddr = "2001:db8:42:7::1".parse().unwrap();
        assert_eq!(base_cell(None, v6), "net:2001:db8:42::/48");
    }

    #[test]
    fn assignment_is_deterministic_and_nested() {
        for m in ["web-01", "web-02", "db-17"] {
            let a = cell_of("net:10.0.0.0/24", m, 3);
            assert_eq!(a, cell_of("net:10.0.0.0/24", m, 3));
            // A deeper split refines the shallower one: the sub-cell at k+1
            // lies inside the sub-cell at k.
            let deeper = cell_of("net:10.0.0.0/24", m, 4);
            assert_eq!(deeper.index >> 1, a.index);
        }
        assert_eq!(cell_of("b", "m", 0).index, 0);
    }

    #[test]
    fn split_spreads_members_evenly() {
        let bits = 2;
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[cell_of("zone:z", &format!("host-{i}"), bits).index as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven split: {counts:?}");
        }
    }

    #[test]
    fn split_and_merge_have_hysteresis() {
        assert_eq!(next_split_bits(0, 1001, 1000), 1);
        assert_eq!(next_split_bits(0, 1000, 1000), 0);
        // After a split each half holds ~500: it must not merge back.
        assert_eq!(next_split_bits(1, 500, 1000), 1);
        assert_eq!(next_split_bits(1, 300, 1000), 1);
        // Far below: merge.
        assert_eq!(next_split_bits(1, 200, 1000), 0);
        assert_eq!(next_split_bits(0, 10, 1000), 0);
        assert_eq!(
            next_split_bits(MAX_SPLIT_BITS, 1_000_000, 1000),
            MAX_SPLIT_BITS
        );
    }
}
