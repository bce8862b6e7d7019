//! Prometheus metrics (docs/DESIGN.md §7).
//!
//! The engine only counts ([`crate::ice::Stats`], [`crate::host::HostStats`],
//! per-session [`crate::session::SessionStats`]) and reports events; the
//! runtime turns those into [`metrics`] series here, and [`install`] serves
//! them in the Prometheus text format over HTTP (`convoke … --metrics ADDR`).
//! Names carry the `convoke_` prefix and base units, counters end in
//! `_total`, and no label value is a peer id, an address or a port.
//!
//! Without [`install`], every call here goes to `metrics`' no-op recorder.

use std::net::SocketAddr;
use std::time::Instant;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use super::portmap::{Protocol, Report};
use crate::host::{Host, HostEvent};
use crate::ice::{AcceptRsvpError, Event as IceEvent, FailReason, Via};
use crate::session::CloseReason;
use crate::token::CandidateKind;

/// Every series the node exports, with its type and meaning, in the order
/// `/metrics` describes them. Tests and the dashboards check against it.
pub const SERIES: &[(&str, &str, &str)] = &[
    ("convoke_build_info", "gauge", "Always 1; the version label says which build runs"),
    ("convoke_connection_attempts_total", "counter", "Connection attempts begun, by role (inviter, invitee)"),
    (
        "convoke_connections_established_total",
        "counter",
        "Sessions established, by role, phase (single_token, rsvp) and the remote candidate type",
    ),
    (
        "convoke_connections_failed_total",
        "counter",
        "Connection attempts that failed, by role, phase and reason (timeout, crossed, handshake)",
    ),
    ("convoke_rsvp_needed_total", "counter", "Invitee attempts whose single-token window ran out: an RSVP was needed"),
    ("convoke_sessions_upgraded_total", "counter", "Sessions moved from a relayed path to a direct one"),
    ("convoke_connect_duration_seconds", "histogram", "Time from an attempt's start to its session, by role and phase"),
    ("convoke_connection_attempts_pending", "gauge", "Attempts still checking or waiting for an RSVP"),
    ("convoke_sessions_active", "gauge", "Established sessions"),
    ("convoke_sessions_closed_total", "counter", "Sessions ended, by reason"),
    ("convoke_session_rtt_seconds", "histogram", "Smoothed round-trip time, one sample per session per second"),
    ("convoke_udp_bytes_total", "counter", "UDP payload bytes, by direction (in, out), all traffic"),
    ("convoke_udp_datagrams_total", "counter", "UDP datagrams, by direction (in, out), all traffic"),
    (
        "convoke_datagrams_dropped_total",
        "counter",
        "Datagrams dropped, by reason (malformed, unauthenticated, session)",
    ),
    ("convoke_tokens_issued_total", "counter", "Tokens this node signed, by kind (invitation, rsvp)"),
    ("convoke_tokens_accepted_total", "counter", "Tokens taken, by kind"),
    ("convoke_tokens_refused_total", "counter", "Tokens or token uses refused, by kind and reason"),
    ("convoke_stun_requests_served_total", "counter", "STUN Binding requests answered (every node answers STUN)"),
    ("convoke_stun_queries_total", "counter", "Our STUN queries, by outcome (mapped, failed)"),
    (
        "convoke_nat_info",
        "gauge",
        "1 for our NAT as classified from STUN answers: mapping (none, independent, dependent, unknown) and ports (preserving, sequential, random, unknown)",
    ),
    ("convoke_probes_sent_total", "counter", "Probes sent to guessed ports of a peer behind a hard NAT"),
    (
        "convoke_probing_attempts_total",
        "counter",
        "Attempts that predicted or probed ports, by outcome (started, connected)",
    ),
    ("convoke_pool_sockets_opened_total", "counter", "Sockets opened for birthday probing (we were the hard side)"),
    (
        "convoke_port_mapping_active",
        "gauge",
        "1 while the router forwards a port to us, by protocol (pcp, natpmp, upnp); 0 for each otherwise",
    ),
    (
        "convoke_port_mapping_reports_total",
        "counter",
        "Port mapping rounds, by outcome (mapped: a mapping made or renewed; unavailable: none, or lost)",
    ),
    ("convoke_overlay_view_peers", "gauge", "Overlay members in our views, by view (active, passive, suspected)"),
    (
        "convoke_overlay_tree_links",
        "gauge",
        "Our broadcast-tree links, by kind (eager: tree edges; lazy: announcements)",
    ),
    ("convoke_overlay_members_known", "gauge", "Overlay members we know of (views and announcements)"),
    ("convoke_overlay_neighbor_changes_total", "counter", "Peers entering (up) or leaving (down) our active view"),
    ("convoke_overlay_suspicions_total", "counter", "Active peers suspected after going silent"),
    (
        "convoke_overlay_quiet_total",
        "counter",
        "Links taken for dead after a ping went unanswered for three heartbeats",
    ),
    (
        "convoke_overlay_role",
        "gauge",
        "1 for our topology policy (mesh, spanning-tree, hierarchical, star) and role (member, super-peer, leaf)",
    ),
    (
        "convoke_overlay_roles_known",
        "gauge",
        "Members we know of by role (super-peer, leaf, member), from announcements and our views",
    ),
    ("convoke_overlay_policy_violations", "gauge", "Topology policy invariants broken now at this member"),
    (
        "convoke_overlay_tenure_step",
        "gauge",
        "Our time in the network as the super-peer choice weighs it: 0 under 10 minutes, 1 from 10 minutes, 2 from an hour, 3 from a day",
    ),
    (
        "convoke_overlay_policy_events_total",
        "counter",
        "Topology policy events, by kind (violation: an invariant broke; mismatch: a peer of another policy refused; promotion: we became a super-peer for want of one; election: we found ourselves reachable and became one; step_down: we moved and stopped serving; rewiring: we swapped a link to mix the core or lean on a super-peer of more standing; uplink_lost: a leaf lost a super-peer to failure)",
    ),
    (
        "convoke_overlay_broadcasts_total",
        "counter",
        "Broadcast messages, by outcome (delivered: first copies; duplicate: extra copies)",
    ),
    ("convoke_overlay_broadcast_hops", "gauge", "Hops the last broadcast we received took from its origin"),
    (
        "convoke_overlay_introductions_total",
        "counter",
        "Introductions: links asked for with a card (asked), failed, tokens relayed for others (relayed), refused, received",
    ),
];

