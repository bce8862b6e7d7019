//! The run's report: `report.json` (everything, deterministic),
//! `report.md` (tables), `ttc.svg` (time-to-connect CDF per path type).
//! Wall-clock figures (run time, memory) are not part of it — they go to
//! `perf.json` — so the same scenario and seed give the same bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use convoke_node::ice::Via;
use serde::Serialize;

use crate::members_report::{BroadcastReport, IntroducerReport, LinksReport, MembersReport, MoveReport, NetworkReport};
use crate::world::{NetStats, STUN_PROFILE, World};

/// Joins and what became of them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Outcomes {
    /// Joins counted.
    pub joins: u64,
    /// Connected by the invitation alone.
    pub single_token: u64,
    /// Connected after an RSVP (both sides checking at once).
    pub rsvp: u64,
    /// Connected through a port a router mapped for one side (PCP,
    /// NAT-PMP, UPnP IGD), with or without an RSVP.
    pub port_mapped: u64,
    /// Connected after the RSVP at a predicted port of a sequential NAT.
    pub predicted: u64,
    /// Connected after the RSVP by birthday probing.
    pub birthday: u64,
    /// Connected through a relay (after the RSVP, the circuit in it).
    pub relayed: u64,
    /// Not connected by the end of the run.
    pub failed: u64,
    /// RSVPs the invitees sent back.
    pub rsvp_sent: u64,
    /// Median time from import to session, seconds, over the connected.
    pub median_s: Option<f64>,
}

/// Percentiles of a sample, seconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Sample size.
    pub n: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// One cell of the NAT matrix.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cell {
    /// The step most runs took: `single-token`, `rsvp`, `predicted`,
    /// `birthday`, `relay`, `failed`, or `mixed` when none has a majority.
    pub phase: String,
    /// The runs' outcomes.
    pub outcomes: Outcomes,
}

/// Inviter (rows) × invitee (columns).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Matrix {
    /// Profile names, rows and columns.
    pub profiles: Vec<String>,
    /// `cells[inviter][invitee]`.
    pub cells: Vec<Vec<Cell>>,
}

/// What the scenario's relay carried.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RelayLoad {
    /// Circuits granted.
    pub circuits: u64,
    /// Allocations refused (its caps).
    pub refused: u64,
    /// Circuit ends bound (two a circuit both peers reached).
    pub ends_bound: u64,
    /// Circuits still open at the end of the run.
    pub open_at_end: u64,
    /// Data packets forwarded.
    pub forwarded_packets: u64,
    /// Their payload bytes.
    pub forwarded_bytes: u64,
    /// Data packets dropped by a rate cap.
    pub dropped_rate: u64,
}

/// Port prediction and birthday probing, summed over every node.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Probing {
    /// Attempts that began probing (counted on each side).
    pub started: u64,
    /// Of those, connected through a probed pair (counted on each side).
    pub connected: u64,
    /// Probes the easy sides sent.
    pub probes_sent: u64,
    /// Sockets the hard sides opened for their pools.
    pub pool_sockets: u64,
    /// Probes sent (all of them, also by attempts the RSVP round connected
    /// first) per join connected by prediction or probing.
    pub probes_per_connection: Option<f64>,
}

/// A failure event's aftermath.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailureReport {
    /// When, seconds.
    pub at_s: f64,
    /// Nodes crashed.
    pub crashed: u64,
    /// Open sessions with one end crashed.
    pub sessions_broken: u64,
    /// Of those, how many the survivor noticed (consent lost) by the end.
    pub detected: u64,
    /// Time to notice, seconds.
    pub detection: Option<Summary>,
}

/// A partition's aftermath.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionReport {
    /// Start, seconds.
    pub at_s: f64,
    /// Heal, seconds.
    pub heal_s: f64,
    /// Open sessions across the cut when it began.
    pub sessions_across: u64,
    /// Of those, closed between the cut and 30 s after the heal (consent
    /// lost while cut off; later closes have other causes).
    pub closed: u64,
}

