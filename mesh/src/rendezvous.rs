//! Sans-I/O cell rendezvous by referral: how a new member finds its cell
//! without walking the DHT (docs/mesh.md, "Finding the cell").
//!
//! Every enrolment exchange says which cell each side belongs to and where
//! it is reached ([`CellCard`]). A member remembers, per cell, the last few
//! peers it admitted from that cell ([`CellDirectory`]), and answers a
//! dialer's enrolment with some of them ([`Referral`]s): the members of
//! the dialer's cell it knows (its live view when it is in that cell
//! itself) and a couple from other cells, for links across cells. The
//! dialer announces itself to its cell-mates and SWIM does the rest. A
//! seed that every new member dials first therefore introduces the
//! members of each cell to each other, with no walk through the fleet;
//! the DHT's provider records remain for cells a member's peers know
//! nothing of.
//!
//! Referrals are hints, not trust: a referred peer is dialled and admitted
//! like any other before anything it says is used, so a lying peer costs
//! at most a few dials. Only peers this member admitted itself enter its
//! directory, and everything is bounded: cells, contacts per cell, the
//! size of every field read from the wire.

use std::collections::{HashMap, VecDeque};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// Longest cell name taken from the wire (the membership's own limit on
/// advertised text).
pub const MAX_CELL_NAME: usize = crate::membership::MAX_TEXT;
/// Longest multiaddr taken from the wire, in bytes.
pub const MAX_ADDR_BYTES: usize = 128;
/// Longest PeerId taken from the wire, in bytes (an Ed25519 PeerId is 38;
/// an inlined P-256 key about 70).
pub const MAX_PEER_BYTES: usize = 96;
/// Most referrals read from one enrolment message; the rest are ignored.
pub const MAX_REFERRALS: usize = 16;

/// The cell a member belongs to and the address it is reached at, as it
/// states them in its enrolment message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellCard {
    /// The member's cell (base cell name).
    pub cell: String,
    /// Its advertised multiaddr, as bytes.
    #[serde(with = "serde_bytes")]
    pub addr: Vec<u8>,
}

impl CellCard {
    /// The card of a member of `cell` reached at `addr`.
    pub fn new(cell: &str, addr: &Multiaddr) -> Self {
        Self {
            cell: cell.to_owned(),
            addr: addr.to_vec(),
        }
    }

    /// The cell name and address, if both are within bounds and the
    /// address parses.
    pub fn checked(&self) -> Option<(&str, Multiaddr)> {
        if self.cell.is_empty() || self.cell.len() > MAX_CELL_NAME {
            return None;
        }
        if self.addr.len() > MAX_ADDR_BYTES {
            return None;
        }
        let addr = Multiaddr::try_from(self.addr.clone()).ok()?;
        Some((&self.cell, addr))
    }
}

/// A peer of some cell, as one member tells another where to find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    /// The referred peer's cell.
    pub cell: String,
    /// Its PeerId, as bytes.
    #[serde(with = "serde_bytes")]
    pub peer: Vec<u8>,
    /// One address it is reached at, as bytes.
    #[serde(with = "serde_bytes")]
    pub addr: Vec<u8>,
}

impl Referral {
    fn from_contact(cell: &str, contact: &Contact) -> Self {
        Self {
            cell: cell.to_owned(),
            peer: contact.peer.to_bytes(),
            addr: contact.addr.to_vec(),
        }
    }

    /// The cell and contact, if every field is within bounds and parses.
    pub fn checked(&self) -> Option<(&str, Contact)> {
        let card = CellCard {
            cell: self.cell.clone(),
            addr: self.addr.clone(),
        };
        let (_, addr) = card.checked()?;
        if self.peer.len() > MAX_PEER_BYTES {
            return None;
        }
        let peer = PeerId::from_bytes(&self.peer).ok()?;
        Some((&self.cell, Contact { peer, addr }))
    }
}

/// Where a member of some cell can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Its libp2p identity.
    pub peer: PeerId,
    /// An address to dial it at.
    pub addr: Multiaddr,
}

/// The members of other cells (and of its own) that a member admitted
/// lately, to refer dialers to. Bounded: at most `max_cells` cells (the
/// cell heard of longest ago goes first) and `per_cell` contacts per cell
/// (the oldest contact goes first).
#[derive(Debug)]
pub struct CellDirectory {
    max_cells: usize,
    per_cell: usize,
    cells: HashMap<String, Known>,
    /// Counts every `learn`, so cells can be ordered by when last heard of.
    clock: u64,
}

#[derive(Debug, Default)]
struct Known {
    contacts: VecDeque<Contact>,
    heard: u64,
}

/// Cells a directory remembers by default: a seed of a fleet of many
/// thousand cells refers new members of the cells it heard of lately, and
/// the others find theirs through the DHT.
pub const DEFAULT_MAX_CELLS: usize = 1024;
/// Contacts remembered per cell by default: enough that a referral names
/// a few live ones when some have gone.
pub const DEFAULT_PER_CELL: usize = 8;