const PORT_MAPPING_PROTOCOLS: [Protocol; 3] = [Protocol::Pcp, Protocol::NatPmp, Protocol::Upnp];

/// Counts what the port mapper said (see [`super::portmap`]).
pub fn on_port_mapping(report: &Report) {
    let active = match report {
        Report::Mapped { protocol, .. } => Some(*protocol),
        Report::Unavailable { .. } => None,
    };
    for p in PORT_MAPPING_PROTOCOLS {
        gauge!("convoke_port_mapping_active", "protocol" => p.name()).set(if active == Some(p) { 1.0 } else { 0.0 });
    }
    let outcome = if active.is_some() { "mapped" } else { "unavailable" };
    counter!("convoke_port_mapping_reports_total", "outcome" => outcome).increment(1);
}

/// Buckets of the time-to-connect histogram, seconds: from a LAN handshake
/// to an RSVP pasted minutes later.
const CONNECT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Buckets of the RTT histogram, seconds.
const RTT_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Why the exporter did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {message}")]
pub struct MetricsError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What went wrong.
    pub message: String,
}

/// Installs the global recorder and serves `/metrics` on `addr` (HTTP).
/// Call it inside a tokio runtime: the listener runs on it. Once per process.
pub fn install(addr: SocketAddr) -> Result<(), MetricsError> {
    let err = |e: &dyn std::fmt::Display| MetricsError { addr, message: e.to_string() };
    // Bind first so an occupied port gets the operating system's words.
    drop(std::net::TcpListener::bind(addr).map_err(|e| err(&e))?);
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full("convoke_connect_duration_seconds".into()), CONNECT_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("convoke_session_rtt_seconds".into()), RTT_BUCKETS))
        .map_err(|e| err(&e))?
        .install()
        .map_err(|e| err(&e))?;
    describe();
    zero();
    gauge!("convoke_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(())
}

