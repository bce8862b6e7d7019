//! `convoke up`, `convoke broadcast`, and the overlay parts of `convoke
//! status`: a long-lived overlay member, and how to talk to it.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use convoke_node::identity::PeerId;
use convoke_node::relay::{RelayConfig, RelayLimits};
use convoke_node::runtime::control::{self, Request};
use convoke_node::runtime::endpoint::EndpointConfig;
use convoke_node::runtime::network::{MemberConfig, MemberEvent, Network};
use convoke_node::runtime::state::{Loaded, StateFile};
use convoke_node::runtime::{telemetry, unix_now};
use convoke_node::token::Invitation;
use serde_json::{Value, json};

use crate::session_cmd::{NodeArgs, node_config, runtime};
use crate::util::{printable, read_token_arg};
use crate::{Ctx, Failure};

/// `convoke up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Join the network of this invitation (any member's; the text, or -
    /// for standard input). Without it, start a new network. A service
    /// passes it in CONVOKE_JOIN (empty: none).
    #[arg(long, value_name = "TOKEN", env = "CONVOKE_JOIN", hide_env_values = true)]
    join: Option<String>,
    #[command(flatten)]
    node: NodeArgs,
    /// Write this member's invitation to FILE: anyone with it can join the
    /// network (it is reusable, and valid for `--card-lifetime`).
    #[arg(long, value_name = "FILE")]
    invite_out: Option<PathBuf>,
    /// How long this member's invitation stays valid.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = crate::util::parse_duration)]
    card_lifetime: u64,
    /// Invitees must send an RSVP before this member answers (for networks
    /// that let no first contact in); members relay it for introductions.
    #[arg(long)]
    rsvp_required: bool,
    /// One membership round in milliseconds (shuffle and ping period;
    /// suspicion after 2.5 rounds, failure after 4).
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    round_ms: u64,
    /// Heartbeat in milliseconds on the broadcast tree's links (0: none).
    /// A neighbour whose ping goes unanswered for three beats is taken for
    /// dead and replaced at once, and the tree is repaired around it,
    /// instead of after 4 rounds of silence.
    #[arg(long, value_name = "MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    heartbeat_ms: u64,
    /// The network's topology policy: which links members keep and how
    /// broadcasts route. mesh: random links (5 each); spanning-tree: at
    /// most 4 links each, so the broadcast tree's degree is bounded;
    /// hierarchical: super-peers linked together, each leaf linked to 2
    /// super-peers (at most 32 leaves each); star: hubs linked together,
    /// each leaf linked to one hub. Every member of a network must run the
    /// same: members refuse links with members of another policy. Config
    /// key `topology`.
    #[arg(long, value_name = "POLICY", value_parser = ["mesh", "spanning-tree", "hierarchical", "star"])]
    topology: Option<String>,
    /// Whether this member serves as a super-peer (a hub, under a star):
    /// auto (the default) elects it under a hierarchy once it finds itself
    /// reachable (a public address, a mapped port, or two peers at
    /// different addresses that reached its card unasked), and steps it
    /// down when it moves to another network until the new one qualifies;
    /// always (what `--super-peer` alone means) from the start, and under
    /// a star it is a hub; never. A hierarchical leaf that finds no
    /// super-peer for 10 rounds (60 while joining or after a move) becomes
    /// one whatever this says. Config key `super_peer`.
    #[arg(long, value_name = "WHEN", num_args = 0..=1, default_missing_value = "always",
          value_parser = ["auto", "always", "never"])]
    super_peer: Option<String>,
    /// Most leaves this member carries as a super-peer or hub, below the
    /// policy's bound (32 under a hierarchy, 256 under a star): its own
    /// capacity, for a small machine or a slow uplink. Leaves it turns
    /// away link to other super-peers. 0 keeps an `auto` member from being
    /// elected. Config key `max_leaves`.
    #[arg(long, value_name = "N")]
    max_leaves: Option<usize>,
    /// Relay for peers that have no direct path, on this member's port:
    /// limited (what `--relay` alone means: 16 circuits, 4 a peer, 2
    /// minutes, 128 KiB and 64 KiB/s each, 1 MiB/s in all), unlimited (for
    /// a member serving its own network: no cap on bytes, rate or lifetime,
    /// 10,000 circuits; unbound circuits still end after 30 s, idle ones
    /// after 5 minutes) or off (the default). The sessions
    /// stay end-to-end encrypted. Config key `relay`.
    #[arg(long, value_name = "CAPS", num_args = 0..=1, default_missing_value = "limited",
          value_parser = ["off", "limited", "unlimited"])]
    relay: Option<String>,
    /// Save the cards of the members this one knows in DIR (one file per
    /// identity, mode 0600), and on start rejoin the network through them:
    /// a restarted member needs no new invitation. Default:
    /// $XDG_DATA_HOME/convoke/state.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Neither read nor save the membership.
    #[arg(long, conflicts_with = "state")]
    no_state: bool,
}

