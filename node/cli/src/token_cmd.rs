//! `convoke token …`: mint, inspect and draw tokens.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use convoke_cli::qr::TokenQr;
use convoke_node::runtime::{os_rng, unix_now};
use convoke_node::token::{
    self, Candidate, CandidateKind, ConnectionMode, InitialMode, Invitation, InvitationParams, ReplayGuard, Rsvp,
    Token, TokenError, TokenType,
};

use crate::util::{format_span, format_time, parse_duration, printable, read_token_arg};
use crate::{Ctx, Failure};

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Mint a signed invitation for fixed addresses (a server with a public
    /// address publishing a long-lived invitation).
    New(NewArgs),
    /// Decode and verify a token; exit 0 if it is valid, 1 with the reason
    /// if not.
    Inspect(InspectArgs),
    /// Draw a token as a QR code in the terminal, or to an SVG or PNG file.
    Qr(QrArgs),
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// An address where this node can be reached, most preferred first.
    /// Prefix with `srflx:` or `relay:` for those candidate types
    /// (default `host`). Repeat for several.
    #[arg(long = "candidate", value_name = "[TYPE:]IP:PORT", required = true, value_parser = parse_candidate)]
    candidates: Vec<(CandidateKind, SocketAddr)>,
    /// Admit many invitees with this one invitation.
    #[arg(long)]
    reusable: bool,
    /// Lifetime: 30d, 12h, 90m, 45s or 2w.
    #[arg(long, default_value = "1d", value_name = "DURATION", value_parser = parse_duration)]
    expires: u64,
    /// Name of the network this invitation joins.
    #[arg(long, value_name = "ID")]
    network_id: Option<String>,
    /// The invitee must answer with an RSVP before either side checks
    /// (both send at once; needed when both sides are behind strict NATs).
    #[arg(long)]
    rsvp_required: bool,
    /// Refuse RSVPs: the invitee must reach these addresses on its own.
    #[arg(long, conflicts_with = "rsvp_required")]
    no_rsvp: bool,
    /// How long the invitee keeps trying before it offers an RSVP.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    rsvp_timeout: u64,
    /// A name shown to the invitee (stored in the token's metadata).
    #[arg(long)]
    name: Option<String>,
    /// Print the compact encoding (shorter; for QR codes and SMS).
    #[arg(long)]
    compact: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The token, or `-` to read it from standard input.
    token: String,
    /// For an RSVP: the invitation it answers, to check the link too.
    #[arg(long, value_name = "TOKEN")]
    invitation: Option<String>,
    /// Check validity at this unix time instead of now.
    #[arg(long, value_name = "UNIX_SECONDS")]
    at: Option<u64>,
}

#[derive(Args, Debug)]
pub struct QrArgs {
    /// The token, or `-` to read it from standard input.
    token: String,
    /// Write an SVG file instead of drawing in the terminal.
    #[arg(long, value_name = "FILE", conflicts_with = "png")]
    svg: Option<PathBuf>,
    /// Write a PNG file instead of drawing in the terminal.
    #[arg(long, value_name = "FILE")]
    png: Option<PathBuf>,
    /// Pixels per module in the PNG.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    scale: u16,
}

fn parse_candidate(s: &str) -> Result<(CandidateKind, SocketAddr), String> {
    let (kind, addr) = match s.split_once(':') {
        Some(("host", rest)) => (CandidateKind::Host, rest),
        Some(("srflx", rest)) => (CandidateKind::Srflx, rest),
        Some(("relay", rest)) => (CandidateKind::Relay, rest),
        _ => (CandidateKind::Host, s),
    };
    let addr: SocketAddr = addr.parse().map_err(|_| format!("`{s}` is not IP:PORT (IPv6 as [::1]:4433)"))?;
    if addr.port() == 0 {
        return Err(format!("`{s}`: port 0 cannot be reached"));
    }
    Ok((kind, addr))
}

