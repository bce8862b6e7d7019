//! The whole-system part of a report (pattern `network`): how many nodes
//! became members, how the network hangs together, how introducer-relayed
//! RSVPs fared, how links came up and how far broadcasts went.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::report::{Summary, round};
use crate::world::World;

/// `members`: who ended up in the network.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MembersReport {
    /// Member nodes started (the first member and every newcomer).
    pub nodes: u64,
    /// Alive at the end.
    pub alive: u64,
    /// Alive at the end with at least one active overlay link.
    pub joined: u64,
    /// Nodes that could be in the network with the token they were given:
    /// the first member, and each newcomer whose contact could and whose
    /// pair with its contact connects by some step of the ladder built so
    /// far (the NAT model says, [`crate::reach`]).
    pub allowed: u64,
    /// `joined / nodes`.
    pub joined_share: f64,
    /// `allowed / nodes`.
    pub allowed_share: f64,
    /// Mean active view of the joined members (live neighbours).
    pub mean_active: f64,
    /// Components of the live active graph (joined members).
    pub components: u64,
    /// Members in the largest component.
    pub largest_component: u64,
    /// Seconds from importing a card to the first overlay link.
    pub time_to_membership_s: Option<Summary>,
    /// The topology policy's shape, when the scenario names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyReport>,
}

/// `members.policy`: the live network's shape under its topology policy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyReport {
    /// The policy.
    pub topology: String,
    /// Joined super-peers (hubs).
    pub supers: u64,
    /// Joined leaves.
    pub leaves: u64,
    /// Joined members that elected themselves super-peers (a public
    /// address, a mapped port, peers that reached their card unasked).
    pub elected: u64,
    /// Joined members promoted to super-peer for want of one.
    pub promoted: u64,
    /// Joined members that stepped down from super-peer after a move (to
    /// be elected again once their new network qualifies).
    pub stepped_down: u64,
    /// Joined super-peers whose NATs filter unasked traffic, with no mapped
    /// port: leaves reach them only with RSVPs (promoted ones, and elected
    /// ones that moved behind such a NAT).
    pub filtered_supers: u64,
    /// Most leaves linked to one super-peer.
    pub max_super_leaves: u64,
    /// Most links at one joined member.
    pub max_degree: u64,
    /// Leaf-to-leaf links.
    pub leaf_links: u64,
    /// Joined leaves with no super-peer link.
    pub leaves_without_uplink: u64,
    /// Links to super-peers members lost to failure while leaves (their
    /// super-peer crashed, or went quiet): every member's, those churn
    /// took too.
    pub uplinks_lost: u64,
    /// Under churn with a stable share (`churn.stable`): the share of the
    /// joined super-peers that are stable, and the share of the joined
    /// leaves' uplinks that lead to them. The second above the first is
    /// leaves leaning on the super-peers that stay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_supers_share: Option<f64>,
    /// See `stable_supers_share`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplinks_to_stable_share: Option<f64>,
}

/// Why introducer-relayed RSVPs did not reach their addressee.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RsvpLosses {
    /// No hop of the remembered route was a neighbour when it was needed.
    pub no_route: u64,
    /// Sent, never arrived, addressee alive (a relay refused it or its
    /// route broke on the way).
    pub in_transit: u64,
    /// The addressee had crashed.
    pub addressee_crashed: u64,
}

/// `introducer`: RSVPs relayed through introducers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IntroducerReport {
    /// RSVPs members needed to send through introducers.
    pub rsvps_sent: u64,
    /// Taken by their addressee.
    pub rsvps_delivered: u64,
    /// Reached their addressee, which refused them.
    pub rsvps_refused: u64,
    /// Lost, all reasons.
    pub rsvps_lost: u64,
    /// Lost, by reason.
    pub lost: RsvpLosses,
    /// Of the RSVPs addressed to live members, the share that reached them.
    pub delivered_to_live_share: f64,
    /// Relays refused by members on the way (rate limit or no link to the
    /// next hop), summed over live members' counters.
    pub relay_refusals: u64,
    /// Of those, by the rate limit.
    pub relay_rate_limited: u64,
    /// Tokens relayed to a member over a link it no longer counted active
    /// (views are symmetric only eventually), summed likewise.
    pub relay_from_stranger: u64,
    /// Tokens a member could not pass on: no hop of the route and no
    /// neighbour it knew of was linked to the addressee.
    pub relay_unroutable: u64,
    /// Overlay messages (of any kind) a member dropped because it had no
    /// session with the neighbour they were for.
    pub unsent_messages: u64,
}

