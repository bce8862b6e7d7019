//! `convoke demo`: a network forms on loopback in one process (see
//! [`crate::net_demo`]); `convoke demo --pair`: two real nodes, one
//! invites, the other joins with the token alone (or, with `--rsvp`,
//! through the RSVP path), they greet each other over the encrypted
//! session, and the demo reports each step. Both end by themselves; exit
//! status 0 only if every message arrived intact.

use std::time::{Duration, Instant};

use convoke_node::host::HostEvent;
use convoke_node::ice::{AttemptId, Event as IceEvent, Via};
use convoke_node::identity::Identity;
use convoke_node::runtime::node::{App, Node, NodeCtx};
use convoke_node::runtime::{os_rng, unix_now};
use convoke_node::token::{ConnectionMode, InitialMode, Invitation, InvitationParams};
use tokio::sync::mpsc;

use crate::demo_common::{DemoArgs, loopback};
use crate::session_cmd::{runtime, seed};
use crate::{Ctx, Failure};

enum Note {
    Say(&'static str, String),
    Rsvp(String),
}

struct Peer {
    name: &'static str,
    greeting: String,
    invitation: Option<Invitation>,
    join: Option<Invitation>,
    notes: mpsc::UnboundedSender<Note>,
    rsvps: Option<mpsc::UnboundedReceiver<String>>,
    session: Option<AttemptId>,
    got: Vec<u8>,
    started: Instant,
    done: bool,
    closed: bool,
}

impl Peer {
    fn say(&self, s: String) {
        let _ = self.notes.send(Note::Say(self.name, s));
    }
}

impl App for Peer {
    type Output = Vec<u8>;

    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        if let Some(inv) = &self.invitation {
            ctx.host.listen(inv.clone());
        }
        if let Some(inv) = &self.join {
            ctx.host.join(inv, ctx.now);
            self.say("imports the invitation and starts connectivity checks".into());
        }
    }

    fn on_event(&mut self, ctx: &mut NodeCtx<'_>, event: HostEvent) {
        match event {
            HostEvent::Established { session, peer, remote, remote_kind, via, .. } => {
                self.session = Some(session);
                let how = if via == Via::SingleToken { "with the invitation alone" } else { "after the RSVP" };
                self.say(format!(
                    "connected {how} in {:.1} ms to {} at {remote} ({remote_kind:?}); Noise IK done, peer authenticated",
                    self.started.elapsed().as_secs_f64() * 1e3,
                    peer.peer_id()
                ));
                ctx.host.write(session, self.greeting.as_bytes());
                ctx.host.finish(session);
            }
            HostEvent::Ice(IceEvent::RsvpNeeded { attempt }) => {
                if let (Some(inv), Some(id)) = (&self.join, ctx.host.endpoint().rsvp_token_id(attempt)) {
                    let t = ctx.minter.rsvp(inv, id, unix_now());
                    self.say("the inviter needs a reply: makes an RSVP token and sends it back".into());
                    let _ = self.notes.send(Note::Rsvp(t.encode_compact()));
                }
            }
            // The peer hung up after our last exchange: nothing more comes.
            HostEvent::Closed { .. } => self.closed = true,
            _ => {}
        }
    }

    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<Vec<u8>> {
        if self.closed && !self.done {
            self.done = true;
            return Some(std::mem::take(&mut self.got));
        }
        if let Some(rx) = &mut self.rsvps
            && let Ok(text) = rx.try_recv()
        {
            match ctx.host.accept_rsvp(&text, ctx.now) {
                Ok(_) => self.say("took the RSVP; both sides check at once".into()),
                Err(e) => self.say(format!("refused the RSVP: {e}")),
            }
        }
        let id = self.session?;
        let mut buf = [0u8; 4096];
        loop {
            let n = ctx.host.read(id, &mut buf);
            if n == 0 {
                break;
            }
            self.got.extend_from_slice(&buf[..n]);
        }
        if ctx.host.recv_finished(id) && ctx.host.send_done(id) && !self.done {
            self.done = true;
            ctx.host.close(id, ctx.now);
            return Some(std::mem::take(&mut self.got));
        }
        None
    }

    async fn wake(&mut self) {
        match &mut self.rsvps {
            // Poll for the RSVP now and then (the demo's "out-of-band channel").
            Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            None => std::future::pending().await,
        }
    }
}

