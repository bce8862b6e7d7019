//! A sliding replay window for counter-nonced datagrams (RFC 6479 style, as
//! WireGuard uses): accepts each counter at most once, and any counter
//! within `WINDOW` of the highest seen, in any order.

/// Counters this far behind the highest seen are still accepted once.
pub const WINDOW: u64 = 2048;
/// One word more than the window: a window of 2048 counters can touch 33
/// distinct 64-bit words, and the ring must not reuse the oldest of them
/// (RFC 6479 keeps the same spare block).
const WORDS: usize = (WINDOW / 64) as usize + 1;

/// The window: the highest counter seen and a bitmap of the recent ones.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    top: Option<u64>,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self { top: None, bits: [0; WORDS] }
    }
}

impl ReplayWindow {
    /// Whether `counter` would be accepted (no change). Check before the
    /// (costly) decryption; [`Self::commit`] after it succeeds, so forged
    /// packets cannot move the window.
    pub fn check(&self, counter: u64) -> bool {
        match self.top {
            None => true,
            Some(top) if counter > top => true,
            Some(top) if top - counter >= WINDOW => false,
            Some(_) => self.bits[Self::word(counter)] & Self::bit(counter) == 0,
        }
    }

    /// Records `counter` as seen. Returns false if it was a replay.
    pub fn commit(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        let top = self.top.unwrap_or(0);
        if self.top.is_none() || counter > top {
            // Clear the words the window slides past.
            let start = self.top.map_or(0, |t| t / 64 + 1);
            let end = counter / 64;
            if end.saturating_sub(start) >= WORDS as u64 || self.top.is_none() {
                self.bits = [0; WORDS];
            } else {
                for w in start..=end {
                    self.bits[(w % WORDS as u64) as usize] = 0;
                }
            }
            self.top = Some(counter);
        }
        self.bits[Self::word(counter)] |= Self::bit(counter);
        true
    }

    fn word(c: u64) -> usize {
        ((c / 64) % WORDS as u64) as usize
    }

    fn bit(c: u64) -> u64 {
        1 << (c % 64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basics() {
        let mut w = ReplayWindow::default();
        assert!(w.commit(0));
        assert!(!w.commit(0));
        assert!(w.commit(5));
        assert!(w.commit(3));
        assert!(!w.commit(3));
        assert!(w.commit(5000));
        assert!(!w.check(5000 - WINDOW));
        assert!(w.check(5000 - WINDOW + 1));
        assert!(!w.commit(5));
    }

    proptest! {
        /// Against a model that remembers everything: accept iff never seen
        /// and within the window of the highest seen so far.
        #[test]
        fn matches_a_model(seq in prop::collection::vec(0u64..10_000, 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            let mut top: Option<u64> = None;
            for c in seq {
                let expect = !seen.contains(&c) && top.is_none_or(|t| c > t || t - c < WINDOW);
                prop_assert_eq!(w.commit(c), expect, "counter {}", c);
                if expect {
                    seen.insert(c);
                    top = Some(top.map_or(c, |t| t.max(c)));
                }
            }
        }
    }
}
