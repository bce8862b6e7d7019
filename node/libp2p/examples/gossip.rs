//! A gossipsub chat over Convoke: a libp2p Swarm (gossipsub, identify,
//! ping) whose transport is `convoke_libp2p`. One side invites, the other
//! joins with the token; lines typed on standard input go to the topic,
//! messages from the topic are printed.
//!
//! ```text
//! inviter:  cargo run -p convoke-libp2p --example gossip -- invite --token-out invite.txt
//! joiner:   cargo run -p convoke-libp2p --example gossip -- join invite.txt
//! ```
//!
//! When the joiner says an RSVP is needed, give the inviter the line it
//! prints (`/rsvp …`), or pass files with `--rsvp-out` and `--rsvp-in`.
//! The NAT testbed (`deploy/testbed/libp2p-pair`) runs this program on two
//! hosts behind port-restricted NATs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use convoke_libp2p::{EndpointConfig, Handle, Invitation, InviteOptions, Transport};
use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{SwarmBuilder, gossipsub, identify, ping};
use tokio::io::AsyncBufReadExt;

const USAGE: &str = "\
usage: gossip invite [OPTIONS]               make an invitation, wait for joiners
       gossip join TOKEN_FILE [OPTIONS]      join the invitation in TOKEN_FILE
options:
  --listen ADDR        bind this UDP address (default 0.0.0.0:0)
  --stun ADDR          a STUN server (repeatable; Convoke nodes answer STUN)
  --token-out FILE     invite: write the token here (default: standard output)
  --rsvp-required      invite: joiners must send an RSVP first
  --rsvp-in FILE       invite: take an RSVP from FILE when it appears
  --rsvp-out FILE      join: write the RSVP here when one is needed
  --say TEXT           publish TEXT when a peer joins the topic
  --exit-after N       exit after receiving N messages
  --timeout S          give up after S seconds (exit status 1)";

