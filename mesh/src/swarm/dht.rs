//! The DHT half of the mesh driver: which admitted peers enter the
//! Kademlia routing table, and what the driver does with Kademlia's
//! query progress (cell lookups, cutting libp2p's own bootstraps short,
//! counting). Methods of [`Mesh`]; the cell lookups themselves start in
//! `cell_driver`.

use libp2p::{kad, Multiaddr, PeerId};

use super::{Mesh, DHT_FULL, KAD_QUERIES, KAD_REQUESTS};

impl Mesh {
    /// Only admitted peers are offered to others through the DHT, and
    /// only while their bucket has room (or already holds them). Into a
    /// full bucket Kademlia would insert the peer as pending and dial the
    /// bucket's oldest entry to see whether it is alive; pruning has
    /// closed most entries' connections, so an admission could dial
    /// someone, whose admission could dial someone else.
    pub(super) fn add_to_dht(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let full = kad.kbucket(peer).is_some_and(|bucket| {
            bucket.num_entries() >= kad::K_VALUE.get()
                && !bucket.iter().any(|e| *e.node.key.preimage() == peer)
        });
        if full {
            metrics::counter!(DHT_FULL).increment(1);
            return;
        }
        for addr in addrs {
            kad.add_address(&peer, addr);
        }
        self.publish_dht_size();
    }

    pub(super) fn publish_dht_size(&mut self) {
        let n = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        self.view.send_modify(|v| v.dht_peers = n);
    }

    /// Finishes the DHT bootstraps libp2p starts by itself (one whenever
    /// a peer enters a routing table of fewer than 20; it cannot be turned
    /// off from outside the crate). A bootstrap looks up the member's own
    /// key, then a random key in every bucket, dialling peers all over the
    /// fleet that pruning closes again: at 200 in-process members they
    /// were most of the dials of the start-up storm, and at 100 with cell
    /// referrals still 1,700 of 2,400 DHT dials. The DHT here serves only
    /// cell rendezvous, whose lookups walk towards the cell key by
    /// themselves, so every bootstrap is finished at the next tick.
    pub(super) fn cut_bootstraps(&mut self) {
        for mut query in self.swarm.behaviour_mut().kad.iter_queries_mut() {
            if matches!(query.info(), kad::QueryInfo::Bootstrap { .. }) {
                query.finish();
            }
        }
    }

    pub(super) fn on_kad(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id,
            result,
            stats,
            step,
        } = event
        else {
            return;
        };
        if step.last {
            let kind = match &result {
                kad::QueryResult::Bootstrap(_) => "bootstrap",
                kad::QueryResult::GetClosestPeers(_) => "closest",
                kad::QueryResult::GetProviders(_) => "providers",
                kad::QueryResult::StartProviding(_) => "provide",
                kad::QueryResult::RepublishProvider(_) => "republish",
                _ => "other",
            };
            metrics::counter!(KAD_QUERIES, "kind" => kind).increment(1);
            metrics::counter!(KAD_REQUESTS, "kind" => kind)
                .increment(u64::from(stats.num_requests()));
        }
        let finish = match result {
            // Every member of a cell provides its key, so one answer
            // usually names enough of them, and walking on to the
            // closest peers of the key dials across the fleet. A member
            // of a small fragment walks on until an answer names someone
            // it has not seen: the first answers may name only its own
            // fragment, which left two members alone together for
            // minutes at 200 members.
            kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                providers,
                ..
            })) => {
                let news = self.on_cell_providers(providers);
                news || self.cell_mostly_known()
            }
            // See `cut_bootstraps`.
            kad::QueryResult::Bootstrap(_) => !step.last,
            _ => false,
        };
        if finish {
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
        }
    }
}
