//! A relay on a UDP socket of its own: the engine's [`crate::relay::Relay`]
//! driven by tokio. `convoke relay` runs this on a public machine.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use convoke_node::relay::{RelayConfig, RelayLimits};
//! use convoke_node::runtime::relay;
//!
//! let socket = tokio::net::UdpSocket::bind("0.0.0.0:3479").await?;
//! let config = RelayConfig { limits: RelayLimits::unlimited(), allow: None };
//! let stats = relay::serve(socket, config, |event| println!("{event:?}"), tokio::signal::ctrl_c()).await?;
//! println!("forwarded {} bytes", stats.forwarded_bytes);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use rand_core::Rng;
use tokio::net::UdpSocket;

use super::telemetry;
use crate::relay::{Relay, RelayConfig, RelayEvent, RelayStats};

/// The largest datagram a relay reads: a UDP payload's maximum.
const MAX_DATAGRAM: usize = 65_535;

/// Serves `config`'s relay on `socket` until `shutdown` resolves (then
/// tells every bound end that its circuit ended) or the socket fails.
/// `on_event` sees each circuit granted, bound, refused and ended. Returns
/// the relay's counters.
///
/// Metrics (with a recorder installed, as `convoke relay --metrics` does;
/// brought up to date at most once a second):
/// `convoke_relay_circuits` (gauge), and the counters
/// `convoke_relay_allocations_total{result="granted"|"refused"}`,
/// `convoke_relay_forwarded_bytes_total`,
/// `convoke_relay_forwarded_packets_total` and
/// `convoke_relay_dropped_total{reason="rate"|"unbound"|"malformed"|"forged"|"busy"}`.
pub async fn serve<S>(
    socket: UdpSocket,
    config: RelayConfig,
    mut on_event: impl FnMut(&RelayEvent),
    shutdown: S,
) -> io::Result<RelayStats>
where
    S: Future,
{
    let mut seed = [0u8; 32];
    super::os_rng().fill_bytes(&mut seed);
    let mut relay = Relay::new(config, seed, Instant::now(), super::unix_now());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut next_record = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let deadline = relay.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            got = socket.recv_from(&mut buf) => match got {
                Ok((n, from)) => {
                    let now = Instant::now();
                    relay.handle_datagram(now, from, &buf[..n]);
                    // Under a steady stream the timer branch may never win:
                    // expiries run here too.
                    if relay.poll_timeout().is_some_and(|t| t <= now) {
                        relay.handle_timeout(now);
                    }
                }
                // An ICMP error reported on the socket: one peer's, not ours.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) => {}
                Err(e) => return Err(e),
            },
            _ = sleep_until(deadline) => relay.handle_timeout(Instant::now()),
        }
        flush(&socket, &mut relay, &mut on_event).await;
        if Instant::now() >= next_record {
            telemetry::sample_relay(&relay);
            next_record = Instant::now() + Duration::from_secs(1);
        }
    }
    relay.shutdown(Instant::now());
    flush(&socket, &mut relay, &mut on_event).await;
    telemetry::sample_relay(&relay);
    Ok(relay.stats().clone())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn flush(socket: &UdpSocket, relay: &mut Relay, on_event: &mut impl FnMut(&RelayEvent)) {
    while let Some(t) = relay.poll_transmit() {
        // A send that fails (no route, a full buffer) loses that datagram
        // only; the ends retransmit what matters.
        if let Err(e) = socket.send_to(&t.contents, t.destination).await {
            tracing::debug!("relay: send to {} failed: {e}", t.destination);
        }
    }
    while let Some(e) = relay.poll_event() {
        on_event(&e);
    }
}