/// Churn's aftermath.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChurnReport {
    /// Nodes that left.
    pub left: u64,
    /// Sessions that had one end leave.
    pub sessions_broken: u64,
    /// Of those, noticed by the survivor by the end.
    pub detected: u64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// Seed.
    pub seed: u64,
    /// The engine that ran (convoke-node version).
    pub engine: String,
    /// Simulated seconds.
    pub duration_s: f64,
    /// Nodes made (STUN servers included).
    pub nodes: u64,
    /// NAT boxes made.
    pub nats: u64,
    /// Events processed.
    pub events: u64,
    /// All joins.
    pub joins: Outcomes,
    /// Time from import to session by path: `single-token`, `rsvp`, `all`.
    pub time_to_connect_s: BTreeMap<String, Summary>,
    /// Time from import to the RSVP offer, seconds, by what the inviter's
    /// token says of its NAT: `behind_nat`, `public`, `unknown`.
    pub time_to_rsvp_offer_s: BTreeMap<String, Summary>,
    /// Time from the inviter taking the RSVP to the session, seconds, by
    /// path (what probing costs after the RSVP round).
    pub time_after_rsvp_s: BTreeMap<String, Summary>,
    /// The inviter's candidate type on the nominated pair.
    pub remote_candidate: BTreeMap<String, u64>,
    /// Why joins failed.
    pub failure_reasons: BTreeMap<String, u64>,
    /// Joins by the invitee's NAT profile.
    pub by_invitee_profile: BTreeMap<String, Outcomes>,
    /// Joins by the inviter's NAT profile.
    pub by_inviter_profile: BTreeMap<String, Outcomes>,
    /// Joins by the pair of profiles, `"inviter × invitee"` (patterns other
    /// than `matrix`, whose table this is).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_profile_pair: BTreeMap<String, Outcomes>,
    /// The NAT matrix (pattern `matrix`).
    pub matrix: Option<Matrix>,
    /// Network counters.
    pub network: NetStats,
    /// Port prediction and birthday probing.
    pub probing: Probing,
    /// The relay's load, when the scenario has one (`network.relay`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayLoad>,
    /// Failure events.
    pub failures: Vec<FailureReport>,
    /// Partitions.
    pub partitions: Vec<PartitionReport>,
    /// Churn.
    pub churn: Option<ChurnReport>,
    /// Members (pattern `network`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<MembersReport>,
    /// RSVPs through introducers (pattern `network`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub introducer: Option<IntroducerReport>,
    /// How overlay links came up (pattern `network`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links: Option<LinksReport>,
    /// Broadcast delivery (pattern `network` with broadcasts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<BroadcastReport>,
    /// How members that moved came back (pattern `network` with `moves`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roaming: Vec<MoveReport>,
    /// Times to connect, seconds, by path (for the plot; not serialised).
    #[serde(skip)]
    pub samples: BTreeMap<String, Vec<f64>>,
}

fn secs(ns: u64) -> f64 {
    round(ns as f64 / 1e9)
}

/// Rounded to a millionth, so reports print the same everywhere.
pub(crate) fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Percentiles of `v` (sorted in place), nearest rank.
pub fn summary(v: &mut [f64]) -> Option<Summary> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Summary { n: v.len() as u64, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: v[v.len() - 1] })
}

#[derive(Default)]
struct Acc {
    o: Outcomes,
    times: Vec<f64>,
}

impl Acc {
    fn add(&mut self, phase: &str, ttc: Option<f64>, rsvp_sent: bool) {
        self.o.joins += 1;
        match phase {
            "single-token" => self.o.single_token += 1,
            "rsvp" => self.o.rsvp += 1,
            "port-mapped" => self.o.port_mapped += 1,
            "predicted" => self.o.predicted += 1,
            "birthday" => self.o.birthday += 1,
            "relay" => self.o.relayed += 1,
            _ => self.o.failed += 1,
        }
        self.o.rsvp_sent += u64::from(rsvp_sent);
        self.times.extend(ttc);
    }
    fn done(mut self) -> Outcomes {
        self.o.median_s = summary(&mut self.times).map(|s| s.p50);
        self.o
    }
}

/// A `## title` section: one row of percentiles per entry of `table`.
fn summary_table(m: &mut String, title: &str, key: &str, table: &BTreeMap<String, Summary>) {
    let _ = writeln!(m, "## {title}, seconds\n\n| {key} | n | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|");
    for (k, s) in table {
        let _ = writeln!(m, "| {k} | {} | {:.3} | {:.3} | {:.3} | {:.3} |", s.n, s.p50, s.p90, s.p99, s.max);
    }
    let _ = writeln!(m);
}

/// A connection's step of the reach ladder, named as the NAT model names
/// it ([`crate::reach::Reach::as_str`]).
pub fn phase_name(via: Via) -> &'static str {
    match via {
        Via::SingleToken => "single-token",
        Via::Rsvp => "rsvp",
        Via::PortPrediction => "predicted",
        Via::Birthday => "birthday",
    }
}

