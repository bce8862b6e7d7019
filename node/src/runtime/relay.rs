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

/// Receive buffers per system call, and each one's size: a GRO-coalesced
/// run of datagrams from one sender fills one (as in the node's driver).
const RECV_BATCH: usize = 8;
const RECV_SLOT: usize = 64 * 1024;

/// Serves `config`'s relay on `socket` until `shutdown` resolves (then
/// tells every bound end that its circuit ended) or the socket fails.
/// `on_event` sees each circuit granted, bound, refused and ended. Returns
/// the relay's counters.
///
/// Data is forwarded as it came, without a copy: several datagrams are
/// read a system call (`recvmmsg`, and GRO where the kernel coalesces a
/// sender's run of datagrams), and a run of them bound for one end goes
/// out in one (GSO), through `quinn-udp`, which the node's own driver uses
/// too.
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
    let state = quinn_udp::UdpSocketState::new((&socket).into())?;
    let mut bufs = vec![vec![0u8; RECV_SLOT]; RECV_BATCH];
    let mut next_record = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let deadline = relay.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            ready = socket.readable() => {
                ready?;
                receive(&socket, &state, &mut relay, &mut bufs).await?;
            }
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

/// Reads what waits on the socket (bounded per wakeup), forwards the data
/// and hands the rest to the relay.
async fn receive(
    socket: &UdpSocket,
    state: &quinn_udp::UdpSocketState,
    relay: &mut Relay,
    bufs: &mut [Vec<u8>],
) -> io::Result<()> {
    let mut meta = [quinn_udp::RecvMeta::default(); RECV_BATCH];
    for _ in 0..32 {
        let got = {
            let mut iovs: Vec<io::IoSliceMut<'_>> = bufs.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
            socket.try_io(tokio::io::Interest::READABLE, || state.recv(socket.into(), &mut iovs, &mut meta))
        };
        let n = match got {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // An ICMP error reported on the socket: one peer's, not ours.
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) => {
                continue;
            }
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
            let stride = if m.stride == 0 { m.len.max(1) } else { m.stride };
            let data = &buf[..m.len.min(buf.len())];
            // A run of forwarded datagrams for one address, as (to, start, end).
            let mut run: Option<(std::net::SocketAddr, usize, usize)> = None;
            for (k, d) in data.chunks(stride).enumerate() {
                let at = k * stride;
                let to = relay.forward(now, m.addr, d);
                if let (Some((dest, _, end)), Some(to)) = (&mut run, to)
                    && *dest == to
                {
                    *end = at + d.len();
                    continue;
                }
                // The run ends before a datagram that goes elsewhere, or
                // nowhere (dropped data, a control packet).
                if let Some((dest, a, b)) = run.take() {
                    send_run(socket, state, dest, &data[a..b], stride).await;
                }
                match to {
                    Some(to) => run = Some((to, at, at + d.len())),
                    None if d.first() != Some(&crate::relay::wire::DATA) => relay.handle_datagram(now, m.addr, d),
                    None => {}
                }
            }
            if let Some((dest, a, b)) = run {
                send_run(socket, state, dest, &data[a..b], stride).await;
            }
        }
        if relay.poll_timeout().is_some_and(|t| t <= now) {
            // Under a steady stream the timer branch may never win.
            relay.handle_timeout(now);
        }
    }
    Ok(())
}

/// Sends `contents`, datagrams of `stride` bytes (the last may be shorter),
/// to `to`: as few system calls as the socket's GSO allows, waiting while
/// its buffer is full. A send that fails (no route) loses those datagrams
/// only; the ends retransmit what matters.
async fn send_run(
    socket: &UdpSocket,
    state: &quinn_udp::UdpSocketState,
    to: std::net::SocketAddr,
    contents: &[u8],
    stride: usize,
) {
    let mut rest = contents;
    while !rest.is_empty() {
        // Asked each time: quinn-udp turns GSO off when the kernel refuses it.
        let per_call = state.max_gso_segments().max(1) * stride;
        let (chunk, tail) = rest.split_at(per_call.min(rest.len()));
        rest = tail;
        let t = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents: chunk,
            segment_size: (chunk.len() > stride).then_some(stride),
            src_ip: None,
        };
        // Bounded: a socket that stays unwritable loses this chunk.
        for _ in 0..64 {
            match socket.try_io(tokio::io::Interest::WRITABLE, || state.send(socket.into(), &t)) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if socket.writable().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!("relay: send to {to} failed: {e}");
                    break;
                }
            }
        }
    }
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