/// `convoke broadcast`.
#[derive(Args, Debug)]
pub struct BroadcastArgs {
    /// The message (UTF-8 text).
    message: String,
    /// The member's control socket (default: the running member found).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

fn short(p: &PeerId) -> String {
    let s = p.to_string();
    s[s.len().saturating_sub(8)..].to_string()
}

/// `convoke up`.
pub fn up(ctx: &Ctx, mut a: UpArgs) -> Result<(), Failure> {
    // An empty CONVOKE_JOIN (a service's environment file left blank) is no
    // invitation.
    a.join = a.join.filter(|t| !t.trim().is_empty());
    let join = match &a.join {
        Some(t) => {
            let text = read_token_arg(t)?;
            Some(Invitation::parse(&text, unix_now()).map_err(|e| format!("this invitation cannot be used: {e}")))
        }
        None => None,
    };
    let (identity, _) = ctx.identity()?;
    let quiet = ctx.quiet || ctx.json;
    let state = if a.no_state {
        None
    } else {
        let dir = a.state.clone().or_else(|| ctx.file.as_ref().and_then(|f| f.state.clone()));
        match dir.or_else(StateFile::default_dir) {
            Some(dir) => Some(StateFile::new(&dir, identity.peer_id())),
            None => {
                eprintln!("convoke: no data directory on this system: the membership is not saved (give --state DIR)");
                None
            }
        }
    };
    let saved = match &state {
        Some(s) => saved_cards(s, join.is_some(), quiet),
        None => Loaded::default(),
    };
    // A service keeps its CONVOKE_JOIN for ever: once that invitation has
    // expired, the saved cards carry on (without any, it is an error).
    let join = match join {
        Some(Err(e)) if !saved.cards.is_empty() => {
            eprintln!("convoke: {e}; rejoining through the saved cards instead");
            None
        }
        Some(r) => Some(r?),
        None => None,
    };
    let mut config = node_config(ctx, &a.node)?;
    let metrics = a.node.metrics.or(ctx.file.as_ref().and_then(|f| f.metrics));
    config.metrics = metrics.is_some();
    let relay = a.relay.clone().or_else(|| ctx.file.as_ref().and_then(|f| f.relay.clone()));
    config.host.relay = match relay.as_deref() {
        None | Some("off") => None,
        Some("limited") => Some(RelayConfig::default()),
        Some("unlimited") => Some(RelayConfig { limits: RelayLimits::unlimited(), allow: None }),
        Some(other) => {
            return Err(
                format!("the config file's relay = \"{other}\": use \"off\", \"limited\" or \"unlimited\"").into()
            );
        }
    };
    if let Some(r) = relay.as_deref().filter(|r| *r != "off")
        && !quiet
    {
        eprintln!("convoke: relaying for other peers on this member's port ({r})");
    }
    let round = a.round_ms;
    let mut mc = MemberConfig {
        join,
        rejoin: saved.cards,
        own_cards: saved.own,
        card_lifetime: a.card_lifetime,
        rsvp_required: a.rsvp_required,
        ..Default::default()
    };
    mc.overlay.round = round;
    mc.overlay.suspect_after = round * 5 / 2;
    mc.overlay.fail_after = round * 4;
    mc.overlay.heartbeat = a.heartbeat_ms;
    let topology = a.topology.clone().or_else(|| ctx.file.as_ref().and_then(|f| f.topology.clone()));
    if let Some(t) = topology {
        mc.overlay.topology = convoke_overlay::Topology::parse(&t).map_err(|e| format!("--topology: {e}"))?;
    }
    let file_max_leaves = ctx.file.as_ref().and_then(|f| f.max_leaves);
    if let Some(n) = a.max_leaves.or(file_max_leaves) {
        let from = if a.max_leaves.is_some() { "--max-leaves" } else { "the config file's max_leaves" };
        let own = mc.overlay.topology.own_max_leaves(n).map_err(|e| format!("{from}: {e}"))?;
        mc.overlay.max_leaves = Some(own);
    }
    if let Some(w) = &a.super_peer {
        mc.super_peer = w.parse().map_err(|e| format!("--super-peer: {e}"))?;
    } else if let Some(w) = ctx.file.as_ref().and_then(|f| f.super_peer) {
        mc.super_peer = w;
    }
    mc.overlay.announce_views = round * 5;
    let me = identity.peer_id();
    let json_out = ctx.json;
    let quiet = ctx.quiet;
    let invite_out = a.invite_out.clone();
    let mut cards = 0u32;
    // Our cards: to the file, and said (the first one as the member's start).
    let mut card = |t: &str| -> Result<Value, Failure> {
        if let Some(p) = &invite_out {
            std::fs::write(p, format!("{t}\n")).map_err(|e| format!("writing {}: {e}", p.display()))?;
        }
        cards += 1;
        if !json_out && !quiet {
            let sentence = if cards == 1 {
                format!("member {me} is up. Its invitation (reusable; anyone with it can join):")
            } else {
                "a new invitation for this member, with what it learned about its addresses \
                 (the earlier ones work until they expire):"
                    .to_owned()
            };
            show_token(&sentence, t);
        }
        Ok(json!({ "event": "invitation", "peer_id": me.to_string(), "token": t }))
    };
    let rt = runtime()?;
    rt.block_on(async {
        if let Some(addr) = metrics {
            telemetry::install(addr)?;
        }
        let network = Network::start_with_state(identity, EndpointConfig { node: config }, mc, state).await?;
        if !json_out && !quiet && let Some(p) = network.control_path() {
            eprintln!("convoke: control socket {} (`convoke broadcast`, `convoke status --topology`)", p.display());
        }
        let first = card(&network.card().token().encode_compact())?;
        if json_out {
            eprintln!("{first}");
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut leaving = false;
        // One listener for the whole run: a Ctrl-C while an event is being
        // said is not lost.
        let interrupt = tokio::signal::ctrl_c();
        tokio::pin!(interrupt);
        loop {
            let e = tokio::select! {
                e = network.next_event() => e,
                _ = &mut interrupt, if !leaving => { leaving = true; network.leave(); continue }
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } }, if !leaving => {
                    leaving = true;
                    network.leave();
                    continue
                }
            };
            let Some(e) = e else { break };
            let (text, v): (Option<String>, Value) = match &e {
                MemberEvent::Invitation(t) => (None, card(t)?),
                MemberEvent::Message { origin, seq, hops, data } => {
                    // The subscription: one line per message on standard output.
                    let mut out = std::io::stdout().lock();
                    let line = if json_out {
                        json!({ "event": "message", "from": origin.to_string(), "seq": seq, "hops": hops, "data": String::from_utf8_lossy(data) }).to_string()
                    } else {
                        format!("{}: {}", short(origin), printable(&String::from_utf8_lossy(data)))
                    };
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                    continue;
                }
                MemberEvent::RsvpForContact(t) => {
                    if !json_out && !quiet {
                        show_token(
                            "the member you joined wants a reply first; send it this RSVP (they run `convoke rsvp TOKEN`):",
                            t,
                        );
                    }
                    (None, json!({ "event": "rsvp", "token": t }))
                }
                other => words(other),
            };
            if json_out {
                eprintln!("{v}");
            } else if !quiet && let Some(t) = text {
                eprintln!("convoke: {}", printable(&t));
            }
        }
        match network.failure() {
            Some(why) => Err(Failure::from(format!("the member's node stopped: {why}"))),
            None => Ok(()),
        }
    })
}

