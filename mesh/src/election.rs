//! Aggregator election within a cell, computed by every member from its own
//! view: no extra consensus round, and views that agree give the same
//! result.
//!
//! How many aggregators follows the cell's size, with a load-driven step up
//! or down that has hysteresis. Who is chosen follows rendezvous hashing
//! with incumbency: members already serving keep their slot, so neither a
//! join nor a change of load reshuffles the cell (docs/mesh.md).

use std::cmp::Ordering;

use ring::digest::{digest, SHA256};

use crate::membership::CellMembership;

/// Election settings (the same on every member of a fleet).
#[derive(Debug, Clone, PartialEq)]
pub struct ElectionParams {
    /// Cell members one aggregator is sized for.
    pub nodes_per_aggregator: usize,
    /// Fewest aggregators a cell keeps (2: one death never leaves none).
    pub min_aggregators: usize,
    /// Most aggregators a cell elects.
    pub max_aggregators: usize,
    /// Mean incumbent load (0..1) above which one more is elected.
    pub scale_up_load: f64,
    /// Mean incumbent load below which an extra one may step down.
    pub scale_down_load: f64,
}

impl Default for ElectionParams {
    fn default() -> Self {
        Self {
            nodes_per_aggregator: 500,
            min_aggregators: 2,
            max_aggregators: 16,
            scale_up_load: 0.8,
            scale_down_load: 0.3,
        }
    }
}

/// One cell member as the electing node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Stable member id (the host id of its enrolment certificate).
    pub id: String,
    /// May serve as aggregator (config allows it, not draining).
    pub eligible: bool,
    /// Currently advertises the aggregator role.
    pub incumbent: bool,
    /// Relay load as a fraction of its capacity (meaningful for incumbents).
    pub load: f64,
}

/// Rendezvous score of a member for a cell.
fn score(cell: &str, id: &str) -> u64 {
    let mut input = Vec::with_capacity(cell.len() + id.len() + 1);
    input.extend_from_slice(cell.as_bytes());
    input.push(0);
    input.extend_from_slice(id.as_bytes());
    let d = digest(&SHA256, &input);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

/// Rank order: higher score first, ties broken by id.
fn by_rank(cell: &str) -> impl Fn(&&Member, &&Member) -> Ordering + '_ {
    move |a, b| {
        score(cell, &b.id)
            .cmp(&score(cell, &a.id))
            .then_with(|| a.id.cmp(&b.id))
    }
}

/// How many aggregators the cell should have.
pub fn target_count(members: &[Member], params: &ElectionParams) -> usize {
    let eligible = members.iter().filter(|m| m.eligible).count();
    let per = params.nodes_per_aggregator.max(1);
    let by_size = members.len().div_ceil(per).clamp(
        params.min_aggregators,
        params.max_aggregators.max(params.min_aggregators),
    );
    let incumbents: Vec<&Member> = members
        .iter()
        .filter(|m| m.eligible && m.incumbent)
        .collect();
    let serving = incumbents.len();
    let mean_load = if serving == 0 {
        0.0
    } else {
        incumbents
            .iter()
            .map(|m| m.load.clamp(0.0, 1.0))
            .sum::<f64>()
            / serving as f64
    };
    let target = if serving >= by_size && mean_load > params.scale_up_load {
        serving + 1
    } else if serving > by_size && mean_load < params.scale_down_load {
        // Step down at once to what the load needs at the midpoint of the
        // watermarks (a cell that formed with every member serving, load
        // zero, drops straight to its size-based count).
        let total = mean_load * serving as f64;
        let mid = (params.scale_up_load + params.scale_down_load) / 2.0;
        let for_load = if mid > 0.0 {
            (total / mid).ceil() as usize
        } else {
            serving
        };
        for_load.clamp(by_size, serving)
    } else if serving > by_size {
        // Between the watermarks: hold what serves now.
        serving
    } else {
        by_size
    };
    target.min(params.max_aggregators).min(eligible)
}

/// The cell's aggregators, in rank order.
pub fn elect(cell: &str, members: &[Member], params: &ElectionParams) -> Vec<String> {
    let target = target_count(members, params);
    let mut incumbents: Vec<&Member> = members
        .iter()
        .filter(|m| m.eligible && m.incumbent)
        .collect();
    incumbents.sort_by(by_rank(cell));
    incumbents.dedup_by(|a, b| a.id == b.id);
    incumbents.truncate(target);
    let mut chosen = incumbents;
    if chosen.len() < target {
        let mut rest: Vec<&Member> = members
            .iter()
            .filter(|m| m.eligible && !chosen.iter().any(|c| c.id == m.id))
            .collect();
        rest.sort_by(by_rank(cell));
        rest.dedup_by(|a, b| a.id == b.id);
        chosen.extend(rest.into_iter().take(target - chosen.len()));
    }
    chosen.sort_by(by_rank(cell));
    chosen.into_iter().map(|m| m.id.clone()).collect()
}

/// One member's election of its cell: recomputed from its own view each
/// time that view changed, with the member taking up or giving up the
/// aggregator role in its record to match. The daemon and the simulator
/// both run this, so what the simulator shows of elections is what hosts do.
#[derive(Debug, Default)]
pub struct CellElection {
    /// The membership generation the aggregators were elected from.
    elected_at: Option<u64>,
    aggregators: Vec<String>,
}

/// What one [`CellElection::update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    /// The view had not changed, or the member's role did not.
    None,
    /// The member was elected and now says so in its record.
    TookUp,
    /// The member was no longer elected and stopped saying so.
    GaveUp,
}

impl CellElection {
    /// The cell's aggregators in rank order, as last elected.
    pub fn aggregators(&self) -> &[String] {
        &self.aggregators
    }

