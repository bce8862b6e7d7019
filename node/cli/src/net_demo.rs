//! `convoke demo`: N real nodes on loopback in one process form a network.
//!
//! Each newcomer gets one invitation, from a member picked at random; the
//! overlay does the rest: the member it joined sends random walks through
//! the network, the members they reach are handed the newcomer's signed
//! invitation and connect to it (introductions; with `--rsvp`, their RSVPs
//! travel back through the members in between). Then one broadcast floods
//! the network and prunes itself into a spanning tree, and a second one
//! travels that tree alone. The demo prints each step and ends by itself;
//! exit status 0 only if both broadcasts reached every node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use convoke_node::identity::{Identity, PeerId};
use convoke_node::runtime::endpoint::EndpointConfig;
use convoke_node::runtime::network::{MemberConfig, MemberEvent, Network, Snapshot, SuperPeer};
use convoke_node::runtime::{os_rng, unix_now};
use convoke_node::token::Invitation;
use convoke_overlay::{Role, Topology, topology};
use rand_core::Rng;
use tokio::sync::mpsc;

use crate::demo_common::DemoArgs;
use crate::session_cmd::runtime;
use crate::{Ctx, Failure};

/// A member of the demo's network: the library's [`Network`], its events
/// forwarded (tagged with its index) until it has left.
struct Running {
    member: Arc<Network>,
    forward: tokio::task::JoinHandle<()>,
}

/// Whether node `i` can serve (super-peer or hub) under `policy`.
fn serves(policy: Topology, i: usize) -> bool {
    match policy {
        Topology::Mesh | Topology::SpanningTree { .. } => false,
        Topology::Hierarchical { .. } => i.is_multiple_of(4),
        Topology::Star { .. } => i.is_multiple_of(6),
    }
}

async fn start(
    i: usize,
    identity: Identity,
    join: Option<Invitation>,
    rsvp: bool,
    policy: Topology,
    events: mpsc::UnboundedSender<(usize, MemberEvent)>,
) -> Result<Running, String> {
    let mut cfg = MemberConfig { join, rsvp_required: rsvp, card_lifetime: 3600, ..MemberConfig::default() };
    // A quick demo: half-second rounds, views announced every 2 s.
    cfg.overlay.round = 500;
    cfg.overlay.suspect_after = 1250;
    cfg.overlay.fail_after = 2000;
    cfg.overlay.announce_views = 2000;
    cfg.overlay.topology = policy;
    // On loopback every member sees no NAT: who serves is the demo's say.
    cfg.super_peer = if serves(policy, i) { SuperPeer::Always } else { SuperPeer::Never };
    let member =
        Arc::new(Network::start(identity, EndpointConfig::loopback(), cfg).await.map_err(|e| format!("node{i}: {e}"))?);
    // Its first card is the start's; later ones come as events.
    let _ = events.send((i, MemberEvent::Invitation(member.card().token().encode_compact())));
    let m = member.clone();
    let forward = tokio::spawn(async move {
        while let Some(e) = m.next_event().await {
            if events.send((i, e)).is_err() {
                break;
            }
        }
    });
    Ok(Running { member, forward })
}

struct Show {
    names: BTreeMap<PeerId, String>,
    started: Instant,
    tokens: BTreeMap<usize, String>,
    joined: BTreeSet<usize>,
    got: BTreeMap<(usize, usize), u16>,
    last_change: Instant,
    introductions: usize,
    relayed: usize,
    links: BTreeSet<(usize, usize)>,
    index: BTreeMap<PeerId, usize>,
}

impl Show {
    fn name(&self, p: &PeerId) -> String {
        self.names.get(p).cloned().unwrap_or_else(|| p.to_string())
    }

    fn say(&self, who: usize, s: String) {
        println!("{:>6.2}s  node{who}: {s}", self.started.elapsed().as_secs_f64());
    }

    fn route(&self, r: &[PeerId]) -> String {
        r[..r.len().saturating_sub(1)].iter().map(|p| self.name(p)).collect::<Vec<_>>().join(" → ")
    }