impl Default for CellDirectory {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CELLS, DEFAULT_PER_CELL)
    }
}

impl CellDirectory {
    /// An empty directory with these bounds (each at least 1).
    pub fn new(max_cells: usize, per_cell: usize) -> Self {
        Self {
            max_cells: max_cells.max(1),
            per_cell: per_cell.max(1),
            cells: HashMap::new(),
            clock: 0,
        }
    }

    /// Remembers that `contact` is a member of `cell` (a peer this member
    /// admitted, which stated its cell). A peer is listed under one cell:
    /// its newest statement wins.
    pub fn learn(&mut self, cell: &str, contact: Contact) {
        self.clock += 1;
        for (name, known) in self.cells.iter_mut() {
            if name != cell {
                known.contacts.retain(|c| c.peer != contact.peer);
            }
        }
        self.cells.retain(|_, k| !k.contacts.is_empty());
        if !self.cells.contains_key(cell) && self.cells.len() >= self.max_cells {
            if let Some(oldest) = self
                .cells
                .iter()
                .min_by_key(|(_, k)| k.heard)
                .map(|(n, _)| n.clone())
            {
                self.cells.remove(&oldest);
            }
        }
        let known = self.cells.entry(cell.to_owned()).or_default();
        known.heard = self.clock;
        known.contacts.retain(|c| c.peer != contact.peer);
        if known.contacts.len() >= self.per_cell {
            known.contacts.pop_front();
        }
        known.contacts.push_back(contact);
    }

    /// Forgets a peer (refused, revoked, or found not to be where it was).
    pub fn forget(&mut self, peer: &PeerId) {
        for known in self.cells.values_mut() {
            known.contacts.retain(|c| c.peer != *peer);
        }
        self.cells.retain(|_, k| !k.contacts.is_empty());
    }

    /// Up to `n` known members of `cell`, newest first, leaving out `asker`.
    pub fn members_of(&self, cell: &str, asker: &PeerId, n: usize) -> Vec<Contact> {
        self.cells.get(cell).map_or_else(Vec::new, |known| {
            known
                .contacts
                .iter()
                .rev()
                .filter(|c| c.peer != *asker)
                .take(n)
                .cloned()
                .collect()
        })
    }

    /// Up to `n` known members of `cell` for which `in_view` is false,
    /// newest first, leaving out `asker`: when `cell` is this member's
    /// own, the cell-mates it admitted but does not count, which a dialer
    /// of that cell learns nowhere else (its announce here is answered
    /// with the view, not with these).
    pub fn lacking(
        &self,
        cell: &str,
        asker: &PeerId,
        in_view: impl Fn(&PeerId) -> bool,
        n: usize,
    ) -> Vec<Contact> {
        self.cells.get(cell).map_or_else(Vec::new, |known| {
            known
                .contacts
                .iter()
                .rev()
                .filter(|c| c.peer != *asker && !in_view(&c.peer))
                .take(n)
                .cloned()
                .collect()
        })
    }

    /// Up to `n` contacts of cells other than `cell`, each from a different
    /// cell where there are enough, chosen with `pick` (a random index
    /// below its argument), leaving out `asker`.
    pub fn others(
        &self,
        cell: &str,
        asker: &PeerId,
        n: usize,
        mut pick: impl FnMut(usize) -> usize,
    ) -> Vec<(String, Contact)> {
        let mut names: Vec<&String> = self.cells.keys().filter(|c| *c != cell).collect();
        names.sort();
        let mut chosen = Vec::new();
        while chosen.len() < n && !names.is_empty() {
            let name = names.swap_remove(pick(names.len()) % names.len());
            let candidates: Vec<&Contact> = self.cells[name]
                .contacts
                .iter()
                .filter(|c| c.peer != *asker)
                .collect();
            if candidates.is_empty() {
                continue;
            }
            let contact = candidates[pick(candidates.len()) % candidates.len()];
            chosen.push((name.clone(), contact.clone()));
        }
        chosen
    }

    /// How many cells the directory knows members of.
    pub fn cells(&self) -> usize {
        self.cells.len()
    }

