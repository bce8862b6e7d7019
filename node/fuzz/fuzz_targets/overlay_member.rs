//! One overlay member fed whatever decodes from the input, from a handful
//! of peers, interleaved with links coming and going and time passing. It
//! must never panic, and its views must stay within their bounds.
#![no_main]

use convoke_overlay::{Card, Config, Message, Output, Overlay, Topology};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the topology policy and whether we may serve.
    let Some((&pick, data)) = data.split_first() else { return };
    let topology = [Topology::Mesh, Topology::SPANNING_TREE, Topology::HIERARCHICAL, Topology::STAR][usize::from(pick % 4)];
    let leaves = match topology {
        Topology::Hierarchical { leaves, .. } | Topology::Star { leaves } => leaves,
        _ => 0,
    };
    let cfg = Config { announce_views: 700, topology, super_capable: pick & 4 != 0, ..Config::default() };
    let me = Card::new(0u32, b"me".to_vec());
    let mut o = Overlay::new(me, cfg, [3; 32], 0);
    o.join(Card::new(1, b"one".to_vec()), 0);
    let mut now = 0u64;
    // Chunks: [op, peer, len, bytes...]
    let mut rest = data;
    while rest.len() >= 3 {
        let (op, peer, len) = (rest[0], u32::from(rest[1] % 8), usize::from(rest[2]));
        rest = &rest[3..];
        let len = len.min(rest.len());
        let (body, tail) = rest.split_at(len);
        rest = tail;
        now += u64::from(op >> 4) * 97;
        match op % 5 {
            0 => o.link_up(peer, now),
            1 => o.link_failed(peer, now),
            2 => o.link_down(peer, now),
            3 => o.tick(now),
            _ => {
                if let Ok(m) = Message::<u32>::decode(body) {
                    o.handle(peer, m, now);
                }
            }
        }
        let mut outputs = 0;
        while let Some(out) = o.poll() {
            outputs += 1;
            assert!(outputs < 100_000, "unbounded output");
            if let Output::Send { msg, .. } = out {
                assert!(Message::<u32>::decode(&msg.encode()).is_ok(), "we sent something undecodable");
            }
        }
        let bound = 2 * (cfg.active + leaves);
        assert!(o.active().count() <= bound, "active view {}", o.active().count());
        assert!(o.passive().count() <= cfg.passive);
        assert!(!o.active().any(|p| p == 0), "we are in our own view");
    }
});
