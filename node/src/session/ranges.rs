//! A set of disjoint half-open `u64` ranges, merged on insert.

use std::collections::VecDeque;

/// Disjoint, non-adjacent half-open ranges `start..end`, in order.
///
/// A sorted deque rather than a `BTreeMap`: the sets hold a few ranges
/// (the packets received, a stream's acknowledged and lost bytes), and an
/// idle session's one range costs 64 bytes here against a map's 192-byte
/// leaf. The receiver's set is capped (`frame::MAX_ACK_RANGES`); a
/// stream's sets are bounded by its window over the packet size.
#[derive(Debug, Clone, Default)]
pub struct RangeSet {
    ranges: VecDeque<(u64, u64)>,
}

impl RangeSet {
    /// Adds `start..end`, merging with neighbours. Returns whether any
    /// value was new.
    pub fn insert(&mut self, start: u64, end: u64) -> bool {
        if start >= end {
            return false;
        }
        // The first range that ends at or after `start`: it and those after
        // it that begin at or before `end` overlap or touch the new one.
        let i = self.ranges.partition_point(|&(_, e)| e < start);
        if self.ranges.get(i).is_some_and(|&(s, e)| s <= start && e >= end) {
            return false;
        }
        let (mut lo, mut hi) = (start, end);
        let mut j = i;
        while let Some(&(s, e)) = self.ranges.get(j).filter(|&&(s, _)| s <= end) {
            lo = lo.min(s);
            hi = hi.max(e);
            j += 1;
        }
        self.ranges.drain(i..j);
        self.ranges.insert(i, (lo, hi));
        true
    }

    /// Whether `v` is in the set.
    #[cfg(test)]
    pub fn contains(&self, v: u64) -> bool {
        self.containing(v).is_some()
    }

    /// The range containing `v`, if any.
    pub fn containing(&self, v: u64) -> Option<(u64, u64)> {
        let i = self.ranges.partition_point(|&(_, e)| e <= v);
        self.ranges.get(i).copied().filter(|&(s, _)| s <= v)
    }

    /// Removes everything below `v`.
    pub fn remove_below(&mut self, v: u64) {
        while let Some(first) = self.ranges.front_mut() {
            if first.0 >= v {
                break;
            }
            if first.1 > v {
                first.0 = v;
                break;
            }
            self.ranges.pop_front();
        }
        if self.ranges.is_empty() {
            // An idle session keeps no room for ranges it once had.
            self.ranges = VecDeque::new();
        }
    }

    /// Removes the lowest range.
    pub fn pop_first(&mut self) -> Option<(u64, u64)> {
        self.ranges.pop_front()
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The highest value in the set.
    pub fn max(&self) -> Option<u64> {
        self.ranges.back().map(|&(_, e)| e - 1)
    }

    /// Ranges from the highest down, as `start..end`.
    pub fn iter_desc(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().rev().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn matches_a_plain_set(ops in proptest::collection::vec((0u64..200, 0u64..20), 0..60), cut in 0u64..220) {
            let mut rs = RangeSet::default();
            let mut model = BTreeSet::new();
            for (s, len) in ops {
                let fresh = (s..s + len).any(|v| !model.contains(&v));
                prop_assert_eq!(rs.insert(s, s + len), fresh);
                model.extend(s..s + len);
            }
            for v in 0..230 {
                prop_assert_eq!(rs.contains(v), model.contains(&v));
            }
            // Ranges are disjoint and not adjacent.
            let ranges: Vec<_> = rs.iter_desc().collect();
            for w in ranges.windows(2) {
                prop_assert!(w[1].1 < w[0].0);
            }
            prop_assert_eq!(rs.max(), model.last().copied());
            rs.remove_below(cut);
            for v in 0..230 {
                prop_assert_eq!(rs.contains(v), v >= cut && model.contains(&v));
            }
        }
    }
}