/// What a member event says, in words and as a JSON event.
fn words(e: &MemberEvent) -> (Option<String>, Value) {
    match e {
        MemberEvent::Joined(p) => (
            Some(format!("connected to {p} with its invitation; joining its network")),
            json!({ "event": "joined", "contact": p.to_string() }),
        ),
        MemberEvent::Connecting { peer, route } => (
            Some(format!("introduced to {}; connecting", short(peer))),
            json!({ "event": "connecting", "peer": peer.to_string(), "route": route.iter().map(|p| p.to_string()).collect::<Vec<_>>() }),
        ),
        MemberEvent::RsvpRelayed { peer, route } => (
            Some(format!("{} wants an RSVP: sent through {} introducer(s)", short(peer), route.len() - 1)),
            json!({ "event": "rsvp_relayed", "peer": peer.to_string(), "hops": route.len() }),
        ),
        MemberEvent::Introduced { from, result } => (
            Some(match result {
                Ok(()) => format!("{}'s RSVP arrived through introducers; both sides punch at once", short(from)),
                Err(e) => format!("refused an RSVP relayed from {}: {e}", short(from)),
            }),
            json!({ "event": "introduced", "from": from.to_string(), "ok": result.is_ok(), "error": result.as_ref().err() }),
        ),
        MemberEvent::NeighborUp(p) => {
            (Some(format!("neighbour up: {p}")), json!({ "event": "neighbor_up", "peer": p.to_string() }))
        }
        MemberEvent::NeighborDown(p, r) => (
            Some(format!("neighbour down: {p} ({})", r.as_str())),
            json!({ "event": "neighbor_down", "peer": p.to_string(), "reason": r.as_str() }),
        ),
        MemberEvent::Suspected(p) => {
            (Some(format!("neighbour silent, suspected: {p}")), json!({ "event": "suspected", "peer": p.to_string() }))
        }
        MemberEvent::ConnectFailed(p, why) => (
            Some(format!("could not link to {}: {why}", short(p))),
            json!({ "event": "connect_failed", "peer": p.to_string(), "error": why.to_string() }),
        ),
        MemberEvent::Linked { peer, via, dialed } => (
            None,
            json!({ "event": "linked", "peer": peer.to_string(), "via": format!("{via:?}").to_lowercase(), "dialed": format!("{dialed:?}") }),
        ),
        MemberEvent::Misbehaved(p, why) => (
            Some(format!("closed the session with {}: {why}", short(p))),
            json!({ "event": "misbehaved", "peer": p.to_string(), "error": why }),
        ),
        MemberEvent::PolicyMismatch { peer, policy } => (
            Some(format!(
                "{} runs the {} topology, not ours: no link with it (one network runs one policy)",
                short(peer),
                policy.as_str()
            )),
            json!({ "event": "policy_mismatch", "peer": peer.to_string(), "policy": policy.as_str() }),
        ),
        MemberEvent::RoleChanged(role) => (
            Some(format!("now a {} (no super-peer had room)", role.as_str())),
            json!({ "event": "role_changed", "role": role.as_str() }),
        ),
        MemberEvent::Violation(v) => {
            (Some(format!("topology invariant broken: {v}")), json!({ "event": "topology_violation", "violation": v }))
        }
        MemberEvent::MemberJoined { peer, hops } => (
            Some(format!("member joined the network: {peer}")),
            json!({ "event": "member_joined", "peer": peer.to_string(), "hops": hops }),
        ),
        // Said by the caller (they print tokens or data).
        MemberEvent::Invitation(_) | MemberEvent::RsvpForContact(_) | MemberEvent::Message { .. } => {
            (None, json!({ "event": "other" }))
        }
    }
}

