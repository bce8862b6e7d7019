//! # convoke-sim
//!
//! A discrete-event simulator that runs the real Convoke engine
//! (`convoke-node` built without its runtime) on thousands of virtual nodes
//! behind emulated RFC 4787 NATs (docs/DESIGN.md §6).
//!
//! * [`queue`]: the event queue, ordered by (time, sequence).
//! * [`nat`]: NAT boxes — mapping × filtering × port assignment, timeouts,
//!   hairpinning; stacked behind carrier-grade NATs by the network.
//! * [`scenario`]: TOML scenarios (population, NAT mix, join pattern,
//!   failures, partitions, churn), validated with errors naming the field.
//! * [`world`]: the virtual network and its nodes. Every node is a real
//!   [`convoke_node::host::Host`] — tokens, ICE, Noise IK, sessions — driven
//!   exactly as the tokio runtime drives it: `handle_*`, then drain
//!   `poll_transmit` / `poll_event`, then sleep until `poll_timeout`. STUN
//!   servers are hosts too (every host answers Binding requests). Tokens
//!   travel as text through an out-of-band channel with a person's delay.
//! * [`reach`]: which pairs of NAT behaviours connect, and by which step,
//!   worked out by running the NAT model on the engine's exchange.
//! * [`report`]: the deterministic report (JSON, Markdown, SVG).
//! * [`overlay`]: the overlay (membership, broadcast, introducer relay,
//!   topology policies) at N = 10,000 over a simulated message network.
//!
//! Determinism: one seeded ChaCha RNG drives the world; each node's host
//! gets its own seed drawn from it. Nothing iterates a hash map to decide
//! what happens next, so the same scenario and seed give a byte-identical
//! `report.json` (tested).
#![deny(missing_docs)]

pub mod members_report;
pub mod nat;
pub mod overlay;
pub mod queue;
pub mod reach;
pub mod report;
pub mod scenario;
pub mod shape_tally;
pub mod world;

use std::hash::{BuildHasherDefault, Hasher};

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// A fast, deterministic hasher for the simulator's small integer keys
/// (Fx, as in rustc). Hash maps are used for lookups only, never iterated
/// to decide behaviour.
#[derive(Default, Clone, Copy)]
pub struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

/// `BuildHasher` for [`Fx`].
pub type FastHash = BuildHasherDefault<Fx>;

/// The simulator's random source: one seeded ChaCha stream.
#[derive(Debug, Clone)]
pub struct SimRng(pub ChaCha8Rng);

impl SimRng {
    /// A stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }
    /// A uniform `u32`.
    pub fn u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi] (hi ≥ lo).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo { lo } else { lo + self.0.next_u64() % (hi - lo + 1) }
    }
    /// Exponentially distributed with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
    /// 32 random bytes (a node's seed or key).
    pub fn seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.0.fill_bytes(&mut s);
        s
    }
}

/// Peak and current resident memory of this process, bytes (Linux
/// `/proc/self/status` VmHWM and VmRSS); zeros elsewhere.
pub fn memory() -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else { return (0, 0) };
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Wall-clock figures of one run (not deterministic, so not in the report).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Perf {
    /// Nodes made.
    pub nodes: u64,
    /// Events processed.
    pub events: u64,
    /// Wall time of the run, seconds.
    pub wall_s: f64,
    /// Events per wall second.
    pub events_per_s: f64,
    /// Simulated seconds per wall second.
    pub speedup: f64,
    /// Peak resident memory of the process, bytes.
    pub peak_rss_bytes: u64,
    /// Resident memory before the world was built, bytes.
    pub rss_before_bytes: u64,
    /// (peak − before) / nodes.
    pub bytes_per_node: u64,
}

/// Runs `scenario` with `seed` to its end; `progress` gets (virtual ns,
/// end ns, events) now and then.
pub fn simulate(
    scenario: scenario::Scenario,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64, u64),
) -> Result<(report::Report, Perf), world::SimError> {
    let (_, rss_before) = memory();
    let started = std::time::Instant::now();
    let mut w = world::World::new(scenario, seed);
    let end = w.end();
    w.run(&mut |now, events| progress(now, end, events))?;
    let wall = started.elapsed().as_secs_f64();
    let (peak, _) = memory();
    let report = report::Report::new(&w, seed);
    let nodes = w.node_count() as u64;
    let perf = Perf {
        nodes,
        events: w.events,
        wall_s: wall,
        events_per_s: w.events as f64 / wall.max(1e-9),
        speedup: (w.now() as f64 / 1e9) / wall.max(1e-9),
        peak_rss_bytes: peak,
        rss_before_bytes: rss_before,
        bytes_per_node: peak.saturating_sub(rss_before) / nodes.max(1),
    };
    Ok((report, perf))
}
