//! The simulated NAT matrix agrees, cell by cell, with the matrix reasoned
//! from first principles in `sim/README.md`.

use std::path::Path;

use convoke_sim::reach::reach;
use convoke_sim::report::parse_matrix;
use convoke_sim::scenario::Scenario;

#[test]
fn simulated_matrix_matches_the_written_expectation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("sim/README.md");
    let expected = parse_matrix(&readme).expect("the README holds the expected matrix");
    let scenario = Scenario::load(&dir.join("scenarios/nat-matrix.toml")).expect("scenario");
    let seed = scenario.seed;
    let (report, _) = convoke_sim::simulate(scenario, seed, &mut |_, _, _| {}).expect("runs");
    let matrix = report.matrix.as_ref().expect("a matrix scenario reports a matrix");
    let simulated = parse_matrix(&matrix.to_markdown()).expect("the report's table reads back");
    assert_eq!(expected.len(), 144, "12 behaviours as inviter × invitee");
    let mut wrong = Vec::new();
    for ((inviter, invitee), phase) in &expected {
        match simulated.get(&(inviter.clone(), invitee.clone())) {
            Some(p) if p == phase => {}
            got => wrong.push(format!("{inviter} × {invitee}: expected {phase}, simulated {got:?}")),
        }
    }
    assert!(wrong.is_empty(), "{} cells differ:\n{}", wrong.len(), wrong.join("\n"));
    // The NAT model's own answer for each pair (what the overlay model and
    // the whole-system report use) is what the engine met in the run.
    let scenario = Scenario::load(&dir.join("scenarios/nat-matrix.toml")).expect("scenario");
    let mut disagree = Vec::new();
    for ((inviter, invitee), phase) in &simulated {
        let r = reach(&scenario.nat_chain(inviter), &scenario.nat_chain(invitee));
        if r.as_str() != phase {
            disagree.push(format!("{inviter} × {invitee}: simulated {phase}, reach() says {}", r.as_str()));
        }
    }
    assert!(disagree.is_empty(), "{} cells differ:\n{}", disagree.len(), disagree.join("\n"));
    // A majority of every cell's runs took the expected step, a cell the
    // model connects never failed, and the cells where a run took another
    // step are few (probing is chance). The times are sane: a
    // single token connects within a second; an RSVP needs the invitee's
    // 2 s of silence (the inviter's token says it is behind a NAT) plus a
    // person's 10-40 s, plus a few seconds of checks; probing adds its 4 s
    // wait and the probes until one lands (2,000 at most, 40 s).
    let mut split = 0;
    for row in &matrix.cells {
        for c in row {
            assert_eq!(c.outcomes.joins, 3, "three runs per cell");
            let o = &c.outcomes;
            if c.phase != "failed" {
                assert_eq!(o.failed, 0, "a run of a connectable cell failed: {c:?}");
            }
            let majority = [o.single_token, o.rsvp, o.predicted, o.birthday, o.failed];
            split += usize::from(majority.iter().all(|&n| n < o.joins));
            let t = c.outcomes.median_s;
            match c.phase.as_str() {
                "single-token" => assert!(t.is_some_and(|t| t < 1.0), "{t:?}"),
                "rsvp" => assert!(t.is_some_and(|t| (12.0..50.0).contains(&t)), "{t:?}"),
                "predicted" | "birthday" => assert!(t.is_some_and(|t| (16.0..90.0).contains(&t)), "{t:?}"),
                _ => assert!(t.is_none()),
            }
        }
    }
    assert!(split <= 3, "{split} cells had a run take another step");
    // Probing stayed within its budget.
    let p = &report.probing;
    assert!(p.connected > 0 && p.probes_sent <= 2_000 * p.started, "{p:?}");
}

/// With a relay beside the STUN server and named in every invitation, the
/// pairs the matrix leaves without a direct path connect through it, after
/// the RSVP that carries the circuit, and every other pair keeps its direct
/// step (the relay waits for the ladder).
#[test]
fn with_a_relay_the_pairs_without_a_direct_path_connect_through_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("sim/README.md");
    let expected = parse_matrix(&readme).expect("the README holds the expected matrix");
    let mut scenario = Scenario::load(&dir.join("scenarios/nat-matrix.toml")).expect("scenario");
    scenario.network.relay = convoke_sim::scenario::RelayMode::Unlimited;
    scenario.joins.profiles = ["eim-apdf", "adm-apdf", "apdm-apdf", "symmetric-cgnat"].map(String::from).to_vec();
    let seed = scenario.seed;
    let (report, _) = convoke_sim::simulate(scenario, seed, &mut |_, _, _| {}).expect("runs");
    let matrix = report.matrix.as_ref().expect("a matrix");
    let simulated = parse_matrix(&matrix.to_markdown()).expect("reads back");
    let mut wrong = Vec::new();
    let mut relayed = 0;
    for ((inviter, invitee), phase) in &simulated {
        let want = &expected[&(inviter.clone(), invitee.clone())];
        let want = if want == "failed" { "relay" } else { want.as_str() };
        relayed += usize::from(want == "relay");
        if phase != want {
            wrong.push(format!("{inviter} × {invitee}: expected {want}, simulated {phase}"));
        }
    }
    assert!(wrong.is_empty(), "{} cells differ:\n{}", wrong.len(), wrong.join("\n"));
    assert!(relayed >= 6, "only {relayed} cells needed the relay");
    let o = &report.joins;
    assert_eq!(o.failed, 0, "{o:?}");
    assert_eq!(o.relayed as usize, relayed * 3, "every run of those cells, and only those, relayed: {o:?}");
}