impl Report {
    /// Gathers the report from a finished world.
    pub fn new(w: &World, seed: u64) -> Report {
        let name = |p: u16| {
            if p == STUN_PROFILE { "stun".to_owned() } else { w.profiles[usize::from(p)].0.clone() }
        };
        let mut all = Acc::default();
        let (mut by_invitee, mut by_inviter) = (BTreeMap::<String, Acc>::new(), BTreeMap::<String, Acc>::new());
        let mut cells = BTreeMap::<(u16, u16), Acc>::new();
        let mut samples = BTreeMap::<String, Vec<f64>>::new();
        let mut kinds = BTreeMap::new();
        let mut reasons = BTreeMap::new();
        let mut offers = BTreeMap::<String, Vec<f64>>::new();
        let mut after = BTreeMap::<String, Vec<f64>>::new();
        for j in &w.joins {
            let (phase, ttc) = match (j.established, j.via, j.imported) {
                (Some(e), Some(via), Some(i)) => {
                    // The furthest step either side saw: a probe may have
                    // found a port that the other side's main socket held.
                    let phase = if j.port_mapped {
                        "port-mapped"
                    } else if j.remote_kind == Some(convoke_node::token::CandidateKind::Relay) {
                        "relay"
                    } else {
                        phase_name(j.inviter_via.map_or(via, |v| v.max(via)))
                    };
                    (phase, Some(secs(e - i)))
                }
                _ => ("failed", None),
            };
            if let Some(t) = ttc {
                samples.entry(phase.to_owned()).or_default().push(t);
                samples.entry("all".to_owned()).or_default().push(t);
                let kind = j.remote_kind.map_or("unknown".to_owned(), |k| format!("{k:?}").to_lowercase());
                *kinds.entry(kind).or_insert(0u64) += 1;
            } else {
                let why = match (&j.failed, j.imported) {
                    (Some((_, why)), _) => why.clone(),
                    (None, Some(_)) if j.rsvp_sent.is_some() => "no session by the end (after an RSVP)".to_owned(),
                    (None, Some(_)) => "no session by the end".to_owned(),
                    (None, None) if j.started == 0 && j.inviter == u32::MAX => "not started".to_owned(),
                    (None, None) => "token not imported by the end".to_owned(),
                };
                *reasons.entry(why).or_insert(0u64) += 1;
            }
            if let (Some(taken), Some(e), true) = (j.rsvp_taken, j.established, ttc.is_some()) {
                after.entry(phase.to_owned()).or_default().push(secs(e.saturating_sub(taken)));
            }
            if let (Some(sent), Some(imported)) = (j.rsvp_sent, j.imported) {
                let nat = w.nodes_nat(j.inviter);
                let kind = match nat {
                    Some(n) if n.is_translated() => "behind_nat",
                    Some(_) => "public",
                    None => "unknown",
                };
                offers.entry(kind.to_owned()).or_default().push(secs(sent.saturating_sub(imported)));
            }
            let rsvp = j.rsvp_sent.is_some();
            all.add(phase, ttc, rsvp);
            by_invitee.entry(name(j.profiles.1)).or_default().add(phase, ttc, rsvp);
            by_inviter.entry(name(j.profiles.0)).or_default().add(phase, ttc, rsvp);
            cells.entry(j.profiles).or_default().add(phase, ttc, rsvp);
        }
        let is_matrix = w.scenario.joins.pattern == crate::scenario::Pattern::Matrix;
        let by_profile_pair: BTreeMap<String, Outcomes> = if is_matrix {
            BTreeMap::new()
        } else {
            std::mem::take(&mut cells)
                .into_iter()
                .map(|((a, b), acc)| (format!("{} × {}", name(a), name(b)), acc.done()))
                .collect()
        };
        let matrix = is_matrix.then(|| {
            let names = w.scenario.joins.profiles.clone();
            let idx = |n: &String| crate::world::profile_index(&w.profiles, n);
            let rows = names
                .iter()
                .map(|a| {
                    names
                        .iter()
                        .map(|b| {
                            let o = cells.remove(&(idx(a), idx(b))).map(Acc::done).unwrap_or_default();
                            // The step most runs took; `mixed` when no step
                            // has a majority. (Probing is chance: a hard
                            // inviter's RSVP-round check from a fresh port
                            // lands on a port its invitee probed while
                            // waiting about 3% of the time, and connects as
                            // rsvp.)
                            let counts = [
                                (o.single_token, "single-token"),
                                (o.rsvp, "rsvp"),
                                (o.port_mapped, "port-mapped"),
                                (o.predicted, "predicted"),
                                (o.birthday, "birthday"),
                                (o.relayed, "relay"),
                                (o.failed, "failed"),
                            ];
                            let phase = counts.iter().find(|(n, _)| 2 * n > o.joins).map_or("mixed", |(_, p)| p);
                            Cell { phase: phase.to_owned(), outcomes: o }
                        })
                        .collect()
                })
                .collect();
            Matrix { profiles: names, cells: rows }
        });
        let mut time_to_connect_s = BTreeMap::new();
        for (k, v) in &samples {
            if let Some(s) = summary(&mut v.clone()) {
                time_to_connect_s.insert(k.clone(), s);
            }
        }
        let broken_detected = |ks: &[u32], since: &dyn Fn(u32) -> u64| {
            let mut times: Vec<f64> = ks
                .iter()
                .filter_map(|&k| w.joins[k as usize].closed.map(|c| secs(c.saturating_sub(since(k)))))
                .collect();
            (times.len() as u64, summary(&mut times))
        };
        let failures = w
            .failures
            .iter()
            .map(|f| {
                let (detected, detection) = broken_detected(&f.broken, &|_| f.at);
                FailureReport {
                    at_s: secs(f.at),
                    crashed: f.crashed,
                    sessions_broken: f.broken.len() as u64,
                    detected,
                    detection,
                }
            })
            .collect();
        let partitions = w
            .partitions
            .iter()
            .map(|p| PartitionReport {
                at_s: secs(p.at),
                heal_s: secs(p.heal),
                sessions_across: p.across.len() as u64,
                closed: p
                    .across
                    .iter()
                    .filter(|&&k| w.joins[k as usize].closed.is_some_and(|c| c < p.heal + 30 * 1_000_000_000))
                    .count() as u64,
            })
            .collect();
        let churn = w.scenario.churn.as_ref().map(|_| {
            let in_failures: std::collections::BTreeSet<u32> =
                w.failures.iter().flat_map(|f| f.broken.iter().copied()).collect();
            let broken: Vec<u32> = (0..w.joins.len() as u32)
                .filter(|k| !in_failures.contains(k))
                .filter(|&k| {
                    let j = &w.joins[k as usize];
                    j.established.is_some() && (w.crashed_at(j.inviter).is_some() != w.crashed_at(j.invitee).is_some())
                })
                .collect();
            let detected = broken.iter().filter(|&&k| w.joins[k as usize].closed.is_some()).count() as u64;
            ChurnReport { left: w.churned, sessions_broken: broken.len() as u64, detected }
        });
        let net = NetworkReport::new(w);
        if let Some(n) = &net
            && !n.samples.is_empty()
        {
            samples.insert("membership".to_owned(), n.samples.clone());
        }
        let (members, introducer, links, broadcast, roaming) = match net {
            Some(n) => (Some(n.members), Some(n.introducer), Some(n.links), n.broadcast, n.roaming),
            None => (None, None, None, None, Vec::new()),
        };
        let joins = all.done();
        let probing = {
            let t = w.endpoint_totals();
            let found = joins.predicted + joins.birthday;
            let per = (found > 0).then(|| round(t.probes_sent as f64 / found as f64));
            Probing {
                started: t.probing_started,
                connected: t.probing_connected,
                probes_sent: t.probes_sent,
                pool_sockets: t.pool_sockets_opened,
                probes_per_connection: per,
            }
        };
        Report {
            scenario: w.scenario.name.clone(),
            description: w.scenario.description.clone(),
            seed,
            engine: format!("convoke-node {}", env!("CARGO_PKG_VERSION")),
            duration_s: round(w.scenario.duration_s),
            nodes: w.node_count() as u64,
            nats: w.nat_count() as u64,
            events: w.events,
            joins,
            time_to_connect_s,
            time_to_rsvp_offer_s: offers.into_iter().filter_map(|(k, mut v)| Some((k, summary(&mut v)?))).collect(),
            time_after_rsvp_s: after.into_iter().filter_map(|(k, mut v)| Some((k, summary(&mut v)?))).collect(),
            remote_candidate: kinds,
            failure_reasons: reasons,
            by_invitee_profile: by_invitee.into_iter().map(|(k, a)| (k, a.done())).collect(),
            by_inviter_profile: by_inviter.into_iter().map(|(k, a)| (k, a.done())).collect(),
            by_profile_pair,
            matrix,
            network: w.net.clone(),
            probing,
            relay: w.relay_totals().map(|(s, open)| RelayLoad {
                circuits: s.allocated,
                refused: s.refused,
                ends_bound: s.bound,
                open_at_end: open as u64,
                forwarded_packets: s.forwarded_packets,
                forwarded_bytes: s.forwarded_bytes,
                dropped_rate: s.dropped_rate,
            }),
            failures,
            partitions,
            churn,
            members,
            introducer,
            links,
            broadcast,
            roaming,
            samples,
        }
    }