/// Registers every series with its label sets at zero, so a scrape shows
/// them before anything happened (and `rate()` sees the first increase).
/// The label values come from the same mappings the counting uses.
fn zero() {
    let fail_reasons = [FailReason::Timeout, FailReason::Crossed].into_iter().filter_map(fail_reason);
    let fail_reasons: Vec<&str> = fail_reasons.chain(["handshake"]).collect();
    for r in [true, false].map(role) {
        counter!("convoke_connection_attempts_total", "role" => r).absolute(0);
        for p in [Via::SingleToken, Via::Rsvp, Via::PortPrediction, Via::Birthday].map(phase) {
            for c in
                [CandidateKind::Host, CandidateKind::Srflx, CandidateKind::Prflx, CandidateKind::Relay].map(candidate)
            {
                counter!("convoke_connections_established_total", "role" => r, "phase" => p, "candidate" => c)
                    .absolute(0);
            }
            for &why in &fail_reasons {
                counter!("convoke_connections_failed_total", "role" => r, "phase" => p, "reason" => why).absolute(0);
            }
            let _ = histogram!("convoke_connect_duration_seconds", "role" => r, "phase" => p);
        }
    }
    counter!("convoke_rsvp_needed_total").absolute(0);
    counter!("convoke_sessions_upgraded_total").absolute(0);
    gauge!("convoke_nat_info", "mapping" => "unknown", "ports" => "unknown").set(1.0);
    counter!("convoke_probes_sent_total").absolute(0);
    for o in ["started", "connected"] {
        counter!("convoke_probing_attempts_total", "outcome" => o).absolute(0);
    }
    counter!("convoke_pool_sockets_opened_total").absolute(0);
    for p in PORT_MAPPING_PROTOCOLS {
        gauge!("convoke_port_mapping_active", "protocol" => p.name()).set(0.0);
    }
    for o in ["mapped", "unavailable"] {
        counter!("convoke_port_mapping_reports_total", "outcome" => o).absolute(0);
    }
    let closes = [
        CloseReason::Local,
        CloseReason::Peer { code: 0, reason: String::new() },
        CloseReason::Peer { code: 1, reason: String::new() },
        CloseReason::ProtocolViolation(""),
        CloseReason::TimedOut,
        CloseReason::PathLost,
    ];
    for why in closes.iter().map(close_reason) {
        counter!("convoke_sessions_closed_total", "reason" => why).absolute(0);
    }
    let _ = histogram!("convoke_session_rtt_seconds");
    for k in ["invitation", "rsvp"] {
        counter!("convoke_tokens_issued_total", "kind" => k).absolute(0);
        counter!("convoke_tokens_accepted_total", "kind" => k).absolute(0);
    }
    for o in ["mapped", "failed"] {
        counter!("convoke_stun_queries_total", "outcome" => o).absolute(0);
    }
    for why in ["expired", "bad_signature", "replayed", "limit", "unknown_invitation"] {
        counter!("convoke_tokens_refused_total", "kind" => "rsvp", "reason" => why).absolute(0);
    }
    sample_overlay(&OverlaySample::default());
}

/// One overlay member's figures, published by [`sample_overlay`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OverlaySample {
    /// Active view size.
    pub active: usize,
    /// Passive view size.
    pub passive: usize,
    /// Suspected active peers.
    pub suspected: usize,
    /// Eager (tree) links.
    pub eager: usize,
    /// Lazy links.
    pub lazy: usize,
    /// Members known.
    pub members: usize,
    /// Hops of the last broadcast received.
    pub last_hops: u16,
    /// Membership counters.
    pub stats: convoke_overlay::Stats,
    /// Broadcast counters.
    pub plum: convoke_overlay::plumtree::PlumStats,
    /// Our topology policy and role.
    pub shape: convoke_overlay::Shape,
    /// Policy invariants broken now.
    pub violations: usize,
    /// Members known by role: super-peers, leaves, members.
    pub roles: [usize; 3],
}

