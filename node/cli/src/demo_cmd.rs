//! `convoke demo`: a network forms on loopback in one process (see
//! [`crate::net_demo`]); `convoke demo --pair`: two real nodes, one
//! invites, the other joins with the token alone (or, with `--rsvp`,
//! through the RSVP path), they greet each other over the encrypted
//! session, and the demo reports each step. Both end by themselves; exit
//! status 0 only if every message arrived intact. Both run on the library's
//! API ([`Endpoint`], and the network demo's `Network`), as an application
//! would.

use std::time::{Duration, Instant};

use convoke_node::ice::Via;
use convoke_node::identity::Identity;
use convoke_node::runtime::endpoint::{Connection, Endpoint, EndpointConfig, InviteOptions, JoinError};
use convoke_node::runtime::os_rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::demo_common::DemoArgs;
use crate::session_cmd::runtime;
use crate::{Ctx, Failure};

/// `convoke demo`.
pub fn demo(ctx: &Ctx, a: DemoArgs) -> Result<(), Failure> {
    if a.pair { pair(ctx, a) } else { crate::net_demo::run(ctx, a) }
}

fn pair(_ctx: &Ctx, a: DemoArgs) -> Result<(), Failure> {
    let alice = Identity::generate(&mut os_rng());
    let bob = Identity::generate(&mut os_rng());
    println!("Convoke demo: two nodes on this machine (loopback), fresh identities.");
    println!("  alice {}\n  bob   {}", alice.peer_id(), bob.peer_id());
    let started = Instant::now();
    let rt = runtime()?;
    let (a_got, b_got) = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), greet_each_other(alice, bob, a.rsvp, started))
            .await
            .map_err(|_| Failure::from("no session within 20 s"))?
    })?;
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

/// Alice invites, Bob joins (through an RSVP when `rsvp`), each sends a
/// greeting on the session's own stream; returns what each received.
async fn greet_each_other(
    alice: Identity,
    bob: Identity,
    rsvp: bool,
    started: Instant,
) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    let config = EndpointConfig::loopback();
    let (alice, bob) = tokio::try_join!(Endpoint::bind(alice, config.clone()), Endpoint::bind(bob, config))?;
    let invitation = alice.invite(InviteOptions { rsvp_required: rsvp, ..InviteOptions::default() }).await?;
    let text = invitation.token().encode_compact();
    println!("\nalice: invitation ({} characters; this is what you would paste or scan):\n\n{text}\n", text.len());
    println!("bob: imports the invitation and starts connectivity checks");
    let (to_bob, to_alice) = match bob.join(&invitation).await {
        Ok(to_alice) => (alice.accept().await?, to_alice),
        Err(JoinError::RsvpNeeded(pending)) => {
            println!("bob: the inviter needs a reply: makes an RSVP token and sends it back");
            let rsvp = pending.rsvp().to_owned();
            println!("(the RSVP travels back out of band: {} characters)", rsvp.len());
            println!("alice: takes the RSVP; both sides check at once");
            tokio::try_join!(alice.accept_rsvp(&rsvp), pending.connected())?
        }
        Err(e) => return Err(e.into()),
    };
    for (who, conn) in [("alice", &to_bob), ("bob", &to_alice)] {
        let info = conn.info()?;
        let how = if info.via == Via::SingleToken { "with the invitation alone" } else { "after the RSVP" };
        println!(
            "{who}: connected {how} in {:.1} ms to {} at {} ({:?}); Noise IK done, peer authenticated",
            started.elapsed().as_secs_f64() * 1e3,
            conn.peer_id(),
            info.remote,
            info.remote_kind
        );
    }
    let got = tokio::try_join!(greet(to_bob, "hello Bob, this is Alice"), greet(to_alice, "hello Alice, Bob here"))?;
    tokio::join!(alice.shutdown(), bob.shutdown());
    Ok(got)
}

/// Sends `greeting` on the session's own stream and reads the peer's.
async fn greet(conn: Connection, greeting: &str) -> Result<Vec<u8>, Failure> {
    let (mut send, mut recv) = conn.session_stream().ok_or("the session ended at once")?;
    send.write_all(greeting.as_bytes()).await?;
    send.finish()?;
    let mut got = Vec::new();
    recv.read_to_end(&mut got).await?;
    // Wait for the peer to have our greeting before this returns and the
    // session closes; a peer that read it first may close first (that
    // fails this wait, harmlessly: the caller checks what each received).
    let _ = send.acknowledged().await;
    Ok(got)
}