    /// `report.json`.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// `report.md`.
    pub fn to_markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# Simulation report: {}\n", self.scenario);
        if !self.description.is_empty() {
            let _ = writeln!(m, "{}\n", self.description.trim());
        }
        let _ = writeln!(
            m,
            "Seed {}, {} simulated seconds, {} nodes, {} NATs, {} events; engine {}.\n",
            self.seed, self.duration_s, self.nodes, self.nats, self.events, self.engine
        );
        let pct = |x: u64, of: u64| if of == 0 { 0.0 } else { 100.0 * x as f64 / of as f64 };
        let o = &self.joins;
        let _ = writeln!(
            m,
            "## Joins\n\n| joins | single token | RSVP | port mapped | predicted | birthday | relayed | failed | RSVPs sent |\n|---|---|---|---|---|---|---|---|---|"
        );
        let _ = writeln!(
            m,
            "| {} | {} ({:.1}%) | {} ({:.1}%) | {} ({:.1}%) | {} ({:.1}%) | {} ({:.1}%) | {} ({:.1}%) | {} ({:.1}%) | {} |\n",
            o.joins,
            o.single_token,
            pct(o.single_token, o.joins),
            o.rsvp,
            pct(o.rsvp, o.joins),
            o.port_mapped,
            pct(o.port_mapped, o.joins),
            o.predicted,
            pct(o.predicted, o.joins),
            o.birthday,
            pct(o.birthday, o.joins),
            o.relayed,
            pct(o.relayed, o.joins),
            o.failed,
            pct(o.failed, o.joins),
            o.rsvp_sent
        );
        let p = &self.probing;
        if p.started > 0 {
            let _ = writeln!(
                m,
                "## Probing\n\n| started | connected | probes sent | pool sockets | probes per probed connection |\n|---|---|---|---|---|\n| {} | {} | {} | {} | {} |\n",
                p.started,
                p.connected,
                p.probes_sent,
                p.pool_sockets,
                p.probes_per_connection.map_or("–".to_owned(), |v| format!("{v:.0}"))
            );
        }
        if let Some(r) = &self.relay {
            let _ = writeln!(
                m,
                "## Relay\n\n| circuits | refused | ends bound | open at the end | packets forwarded | bytes forwarded | dropped by a rate cap |\n|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} | {} |\n",
                r.circuits,
                r.refused,
                r.ends_bound,
                r.open_at_end,
                r.forwarded_packets,
                r.forwarded_bytes,
                r.dropped_rate
            );
        }
        for (title, key, table, always) in [
            ("Time to connect (token imported → session)", "path", &self.time_to_connect_s, true),
            (
                "Time to the RSVP offer (token imported → RSVP offered)",
                "what the inviter's token says",
                &self.time_to_rsvp_offer_s,
                false,
            ),
            ("Time after the RSVP (inviter took it → session)", "path", &self.time_after_rsvp_s, false),
        ] {
            if always || !table.is_empty() {
                summary_table(&mut m, title, key, table);
            }
        }
        if let (Some(s), Some(i), Some(l)) = (&self.members, &self.introducer, &self.links) {
            m.push_str(&crate::members_report::markdown(s, i, l, self.broadcast.as_ref(), &self.roaming));
        }
        if let Some(x) = &self.matrix {
            let _ = writeln!(m, "## NAT matrix (rows: inviter, columns: invitee)\n");
            m.push_str(&x.to_markdown());
            let _ = writeln!(m);
        }
        let pairs = [("profile pair (inviter × invitee)", &self.by_profile_pair)];
        let pairs = pairs.into_iter().filter(|(_, t)| !t.is_empty());
        for (title, table) in [("invitee", &self.by_invitee_profile), ("inviter", &self.by_inviter_profile)]
            .into_iter()
            .map(|(t, x)| (format!("the {t}'s NAT"), x))
            .chain(pairs.map(|(t, x)| (t.to_owned(), x)))
        {
            let _ = writeln!(
                m,
                "## By {title}\n\n| profile | joins | single token | RSVP | port mapped | predicted | birthday | relayed | failed | median s |\n|---|---|---|---|---|---|---|---|---|---|"
            );
            for (k, o) in table {
                let med = o.median_s.map_or("–".to_owned(), |v| format!("{v:.3}"));
                let _ = writeln!(
                    m,
                    "| {k} | {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {med} |",
                    o.joins,
                    pct(o.single_token, o.joins),
                    pct(o.rsvp, o.joins),
                    pct(o.port_mapped, o.joins),
                    pct(o.predicted, o.joins),
                    pct(o.birthday, o.joins),
                    pct(o.relayed, o.joins),
                    pct(o.failed, o.joins)
                );
            }
            let _ = writeln!(m);
        }
        if !self.failure_reasons.is_empty() {
            let _ = writeln!(m, "## Why joins failed\n\n| reason | joins |\n|---|---|");
            for (k, v) in &self.failure_reasons {
                let _ = writeln!(m, "| {k} | {v} |");
            }
            let _ = writeln!(m);
        }
        for f in &self.failures {
            let det =
                f.detection.as_ref().map_or("–".to_owned(), |s| format!("p50 {:.1} s, max {:.1} s", s.p50, s.max));
            let _ = writeln!(
                m,
                "## Failure at {:.0} s\n\n{} nodes crashed; {} open sessions lost an end; the survivor noticed {} ({det}).\n",
                f.at_s, f.crashed, f.sessions_broken, f.detected
            );
        }
        for p in &self.partitions {
            let _ = writeln!(
                m,
                "## Partition {:.0}–{:.0} s\n\n{} open sessions spanned the cut; {} of them closed (consent lost).\n",
                p.at_s, p.heal_s, p.sessions_across, p.closed
            );
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(
                m,
                "## Churn\n\n{} nodes left; {} sessions lost an end; the survivor noticed {}.\n",
                c.left, c.sessions_broken, c.detected
            );
        }
        let n = &self.network;
        let _ = writeln!(
            m,
            "## Network\n\n| sent | delivered | lost | filtered | no mapping | no route | hairpin refused | table full | to crashed | partitioned | mappings |\n|---|---|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            n.sent,
            n.delivered,
            n.lost,
            n.filtered,
            n.no_mapping,
            n.no_route,
            n.hairpin_refused,
            n.table_full,
            n.to_dead,
            n.partitioned,
            n.mappings
        );
        m
    }

    /// `ttc.svg`: the time-to-connect CDF per path type, log time axis.
    pub fn to_svg(&self) -> String {
        let (w, h, left, bottom, top, right) = (720.0, 420.0, 60.0, 50.0, 30.0, 150.0);
        let (pw, ph) = (w - left - right, h - top - bottom);
        let max = self.samples.values().flatten().copied().fold(1.0f64, f64::max);
        let (lo, hi) = (-3.0f64, max.log10().ceil().max(0.0) + 0.0);
        let x = |t: f64| left + pw * ((t.max(1e-3).log10() - lo) / (hi - lo));
        let y = |f: f64| top + ph * (1.0 - f);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="18" text-anchor="middle">{}: time from token import to session{} (CDF)</text>"#,
            left + pw / 2.0,
            self.scenario,
            if self.samples.contains_key("membership") { " and to membership" } else { "" }
        );
        for d in (lo as i32)..=(hi as i32) {
            let xv = x(10f64.powi(d));
            let label = match d {
                -3 => "1 ms".to_owned(),
                -2 => "10 ms".to_owned(),
                -1 => "100 ms".to_owned(),
                d => format!("{} s", 10u64.pow(d as u32)),
            };
            let _ = writeln!(
                s,
                r##"<line x1="{xv:.1}" y1="{top}" x2="{xv:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xv:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
                top + ph,
                top + ph + 16.0
            );
        }
        for q in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let yv = y(q);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{yv:.1}" x2="{:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{q:.2}</text>"##,
                left + pw,
                left - 6.0,
                yv + 4.0
            );
        }
        let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
        for (i, (name, v)) in self.samples.iter().enumerate() {
            let mut v = v.clone();
            v.sort_by(f64::total_cmp);
            let n = v.len() as f64;
            // At most ~400 points per curve.
            let step = (v.len() / 400).max(1);
            let pts: Vec<String> = v
                .iter()
                .enumerate()
                .filter(|(k, _)| k % step == 0 || *k + 1 == v.len())
                .map(|(k, t)| format!("{:.1},{:.1}", x(*t), y((k + 1) as f64 / n)))
                .collect();
            let c = colours[i % colours.len()];
            let _ = writeln!(s, r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#, pts.join(" "));
            let ly = top + 20.0 * i as f64 + 10.0;
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{name} (n={})</text>"#,
                left + pw + 10.0,
                left + pw + 30.0,
                left + pw + 35.0,
                ly + 4.0,
                v.len()
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds (log scale)</text></svg>"#,
            left + pw / 2.0,
            h - 8.0
        );
        s
    }
}