#[derive(NetworkBehaviour)]
struct Chat {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

#[derive(Default)]
struct Args {
    join: Option<PathBuf>,
    listen: Option<SocketAddr>,
    stun: Vec<SocketAddr>,
    token_out: Option<PathBuf>,
    rsvp_required: bool,
    rsvp_in: Option<PathBuf>,
    rsvp_out: Option<PathBuf>,
    say: Option<String>,
    exit_after: Option<usize>,
    timeout: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut args = Args::default();
    match it.next().as_deref() {
        Some("invite") => {}
        Some("join") => args.join = Some(it.next().ok_or("join needs a TOKEN_FILE")?.into()),
        Some("-h" | "--help") => return Err(String::new()),
        other => return Err(format!("expected 'invite' or 'join', not {other:?}")),
    }
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--listen" => args.listen = Some(value()?.parse().map_err(|e| bad(&e))?),
            "--stun" => args.stun.push(value()?.parse().map_err(|e| bad(&e))?),
            "--token-out" => args.token_out = Some(value()?.into()),
            "--rsvp-required" => args.rsvp_required = true,
            "--rsvp-in" => args.rsvp_in = Some(value()?.into()),
            "--rsvp-out" => args.rsvp_out = Some(value()?.into()),
            "--say" => args.say = Some(value()?),
            "--exit-after" => args.exit_after = Some(value()?.parse().map_err(|e| bad(&e))?),
            "--timeout" => args.timeout = Some(value()?.parse().map_err(|e| bad(&e))?),
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(args)
}

/// Reads a whole token file once it is complete (written and ended by a
/// newline), polling every 100 ms.
async fn read_when_complete(path: PathBuf) -> String {
    loop {
        if let Ok(text) = tokio::fs::read_to_string(&path).await
            && text.ends_with('\n')
        {
            return text.trim().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes an RSVP for one of our invitations, reporting the outcome.
fn take_rsvp(handle: &Handle, rsvp: String) {
    let handle = handle.clone();
    tokio::spawn(async move {
        match handle.accept_rsvp(&rsvp).await {
            Ok(peer) => eprintln!("rsvp accepted: connected to {peer}"),
            Err(e) => eprintln!("rsvp refused: {e}"),
        }
    });
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("gossip: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gossip: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let keypair = Keypair::generate_ed25519();
    let mut config = EndpointConfig::default();
    let listen = args.listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    config.node.listen = vec![listen];
    config.node.stun = args.stun.clone();
    let transport = Transport::bind(&keypair, config).await?;
    let handle = transport.handle();
    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|_| transport)?
        .with_behaviour(|key| {
            let gossip = gossipsub::ConfigBuilder::default().heartbeat_interval(Duration::from_millis(500)).build()?;
            Ok(Chat {
                gossipsub: gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip)?,
                identify: identify::Behaviour::new(identify::Config::new("/convoke-gossip/1".into(), key.public())),
                ping: ping::Behaviour::default(),
            })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        // A dial includes the RSVP step, which a person may carry by hand.
        .with_connection_timeout(Duration::from_secs(300))
        .build();
    let topic = gossipsub::IdentTopic::new("convoke-chat");
    swarm.behaviour_mut().gossipsub.subscribe(&topic)?;

    if let Some(path) = &args.join {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let invitation = Invitation::parse(text.trim(), convoke_node::runtime::unix_now())?;
        let address = handle.import(invitation);
        eprintln!("dialing {address}");
        swarm.dial(address)?;
        let (handle, rsvp_out) = (handle.clone(), args.rsvp_out.clone());
        tokio::spawn(async move {
            let request = handle.next_rsvp().await;
            eprintln!("rsvp needed: give the inviter this line:\n/rsvp {}", request.rsvp);
            if let Some(path) = rsvp_out
                && let Err(e) = std::fs::write(&path, format!("{}\n", request.rsvp))
            {
                eprintln!("gossip: {}: {e}", path.display());
            }
        });
    } else {
        let family = if listen.is_ipv4() { "ip4" } else { "ip6" };
        swarm.listen_on(format!("/{family}/{}/udp/{}", listen.ip(), listen.port()).parse()?)?;
        let options = InviteOptions { rsvp_required: args.rsvp_required, reusable: true, ..InviteOptions::default() };
        let invitation = handle.invite(options).await?;
        let token = invitation.token().encode_compact();
        match &args.token_out {
            Some(path) => std::fs::write(path, format!("{token}\n")).map_err(|e| format!("{}: {e}", path.display()))?,
            None => println!("{token}"),
        }
        eprintln!("invitation for {}: {}", handle.peer_id(), convoke_libp2p::invitation_address(&invitation));
        if let Some(path) = args.rsvp_in.clone() {
            let handle = handle.clone();
            tokio::spawn(async move { take_rsvp(&handle, read_when_complete(path).await) });
        }
    }

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut received = 0usize;
    let deadline = tokio::time::sleep(Duration::from_secs(args.timeout.unwrap_or(u64::MAX / 4)));
    tokio::pin!(deadline);
    // Once `--exit-after` is reached, what we published may still be on its
    // way out: the Swarm keeps running this long before we exit.
    let linger = tokio::time::sleep(Duration::MAX);
    tokio::pin!(linger);
    let mut lingering = false;
    loop {
        tokio::select! {
            line = stdin.next_line(), if stdin_open => match line? {
                None => stdin_open = false,
                Some(line) => match line.strip_prefix("/rsvp ") {
                    Some(rsvp) => take_rsvp(&handle, rsvp.trim().to_owned()),
                    None => if let Err(e) = swarm.behaviour_mut().gossipsub.publish(topic.clone(), line.into_bytes()) {
                        eprintln!("not sent: {e}");
                    },
                },
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    eprintln!("connected to {peer_id} ({})", if endpoint.is_dialer() { "dialed" } else { "joined us" });
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    eprintln!("gossip: dial failed: {error}");
                    return Ok(ExitCode::FAILURE);
                }
                SwarmEvent::Behaviour(ChatEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, .. })) => {
                    if let Some(text) = &args.say {
                        swarm.behaviour_mut().gossipsub.publish(topic.clone(), text.as_bytes())?;
                        eprintln!("published to {peer_id}'s topic");
                    }
                }
                SwarmEvent::Behaviour(ChatEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
                    let from = message.source.map(|p| p.to_string()).unwrap_or_default();
                    println!("{from}: {}", String::from_utf8_lossy(&message.data));
                    received += 1;
                    if !lingering && args.exit_after.is_some_and(|n| received >= n) {
                        lingering = true;
                        linger.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(2));
                    }
                }
                SwarmEvent::Behaviour(ChatEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) => {
                    eprintln!("ping {peer}: {} ms", rtt.as_millis());
                }
                _ => {}
            },
            _ = &mut linger, if lingering => return Ok(ExitCode::SUCCESS),
            _ = &mut deadline => {
                eprintln!("gossip: timed out after {} s with {received} messages", args.timeout.unwrap_or_default());
                return Ok(ExitCode::FAILURE);
            }
        }
    }
}