/// `links`: how overlay links came up.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinksReport {
    /// Links up, counted once at the side that dialed: by the newcomer's
    /// first token alone, by its RSVP carried out of band, by an
    /// introduced card alone, by an RSVP relayed through introducers.
    pub by_phase: BTreeMap<String, u64>,
    /// Links the overlay asked for that failed, by reason.
    pub failed: BTreeMap<String, u64>,
}

/// `broadcast`: how far broadcasts went.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BroadcastReport {
    /// Broadcasts sent.
    pub count: u64,
    /// The smallest share of live members (joined before it was sent)
    /// that received one.
    pub min_delivery: f64,
    /// The mean of those shares.
    pub mean_delivery: f64,
}

/// One move of the scenario's `moves`: how the members that moved came
/// back into the network.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MoveReport {
    /// When, seconds.
    pub at_s: f64,
    /// Where they went: `new-network` or `renumber`.
    pub to: String,
    /// Members that moved.
    pub moved: u64,
    /// Of those, the ones with a live overlay neighbour when they moved.
    pub linked_before: u64,
    /// Of those linked before, the ones alive at the end.
    pub alive_at_end: u64,
    /// Of those linked before, the ones that linked again after the move.
    pub relinked: u64,
    /// Seconds from the move to the first overlay link after it.
    pub relinked_s: Option<Summary>,
    /// Of those linked before, the ones that made as many links after the
    /// move as they had before it.
    pub restored: u64,
    /// Seconds from the move to that.
    pub restored_s: Option<Summary>,
    /// Broadcasts sent after the move.
    pub broadcasts_after: u64,
    /// The smallest share of the moved members (alive, linked before the
    /// broadcast) that received one of those broadcasts.
    pub min_delivery_to_moved: Option<f64>,
}

/// The four sections, gathered from a finished world.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkReport {
    /// `members`.
    pub members: MembersReport,
    /// `introducer`.
    pub introducer: IntroducerReport,
    /// `links`.
    pub links: LinksReport,
    /// `broadcast` (when the scenario sends any).
    pub broadcast: Option<BroadcastReport>,
    /// `roaming`: one entry per move of the scenario.
    pub roaming: Vec<MoveReport>,
    /// Seconds to membership, for the plot.
    pub samples: Vec<f64>,
}

fn share(x: u64, of: u64) -> f64 {
    if of == 0 { 1.0 } else { round(x as f64 / of as f64) }
}

