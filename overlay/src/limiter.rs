//! Token buckets for the introducer's relay: per neighbour and in total.

use std::collections::BTreeMap;

use crate::{Millis, PeerKey};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Millis,
}

impl Bucket {
    fn take(&mut self, now: Millis, burst: f64, per_ms: f64) -> bool {
        self.tokens = (self.tokens + now.saturating_sub(self.at) as f64 * per_ms).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Limits how much a member relays: `burst` at once and `per_second` after
/// that, for each neighbour and (ten times that) for all together.
#[derive(Debug)]
pub(crate) struct Limiter<P> {
    burst: f64,
    per_ms: f64,
    all: Bucket,
    each: BTreeMap<P, Bucket>,
}

impl<P: PeerKey> Limiter<P> {
    pub(crate) fn new(burst: u32, per_second: f64) -> Self {
        let burst = f64::from(burst);
        Self { burst, per_ms: per_second / 1000.0, all: Bucket { tokens: burst * 10.0, at: 0 }, each: BTreeMap::new() }
    }

    /// Origins with a bucket of their own.
    pub(crate) fn len(&self) -> usize {
        self.each.len()
    }

    /// Whether `origin` may have one more token relayed now.
    pub(crate) fn allow(&mut self, origin: P, now: Millis) -> bool {
        let (burst, per_ms) = (self.burst, self.per_ms);
        if self.each.len() > 4096 {
            // Forget buckets that have refilled: they hold nothing a fresh
            // one would not. If that is not enough, forget them all.
            self.each.retain(|_, b| b.tokens + now.saturating_sub(b.at) as f64 * per_ms < burst);
            if self.each.len() > 4096 {
                self.each.clear();
            }
        }
        let b = self.each.entry(origin).or_insert(Bucket { tokens: burst, at: now });
        if !b.take(now, burst, per_ms) {
            return false;
        }
        self.all.take(now, burst * 10.0, per_ms * 10.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_per_origin() {
        let mut l = Limiter::<u32>::new(3, 1.0);
        assert!((0..3).all(|_| l.allow(1, 0)));
        assert!(!l.allow(1, 0), "burst spent");
        assert!(l.allow(2, 0), "another origin has its own bucket");
        assert!(!l.allow(1, 500), "half a token is not a token");
        assert!(l.allow(1, 1000));
    }

    #[test]
    fn caps_everyone_together() {
        let mut l = Limiter::<u32>::new(1, 0.0);
        let allowed = (0..100).filter(|&p| l.allow(p, 0)).count();
        assert_eq!(allowed, 10);
    }
}
