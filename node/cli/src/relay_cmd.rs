//! `convoke relay`: a standalone relay on a public machine, forwarding
//! between pairs of peers that have no direct path (both behind symmetric
//! NATs, say). The sessions stay end-to-end encrypted through it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use convoke_node::identity::PeerId;
use convoke_node::relay::{RelayConfig, RelayEvent, RelayLimits};
use convoke_node::runtime::{relay, telemetry};
use serde_json::json;

use crate::session_cmd::Voice;
use crate::{Ctx, Failure};

/// The relay's default port, next to STUN's 3478.
pub(crate) const DEFAULT_PORT: u16 = 3479;

#[derive(Args, Debug)]
pub struct RelayArgs {
    /// Address to serve on.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    listen: SocketAddr,
    /// No cap on bytes, rate or lifetime, and room for 10,000 circuits (64
    /// a peer); circuits not bound in 30 s or idle for 5 minutes still end.
    /// For a relay that serves your own network: name its members with
    /// --allow. The caps below still apply when given (0: no limit).
    #[arg(long)]
    unlimited: bool,
    /// Circuits at once, in all (default 16; 0: no limit).
    #[arg(long, value_name = "N")]
    circuits: Option<u32>,
    /// Circuits at once one peer may be an end of (default 4; 0: no limit).
    #[arg(long, value_name = "N")]
    circuits_per_peer: Option<u32>,
    /// How long a circuit may live (default 2m; 0: no limit).
    #[arg(long, value_name = "DURATION", value_parser = parse_span)]
    circuit_duration: Option<u64>,
    /// Bytes a circuit may carry, both ways (default 131072; 0: no limit).
    #[arg(long, value_name = "BYTES")]
    circuit_bytes: Option<u64>,
    /// Bytes a second a circuit may carry (default 65536; 0: no limit).
    #[arg(long, value_name = "BYTES")]
    circuit_rate: Option<u32>,
    /// Bytes a second the relay forwards in all (default 1048576; 0: no limit).
    #[arg(long, value_name = "BYTES")]
    total_rate: Option<u64>,
    /// Serve only requests signed by this peer (repeat for more). The
    /// peers they name need not be listed. Default: anyone.
    #[arg(long, value_name = "PEER_ID")]
    allow: Vec<PeerId>,
    /// Serve Prometheus metrics at http://ADDR/metrics (`--metrics` alone
    /// means 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
    metrics: Option<SocketAddr>,
}

fn parse_span(s: &str) -> Result<u64, String> {
    if s.trim() == "0" { Ok(0) } else { crate::util::parse_duration(s) }
}

impl RelayArgs {
    fn config(&self) -> RelayConfig {
        let mut l = if self.unlimited { RelayLimits::unlimited() } else { RelayLimits::default() };
        // 0 on the command line: no limit.
        fn cap<T: Default + PartialEq>(n: T) -> Option<T> {
            (n != T::default()).then_some(n)
        }
        if let Some(n) = self.circuits {
            l.circuits = cap(n);
        }
        if let Some(n) = self.circuits_per_peer {
            l.circuits_per_peer = cap(n);
        }
        if let Some(s) = self.circuit_duration {
            l.circuit_duration = cap(s).map(Duration::from_secs);
        }
        if let Some(n) = self.circuit_bytes {
            l.circuit_bytes = cap(n);
        }
        if let Some(n) = self.circuit_rate {
            l.circuit_rate = cap(n);
        }
        if let Some(n) = self.total_rate {
            l.total_rate = cap(n);
        }
        let allow =
            (!self.allow.is_empty()).then(|| self.allow.iter().map(PeerId::public_key).collect::<BTreeSet<_>>());
        RelayConfig { limits: l, allow }
    }
}

fn limit<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "no limit".to_owned(), |v| v.to_string())
}

pub(crate) fn relay(ctx: &Ctx, a: RelayArgs) -> Result<(), Failure> {
    let config = a.config();
    let voice = Voice::of(ctx);
    let say = |human: String, event: serde_json::Value| voice.say(human, event);
    let rt = crate::session_cmd::runtime()?;
    rt.block_on(async {
        if let Some(addr) = a.metrics {
            telemetry::install(addr)?;
        }
        let socket = tokio::net::UdpSocket::bind(a.listen)
            .await
            .map_err(|e| Failure { message: format!("cannot serve on {}: {e}", a.listen), status: 1 })?;
        let local = socket.local_addr()?;
        let l = &config.limits;
        say(
            format!(
                "convoke: relaying on {local}: circuits {}, {} a peer, {} bytes, {} bytes/s and {} s each, {} bytes/s in all",
                limit(l.circuits),
                limit(l.circuits_per_peer),
                limit(l.circuit_bytes),
                limit(l.circuit_rate),
                limit(l.circuit_duration.map(|d| d.as_secs())),
                limit(l.total_rate),
            ),
            json!({
                "event": "relaying", "addr": local.to_string(), "circuits": l.circuits,
                "circuits_per_peer": l.circuits_per_peer, "circuit_bytes": l.circuit_bytes,
                "circuit_rate": l.circuit_rate, "circuit_duration_s": l.circuit_duration.map(|d| d.as_secs()),
                "total_rate": l.total_rate, "allow": a.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        let stats = relay::serve(socket, config, |e| report(&say, e), stop).await?;
        say(
            format!(
                "convoke: relay stopped: {} circuits, {} bytes forwarded in {} packets, {} refused",
                stats.allocated, stats.forwarded_bytes, stats.forwarded_packets, stats.refused
            ),
            json!({
                "event": "stopped", "circuits": stats.allocated, "refused": stats.refused,
                "forwarded_bytes": stats.forwarded_bytes, "forwarded_packets": stats.forwarded_packets,
                "dropped_rate": stats.dropped_rate, "dropped_unbound": stats.dropped_unbound,
                "dropped_forged": stats.dropped_forged, "dropped_malformed": stats.dropped_malformed,
            }),
        );
        Ok(())
    })
}

fn report(say: &impl Fn(String, serde_json::Value), e: &RelayEvent) {
    match e {
        RelayEvent::Allocated { circuit, a, b } => say(
            format!("circuit {circuit:016x}: {} asked for one to {}", a.peer_id(), b.peer_id()),
            json!({ "event": "circuit", "circuit": format!("{circuit:016x}"), "a": a.peer_id().to_string(), "b": b.peer_id().to_string() }),
        ),
        RelayEvent::Bound { circuit, side, addr } => say(
            format!("circuit {circuit:016x}: end {side:?} bound from {addr}"),
            json!({ "event": "bound", "circuit": format!("{circuit:016x}"), "side": format!("{side:?}"), "addr": addr.to_string() }),
        ),
        RelayEvent::Refused { a, reason } => say(
            format!("refused a circuit to {}: {}", a.peer_id(), reason.as_str()),
            json!({ "event": "refused", "a": a.peer_id().to_string(), "reason": reason.as_str() }),
        ),
        RelayEvent::Closed { circuit, reason, bytes, lived } => say(
            format!(
                "circuit {circuit:016x} ended ({}): {bytes} bytes in {:.1} s",
                reason.as_str(),
                lived.as_secs_f64()
            ),
            json!({ "event": "circuit_closed", "circuit": format!("{circuit:016x}"), "reason": reason.as_str(), "bytes": bytes, "lived_s": lived.as_secs_f64() }),
        ),
    }
}
