//! File transfer with the async library API: the sender invites and waits;
//! the receiver joins with the token and gets the file on a stream.
//!
//! ```text
//! sender:    cargo run -p convoke-node --example file_transfer -- send photo.jpg --token-out invite.txt
//! receiver:  cargo run -p convoke-node --example file_transfer -- receive invite.txt photo-copy.jpg
//! ```
//!
//! When the sender's network filters a first contact, the receiver prints
//! an RSVP line (or writes it with `--rsvp-out FILE`): give it to the
//! sender on its standard input (or with `--rsvp-in FILE`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use convoke_node::identity::Identity;
use convoke_node::runtime::endpoint::{Connection, Endpoint, EndpointConfig, InviteOptions, JoinError};
use convoke_node::runtime::{os_rng, unix_now};
use convoke_node::token::Invitation;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "\
usage: file_transfer send FILE [OPTIONS]
       file_transfer receive TOKEN_FILE OUT_FILE [OPTIONS]
options:
  --listen ADDR      bind this UDP address (default 0.0.0.0:0)
  --stun ADDR        a STUN server (repeatable)
  --token-out FILE   send: write the invitation here (default: standard output)
  --rsvp-in FILE     send: take the receiver's RSVP from FILE when it appears
                     (it is also read from standard input)
  --rsvp-out FILE    receive: write the RSVP here when one is needed";

struct Args {
    send: bool,
    paths: Vec<PathBuf>,
    listen: SocketAddr,
    stun: Vec<SocketAddr>,
    token_out: Option<PathBuf>,
    rsvp_in: Option<PathBuf>,
    rsvp_out: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let send = match it.next().as_deref() {
        Some("send") => true,
        Some("receive") => false,
        _ => return Err(USAGE.into()),
    };
    let mut args = Args {
        send,
        paths: Vec::new(),
        listen: SocketAddr::from(([0, 0, 0, 0], 0)),
        stun: Vec::new(),
        token_out: None,
        rsvp_in: None,
        rsvp_out: None,
    };
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => args.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--stun" => args.stun.push(value()?.parse().map_err(|e| format!("--stun: {e}"))?),
            "--token-out" => args.token_out = Some(value()?.into()),
            "--rsvp-in" => args.rsvp_in = Some(value()?.into()),
            "--rsvp-out" => args.rsvp_out = Some(value()?.into()),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}\n{USAGE}")),
            path => args.paths.push(path.into()),
        }
    }
    if args.paths.len() != if send { 1 } else { 2 } {
        return Err(USAGE.into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match parse_args() {
        Ok(args) => run(args).await,
        Err(usage) => Err(usage.into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("file_transfer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = EndpointConfig::default();
    config.node.listen = vec![args.listen];
    config.node.stun = args.stun.clone();
    let endpoint = Endpoint::bind(Identity::generate(&mut os_rng()), config).await?;
    if args.send { send(&endpoint, &args).await } else { receive(&endpoint, &args).await }
}

/// Waits for an RSVP from `file` (when it is complete, and not the one
/// tried last) or standard input.
async fn next_rsvp(file: Option<&PathBuf>, tried: Option<&str>) -> String {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(l)) if !l.trim().is_empty() => return l.trim().to_owned(),
                Ok(Some(_)) => {}
                _ => stdin_open = false,
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let text = file.and_then(|f| std::fs::read_to_string(f).ok()).filter(|t| t.ends_with('\n'));
                if let Some(text) = text.filter(|t| Some(t.trim()) != tried) {
                    return text.trim().to_owned();
                }
            }
        }
    }
}

async fn send(endpoint: &Endpoint, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let path = &args.paths[0];
    let mut file = tokio::fs::File::open(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
    let size = file.metadata().await?.len();
    let token = endpoint.invite(InviteOptions::default()).await?.token().encode_compact();
    match &args.token_out {
        Some(out) => std::fs::write(out, format!("{token}\n"))?,
        None => println!("{token}"),
    }
    eprintln!("waiting for the receiver ({size} bytes to send)");
    let mut tried = None;
    let conn: Connection = loop {
        tokio::select! {
            conn = endpoint.accept() => break conn?,
            rsvp = next_rsvp(args.rsvp_in.as_ref(), tried.as_deref()) => match endpoint.accept_rsvp(&rsvp).await {
                Ok(conn) => break conn,
                Err(e) => {
                    eprintln!("that RSVP did not connect: {e}");
                    tried = Some(rsvp);
                }
            },
        }
    };
    eprintln!("connected to {} over {:?}", conn.peer_id(), conn.info().map(|i| i.remote)?);
    // One unidirectional stream: the size, then the bytes.
    let mut stream = conn.open_uni().await?;
    stream.write_all(&size.to_be_bytes()).await?;
    tokio::io::copy(&mut file, &mut stream).await?;
    stream.finish()?;
    // The receiver closes the session once it has every byte.
    let reason = conn.closed().await;
    eprintln!("sent {size} bytes; the receiver closed: {reason:?}");
    Ok(())
}

async fn receive(endpoint: &Endpoint, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(&args.paths[0]).map_err(|e| format!("{}: {e}", args.paths[0].display()))?;
    let invitation = Invitation::parse(text.trim(), unix_now())?;
    let conn = match endpoint.join(&invitation).await {
        Ok(conn) => conn,
        Err(JoinError::RsvpNeeded(pending)) => {
            eprintln!("the sender's network wants an RSVP first; give the sender this line:\n{}", pending.rsvp());
            if let Some(out) = &args.rsvp_out {
                std::fs::write(out, format!("{}\n", pending.rsvp()))?;
            }
            pending.connected().await?
        }
        Err(e) => return Err(e.into()),
    };
    let mut stream = conn.accept_uni().await?;
    let mut size = [0u8; 8];
    stream.read_exact(&mut size).await?;
    let size = u64::from_be_bytes(size);
    let out = &args.paths[1];
    let mut file = tokio::fs::File::create(out).await.map_err(|e| format!("{}: {e}", out.display()))?;
    let got = tokio::io::copy(&mut stream, &mut file).await?;
    file.flush().await?;
    if got != size {
        conn.close(1, "short file");
        return Err(format!("the stream ended after {got} of {size} bytes").into());
    }
    conn.close(0, "received");
    eprintln!("received {got} bytes into {}", out.display());
    Ok(())
}