/// Publishes an overlay member's gauges and counters (once a second).
pub fn sample_overlay(o: &OverlaySample) {
    gauge!("convoke_overlay_view_peers", "view" => "active").set(o.active as f64);
    gauge!("convoke_overlay_view_peers", "view" => "passive").set(o.passive as f64);
    gauge!("convoke_overlay_view_peers", "view" => "suspected").set(o.suspected as f64);
    gauge!("convoke_overlay_tree_links", "kind" => "eager").set(o.eager as f64);
    gauge!("convoke_overlay_tree_links", "kind" => "lazy").set(o.lazy as f64);
    gauge!("convoke_overlay_members_known").set(o.members as f64);
    gauge!("convoke_overlay_broadcast_hops").set(f64::from(o.last_hops));
    let s = &o.stats;
    counter!("convoke_overlay_neighbor_changes_total", "change" => "up").absolute(s.neighbor_ups);
    counter!("convoke_overlay_neighbor_changes_total", "change" => "down").absolute(s.neighbor_downs);
    counter!("convoke_overlay_suspicions_total").absolute(s.suspicions);
    counter!("convoke_overlay_quiet_total").absolute(s.quiet);
    use convoke_overlay::{PolicyKind, Role};
    let roles = [Role::Member, Role::Super, Role::Leaf];
    for p in [PolicyKind::Mesh, PolicyKind::SpanningTree, PolicyKind::Hierarchical, PolicyKind::Star] {
        for r in roles {
            let on = o.shape.policy == p && o.shape.role == r;
            gauge!("convoke_overlay_role", "policy" => p.as_str(), "role" => r.as_str()).set(if on {
                1.0
            } else {
                0.0
            });
        }
    }
    for (r, n) in [Role::Super, Role::Leaf, Role::Member].into_iter().zip(o.roles) {
        gauge!("convoke_overlay_roles_known", "role" => r.as_str()).set(n as f64);
    }
    gauge!("convoke_overlay_policy_violations").set(o.violations as f64);
    gauge!("convoke_overlay_tenure_step").set(f64::from(o.shape.standing.tenure));
    for (kind, n) in [
        ("violation", s.violations),
        ("mismatch", s.mismatches),
        ("promotion", s.promotions),
        ("election", s.elections),
        ("step_down", s.step_downs),
        ("rewiring", s.rewirings),
        ("uplink_lost", s.uplinks_lost),
    ] {
        counter!("convoke_overlay_policy_events_total", "kind" => kind).absolute(n);
    }
    counter!("convoke_overlay_broadcasts_total", "outcome" => "delivered").absolute(o.plum.delivered);
    counter!("convoke_overlay_broadcasts_total", "outcome" => "duplicate").absolute(o.plum.duplicates);
    for (step, n) in [
        ("asked", s.connects),
        ("failed", s.connect_failures),
        ("relayed", s.relayed),
        ("refused", s.relay_refused),
        ("received", s.introduced),
    ] {
        counter!("convoke_overlay_introductions_total", "step" => step).absolute(n);
    }
}

fn describe() {
    for &(name, kind, help) in SERIES {
        match kind {
            "counter" => describe_counter!(name, help),
            "gauge" => describe_gauge!(name, help),
            _ => describe_histogram!(name, help),
        }
    }
}

fn role(inviter: bool) -> &'static str {
    if inviter { "inviter" } else { "invitee" }
}

fn phase(via: Via) -> &'static str {
    via.name()
}

/// The `mapping` and `ports` labels (and words for `convoke status`) of a
/// NAT classification.
pub(crate) fn nat_labels(nat: &crate::token::NatInfo) -> (&'static str, &'static str) {
    use crate::token::{NatMapping, PortAllocation};
    let m = match nat.mapping {
        NatMapping::None => "none",
        NatMapping::Independent => "independent",
        NatMapping::Dependent => "dependent",
    };
    let p = match nat.ports {
        None => "unknown",
        Some(PortAllocation::Preserving) => "preserving",
        Some(PortAllocation::Sequential) => "sequential",
        Some(PortAllocation::Random) => "random",
    };
    (m, p)
}