    fn on(&mut self, i: usize, e: MemberEvent, rsvp_to: &dyn Fn(usize, String)) {
        match e {
            MemberEvent::Invitation(t) => {
                self.tokens.insert(i, t);
            }
            MemberEvent::Joined(p) => {
                self.joined.insert(i);
                self.last_change = Instant::now();
                self.say(i, format!("connected to {} with its invitation; asks to join", self.name(&p)));
            }
            MemberEvent::RsvpForContact(t) => {
                self.say(
                    i,
                    format!("its contact wants a reply first: the RSVP ({} chars) goes back out of band", t.len()),
                );
                rsvp_to(i, t);
            }
            MemberEvent::Connecting { peer, route } => {
                self.introductions += 1;
                let via =
                    if route.len() > 1 { format!(" (introduced via {})", self.route(&route)) } else { String::new() };
                self.say(i, format!("got {}'s invitation from the network; connecting{via}", self.name(&peer)));
            }
            MemberEvent::RsvpRelayed { peer, route } => {
                self.relayed += 1;
                let via = if route.len() > 1 { format!("through {}", self.route(&route)) } else { "directly".into() };
                self.say(i, format!("{} wants an RSVP: sends it {via}", self.name(&peer)));
            }
            MemberEvent::Introduced { from, result } => match result {
                Ok(()) => {
                    self.say(i, format!("{}'s RSVP arrived through introducers; both punch at once", self.name(&from)))
                }
                Err(e) => self.say(i, format!("refused {}'s relayed RSVP: {e}", self.name(&from))),
            },
            MemberEvent::NeighborUp(p) => {
                self.last_change = Instant::now();
                let j = self.index.get(&p).copied().unwrap_or(usize::MAX);
                if self.links.insert((i.min(j), i.max(j))) {
                    self.say(i, format!("── {} linked (active views)", self.name(&p)));
                }
            }
            MemberEvent::NeighborDown(p, r) => {
                self.last_change = Instant::now();
                let j = self.index.get(&p).copied().unwrap_or(usize::MAX);
                if self.links.remove(&(i.min(j), i.max(j))) {
                    self.say(i, format!("─╳ {} unlinked ({})", self.name(&p), r.as_str()));
                }
            }
            MemberEvent::ConnectFailed(p, why) => self.say(i, format!("could not link to {}: {why}", self.name(&p))),
            MemberEvent::Suspected(p) => self.say(i, format!("suspects {} (silent)", self.name(&p))),
            MemberEvent::Misbehaved(p, why) => self.say(i, format!("closed {}'s session: {why}", self.name(&p))),
            MemberEvent::PolicyMismatch { peer, policy } => {
                self.say(i, format!("refused {}: it runs the {} topology", self.name(&peer), policy.as_str()))
            }
            MemberEvent::RoleChanged(role) => {
                self.say(i, format!("is now a {} (no super-peer had room)", role.as_str()))
            }
            MemberEvent::Violation(v) => self.say(i, format!("topology invariant broken: {v}")),
            MemberEvent::MemberJoined { .. } | MemberEvent::Linked { .. } => {}
            MemberEvent::Message { hops, data, .. } => {
                // The demo's broadcasts say which they are: "hello #K ...".
                let text = String::from_utf8_lossy(&data);
                if let Some(k) = text.strip_prefix("hello #").and_then(|t| t.split(' ').next()?.parse().ok()) {
                    self.got.insert((k, i), hops);
                }
            }
        }
    }
}