pub fn run(ctx: &Ctx, cmd: TokenCmd) -> Result<(), Failure> {
    match cmd {
        TokenCmd::New(a) => new(ctx, a),
        TokenCmd::Inspect(a) => inspect(ctx, a),
        TokenCmd::Qr(a) => qr(ctx, a),
    }
}

fn new(ctx: &Ctx, a: NewArgs) -> Result<(), Failure> {
    if a.candidates.len() > token::limits::MAX_CANDIDATES {
        return Err(format!("at most {} candidates fit in a token", token::limits::MAX_CANDIDATES).into());
    }
    if let Some(n) = &a.network_id
        && n.len() > token::limits::MAX_NETWORK_ID
    {
        return Err(format!("--network-id is longer than {} bytes", token::limits::MAX_NETWORK_ID).into());
    }
    let (identity, _) = ctx.identity()?;
    let mut params = InvitationParams {
        candidates: Candidate::list(a.candidates),
        lifetime_secs: a.expires,
        mode: ConnectionMode {
            initial: if a.rsvp_required { InitialMode::Bidirectional } else { InitialMode::Unidirectional },
            rsvp_supported: !a.no_rsvp,
            rsvp_timeout_seconds: u32::try_from(a.rsvp_timeout).map_err(|_| "--rsvp-timeout is too long")?,
            reusable: a.reusable,
        },
        network_id: a.network_id,
        ..InvitationParams::default()
    };
    if let Some(name) = a.name {
        if name.len() > token::limits::MAX_METADATA_VALUE {
            return Err("--name is too long".into());
        }
        params.metadata.insert("name".into(), name);
    }
    let t = Token::new_invitation(&identity, params, unix_now(), &mut os_rng());
    let text = if a.compact { t.encode_compact() } else { t.encode_text() };
    if ctx.json {
        let v = serde_json::json!({
            "token": text,
            "token_id": t.body.token_id.to_string(),
            "peer_id": identity.peer_id().to_string(),
            "expires_at": t.body.expires_at,
        });
        println!("{v}");
    } else {
        println!("{text}");
    }
    Ok(())
}

fn inspect(ctx: &Ctx, a: InspectArgs) -> Result<(), Failure> {
    let input = read_token_arg(&a.token)?;
    let now = a.at.unwrap_or_else(unix_now);
    let decoded = token::decode(&input);
    let verdict: Result<(), TokenError> = match (&decoded, &a.invitation) {
        (Err(e), _) => Err(e.clone()),
        (Ok(t), Some(inv_text)) if t.body.token_type == TokenType::Rsvp => {
            let inv = Invitation::parse(inv_text, now)
                .map_err(|e| Failure::from(format!("the --invitation given is not valid: {e}")))?;
            Rsvp::from_token(t.clone(), &inv, now, &mut ReplayGuard::default()).map(|_| ())
        }
        (Ok(t), _) => token::validate_standalone(t, now),
    };
    if ctx.json {
        print_json(decoded.as_ref().ok(), &verdict, now);
    } else if let Ok(t) = &decoded {
        print_human(t, &verdict, now, a.invitation.is_some());
    }
    match verdict {
        Ok(()) => Ok(()),
        Err(e) => {
            Err(Failure { message: if ctx.json { String::new() } else { format!("invalid token: {e}") }, status: 1 })
        }
    }
}

fn print_json(t: Option<&Token>, verdict: &Result<(), TokenError>, now: u64) {
    let mut v = serde_json::json!({
        "valid": verdict.is_ok(),
        "checked_at": now,
    });
    if let Err(e) = verdict {
        v["error"] = serde_json::json!({ "code": e.code(), "message": e.to_string() });
    }
    if let Some(t) = t {
        v["sizes"] = serde_json::json!({
            "text": t.encode_text().len(),
            "compact": t.encode_compact().len(),
            "compact_bytes": t.encode_compact_bytes().len(),
        });
        v["token"] = serde_json::to_value(&t.body).unwrap_or_default();
        v["signature_valid"] = t.signature_valid().into();
    }
    println!("{v}");
}