impl NetworkReport {
    /// Gathers it from a network run (`None` for other patterns).
    pub fn new(w: &World) -> Option<NetworkReport> {
        let whole = w.whole()?;
        let f = w.member_figures()?;
        let mut samples = f.to_membership_s.clone();
        let members = MembersReport {
            nodes: f.nodes,
            alive: f.alive,
            joined: f.joined,
            allowed: f.allowed,
            joined_share: share(f.joined, f.nodes),
            allowed_share: share(f.allowed, f.nodes),
            mean_active: round(f.mean_active),
            components: f.components,
            largest_component: f.largest,
            time_to_membership_s: crate::report::summary(&mut samples),
            policy: w.scenario.topology.as_ref().map(|t| PolicyReport {
                topology: t.clone(),
                supers: f.shape.supers,
                leaves: f.shape.leaves,
                elected: f.elected,
                promoted: f.promoted,
                stepped_down: f.stepped_down,
                filtered_supers: f.filtered_supers,
                max_super_leaves: f.shape.max_super_leaves,
                max_degree: f.shape.max_degree,
                leaf_links: f.shape.leaf_links(),
                leaves_without_uplink: f.shape.leaves_without_uplink,
                uplinks_lost: f.uplinks_lost,
                stable_supers_share: (f.stable_supers.0 > 0).then(|| share(f.stable_supers.1, f.stable_supers.0)),
                uplinks_to_stable_share: (f.stable_uplinks.0 > 0)
                    .then(|| share(f.stable_uplinks.1, f.stable_uplinks.0)),
            }),
        };
        let r = &whole.rsvps;
        let (mut in_transit, mut crashed) = (0u64, r.to_crashed);
        for (&(_, to), &c) in &r.in_flight {
            if w.crashed_at(to).is_some() {
                crashed += u64::from(c);
            } else {
                in_transit += u64::from(c);
            }
        }
        let needed = r.sent + r.no_route;
        let lost = RsvpLosses { no_route: r.no_route, in_transit, addressee_crashed: crashed };
        let introducer = IntroducerReport {
            rsvps_sent: needed,
            rsvps_delivered: r.delivered,
            rsvps_refused: r.refused,
            rsvps_lost: lost.no_route + lost.in_transit + lost.addressee_crashed,
            delivered_to_live_share: share(r.delivered + r.refused, needed.saturating_sub(crashed)),
            lost,
            relay_refusals: f.relay_refused,
            relay_rate_limited: f.relay_rate_limited,
            relay_from_stranger: f.relay_from_stranger,
            relay_unroutable: f.relay_unroutable,
            unsent_messages: f.unsent,
        };
        let links = LinksReport {
            by_phase: whole.links_by_phase.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            failed: whole.connect_failures.clone(),
        };
        let broadcast = (!f.deliveries.is_empty()).then(|| {
            let shares: Vec<f64> = f.deliveries.iter().map(|&(live, got)| share(got, live)).collect();
            BroadcastReport {
                count: shares.len() as u64,
                min_delivery: shares.iter().copied().fold(1.0, f64::min),
                mean_delivery: round(shares.iter().sum::<f64>() / shares.len() as f64),
            }
        });
        let roaming = roaming(w, whole);
        Some(NetworkReport { members, introducer, links, broadcast, roaming, samples: f.to_membership_s })
    }
}

fn roaming(w: &World, whole: &crate::world::Whole) -> Vec<MoveReport> {
    let moves = &w.scenario.moves;
    (0..moves.len() as u32)
        .map(|wave| {
            let m = &moves[wave as usize];
            let moved: Vec<_> = whole.moved.iter().filter(|x| x.wave == wave).collect();
            let before: Vec<_> = moved.iter().filter(|x| x.links_before > 0).collect();
            let mut relinked: Vec<f64> =
                before.iter().filter_map(|x| Some(x.relinked?.saturating_sub(x.at) as f64 / 1e9)).collect();
            let mut restored: Vec<f64> =
                before.iter().filter_map(|x| Some(x.restored?.saturating_sub(x.at) as f64 / 1e9)).collect();
            let deliveries = w.moved_deliveries(wave);

            MoveReport {
                at_s: round(m.at_s),
                to: match m.to {
                    crate::scenario::MoveTo::NewNetwork => "new-network".into(),
                    crate::scenario::MoveTo::Renumber => "renumber".into(),
                },
                moved: moved.len() as u64,
                linked_before: before.len() as u64,
                alive_at_end: before.iter().filter(|x| w.crashed_at(x.node).is_none()).count() as u64,
                relinked: relinked.len() as u64,
                relinked_s: crate::report::summary(&mut relinked),
                restored: restored.len() as u64,
                restored_s: crate::report::summary(&mut restored),
                broadcasts_after: deliveries.len() as u64,
                min_delivery_to_moved: deliveries.iter().map(|&(live, got)| share(got, live)).reduce(f64::min),
            }
        })
        .collect()
}