fn candidate(k: CandidateKind) -> &'static str {
    match k {
        CandidateKind::Host => "host",
        CandidateKind::Srflx => "srflx",
        CandidateKind::Prflx => "prflx",
        CandidateKind::Relay => "relay",
    }
}

/// The `reason` label of a failed attempt; `None` for our own decision
/// (the session ended, the app gave up), which is not a failure to connect.
fn fail_reason(r: FailReason) -> Option<&'static str> {
    match r {
        FailReason::Timeout => Some("timeout"),
        FailReason::Crossed => Some("crossed"),
        FailReason::Closed => None,
    }
}

fn close_reason(r: &CloseReason) -> &'static str {
    match r {
        CloseReason::Local => "local",
        CloseReason::Peer { code: 0, .. } => "peer",
        CloseReason::Peer { .. } => "peer_error",
        CloseReason::ProtocolViolation(_) => "protocol_violation",
        CloseReason::TimedOut => "timed_out",
        CloseReason::PathLost => "path_lost",
    }
}

/// Counts one engine event. `host` is read for the attempt's start time,
/// so call this before the event's attempt can be forgotten.
pub(crate) fn on_event(host: &Host, event: &HostEvent, now: Instant) {
    match event {
        HostEvent::Established { session, remote_kind, via, inviter, .. } => {
            counter!("convoke_connections_established_total",
                "role" => role(*inviter), "phase" => phase(*via), "candidate" => candidate(*remote_kind))
            .increment(1);
            if let Some(a) = host.endpoint().attempt_summary(*session) {
                histogram!("convoke_connect_duration_seconds", "role" => role(*inviter), "phase" => phase(*via))
                    .record(now.saturating_duration_since(a.started).as_secs_f64());
            }
        }
        HostEvent::Ice(IceEvent::Failed { reason, inviter, via, .. }) => {
            let Some(reason) = fail_reason(*reason) else { return };
            counter!("convoke_connections_failed_total",
                "role" => role(*inviter), "phase" => phase(*via), "reason" => reason)
            .increment(1);
        }
        HostEvent::Ice(IceEvent::RsvpNeeded { .. }) => counter!("convoke_rsvp_needed_total").increment(1),
        HostEvent::PathChanged { .. } => counter!("convoke_sessions_upgraded_total").increment(1),
        HostEvent::HandshakeFailed { session, .. } => {
            let (r, p) = host
                .endpoint()
                .attempt_summary(*session)
                .map_or(("unknown", "unknown"), |a| (role(a.inviter), phase(a.via)));
            counter!("convoke_connections_failed_total", "role" => r, "phase" => p, "reason" => "handshake")
                .increment(1);
        }
        HostEvent::Closed { reason, .. } => {
            counter!("convoke_sessions_closed_total", "reason" => close_reason(reason)).increment(1);
        }
        HostEvent::NatClassified(nat) => {
            gauge!("convoke_nat_info", "mapping" => "unknown", "ports" => "unknown").set(0.0);
            let (m, p) = nat_labels(nat);
            gauge!("convoke_nat_info", "mapping" => m, "ports" => p).set(1.0);
        }
        HostEvent::StunMapped { .. } => counter!("convoke_stun_queries_total", "outcome" => "mapped").increment(1),
        HostEvent::StunFailed { .. } => counter!("convoke_stun_queries_total", "outcome" => "failed").increment(1),
        _ => {}
    }
}

/// A token this node signed.
pub fn token_issued(kind: &'static str) {
    counter!("convoke_tokens_issued_total", "kind" => kind).increment(1);
}

/// A token taken (an invitation imported, an RSVP accepted).
pub fn token_accepted(kind: &'static str) {
    counter!("convoke_tokens_accepted_total", "kind" => kind).increment(1);
}

/// A token refused, with a short machine reason (`TokenError::code`).
pub fn token_refused(kind: &'static str, reason: &'static str) {
    counter!("convoke_tokens_refused_total", "kind" => kind, "reason" => reason).increment(1);
}

