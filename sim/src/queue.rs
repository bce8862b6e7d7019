//! The event queue: a binary heap ordered by (time, sequence). The sequence
//! number breaks ties in insertion order, so two events at the same virtual
//! instant always run in the order they were scheduled — the first half of
//! the simulator's determinism.
//!
//! A 4-ary heap (the `dary_heap` crate) was tried in its place (December
//! 2026): the scale run at N = 10,000 (`convoke-sim bench --nodes 10000`,
//! the same 23.1 million events and outcomes) took 82 and 88 s against 77
//! and 90 s for this one, alternating in one session: no gain above the
//! noise, so no new dependency.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Item<E> {
    at: u64,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Item<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Item<E> {}
impl<E> PartialOrd for Item<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Item<E> {
    // Reversed: `BinaryHeap` is a max-heap and we pop the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Events of type `E` at virtual times in nanoseconds.
pub struct Queue<E> {
    heap: BinaryHeap<Item<E>>,
    seq: u64,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), seq: 0 }
    }
}

impl<E> Queue<E> {
    /// Schedules `event` at `at`.
    pub fn push(&mut self, at: u64, event: E) {
        self.seq += 1;
        self.heap.push(Item { at, seq: self.seq, event });
    }

    /// The earliest event, if any.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        self.heap.pop().map(|i| (i.at, i.event))
    }

    /// When the earliest event is due.
    pub fn peek_time(&self) -> Option<u64> {
        self.heap.peek().map(|i| i.at)
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_by_time_then_insertion_order() {
        let mut q = Queue::default();
        q.push(30, "c");
        q.push(10, "a1");
        q.push(20, "b");
        q.push(10, "a2");
        q.push(10, "a3");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, [(10, "a1"), (10, "a2"), (10, "a3"), (20, "b"), (30, "c")]);
        assert!(q.is_empty());
    }

    /// Pushes and pops interleaved as a run does them (events scheduled at
    /// or after the one being handled), against a sorted list.
    #[test]
    fn interleaved_pushes_and_pops_match_a_sorted_reference() {
        use rand_core::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut q = Queue::default();
        let mut reference: Vec<(u64, u64, u32)> = Vec::new();
        let (mut seq, mut now, mut popped) = (0u64, 0u64, 0usize);
        for step in 0..20_000u32 {
            if rng.next_u32() % 3 != 0 || q.is_empty() {
                // Many events share an instant: ties must keep their order.
                let at = now + u64::from(rng.next_u32() % 50) * 1_000;
                seq += 1;
                q.push(at, step);
                reference.push((at, seq, step));
            } else {
                reference.sort_unstable();
                let (at, _, step) = reference.remove(0);
                assert_eq!(q.peek_time(), Some(at));
                assert_eq!(q.pop(), Some((at, step)));
                now = at;
                popped += 1;
            }
            assert_eq!(q.len(), reference.len());
        }
        assert!(popped > 5_000, "the test popped only {popped}");
    }
}
