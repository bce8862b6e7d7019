//! A router that grants a port mapping (PCP, NAT-PMP, UPnP IGD) turns the
//! pairs that needed an RSVP or probing into direct ones: the node offers
//! the mapped address, and the peer reaches it.

use convoke_sim::scenario::Scenario;

fn run(port_mapping: f64) -> serde_json::Value {
    let text = format!(
        "name = \"port-mapping\"\nseed = 7\nduration_s = 300\n\
         [oob]\ninvite_delay_s = [5, 10]\nrsvp_delay_s = [10, 20]\n\
         [profiles.home]\nmapping = \"eim\"\nfiltering = \"apdf\"\nport_mapping = {port_mapping}\n\
         [joins]\npattern = \"matrix\"\nrepeat = 2\nprofiles = [\"home\", \"apdm-apdf\"]\n"
    );
    let scenario = Scenario::parse(&text).expect("scenario");
    let (report, _) = convoke_sim::simulate(scenario, 7, &mut |_, _, _| {}).expect("runs");
    serde_json::from_str(&report.to_json()).expect("json")
}

fn cell(r: &serde_json::Value, inviter: usize, invitee: usize) -> &serde_json::Value {
    &r["matrix"]["cells"][inviter][invitee]
}

#[test]
fn a_mapped_port_makes_hard_pairs_direct() {
    let without = run(0.0);
    let with = run(1.0);
    // home × symmetric: without a mapping the home router filters the
    // symmetric invitee's checks, so the ladder goes to birthday probing.
    assert_eq!(cell(&without, 0, 1)["phase"], "birthday", "{}", cell(&without, 0, 1));
    assert_eq!(cell(&with, 0, 1)["phase"], "port-mapped", "{}", cell(&with, 0, 1));
    // ... with one, the invitation alone does it: no RSVP was sent.
    assert_eq!(cell(&with, 0, 1)["outcomes"]["rsvp_sent"], 0, "{}", cell(&with, 0, 1));
    // symmetric × home: the RSVP carries the invitee's mapped address,
    // which the inviter's checks reach without probing.
    assert_eq!(cell(&without, 1, 0)["phase"], "birthday", "{}", cell(&without, 1, 0));
    assert_eq!(cell(&with, 1, 0)["phase"], "port-mapped", "{}", cell(&with, 1, 0));
    assert_eq!(with["probing"]["started"].as_u64(), Some(0), "nothing probed: {}", with["probing"]);
    // home × home went by RSVP without mappings; with them, directly.
    assert_eq!(cell(&without, 0, 0)["phase"], "rsvp");
    assert_eq!(cell(&with, 0, 0)["phase"], "port-mapped");
    assert_eq!(cell(&with, 0, 0)["outcomes"]["rsvp_sent"], 0);
    // Symmetric × symmetric has no router mapping either way.
    assert_eq!(cell(&with, 1, 1)["phase"], "failed");
    assert_eq!(with["joins"]["port_mapped"].as_u64(), Some(6), "{}", with["joins"]);
    assert!(with["joins"]["median_s"].as_f64() < without["joins"]["median_s"].as_f64(), "sooner with mappings");
}

/// home × hard and hard × home, ten runs each, with the hard router's
/// mapping table bounded (or not).
fn run_table(max_mappings: Option<u32>) -> serde_json::Value {
    let limit = max_mappings.map_or(String::new(), |m| format!("max_mappings = {m}\n"));
    let text = format!(
        "name = \"table\"\nseed = 3\nduration_s = 400\n\
         [oob]\ninvite_delay_s = [5, 10]\nrsvp_delay_s = [10, 20]\n\
         [profiles.home]\nmapping = \"eim\"\nfiltering = \"apdf\"\n\
         [profiles.hard]\nmapping = \"apdm\"\nfiltering = \"apdf\"\nports = \"random\"\n{limit}\
         [joins]\npattern = \"matrix\"\nrepeat = 10\nprofiles = [\"home\", \"hard\"]\n"
    );
    let scenario = Scenario::parse(&text).expect("scenario");
    let (report, _) = convoke_sim::simulate(scenario, 3, &mut |_, _, _| {}).expect("runs");
    serde_json::from_str(&report.to_json()).expect("json")
}

#[test]
fn a_small_mapping_table_starves_the_birthday_pool() {
    let free = run_table(None);
    let small = run_table(Some(64));
    assert_eq!(free["network"]["table_full"], 0);
    assert!(small["network"]["table_full"].as_u64() > Some(1000), "{}", small["network"]);
    // Fewer pool mappings fit, so the easy side needs more probes to land.
    let probes = |r: &serde_json::Value| r["probing"]["probes_sent"].as_u64().unwrap_or(0);
    assert!(probes(&small) > probes(&free), "{} vs {}", probes(&small), probes(&free));
    for (i, j) in [(0, 1), (1, 0)] {
        assert_eq!(cell(&free, i, j)["outcomes"]["birthday"], 10, "{}", cell(&free, i, j));
    }
}

/// home × hard and hard × home, ten runs each, where the home router
/// takes unsolicited packets to itself, with the pool's opening packets at
/// TTL `pool_ttl` (0: the default TTL).
fn run_local_conntrack(pool_ttl: u8) -> serde_json::Value {
    let text = format!(
        "name = \"ttl\"\nseed = 5\nduration_s = 400\n\
         [network]\npool_ttl = {pool_ttl}\n\
         [oob]\ninvite_delay_s = [5, 10]\nrsvp_delay_s = [10, 20]\n\
         [profiles.home]\nmapping = \"eim\"\nfiltering = \"apdf\"\nlocal_conntrack = true\n\
         [profiles.hard]\nmapping = \"apdm\"\nfiltering = \"apdf\"\nports = \"random\"\n\
         [joins]\npattern = \"matrix\"\nrepeat = 10\nprofiles = [\"home\", \"hard\"]\n"
    );
    let scenario = Scenario::parse(&text).expect("scenario");
    let (report, _) = convoke_sim::simulate(scenario, 5, &mut |_, _, _| {}).expect("runs");
    serde_json::from_str(&report.to_json()).expect("json")
}

#[test]
fn a_low_ttl_on_the_pools_opening_packets_keeps_a_claiming_router_from_spoiling_the_hits() {
    let low = run_local_conntrack(5);
    let full = run_local_conntrack(0);
    let connected = |r: &serde_json::Value| {
        [(0, 1), (1, 0)].iter().map(|&(i, j)| cell(r, i, j)["outcomes"]["birthday"].as_u64().unwrap_or(0)).sum::<u64>()
    };
    eprintln!(
        "birthday joins of 20: TTL 5 {}, default TTL {}; ttl_expired {}, {}",
        connected(&low),
        connected(&full),
        low["network"]["ttl_expired"],
        full["network"]["ttl_expired"]
    );
    assert!(low["network"]["ttl_expired"].as_u64() > Some(0), "the opening packets expired on the way");
    assert_eq!(full["network"]["ttl_expired"], 0);
    assert!(connected(&low) > connected(&full), "{} vs {}", connected(&low), connected(&full));
    assert!(connected(&low) >= 16, "{}", connected(&low));
}