fn print_human(t: &Token, verdict: &Result<(), TokenError>, now: u64, linked: bool) {
    let b = &t.body;
    let status = match verdict {
        Ok(()) => "valid",
        Err(_) => "INVALID",
    };
    println!("{status} {}", b.token_type);
    // Every value may come from whoever made the token (or forged it).
    let row = |k: &str, v: String| println!("  {:<14} {}", printable(k), printable(&v));
    row("token id", b.token_id.to_string());
    if let Some(r) = &b.in_reply_to {
        row("in reply to", r.to_string());
    }
    if let Some(p) = b.author() {
        row(if b.token_type == TokenType::Invitation { "inviter" } else { "responder" }, p.peer_id.clone());
        row("capabilities", p.capabilities.join(", "));
    }
    if let Some(n) = &b.network_id {
        row("network", n.clone());
    }
    row("created", format_time(b.created_at));
    let left = if b.expires_at > now {
        format!("in {}", format_span(b.expires_at - now))
    } else {
        format!("{} ago", format_span(now - b.expires_at))
    };
    row("expires", format!("{} ({left})", format_time(b.expires_at)));
    let m = &b.connection_mode;
    row(
        "mode",
        format!(
            "{}{}, RSVP {}, reply after {}s",
            if m.initial == InitialMode::Bidirectional { "RSVP required" } else { "direct first" },
            if m.reusable { ", reusable" } else { ", single use" },
            if m.rsvp_supported { "accepted" } else { "refused" },
            m.rsvp_timeout_seconds
        ),
    );
    let ci = &b.connection_info;
    row("ice", format!("ufrag {} · role {:?} · tie-breaker {:#018x}", ci.ufrag, ci.ice_role, ci.ice_tie_breaker));
    for c in &ci.ice_candidates {
        row(
            "candidate",
            format!("{:<5} {} (priority {})", format!("{:?}", c.kind).to_lowercase(), c.address, c.priority),
        );
    }
    row("crypto", b.crypto.suite.clone());
    for r in &b.relay {
        row("relay", r.clone());
    }
    for (k, v) in &b.metadata {
        row(&format!("meta {k}"), v.clone());
    }
    row(
        "sizes",
        format!(
            "text {} chars · compact {} chars ({} bytes)",
            t.encode_text().len(),
            t.encode_compact().len(),
            t.encode_compact_bytes().len()
        ),
    );
    row("signature", if t.signature_valid() { "verified".into() } else { "does NOT verify".into() });
    if b.token_type == TokenType::Rsvp && !linked {
        println!("  (give --invitation TOKEN to check this RSVP against the invitation it answers)");
    }
}

fn qr(ctx: &Ctx, a: QrArgs) -> Result<(), Failure> {
    let input = read_token_arg(&a.token)?;
    // A QR code of a broken token helps nobody: decode first, then draw the
    // shortest form.
    let t = token::decode(&input).map_err(|e| format!("cannot draw this token: {e}"))?;
    let payload = t.encode_compact();
    let code = TokenQr::new(&payload).map_err(|e| format!("token does not fit a QR code: {e}"))?;
    let written = if let Some(path) = &a.svg {
        std::fs::write(path, code.to_svg()).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Some(path)
    } else if let Some(path) = &a.png {
        std::fs::write(path, code.to_png(usize::from(a.scale)))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Some(path)
    } else {
        None
    };
    if ctx.json {
        let v = serde_json::json!({
            "qr_version": code.version(),
            "error_correction": "M",
            "modules": code.width(),
            "payload": payload,
            "file": written,
        });
        println!("{v}");
    } else {
        if written.is_none() {
            print!("{}", code.to_terminal());
            println!();
        }
        eprintln!(
            "QR version {} (error correction M, {}×{} modules), {} characters{}",
            code.version(),
            code.width(),
            code.width(),
            payload.len(),
            written.map(|p| format!(", written to {}", p.display())).unwrap_or_default()
        );
    }
    Ok(())
}