/// `convoke demo [--nodes N] [--rsvp]`.
pub fn run(_ctx: &Ctx, a: DemoArgs) -> Result<(), Failure> {
    let DemoArgs { nodes, rsvp, topology: policy_name, .. } = a;
    let policy = Topology::parse(&policy_name).map_err(|e| Failure { message: e, status: 2 })?;
    let n = usize::from(nodes);
    let ids: Vec<Identity> = (0..n).map(|_| Identity::generate(&mut os_rng())).collect();
    let names: BTreeMap<PeerId, String> =
        ids.iter().enumerate().map(|(i, id)| (id.peer_id(), format!("node{i}"))).collect();
    let index = ids.iter().enumerate().map(|(i, id)| (id.peer_id(), i)).collect();
    println!("Convoke demo: {n} nodes on this machine (loopback) form a network; each gets one invitation.");
    if rsvp {
        println!("Every member wants an RSVP before it answers: members relay them for each other.");
    }
    match policy {
        Topology::Mesh => {}
        Topology::SpanningTree { max_degree } => {
            println!("Topology: spanning tree, at most {max_degree} links a member.")
        }
        Topology::Hierarchical { core, uplinks, leaves } => println!(
            "Topology: hierarchical. Every fourth node can serve as a super-peer; super-peers keep {core} links to each \
             other and at most {leaves} leaves; each leaf links to {uplinks} super-peers."
        ),
        Topology::Star { .. } => {
            println!(
                "Topology: star. Every sixth node is a hub; each leaf links to one hub, and joins with a hub's invitation."
            )
        }
    }
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut show = Show {
        names,
        started: Instant::now(),
        tokens: BTreeMap::new(),
        joined: BTreeSet::from([0]),
        got: BTreeMap::new(),
        last_change: Instant::now(),
        introductions: 0,
        relayed: 0,
        links: BTreeSet::new(),
        index,
    };
    let mut running: Vec<Running> = Vec::new();
    let rt = runtime()?;
    // A random earlier node's invitation (a hub's, in a star).
    let contacts: Vec<usize> = (0..n)
        .map(|i| {
            let pool: Vec<usize> =
                (0..i.max(1)).filter(|&c| !matches!(policy, Topology::Star { .. }) || serves(policy, c)).collect();
            pool[(os_rng().next_u64() % pool.len() as u64) as usize]
        })
        .collect();
    let outcome = rt.block_on(async {
        // Carries a newcomer's first RSVP to its contact, as a person would.
        let members: Arc<Mutex<Vec<Arc<Network>>>> = Arc::default();
        let all = members.clone();
        let contacts_of = contacts.clone();
        let rsvp_to = move |i: usize, t: String| {
            if let Some(c) = all.lock().ok().and_then(|c| c.get(contacts_of[i]).cloned()) {
                let _ = c.accept_rsvp(&t);
            }
        };
        let mut wait = async |show: &mut Show, until: &dyn Fn(&Show) -> bool, limit: Duration| -> bool {
            let end = tokio::time::Instant::now() + limit;
            while !until(show) {
                match tokio::time::timeout_at(end, ev_rx.recv()).await {
                    Ok(Some((i, e))) => show.on(i, e, &rsvp_to),
                    Ok(None) | Err(_) => return until(show),
                }
            }
            true
        };
        for i in 0..n {
            let join = if i == 0 {
                None
            } else {
                let c = contacts[i];
                let text = show.tokens.get(&c).cloned().ok_or(format!("node{c} has no invitation"))?;
                let inv = Invitation::parse(&text, unix_now()).map_err(|e| e.to_string())?;
                if i == 1 {
                    println!("\nnode0 started the network. Its invitation ({} characters):\n\n{text}\n", text.len());
                }
                println!(
                    "{:>6.2}s  node{i}: starts, and joins with node{c}'s invitation",
                    show.started.elapsed().as_secs_f64()
                );
                Some(inv)
            };
            let r = start(i, ids[i].clone(), join, rsvp, policy, ev_tx.clone()).await?;
            if let Ok(mut c) = members.lock() {
                c.push(r.member.clone());
            }
            running.push(r);
            let ok = wait(
                &mut show,
                &|s: &Show| s.tokens.contains_key(&i) && s.joined.contains(&i),
                Duration::from_secs(20),
            )
            .await;
            if !ok {
                return Err(format!("node{i} did not join within 20 s"));
            }
        }
        // Let introductions settle: no view change for a second, every link
        // held at both ends, and the policy's invariants holding (at most
        // 15 s). Quiet alone is not settled: a member spares the newcomers
        // that joined through it for two rounds (a second here) and trims
        // its view over the policy's bound at its next round, so a
        // spanning tree's member can be quiet for a second with 7 links
        // before it drops to 4. The links are read from the members' views,
        // not pieced together from their events, which arrive from both
        // ends in any order.
        let settle = Instant::now();
        let mut net = Views::read(&running, &show.index);
        let mut settled = false;
        while !settled && settle.elapsed() < Duration::from_secs(15) {
            // Reads events for 300 ms whatever they are: the loop's pace.
            wait(&mut show, &|_| false, Duration::from_millis(300)).await;
            let calm = show.last_change.elapsed() > Duration::from_secs(1);
            net = Views::read(&running, &show.index);
            settled = calm && net.half_open == 0 && net.check(policy).is_none_or(|c| c.is_ok());
        }
        if !settled {
            println!("\nThe network did not settle within 15 s; as it stands:");
        }
        println!(
            "\nThe network ({} links; {} introductions, {} relayed RSVPs):",
            net.links.len(),
            show.introductions,
            show.relayed
        );
        for (i, s) in net.views.iter().enumerate() {
            let mut peers: Vec<String> = s.active.iter().map(|p| show.name(p)).collect();
            peers.sort();
            let role = if s.role == Role::Member { String::new() } else { format!(" ({})", s.role.as_str()) };
            println!("  node{i}{role} ── {}", peers.join(", "));
            for v in &s.violations {
                println!("    invariant broken at node{i}: {v}");
            }
        }
        if net.half_open > 0 {
            println!("  links held at one end only (still being made or dropped): {}", net.half_open);
        }
        let g = topology::graph_of(0..n, net.links.iter().copied());
        println!("  connected: {}", if topology::is_connected(&g) { "yes" } else { "NO" });
        let mut shape_ok = true;
        if let Some(check) = net.check(policy) {
            match &check {
                Ok(()) => println!("  the {policy_name} policy's invariants: hold"),
                Err(v) => println!("  the {policy_name} policy's invariants: BROKEN ({v})"),
            }
            shape_ok = check.is_ok();
        }
        // Two broadcasts from the last node: the first floods and prunes
        // itself into a tree, the second travels the tree alone.
        let mut all = true;
        for seq in 1..=2usize {
            let origin = n - 1;
            println!("\nBroadcast {seq} from node{origin}:");
            running[origin]
                .member
                .broadcast(format!("hello #{seq} from node{origin}").as_bytes())
                .map_err(|e| format!("node{origin}: {e}"))?;
            let reached = |s: &Show| (0..n).filter(|&i| i != origin).all(|i| s.got.contains_key(&(seq, i)));
            let ok = wait(&mut show, &reached, Duration::from_secs(10)).await;
            let mut by_hops: BTreeMap<u16, Vec<String>> = BTreeMap::new();
            for i in (0..n).filter(|&i| i != origin) {
                if let Some(&h) = show.got.get(&(seq, i)) {
                    by_hops.entry(h).or_default().push(format!("node{i}"));
                }
            }
            for (h, who) in &by_hops {
                println!("  {h} hop{}: {}", if *h == 1 { " " } else { "s" }, who.join(", "));
            }
            let count = by_hops.values().map(Vec::len).sum::<usize>();
            println!("  reached {count} of {} nodes{}", n - 1, if ok { "" } else { " (timed out)" });
            all &= ok;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut tree = BTreeSet::new();
        for (i, r) in running.iter().enumerate() {
            for p in &r.member.snapshot().eager {
                if let Some(&j) = show.index.get(p) {
                    tree.insert((i.min(j), i.max(j)));
                }
            }
        }
        let t = topology::graph_of(0..n, tree.iter().copied());
        println!(
            "\nThe broadcast tree (eager links; the others only carry announcements): {}",
            tree.iter().map(|(a, b)| format!("node{a}─node{b}")).collect::<Vec<_>>().join("  ")
        );
        println!("  a spanning tree: {}", if topology::is_tree(&t) { "yes" } else { "not yet" });
        Ok::<bool, String>(all && shape_ok)
    });
    // Every member leaves; their events end when they have.
    rt.block_on(async {
        for r in &running {
            r.member.leave();
        }
        for (i, r) in running.into_iter().enumerate() {
            if tokio::time::timeout(Duration::from_secs(30), r.forward).await.is_err() {
                eprintln!("convoke: node{i} did not stop");
            } else if let Some(e) = r.member.failure() {
                eprintln!("convoke: node{i}: {e}");
            }
        }
    });
    let all = outcome?;
    println!(
        "\n{} in {:.1} s.",
        if all {
            "Both broadcasts reached every node"
        } else {
            "A broadcast did not reach every node, or the topology's invariants broke"
        },
        show.started.elapsed().as_secs_f64()
    );
    if all {
        println!("Next: `convoke up` on one machine, `convoke up --join TOKEN` on others, `convoke broadcast hello`.");
        Ok(())
    } else {
        Err(Failure { message: "the demo failed".into(), status: 1 })
    }
}

/// The network as the members' own views show it at one moment.
struct Views {
    /// Each member's view and role.
    views: Vec<Snapshot>,
    /// Links either end holds.
    links: BTreeSet<(usize, usize)>,
    /// Links only one end holds.
    half_open: usize,
}

impl Views {
    fn read(running: &[Running], index: &BTreeMap<PeerId, usize>) -> Views {
        let views: Vec<Snapshot> = running.iter().map(|r| r.member.snapshot()).collect();
        let mut held: BTreeMap<(usize, usize), u8> = BTreeMap::new();
        for (i, s) in views.iter().enumerate() {
            for j in s.active.iter().filter_map(|p| index.get(p).copied()) {
                *held.entry((i.min(j), i.max(j))).or_default() += 1;
            }
        }
        let half_open = held.values().filter(|&&ends| ends < 2).count();
        Views { views, links: held.into_keys().collect(), half_open }
    }

    /// The policy's invariant check over these links, with each node's
    /// role (`None` for the mesh, which has none beyond connectivity).
    fn check(&self, policy: Topology) -> Option<Result<(), String>> {
        if policy == Topology::Mesh {
            return None;
        }
        let g = topology::graph_of(0..self.views.len(), self.links.iter().copied());
        Some(
            convoke_overlay::check_shape(policy, &g, |&i| self.views.get(i).map(|s| s.role)).map_err(|v| v.to_string()),
        )
    }
}