impl Matrix {
    /// The matrix as a Markdown table: rows inviters, columns invitees;
    /// each cell the phase that succeeded and the median time to connect.
    /// [`parse_matrix`] reads it back (and the expected matrix in
    /// `sim/README.md`, and the NAT testbed's).
    pub fn to_markdown(&self) -> String {
        let mut m = String::from("| inviter \\ invitee |");
        for p in &self.profiles {
            let _ = write!(m, " {p} |");
        }
        m.push_str("\n|---|");
        m.push_str(&"---|".repeat(self.profiles.len()));
        m.push('\n');
        for (p, row) in self.profiles.iter().zip(&self.cells) {
            let _ = write!(m, "| {p} |");
            for c in row {
                match c.outcomes.median_s {
                    Some(t) => {
                        let _ = write!(m, " {} {t:.2} s |", c.phase);
                    }
                    None => {
                        let _ = write!(m, " {} |", c.phase);
                    }
                }
            }
            m.push('\n');
        }
        m
    }
}

/// A matrix read from Markdown: (inviter, invitee) → phase (the first word
/// of the cell).
pub type PhaseTable = BTreeMap<(String, String), String>;

/// Reads the first table whose header starts with `| inviter` in `text`.
pub fn parse_matrix(text: &str) -> Result<PhaseTable, String> {
    let mut lines = text.lines().map(str::trim).skip_while(|l| !l.starts_with("| inviter"));
    let header = lines.next().ok_or("no table whose header starts with `| inviter`")?;
    let cols: Vec<String> =
        header.split('|').map(str::trim).filter(|c| !c.is_empty()).skip(1).map(String::from).collect();
    lines.next().filter(|l| l.starts_with("|-") || l.starts_with("| -")).ok_or("the table has no separator line")?;
    let mut out = PhaseTable::new();
    for l in lines.take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
        let row = cells.first().ok_or("empty row")?.trim_matches('*').to_owned();
        if cells.len() != cols.len() + 1 {
            return Err(format!("row {row} has {} cells, the header {}", cells.len() - 1, cols.len()));
        }
        for (c, cell) in cols.iter().zip(&cells[1..]) {
            let phase = cell.split_whitespace().next().ok_or_else(|| format!("empty cell {row} × {c}"))?;
            out.insert((row.clone(), c.clone()), phase.trim_matches('*').to_owned());
        }
    }
    if out.is_empty() {
        return Err("the table has no rows".into());
    }
    Ok(out)
}