/// The report's Markdown section for the four parts.
pub fn markdown(
    s: &MembersReport,
    i: &IntroducerReport,
    links: &LinksReport,
    broadcast: Option<&BroadcastReport>,
    roaming: &[MoveReport],
) -> String {
    {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "## Members\n\n| nodes | alive | joined | allowed by the NAT model | mean active view | components | largest |\n|---|---|---|---|---|---|---|\n| {} | {} | {} ({:.1}%) | {} ({:.1}%) | {:.2} | {} | {} |\n",
            s.nodes,
            s.alive,
            s.joined,
            100.0 * s.joined_share,
            s.allowed,
            100.0 * s.allowed_share,
            s.mean_active,
            s.components,
            s.largest_component
        );
        if let Some(t) = &s.time_to_membership_s {
            let _ = writeln!(
                m,
                "Time from importing a card to the first overlay link: median {:.1} s, p90 {:.1} s, p99 {:.1} s, max {:.1} s (n = {}).\n",
                t.p50, t.p90, t.p99, t.max, t.n
            );
        }
        if let Some(p) = &s.policy {
            let _ = writeln!(
                m,
                "Topology policy `{}`: {} super-peers ({} elected, {} promoted; {} behind NATs that filter), {} leaves, {} stepped down after a move; most leaves at one super-peer {}, most links at one member {}; leaf–leaf links {}, leaves without a super-peer {}; uplinks lost to failure {}.\n",
                p.topology,
                p.supers,
                p.elected,
                p.promoted,
                p.filtered_supers,
                p.leaves,
                p.stepped_down,
                p.max_super_leaves,
                p.max_degree,
                p.leaf_links,
                p.leaves_without_uplink,
                p.uplinks_lost
            );
            if let (Some(s), Some(u)) = (p.stable_supers_share, p.uplinks_to_stable_share) {
                let _ = writeln!(
                    m,
                    "Of the joined super-peers {:.1}% are of churn's stable share; {:.1}% of the leaves' uplinks lead to them.\n",
                    s * 100.0,
                    u * 100.0
                );
            }
        }
        let _ = writeln!(
            m,
            "## RSVPs through introducers\n\n| needed | delivered | refused | lost: no route | lost: in transit | lost: addressee crashed | reached live addressees | relay refusals (rate limit, unroutable tokens) | from non-neighbours | messages with no session |\n|---|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} | {:.2}% | {} ({}, {}) | {} | {} |\n",
            i.rsvps_sent,
            i.rsvps_delivered,
            i.rsvps_refused,
            i.lost.no_route,
            i.lost.in_transit,
            i.lost.addressee_crashed,
            100.0 * i.delivered_to_live_share,
            i.relay_refusals,
            i.relay_rate_limited,
            i.relay_unroutable,
            i.relay_from_stranger,
            i.unsent_messages
        );
        let _ = writeln!(m, "## Links by how they came up\n\n| phase | links |\n|---|---|");
        for (k, v) in &links.by_phase {
            let _ = writeln!(m, "| {} | {v} |", k.replace('_', " "));
        }
        let _ = writeln!(m);
        if !links.failed.is_empty() {
            let _ = writeln!(m, "## Overlay links that failed\n\n| reason | links |\n|---|---|");
            for (k, v) in &links.failed {
                let _ = writeln!(m, "| {k} | {v} |");
            }
            let _ = writeln!(m);
        }
        if let Some(b) = broadcast {
            let _ = writeln!(
                m,
                "## Broadcasts\n\n{} broadcasts; delivery to live members: min {:.2}%, mean {:.2}%.\n",
                b.count,
                100.0 * b.min_delivery,
                100.0 * b.mean_delivery
            );
        }
        if !roaming.is_empty() {
            let _ = writeln!(
                m,
                "## Roaming\n\n| at | to | moved | linked before | relinked | first link again: median / p90 / max | view restored | restored: median / p90 / max | broadcasts after: min delivery to the moved |\n|---|---|---|---|---|---|---|---|---|"
            );
            let t = |x: &Option<Summary>| {
                x.as_ref().map_or("–".to_owned(), |t| format!("{:.1} / {:.1} / {:.1} s", t.p50, t.p90, t.max))
            };
            for r in roaming {
                let _ = writeln!(
                    m,
                    "| {:.0} s | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.at_s,
                    r.to,
                    r.moved,
                    r.linked_before,
                    r.relinked,
                    t(&r.relinked_s),
                    r.restored,
                    t(&r.restored_s),
                    r.min_delivery_to_moved.map_or("–".to_owned(), |d| format!(
                        "{:.2}% ({} broadcasts)",
                        100.0 * d,
                        r.broadcasts_after
                    ))
                );
            }
            let _ = writeln!(m);
        }
        m
    }
}
