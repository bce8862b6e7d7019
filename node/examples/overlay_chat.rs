//! A small overlay application: a group chat over a Convoke network. The
//! first member starts the network and prints its card; everyone else
//! joins with any member's card. Lines typed on standard input are
//! broadcast to every member; broadcasts and membership changes are
//! printed.
//!
//! ```text
//! first:   cargo run -p convoke-node --example overlay_chat
//! others:  cargo run -p convoke-node --example overlay_chat -- CARD
//! ```
//!
//! When a contact's network wants an RSVP, the newcomer prints a
//! `/rsvp …` line: type it into the contact's chat.

use std::process::ExitCode;

use convoke_node::identity::Identity;
use convoke_node::runtime::endpoint::EndpointConfig;
use convoke_node::runtime::network::{MemberConfig, MemberEvent, Network};
use convoke_node::runtime::{os_rng, unix_now};
use convoke_node::token::Invitation;
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlay_chat: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut endpoint = EndpointConfig::default();
    let mut join = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("usage: overlay_chat [--listen ADDR] [CARD]   (start a network, or join the one of CARD)");
                return Ok(());
            }
            "--listen" => {
                let addr = args.next().ok_or("--listen needs an address")?;
                endpoint.node.listen = vec![addr.parse().map_err(|e| format!("--listen {addr}: {e}"))?];
            }
            card => join = Some(Invitation::parse(card, unix_now())?),
        }
    }
    let config = MemberConfig { join, ..MemberConfig::default() };
    let me = Network::start(Identity::generate(&mut os_rng()), endpoint, config).await?;
    println!("you are {}; your card (others join with it):\n{}", me.peer_id(), me.card().token().encode_compact());
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line? {
                None => {
                    stdin_open = false;
                    me.leave();
                }
                Some(line) => match line.strip_prefix("/rsvp ") {
                    Some(rsvp) => me.accept_rsvp(rsvp)?,
                    None => me.broadcast(line.as_bytes())?,
                },
            },
            event = me.next_event() => match event {
                None => return Ok(()),
                Some(MemberEvent::Message { origin, data, .. }) => {
                    println!("{origin}: {}", String::from_utf8_lossy(&data));
                }
                Some(MemberEvent::RsvpForContact(rsvp)) => {
                    println!("your contact wants an RSVP: give it this line\n/rsvp {rsvp}");
                }
                Some(MemberEvent::MemberJoined { peer, .. }) => println!("* {peer} joined"),
                Some(MemberEvent::NeighborUp(peer)) => println!("* linked to {peer}"),
                Some(MemberEvent::NeighborDown(peer, why)) => println!("* {peer} gone ({why:?})"),
                Some(_) => {}
            },
        }
    }
}