/// One cell where a measured matrix disagrees with the expected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Inviter profile (row).
    pub inviter: String,
    /// Invitee profile (column).
    pub invitee: String,
    /// The expected phase, or `None` when the expected table has no such cell.
    pub expected: Option<String>,
    /// The measured phase.
    pub measured: String,
}

/// Compares every cell of `measured` with `expected` (which may cover more
/// profiles, like the simulator's 11 × 11 table against a testbed's 5 × 5).
/// Returns the cells that disagree or that `expected` lacks; empty when all agree.
///
/// A cell the model connects by probing (`predicted`, `birthday`) that
/// connected in the RSVP round agrees: a check of that round can land on a
/// port the other side's probes had opened (about 3% of runs), which is
/// luck, not a wrong model. [`early_connections`] lists those cells.
pub fn compare_matrices(expected: &PhaseTable, measured: &PhaseTable) -> Vec<Mismatch> {
    cells_where(expected, measured, |want, got| want != Some(got) && !early(want, got))
}

/// The cells of `measured` that connected a step earlier than `expected`
/// says (in the RSVP round where the model needs probing); they count as
/// agreeing, and are worth a line.
pub fn early_connections(expected: &PhaseTable, measured: &PhaseTable) -> Vec<Mismatch> {
    cells_where(expected, measured, early)
}

