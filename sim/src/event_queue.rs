//! Events in virtual time for the simulated networks (`netsim`,
//! `task_spread`): earliest first, and among events due at the same time
//! in the order they were scheduled, so that a run is the same every time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// A queue of events of type `E`, each due at a virtual time.
pub struct EventQueue<E> {
    heap: BinaryHeap<Reverse<Entry<E>>>,
    seq: u64,
}

struct Entry<E> {
    at: Duration,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<E> EventQueue<E> {
    /// Schedules `event` at virtual time `at`.
    pub fn push(&mut self, at: Duration, event: E) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// The next event and its time, if it is due at or before `until`.
    pub fn pop_until(&mut self, until: Duration) -> Option<(Duration, E)> {
        if self.heap.peek()?.0.at > until {
            return None;
        }
        let Reverse(entry) = self.heap.pop()?;
        Some((entry.at, entry.event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_equal_times_in_order_scheduled() {
        let mut q = EventQueue::default();
        let s = Duration::from_secs;
        q.push(s(2), "late");
        q.push(s(1), "first");
        q.push(s(1), "second");
        q.push(s(5), "beyond");
        let mut got = Vec::new();
        while let Some((at, e)) = q.pop_until(s(3)) {
            got.push((at, e));
        }
        assert_eq!(got, [(s(1), "first"), (s(1), "second"), (s(2), "late")]);
        assert_eq!(q.pop_until(s(5)), Some((s(5), "beyond")));
        assert_eq!(q.pop_until(s(9)), None);
    }
}
