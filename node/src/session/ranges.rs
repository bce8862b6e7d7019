//! A set of disjoint half-open `u64` ranges, merged on insert.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent half-open ranges `start..end`, keyed by start.
#[derive(Debug, Clone, Default)]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Adds `start..end`, merging with neighbours. Returns whether any
    /// value was new.
    pub fn insert(&mut self, mut start: u64, mut end: u64) -> bool {
        if start >= end {
            return false;
        }
        // Merge with a range that starts at or before `start` and reaches it.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= end {
                return false;
            }
            if e >= start {
                start = s;
                self.map.remove(&s);
            }
        }
        // Swallow ranges starting inside `start..=end`.
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            self.map.remove(&s);
            end = end.max(e);
        }
        self.map.insert(start, end);
        true
    }

    /// Whether `v` is in the set.
    #[cfg(test)]
    pub fn contains(&self, v: u64) -> bool {
        self.map.range(..=v).next_back().is_some_and(|(_, &e)| v < e)
    }

    /// The range containing `v`, if any.
    pub fn containing(&self, v: u64) -> Option<(u64, u64)> {
        self.map.range(..=v).next_back().filter(|(_, e)| v < **e).map(|(&s, &e)| (s, e))
    }

    /// Removes everything below `v`.
    pub fn remove_below(&mut self, v: u64) {
        while let Some((&s, &e)) = self.map.first_key_value() {
            if s >= v {
                break;
            }
            self.map.remove(&s);
            if e > v {
                self.map.insert(v, e);
                break;
            }
        }
    }

    /// Removes the lowest range.
    pub fn pop_first(&mut self) -> Option<(u64, u64)> {
        self.map.pop_first()
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The highest value in the set.
    pub fn max(&self) -> Option<u64> {
        self.map.last_key_value().map(|(_, &e)| e - 1)
    }

    /// Ranges from the highest down, as `start..end`.
    pub fn iter_desc(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().rev().map(|(&s, &e)| (s, e))
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
