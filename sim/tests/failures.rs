//! Failures, partitions and churn, as the real engine sees them: a crashed
//! peer is noticed when consent checks go unanswered (RFC 7675: 30 s); a
//! partition shorter than that leaves sessions up, a longer one ends them.

use convoke_sim::scenario::Scenario;

fn scenario(extra: &str) -> Scenario {
    let text = format!(
        r#"
name = "failures"
duration_s = 300
[oob]
invite_delay_s = [1, 2]
rsvp_delay_s = [1, 2]
[population]
nodes = 40
mix = {{ public = 0.5, full-cone = 0.5 }}
[joins]
pattern = "random-earlier"
interval_s = 0.2
{extra}
"#
    );
    Scenario::parse(&text).expect("valid")
}

#[test]
fn crashed_peers_are_noticed_within_the_consent_timeout() {
    let s = scenario("[[failures]]\nat_s = 100\nfraction = 0.5\n");
    let (r, _) = convoke_sim::simulate(s, 3, &mut |_, _, _| {}).expect("runs");
    assert_eq!(r.joins.failed, 0, "public and full-cone inviters always connect: {:?}", r.failure_reasons);
    let f = &r.failures[0];
    assert!((10..=31).contains(&f.crashed), "about half of 41 nodes: {}", f.crashed);
    assert!(f.sessions_broken > 0);
    assert_eq!(f.detected, f.sessions_broken, "every survivor notices");
    let d = f.detection.as_ref().expect("detection times");
    assert!(d.p50 >= 25.0 && d.max <= 40.0, "consent timeout is 30 s after the last answer: {d:?}");
}

#[test]
fn short_partitions_are_ridden_out_and_long_ones_end_sessions() {
    let s = scenario(
        "[[partitions]]\nat_s = 100\nheal_s = 110\nfraction = 0.5\n\
         [[partitions]]\nat_s = 150\nheal_s = 250\nfraction = 0.5\n",
    );
    let (r, _) = convoke_sim::simulate(s, 5, &mut |_, _, _| {}).expect("runs");
    let (short, long) = (&r.partitions[0], &r.partitions[1]);
    assert!(short.sessions_across > 0 && long.sessions_across > 0);
    assert_eq!(short.closed, 0, "10 s without answers is within consent's 30 s");
    assert_eq!(long.closed, long.sessions_across, "100 s cut off loses consent");
    assert!(r.network.partitioned > 0);
}

#[test]
fn churn_takes_nodes_away_and_their_peers_notice() {
    let s = scenario("[churn]\nmean_lifetime_s = 60\n");
    let (r, _) = convoke_sim::simulate(s, 9, &mut |_, _, _| {}).expect("runs");
    let c = r.churn.as_ref().expect("churn report");
    assert!(c.left >= 20, "most nodes outlive a 60 s mean lifetime only rarely over 300 s: {}", c.left);
    assert!(c.sessions_broken > 0 && c.detected > 0);
    assert!(r.network.to_dead > 0);
}

#[test]
fn a_stable_share_of_the_nodes_never_leaves() {
    let all = scenario("[churn]\nmean_lifetime_s = 60\nstable = 1\n");
    let (r, _) = convoke_sim::simulate(all, 9, &mut |_, _, _| {}).expect("runs");
    assert_eq!(r.churn.as_ref().map(|c| c.left), Some(0), "every node is stable");
    let half = scenario("[churn]\nmean_lifetime_s = 60\nstable = 0.5\n");
    let (r, _) = convoke_sim::simulate(half, 9, &mut |_, _, _| {}).expect("runs");
    let left = r.churn.as_ref().map_or(0, |c| c.left);
    // 40 joiners, half of them stable, the rest mostly gone within 300 s.
    assert!((8..=30).contains(&left), "{left} of 40 left");
}
