//! Round-trip estimation and the retransmission timer (RFC 6298), and a
//! NewReno congestion controller (RFC 5681, as adapted by RFC 9002 §7).

use std::time::{Duration, Instant};

/// Clock granularity G of RFC 6298 §2.
const GRANULARITY: Duration = Duration::from_millis(1);

/// Smoothed RTT and its variation (RFC 6298 §2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rtt {
    srtt: Option<Duration>,
    rttvar: Duration,
    pub latest: Duration,
}

impl Rtt {
    pub fn new() -> Self {
        Self { srtt: None, rttvar: Duration::ZERO, latest: Duration::ZERO }
    }

    /// Takes one measurement R.
    pub fn sample(&mut self, r: Duration) {
        self.latest = r;
        match self.srtt {
            // (2.2) SRTT <- R, RTTVAR <- R/2
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            // (2.3) RTTVAR <- 3/4 RTTVAR + 1/4 |SRTT - R'|; SRTT <- 7/8 SRTT + 1/8 R'
            Some(srtt) => {
                let diff = srtt.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
    }

    /// The smoothed RTT, if measured.
    pub fn smoothed(&self) -> Option<Duration> {
        self.srtt
    }

    /// RTO = SRTT + max(G, 4·RTTVAR) (2.3), plus the peer's allowed ACK
    /// delay, kept within `[min, max]`; `initial` before any sample (2.1).
    pub fn rto(&self, initial: Duration, min: Duration, max: Duration, ack_delay: Duration) -> Duration {
        match self.srtt {
            None => initial,
            Some(srtt) => (srtt + (self.rttvar * 4).max(GRANULARITY) + ack_delay).clamp(min, max),
        }
    }

    /// How long after a later packet was acknowledged an earlier one counts
    /// as lost: 9/8 of the larger of smoothed and latest RTT (RFC 9002 §6.1.2).
    pub fn loss_delay(&self) -> Duration {
        (self.srtt.unwrap_or(self.latest).max(self.latest) * 9 / 8).max(GRANULARITY)
    }
}

/// NewReno in bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewReno {
    pub window: u64,
    ssthresh: u64,
    /// Packets sent before this time are part of the current recovery.
    recovery_start: Option<Instant>,
    /// Bytes acknowledged in congestion avoidance towards the next increase.
    acked: u64,
    mss: u64,
    max: u64,
}

impl NewReno {
    /// Initial window: `packets` full datagrams (RFC 6928's ten; RFC 9002
    /// §7.2 caps it at max(14720 bytes, 2 datagrams)).
    pub fn new(mss: usize, packets: u64, max: u64) -> Self {
        let mss = mss as u64;
        let window = (packets * mss).min((2 * mss).max(14_720)).max(2 * mss);
        Self { window, ssthresh: u64::MAX, recovery_start: None, acked: 0, mss, max }
    }

    /// `bytes` of a packet sent at `sent` were acknowledged.
    pub fn on_ack(&mut self, sent: Instant, bytes: u64) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        if self.window < self.ssthresh {
            self.window += bytes; // slow start
        } else {
            self.acked += bytes; // congestion avoidance: one MSS per window
            if self.acked >= self.window {
                self.acked -= self.window;
                self.window += self.mss;
            }
        }
        self.window = self.window.min(self.max);
    }

    /// A packet sent at `sent` was lost; halves the window once per round.
    pub fn on_loss(&mut self, sent: Instant, now: Instant) {
        if self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        self.recovery_start = Some(now);
        self.ssthresh = (self.window / 2).max(2 * self.mss);
        self.window = self.ssthresh;
        self.acked = 0;
    }

    /// The retransmission timer fired: back to the minimum window
    /// (RFC 5681 §3.1, loss window).
    pub fn on_timeout(&mut self, in_flight: u64, now: Instant) {
        self.ssthresh = (in_flight / 2).max(2 * self.mss);
        self.window = 2 * self.mss;
        self.recovery_start = Some(now);
        self.acked = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6298_estimator() {
        let mut r = Rtt::new();
        let init = Duration::from_secs(1);
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(60));
        assert_eq!(r.rto(init, min, max, Duration::ZERO), init);
        r.sample(Duration::from_millis(100));
        // 100 + 4·50 = 300 ms
        assert_eq!(r.rto(init, min, max, Duration::ZERO), Duration::from_millis(300));
        r.sample(Duration::from_millis(200));
        // RTTVAR = 3/4·50 + 1/4·100 = 62.5; SRTT = 7/8·100 + 1/8·200 = 112.5
        assert_eq!(r.smoothed(), Some(Duration::from_micros(112_500)));
        assert_eq!(r.rto(init, min, max, Duration::ZERO), Duration::from_micros(362_500));
        let mut fast = Rtt::new();
        fast.sample(Duration::from_micros(50));
        assert_eq!(fast.rto(init, min, max, Duration::ZERO), min, "clamped to the minimum");
    }

    #[test]
    fn newreno_grows_and_halves() {
        let t0 = Instant::now();
        let mut cc = NewReno::new(1200, 10, 1 << 30);
        assert_eq!(cc.window, 12_000);
        cc.on_ack(t0, 1200);
        assert_eq!(cc.window, 13_200, "slow start adds what was acked");
        let later = t0 + Duration::from_millis(10);
        cc.on_loss(t0, later);
        assert_eq!(cc.window, 6_600);
        cc.on_loss(t0, later + Duration::from_millis(1));
        assert_eq!(cc.window, 6_600, "one reduction per round");
        let after = later + Duration::from_millis(5);
        for _ in 0..6 {
            cc.on_ack(after, 1100);
        }
        assert_eq!(cc.window, 7_800, "congestion avoidance adds one MSS per window");
        cc.on_timeout(7_800, after);
        assert_eq!(cc.window, 2_400);
    }
}