fn early(want: Option<&str>, got: &str) -> bool {
    matches!(want, Some("predicted" | "birthday")) && got == "rsvp"
}

fn cells_where(
    expected: &PhaseTable,
    measured: &PhaseTable,
    pick: impl Fn(Option<&str>, &str) -> bool,
) -> Vec<Mismatch> {
    measured
        .iter()
        .filter_map(|((inviter, invitee), phase)| {
            let want = expected.get(&(inviter.clone(), invitee.clone()));
            pick(want.map(String::as_str), phase).then(|| Mismatch {
                inviter: inviter.clone(),
                invitee: invitee.clone(),
                expected: want.cloned(),
                measured: phase.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summary(&mut v).expect("non-empty");
        assert_eq!((s.n, s.p50, s.p90, s.p99, s.max), (100, 50.0, 90.0, 99.0, 100.0));
        assert!(summary(&mut []).is_none());
    }

    #[test]
    fn matrix_tables_read_back() {
        let cell = |p: &str, t: Option<f64>| Cell {
            phase: p.into(),
            outcomes: Outcomes { joins: 1, median_s: t, ..Outcomes::default() },
        };
        let m = Matrix {
            profiles: vec!["public".into(), "symmetric".into()],
            cells: vec![
                vec![cell("single-token", Some(0.05)), cell("single-token", Some(0.07))],
                vec![cell("rsvp", Some(51.0)), cell("failed", None)],
            ],
        };
        let t = parse_matrix(&format!("Intro\n\n{}\nAfter", m.to_markdown())).expect("parses");
        assert_eq!(t.len(), 4);
        assert_eq!(t[&("symmetric".to_owned(), "public".to_owned())], "rsvp");
        assert_eq!(t[&("symmetric".to_owned(), "symmetric".to_owned())], "failed");
        assert!(parse_matrix("| inviter \\ invitee | a |\n|---|---|\n| a | x | y |\n").is_err());
        assert!(parse_matrix("no table").is_err());
    }

    #[test]
    fn a_smaller_measured_matrix_compares_cell_by_cell() {
        let expected = parse_matrix(
            "| inviter \\ invitee | public | symmetric | eim-eif |\n|---|---|---|---|\n\
             | public | single-token (S) | single-token (S) | single-token (S) |\n\
             | symmetric | rsvp (P1) | failed (F) | rsvp (P1) |\n",
        )
        .expect("expected");
        let agree = parse_matrix(
            "| inviter \\ invitee | public | symmetric |\n|---|---|---|\n\
             | public | single-token 0.21 s | single-token 0.30 s |\n| symmetric | rsvp 6.10 s | failed |\n",
        )
        .expect("measured");
        assert!(compare_matrices(&expected, &agree).is_empty());
        let disagree = parse_matrix(
            "| inviter \\ invitee | symmetric | full-cone |\n|---|---|---|\n| symmetric | rsvp 9.0 s | rsvp 1 s |\n",
        )
        .expect("measured");
        let m = compare_matrices(&expected, &disagree);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].expected, None, "full-cone is not in the expected table");
        assert_eq!((m[1].expected.as_deref(), m[1].measured.as_str()), (Some("failed"), "rsvp"));
    }

    #[test]
    fn a_probing_cell_that_connected_in_the_rsvp_round_agrees_and_is_listed() {
        let expected = parse_matrix(
            "| inviter \\ invitee | eim-apdf | apdm-apdf |\n|---|---|---|\n\
             | eim-apdf | rsvp | birthday |\n| apdm-apdf | birthday | failed |\n",
        )
        .expect("expected");
        let measured = parse_matrix(
            "| inviter \\ invitee | eim-apdf | apdm-apdf |\n|---|---|---|\n\
             | eim-apdf | rsvp 2.1 s | birthday 17.5 s |\n| apdm-apdf | rsvp 11.7 s | failed |\n",
        )
        .expect("measured");
        assert!(compare_matrices(&expected, &measured).is_empty());
        let early = early_connections(&expected, &measured);
        assert_eq!(early.len(), 1, "{early:?}");
        assert_eq!((early[0].inviter.as_str(), early[0].invitee.as_str()), ("apdm-apdf", "eim-apdf"));
        // Later than the model, or failed where it connects, still disagrees.
        let worse = parse_matrix(
            "| inviter \\ invitee | eim-apdf | apdm-apdf |\n|---|---|---|\n\
             | eim-apdf | birthday 9 s | failed |\n| apdm-apdf | birthday 20 s | failed |\n",
        )
        .expect("measured");
        assert_eq!(compare_matrices(&expected, &worse).len(), 2);
    }
}
