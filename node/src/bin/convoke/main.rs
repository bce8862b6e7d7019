//! `convoke`: the Convoke node's command-line tool.

mod token_cmd;
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

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show this node's PeerId and where its key is kept (creating the key
    /// on first use).
    Id,
    /// Mint, inspect and draw invitation and RSVP tokens.
    #[command(subcommand)]
    Token(token_cmd::TokenCmd),
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
}

impl Ctx {
    /// Loads (or creates) the identity, telling the user on stderr when a
    /// new key was made.
    pub fn identity(&self) -> Result<(convoke_node::identity::Identity, PathBuf), Failure> {
        let path = match &self.key {
            Some(p) => p.clone(),
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
    let ctx = Ctx { key: cli.key, json: cli.json };
    let result = match cli.command {
        Command::Id => cmd_id(&ctx),
        Command::Token(t) => token_cmd::run(&ctx, t),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("convoke: {}", f.message);
            }
            ExitCode::from(f.status)
        }
    }
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