    /// The answer to a dialer of `cell`: `own` (members of that cell this
    /// member knows better, e.g. from its live view, first) topped up from
    /// the directory to `same` contacts, then `cross` contacts of other
    /// cells, as they go on the wire.
    pub fn referrals(
        &self,
        cell: &str,
        asker: &PeerId,
        own: impl IntoIterator<Item = Contact>,
        same: usize,
        cross: usize,
        pick: impl FnMut(usize) -> usize,
    ) -> Vec<Referral> {
        let mut same_cell: Vec<Contact> = own
            .into_iter()
            .filter(|c| c.peer != *asker)
            .take(same)
            .collect();
        for c in self.members_of(cell, asker, same) {
            if same_cell.len() >= same {
                break;
            }
            if !same_cell.iter().any(|s| s.peer == c.peer) {
                same_cell.push(c);
            }
        }
        let mut out: Vec<Referral> = same_cell
            .iter()
            .map(|c| Referral::from_contact(cell, c))
            .collect();
        out.extend(
            self.others(cell, asker, cross, pick)
                .iter()
                .map(|(name, c)| Referral::from_contact(name, c)),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(port: u16) -> Contact {
        Contact {
            peer: PeerId::random(),
            addr: format!("/ip4/127.0.0.1/udp/{port}/quic-v1")
                .parse()
                .unwrap(),
        }
    }

    #[test]
    fn members_of_a_cell_come_newest_first_and_stay_bounded() {
        let mut dir = CellDirectory::new(4, 3);
        let cs: Vec<Contact> = (0..5).map(contact).collect();
        for c in &cs {
            dir.learn("a", c.clone());
        }
        let asker = PeerId::random();
        let got = dir.members_of("a", &asker, 10);
        assert_eq!(got, vec![cs[4].clone(), cs[3].clone(), cs[2].clone()]);
        // The asker is never referred to itself.
        assert_eq!(dir.members_of("a", &cs[4].peer, 1), vec![cs[3].clone()]);
        assert!(dir.members_of("b", &asker, 10).is_empty());
    }

    #[test]
    fn lacking_names_only_cell_mates_the_view_does_not_count() {
        let mut dir = CellDirectory::default();
        let cs: Vec<Contact> = (0..6).map(contact).collect();
        for c in &cs {
            dir.learn("a", c.clone());
        }
        dir.learn("b", contact(9));
        // The view counts the even ones; the asker is cs[5].
        let in_view = |p: &PeerId| cs.iter().step_by(2).any(|c| c.peer == *p);
        let got = dir.lacking("a", &cs[5].peer, in_view, 4);
        assert_eq!(got, vec![cs[3].clone(), cs[1].clone()]);
        assert_eq!(
            dir.lacking("a", &cs[5].peer, in_view, 1),
            vec![cs[3].clone()]
        );
        // A view that counts them all lacks none; an unknown cell has none.
        assert!(dir.lacking("a", &cs[5].peer, |_| true, 4).is_empty());
        assert!(dir.lacking("c", &cs[5].peer, |_| false, 4).is_empty());
    }

    #[test]
    fn a_peer_is_listed_under_its_latest_cell_only_and_can_be_forgotten() {
        let mut dir = CellDirectory::default();
        let c = contact(1);
        dir.learn("a", c.clone());
        dir.learn("b", c.clone());
        let asker = PeerId::random();
        assert!(dir.members_of("a", &asker, 10).is_empty());
        assert_eq!(dir.members_of("b", &asker, 10), vec![c.clone()]);
        assert_eq!(dir.cells(), 1);
        dir.forget(&c.peer);
        assert_eq!(dir.cells(), 0);
    }

    #[test]
    fn the_cell_heard_of_longest_ago_goes_first() {
        let mut dir = CellDirectory::new(2, 2);
        dir.learn("a", contact(1));
        dir.learn("b", contact(2));
        dir.learn("a", contact(3));
        dir.learn("c", contact(4));
        let asker = PeerId::random();
        assert_eq!(dir.members_of("a", &asker, 10).len(), 2);
        assert!(dir.members_of("b", &asker, 10).is_empty());
        assert_eq!(dir.members_of("c", &asker, 10).len(), 1);
    }

    #[test]
    fn referrals_put_the_askers_cell_first_then_other_cells() {
        let mut dir = CellDirectory::default();
        for (i, cell) in ["a", "a", "b", "c", "d"].iter().enumerate() {
            dir.learn(cell, contact(i as u16));
        }
        let asker = PeerId::random();
        let view = contact(99);
        let mut n = 0;
        let refs = dir.referrals("a", &asker, [view.clone()], 2, 2, |len| {
            n += 1;
            n % len
        });
        assert_eq!(refs.len(), 4);
        assert_eq!(refs[0].checked().unwrap().1, view);
        assert_eq!(refs[1].cell, "a");
        assert!(refs[2..].iter().all(|r| r.cell != "a"));
        assert_ne!(refs[2].cell, refs[3].cell);
    }

    #[test]
    fn oversized_or_garbled_fields_from_the_wire_are_refused() {
        let good = Referral::from_contact("a", &contact(1));
        assert!(good.checked().is_some());
        let long_cell = Referral {
            cell: "x".repeat(MAX_CELL_NAME + 1),
            ..good.clone()
        };
        assert!(long_cell.checked().is_none());
        let empty_cell = Referral {
            cell: String::new(),
            ..good.clone()
        };
        assert!(empty_cell.checked().is_none());
        let bad_peer = Referral {
            peer: vec![1, 2, 3],
            ..good.clone()
        };
        assert!(bad_peer.checked().is_none());
        let bad_addr = Referral {
            addr: vec![0xff; 10],
            ..good.clone()
        };
        assert!(bad_addr.checked().is_none());
        let long_addr = Referral {
            addr: vec![0; MAX_ADDR_BYTES + 1],
            ..good
        };
        assert!(long_addr.checked().is_none());
    }
}
