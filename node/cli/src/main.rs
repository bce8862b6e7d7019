//! `convoke`: the Convoke node's command-line tool.

// The doc comments on the argument types are `--help` text, where
// `<data dir>` is a placeholder, not an HTML tag.
#![allow(rustdoc::invalid_html_tags)]

mod demo_cmd;
mod demo_common;
mod net_demo;
mod relay_cmd;
mod session_cmd;
mod token_cmd;
mod topology_view;
mod up_cmd;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use convoke_node::runtime::keystore;

/// Connect computers directly, across NATs, with one signed invitation token
/// and no signaling server.
#[derive(Parser, Debug)]
#[command(name = "convoke", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Identity key file (created on first use, mode 0600).
    /// Default: <data dir>/convoke/identity.key.
    #[arg(long, global = true, env = "CONVOKE_KEY", value_name = "PATH")]
    key: Option<PathBuf>,

    /// Print machine-readable JSON instead of text (running nodes print
    /// one JSON event per line on standard error).
    #[arg(long, global = true)]
    json: bool,

    /// Configuration file (TOML). Default: <config dir>/convoke/config.toml
    /// if it exists.
    #[arg(long, global = true, env = "CONVOKE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Only errors on standard error.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A network forms on this machine: nodes join with one token each,
    /// members introduce them to each other, and a broadcast reaches every
    /// node along the tree they build; ends by itself.
    Demo(demo_common::DemoArgs),
    /// Run a long-lived overlay member: start a network, or join one with
    /// any member's invitation. Broadcasts arrive on standard output.
    Up(up_cmd::UpArgs),
    /// Send a message to every member of the running member's network.
    Broadcast(up_cmd::BroadcastArgs),
    /// Show this node's PeerId and where its key is kept (creating the key
    /// on first use).
    Id,
    /// Mint, inspect and draw invitation and RSVP tokens.
    #[command(subcommand)]
    Token(token_cmd::TokenCmd),
    /// Print an invitation, wait for the invitee, then pipe standard input
    /// and output through the encrypted session.
    Invite(session_cmd::InviteArgs),
    /// Connect with an invitation, then pipe standard input and output
    /// through the encrypted session (like netcat).
    Join(session_cmd::JoinArgs),
    /// Hand a reply token (RSVP) to the running `convoke invite`.
    Rsvp(session_cmd::RsvpArgs),
    /// Show the running nodes' sessions and paths.
    Status(session_cmd::StatusArgs),
    /// Relay for pairs of peers with no direct path (on a public machine):
    /// they bind a circuit here and send their encrypted session through it.
    Relay(relay_cmd::RelayArgs),
}

/// What a command reports when it fails: the message, and the exit status.
pub(crate) struct Failure {
    pub message: String,
    pub status: u8,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { message: e.to_string(), status: 1 }
    }
}

pub(crate) struct Ctx {
    pub key: Option<PathBuf>,
    pub json: bool,
    pub quiet: bool,
    pub file: Option<convoke_cli::config::FileConfig>,
}

impl Ctx {
    /// Loads (or creates) the identity, telling the user on stderr when a
    /// new key was made.
    pub fn identity(&self) -> Result<(convoke_node::identity::Identity, PathBuf), Failure> {
        let path = match self.key.clone().or_else(|| self.file.as_ref().and_then(|f| f.key.clone())) {
            Some(p) => p,
            None => keystore::default_key_path()?,
        };
        let (id, created) = keystore::load_or_create(&path)?;
        if created {
            eprintln!("convoke: created a new identity key at {}", path.display());
        }
        Ok((id, path))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = session_cmd::load_config(cli.config.as_ref()).and_then(|file| {
        let ctx = Ctx { key: cli.key, json: cli.json, quiet: cli.quiet, file };
        match cli.command {
            Command::Demo(a) => demo_cmd::demo(&ctx, a),
            Command::Id => cmd_id(&ctx),
            Command::Token(t) => token_cmd::run(&ctx, t),
            Command::Invite(a) => session_cmd::invite(&ctx, a),
            Command::Join(a) => session_cmd::join(&ctx, a),
            Command::Rsvp(a) => session_cmd::rsvp(&ctx, a),
            Command::Status(a) => session_cmd::status(&ctx, a),
            Command::Up(a) => up_cmd::up(&ctx, a),
            Command::Broadcast(a) => up_cmd::broadcast(&ctx, a),
            Command::Relay(a) => relay_cmd::relay(&ctx, a),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("convoke: {}", util::printable(&f.message));
            }
            ExitCode::from(f.status)
        }
    }
}

/// Logs to standard error: RUST_LOG if set, else warnings (-q: errors,
/// -v: debug, -vv: trace) for convoke's own code. Colour only on a
/// terminal and without NO_COLOR; no timestamps when standard error is
/// the systemd journal (it stamps every line itself).
fn init_logging(verbose: u8, quiet: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "convoke_node=debug,convoke_cli=debug,convoke=debug",
        _ => "convoke_node=trace,convoke_cli=trace,convoke=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if stderr_is_journal() { fmt.without_time().try_init() } else { fmt.try_init() };
}

/// Whether standard error is a stream to the systemd journal: systemd sets
/// JOURNAL_STREAM to that stream's `device:inode`.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    stream.to_str() == Some(&format!("{}:{}", meta.dev(), meta.ino()))
}

fn cmd_id(ctx: &Ctx) -> Result<(), Failure> {
    let (id, path) = ctx.identity()?;
    if ctx.json {
        let v = serde_json::json!({ "peer_id": id.peer_id().to_string(), "key_path": path });
        println!("{v}");
    } else {
        println!("peer id   {}", id.peer_id());
        println!("key file  {}", path.display());
    }
    Ok(())
}
