//! Which hosts a task targets. Every host decides for itself from its own
//! facts; hosts a task does not target relay it but never apply it.

use std::collections::BTreeSet;

use starling_proto::limits::{MAX_TASK_LIST_ITEMS, MAX_TASK_NAME_LEN};
use starling_proto::v1::TargetSelector;

/// What a host knows about itself that a selector can name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// Its host id (the name in its certificate).
    pub host_id: String,
    /// Its tags: from the fleet (tag tasks) and its local configuration.
    pub tags: BTreeSet<String>,
    /// Its locality cell.
    pub cell: String,
}

/// Checks a selector's sizes and values (part of a task's validation).
pub fn check_selector(s: &TargetSelector) -> Result<(), String> {
    let lists: [(&str, &[String]); 5] = [
        ("hosts", &s.hosts),
        ("tags", &s.tags),
        ("cells", &s.cells),
        ("exclude_hosts", &s.exclude_hosts),
        ("exclude_tags", &s.exclude_tags),
    ];
    for (name, list) in lists {
        if list.len() > MAX_TASK_LIST_ITEMS {
            return Err(format!(
                "{} {name} in the target (at most {MAX_TASK_LIST_ITEMS})",
                list.len()
            ));
        }
        if let Some(long) = list.iter().find(|v| v.is_empty() || v.len() > 253) {
            return Err(format!("target {name} entry of {} bytes", long.len()));
        }
    }
    if s.sample_basis_points > 10_000 {
        return Err(format!(
            "a sample of {} basis points (at most 10000)",
            s.sample_basis_points
        ));
    }
    if s.sample_seed.len() > MAX_TASK_NAME_LEN {
        return Err(format!("a sample seed of {} bytes", s.sample_seed.len()));
    }
    Ok(())
}

/// True when `s` targets the host described by `facts`.
pub fn targets(s: &TargetSelector, facts: &HostFacts) -> bool {
    let named = |list: &[String], value: &str| list.iter().any(|v| v == value);
    let matched = s.all
        || named(&s.hosts, &facts.host_id)
        || s.tags.iter().any(|t| facts.tags.contains(t))
        || named(&s.cells, &facts.cell);
    let excluded = named(&s.exclude_hosts, &facts.host_id)
        || s.exclude_tags.iter().any(|t| facts.tags.contains(t));
    matched && !excluded && in_sample(s.sample_basis_points, &s.sample_seed, &facts.host_id)
}

/// True when the host falls in a sample of `basis_points` / 10,000 of the
/// fleet drawn with `seed`: a stable hash, so the same seed picks the same
/// hosts every time and a larger share picks a superset.
pub fn in_sample(basis_points: u32, seed: &str, host_id: &str) -> bool {
    if basis_points == 0 || basis_points >= 10_000 {
        return true;
    }
    draw_point(b"starling.v1.sample\0", seed, host_id) < basis_points
}

/// A host's place, 0 to 9,999, in the draw named by `domain` and `seed`:
/// SHA-256(`domain`, `seed`, `\0`, host id), its first 8 bytes big-endian,
/// modulo 10,000. Every host computes the same for every host, and a
/// share taking in the points below it takes in a superset as it grows
/// (target samples, rollout waves).
pub fn draw_point(domain: &[u8], seed: &str, host_id: &str) -> u32 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(domain);
    ctx.update(seed.as_bytes());
    ctx.update(b"\0");
    ctx.update(host_id.as_bytes());
    let d = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    (u64::from_be_bytes(first) % 10_000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, tags: &[&str], cell: &str) -> HostFacts {
        HostFacts {
            host_id: id.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            cell: cell.into(),
        }
    }

    #[test]
    fn an_empty_selector_targets_nobody() {
        assert!(!targets(
            &TargetSelector::default(),
            &host("a", &["x"], "c")
        ));
    }

    #[test]
    fn hosts_tags_cells_and_exclusions() {
        let s = TargetSelector {
            hosts: vec!["a".into()],
            tags: vec!["web".into()],
            cells: vec!["eu".into()],
            exclude_tags: vec!["canary-off".into()],
            ..Default::default()
        };
        assert!(targets(&s, &host("a", &[], "us")));
        assert!(targets(&s, &host("b", &["web"], "us")));
        assert!(targets(&s, &host("c", &[], "eu")));
        assert!(!targets(&s, &host("d", &["db"], "us")));
        assert!(!targets(&s, &host("b", &["web", "canary-off"], "us")));
        let all_but = TargetSelector {
            all: true,
            exclude_hosts: vec!["z".into()],
            ..Default::default()
        };
        assert!(targets(&all_but, &host("y", &[], "")));
        assert!(!targets(&all_but, &host("z", &[], "")));
    }

    #[test]
    fn samples_are_stable_near_their_share_and_grow_as_supersets() {
        let hosts: Vec<String> = (0..20_000).map(|i| format!("host-{i}")).collect();
        let pick = |bp: u32, seed: &str| -> BTreeSet<&String> {
            hosts.iter().filter(|h| in_sample(bp, seed, h)).collect()
        };
        let ten = pick(1_000, "");
        assert!(
            (1_800..2_200).contains(&ten.len()),
            "{} of 20000 in a 10% sample",
            ten.len()
        );
        assert_eq!(ten, pick(1_000, ""), "the same hosts every time");
        let fifty = pick(5_000, "");
        assert!(ten.is_subset(&fifty));
        let other_seed = pick(1_000, "wave-2");
        assert!(ten.intersection(&other_seed).count() < ten.len() / 2);
        assert_eq!(pick(10_000, "").len(), hosts.len());
    }

    #[test]
    fn oversized_or_odd_selectors_are_refused() {
        let many = TargetSelector {
            hosts: vec!["h".into(); MAX_TASK_LIST_ITEMS + 1],
            ..Default::default()
        };
        assert!(check_selector(&many).is_err());
        let bp = TargetSelector {
            sample_basis_points: 10_001,
            ..Default::default()
        };
        assert!(check_selector(&bp).is_err());
        let empty_name = TargetSelector {
            tags: vec![String::new()],
            ..Default::default()
        };
        assert!(check_selector(&empty_name).is_err());
        assert!(check_selector(&TargetSelector::default()).is_ok());
    }
}