/// `convoke demo`.
pub fn demo(ctx: &Ctx, a: DemoArgs) -> Result<(), Failure> {
    if a.pair { pair(ctx, a) } else { crate::net_demo::run(ctx, a) }
}

fn pair(_ctx: &Ctx, a: DemoArgs) -> Result<(), Failure> {
    let alice = Identity::generate(&mut os_rng());
    let bob = Identity::generate(&mut os_rng());
    let (notes_tx, mut notes_rx) = mpsc::unbounded_channel();
    let (rsvp_tx, rsvp_rx) = mpsc::unbounded_channel();
    let (inv_tx, inv_rx) = std::sync::mpsc::channel();
    println!("Convoke demo: two nodes on this machine (loopback), fresh identities.");
    println!("  alice {}\n  bob   {}", alice.peer_id(), bob.peer_id());
    let started = Instant::now();
    let notes = notes_tx.clone();
    let rsvp = a.rsvp;
    let inviter = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let rt = runtime().map_err(|f| f.message)?;
        rt.block_on(async move {
            let mut node = Node::bind(alice.clone(), loopback(), seed()).map_err(|e| e.to_string())?;
            let params = InvitationParams {
                mode: ConnectionMode {
                    initial: if rsvp { InitialMode::Bidirectional } else { InitialMode::Unidirectional },
                    ..ConnectionMode::default()
                },
                ..InvitationParams::default()
            };
            let inv = node.minter().invitation(params, unix_now()).map_err(|e| e.to_string())?;
            let _ = inv_tx.send(inv.clone());
            let mut peer = Peer {
                name: "alice",
                greeting: "hello Bob, this is Alice".into(),
                invitation: Some(inv),
                join: None,
                notes,
                rsvps: Some(rsvp_rx),
                session: None,
                got: Vec::new(),
                started,
                done: false,
                closed: false,
            };
            let run = node.run(&mut peer);
            tokio::time::timeout(Duration::from_secs(20), run)
                .await
                .map_err(|_| "alice: no session within 20 s".to_string())?
                .map_err(|e| e.to_string())
        })
    });
    let inv = inv_rx.recv_timeout(Duration::from_secs(10)).map_err(|_| "alice did not start")?;
    let text = inv.token().encode_compact();
    println!("\nalice: invitation ({} characters; this is what you would paste or scan):\n\n{text}\n", text.len());
    let joiner = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let rt = runtime().map_err(|f| f.message)?;
        rt.block_on(async move {
            let node = Node::bind(bob, loopback(), seed()).map_err(|e| e.to_string())?;
            let mut peer = Peer {
                name: "bob",
                greeting: "hello Alice, Bob here".into(),
                invitation: None,
                join: Some(inv),
                notes: notes_tx,
                rsvps: None,
                session: None,
                got: Vec::new(),
                started: Instant::now(),
                done: false,
                closed: false,
            };
            tokio::time::timeout(Duration::from_secs(20), node.run(&mut peer))
                .await
                .map_err(|_| "bob: no session within 20 s".to_string())?
                .map_err(|e| e.to_string())
        })
    });
    // Relay notes (and the RSVP, our out-of-band channel) until both end.
    let rt = runtime()?;
    rt.block_on(async {
        while let Some(n) = notes_rx.recv().await {
            match n {
                Note::Say(who, s) => println!("{who}: {s}"),
                Note::Rsvp(t) => {
                    println!("(the RSVP travels back out of band: {} characters)", t.len());
                    let _ = rsvp_tx.send(t);
                }
            }
        }
    });
    let a_got = inviter.join().map_err(|_| "alice's thread panicked")??;
    let b_got = joiner.join().map_err(|_| "bob's thread panicked")??;
    println!("\nalice received: {:?}", String::from_utf8_lossy(&a_got));
    println!("bob received:   {:?}", String::from_utf8_lossy(&b_got));
    let ok = a_got == b"hello Alice, Bob here" && b_got == b"hello Bob, this is Alice";
    println!(
        "\n{} in {:.0} ms.",
        if ok { "Both greetings arrived intact" } else { "A greeting went wrong" },
        started.elapsed().as_secs_f64() * 1e3
    );
    if ok {
        println!("Next: run `convoke invite` in one terminal and `convoke join TOKEN` in another, and type;");
        println!("or `convoke demo` to watch a network form.");
        Ok(())
    } else {
        Err(Failure { message: "the demo failed".into(), status: 1 })
    }
}