/// The still-valid cards a previous run saved, saying on standard error
/// what was found (unless `quiet`): a member that had a network and has no
/// valid card left is told to ask for an invitation.
fn saved_cards(state: &StateFile, joining: bool, quiet: bool) -> Loaded {
    let say = |s: String| {
        if !quiet {
            eprintln!("convoke: {s}");
        }
    };
    match state.load(unix_now()) {
        Ok(None) => Loaded::default(),
        Ok(Some(l)) if l.cards.is_empty() => {
            if !joining {
                say(format!(
                    "none of the {} cards saved in {} is valid any more (expired, or not signed right): \
                     this member starts a network of its own. To rejoin yours, ask a member for an \
                     invitation and run `convoke up --join TOKEN`.",
                    l.dropped,
                    state.path().display()
                ));
            }
            l
        }
        Ok(Some(l)) => {
            let also = if joining { " if the invitation's member does not answer" } else { "" };
            say(format!(
                "rejoining through {} saved card(s){also} ({}; {} dropped: expired, ours, or unusable)",
                l.cards.len(),
                state.path().display(),
                l.dropped
            ));
            l
        }
        Err(e) => {
            say(format!("ignoring the saved membership: {e}"));
            Loaded::default()
        }
    }
}

/// A sentence and a token on standard error, the token on a line of its
/// own between blank lines so that it can be copied.
fn show_token(sentence: &str, token: &str) {
    eprintln!("convoke: {}\n\n{}\n", printable(sentence), printable(token));
}

/// `convoke broadcast`.
pub fn broadcast(ctx: &Ctx, a: BroadcastArgs) -> Result<(), Failure> {
    let sockets = control::find_sockets(a.control.as_deref());
    let rt = runtime()?;
    let max = convoke_node::member::MAX_PAYLOAD;
    if a.message.len() > max {
        return Err(format!("a broadcast carries at most {max} bytes; this message has {}", a.message.len()).into());
    }
    let req = Request::Broadcast { data: a.message.clone() };
    for s in &sockets {
        let Ok(answer) = rt.block_on(control::request(s, &req)) else { continue };
        if answer["ok"] == Value::Bool(true) {
            if ctx.json {
                println!("{}", json!({ "ok": true, "control": s }));
            }
            return Ok(());
        }
        if answer["code"] != "not_a_member" {
            return Err(format!("the member refused: {}", answer["error"].as_str().unwrap_or("?")).into());
        }
    }
    Err("no overlay member is running here (start one with `convoke up`)".into())
}