    /// Elects again if the member's view changed since the last time, and
    /// updates its own record (under `version`) when its role changed.
    pub fn update(
        &mut self,
        cell: &str,
        membership: &mut CellMembership,
        params: &ElectionParams,
        version: u64,
    ) -> RoleChange {
        let generation = membership.generation();
        if self.elected_at == Some(generation) {
            return RoleChange::None;
        }
        self.elected_at = Some(generation);
        self.aggregators = elect(cell, &membership.election_view(), params);
        let me = &membership.own().host;
        let chosen = self.aggregators.iter().any(|h| h == me);
        if chosen == membership.own().aggregator
            || membership
                .update_info(version, |info| info.aggregator = chosen)
                .is_err()
        {
            return RoleChange::None;
        }
        if chosen {
            RoleChange::TookUp
        } else {
            RoleChange::GaveUp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CELL: &str = "net:10.0.0.0/24";

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: format!("host-{i:04}"),
                eligible: true,
                incumbent: false,
                load: 0.0,
            })
            .collect()
    }

    /// Runs rounds of election where the elected start advertising, until
    /// the result is stable (what the live cell converges to).
    fn settle(ms: &mut [Member], p: &ElectionParams) -> Vec<String> {
        let mut last = Vec::new();
        for _ in 0..10 {
            let now = elect(CELL, ms, p);
            for m in ms.iter_mut() {
                m.incumbent = now.contains(&m.id);
            }
            if now == last {
                return now;
            }
            last = now;
        }
        panic!("election did not settle");
    }

    #[test]
    fn equal_views_give_equal_results_in_any_order() {
        let p = ElectionParams::default();
        let mut a = members(1200);
        let first = elect(CELL, &a, &p);
        assert_eq!(first.len(), 3, "1200 members at 500 per aggregator");
        a.reverse();
        assert_eq!(elect(CELL, &a, &p), first);
        a.rotate_left(417);
        assert_eq!(elect(CELL, &a, &p), first);
    }

    #[test]
    fn small_cells_keep_the_minimum_and_ineligible_members_never_serve() {
        let p = ElectionParams::default();
        let mut ms = members(5);
        assert_eq!(elect(CELL, &ms, &p).len(), 2);
        for m in ms.iter_mut().take(4) {
            m.eligible = false;
        }
        assert_eq!(elect(CELL, &ms, &p), ["host-0004"]);
    }

    #[test]
    fn load_changes_between_watermarks_do_not_reshuffle() {
        let p = ElectionParams::default();
        let mut ms = members(800);
        let settled = settle(&mut ms, &p);
        for load in [0.1, 0.35, 0.5, 0.79] {
            for m in ms.iter_mut() {
                m.load = if m.incumbent { load } else { 0.0 };
            }
            // Below the low watermark the count is already the size-based
            // minimum, so nothing may change at any of these loads.
            assert_eq!(
                elect(CELL, &ms, &p),
                settled,
                "load {load} reshuffled the cell"
            );
        }
    }

    #[test]
    fn a_joining_member_does_not_displace_incumbents() {
        let p = ElectionParams::default();
        let mut ms = members(300);
        let settled = settle(&mut ms, &p);
        // Find a newcomer that would outrank every incumbent.
        let newcomer = (0..)
            .map(|i| format!("new-{i}"))
            .find(|id| settled.iter().all(|s| score(CELL, id) > score(CELL, s)))
            .unwrap();
        ms.push(Member {
            id: newcomer.clone(),
            eligible: true,
            incumbent: false,
            load: 0.0,
        });
        assert_eq!(elect(CELL, &ms, &p), settled);
    }

    #[test]
    fn a_dead_aggregator_is_replaced_and_the_others_stay() {
        let p = ElectionParams::default();
        let mut ms = members(1200);
        let settled = settle(&mut ms, &p);
        let dead = settled[1].clone();
        ms.retain(|m| m.id != dead);
        let after = elect(CELL, &ms, &p);
        assert_eq!(after.len(), settled.len());
        assert!(!after.contains(&dead));
        let kept = settled.iter().filter(|s| after.contains(s)).count();
        assert_eq!(kept, settled.len() - 1, "only the dead slot changed");
    }

    #[test]
    fn load_scales_up_holds_and_scales_down() {
        let p = ElectionParams::default();
        let mut ms = members(400); // size alone asks for 2
        let settled = settle(&mut ms, &p);
        assert_eq!(settled.len(), 2);
        let set_load = |ms: &mut [Member], l: f64| {
            for m in ms.iter_mut() {
                m.load = if m.incumbent { l } else { 0.0 };
            }
        };
        set_load(&mut ms, 0.9);
        let up = settle(&mut ms, &p);
        assert_eq!(up.len(), 3, "high load adds one");
        assert!(
            settled.iter().all(|s| up.contains(s)),
            "scale-up keeps incumbents"
        );
        set_load(&mut ms, 0.5);
        assert_eq!(elect(CELL, &ms, &p), up, "between watermarks: hold");
        set_load(&mut ms, 0.1);
        let down = elect(CELL, &ms, &p);
        assert_eq!(down.len(), 2, "low load drops the extra one");
        assert!(down.iter().all(|d| up.contains(d)));
    }

    #[test]
    fn never_more_than_the_maximum_or_the_eligible() {
        let p = ElectionParams {
            max_aggregators: 3,
            ..Default::default()
        };
        let mut ms = members(10_000);
        assert_eq!(elect(CELL, &ms, &p).len(), 3);
        for m in ms.iter_mut() {
            m.incumbent = true;
            m.load = 1.0;
        }
        assert_eq!(elect(CELL, &ms, &p).len(), 3);
    }
}