/// Counts the outcome of handing an RSVP to the engine, and passes it on.
pub fn counted<T>(r: Result<T, AcceptRsvpError>) -> Result<T, AcceptRsvpError> {
    match &r {
        Ok(_) => token_accepted("rsvp"),
        Err(AcceptRsvpError::Token(t)) => token_refused("rsvp", t.code()),
        Err(AcceptRsvpError::UnknownInvitation) => token_refused("rsvp", "unknown_invitation"),
        Err(AcceptRsvpError::Refused) => token_refused("rsvp", "limit"),
    }
    r
}

/// Datagram and byte counts of the node's sockets.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Io {
    pub bytes_in: u64,
    pub datagrams_in: u64,
    pub bytes_out: u64,
    pub datagrams_out: u64,
}

/// Publishes the engine's counters and the node's gauges (once a second).
pub(crate) fn sample(host: &Host, io: &Io) {
    let e = host.endpoint().stats();
    counter!("convoke_connection_attempts_total", "role" => "invitee").absolute(e.attempts_invitee);
    counter!("convoke_connection_attempts_total", "role" => "inviter").absolute(e.attempts_inviter);
    counter!("convoke_stun_requests_served_total").absolute(e.stun_served);
    counter!("convoke_probes_sent_total").absolute(e.probes_sent);
    counter!("convoke_probing_attempts_total", "outcome" => "started").absolute(e.probing_started);
    counter!("convoke_probing_attempts_total", "outcome" => "connected").absolute(e.probing_connected);
    counter!("convoke_pool_sockets_opened_total").absolute(e.pool_sockets_opened);
    counter!("convoke_datagrams_dropped_total", "reason" => "malformed").absolute(e.dropped_malformed);
    counter!("convoke_datagrams_dropped_total", "reason" => "unauthenticated").absolute(e.dropped_unauthenticated);
    counter!("convoke_datagrams_dropped_total", "reason" => "session").absolute(host.stats().dropped);
    counter!("convoke_tokens_refused_total", "kind" => "invitation", "reason" => "limit").absolute(e.refused_by_limit);
    counter!("convoke_udp_bytes_total", "direction" => "in").absolute(io.bytes_in);
    counter!("convoke_udp_bytes_total", "direction" => "out").absolute(io.bytes_out);
    counter!("convoke_udp_datagrams_total", "direction" => "in").absolute(io.datagrams_in);
    counter!("convoke_udp_datagrams_total", "direction" => "out").absolute(io.datagrams_out);
    let mut active = 0usize;
    for id in host.sessions() {
        active += 1;
        if let Some(rtt) = host.session(id).and_then(|s| s.rtt) {
            histogram!("convoke_session_rtt_seconds").record(rtt.as_secs_f64());
        }
    }
    gauge!("convoke_sessions_active").set(active as f64);
    gauge!("convoke_connection_attempts_pending").set(host.endpoint().attempt_count().saturating_sub(active) as f64);
    if let Some(r) = host.relay() {
        sample_relay(r);
    }
}

/// Publishes a relay's counters and its circuit count: a member that
/// relays (`HostConfig::relay`) and `convoke relay` alike.
pub fn sample_relay(relay: &crate::relay::Relay) {
    let s = relay.stats();
    gauge!("convoke_relay_circuits").set(relay.circuit_count() as f64);
    counter!("convoke_relay_allocations_total", "result" => "granted").absolute(s.allocated);
    counter!("convoke_relay_allocations_total", "result" => "refused").absolute(s.refused);
    counter!("convoke_relay_forwarded_bytes_total").absolute(s.forwarded_bytes);
    counter!("convoke_relay_forwarded_packets_total").absolute(s.forwarded_packets);
    for (reason, n) in [
        ("rate", s.dropped_rate),
        ("unbound", s.dropped_unbound),
        ("malformed", s.dropped_malformed),
        ("forged", s.dropped_forged),
        ("busy", s.dropped_busy),
    ] {
        counter!("convoke_relay_dropped_total", "reason" => reason).absolute(n);
    }
}
