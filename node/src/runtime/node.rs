//! The tokio driver of the engine: UDP sockets (IPv4 and IPv6) feeding a
//! [`Host`], host and server-reflexive candidates, and the control socket.
//! An [`App`] (the CLI's pipe, a benchmark) decides what to do with
//! sessions; the node runs the I/O.
//!
//! The loop is single-threaded: it waits for a datagram, the host's next
//! deadline, the app or a control request; hands the input to the host;
//! then drains the host's transmits and events completely (the engine's
//! drive rule).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::host::{Host, HostConfig, HostEvent};
use crate::ice::{SocketId, Transmit};
use crate::identity::Identity;
use crate::member::Minter;
use crate::token::Candidate;

use super::portmap::{PortMapper, Protocol, Report};
use super::{control, telemetry};

/// How a node binds and what it asks.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Addresses to bind. An unspecified address (`0.0.0.0`, `[::]`)
    /// offers every interface address of its family as a host candidate.
    pub listen: Vec<SocketAddr>,
    /// STUN servers asked for our server-reflexive address.
    pub stun: Vec<SocketAddr>,
    /// Control socket path; `None` picks one per process under the
    /// runtime directory (see [`control::socket_dir`]).
    pub control: Option<PathBuf>,
    /// Whether to open a control socket at all (libraries and benchmarks
    /// running several nodes in one process may not want one).
    pub control_socket: bool,
    /// Engine tunables.
    pub host: HostConfig,
    /// Socket buffer sizes asked of the kernel (it may cap them).
    pub socket_buffer: usize,
    /// Publish the engine's counters to [`metrics`] every second (serve
    /// them with [`super::telemetry::install`]). Events are counted either way.
    pub metrics: bool,
    /// Ask the router for a port mapping (PCP, NAT-PMP, UPnP IGD; see
    /// [`super::portmap`]) and offer it in our tokens. Never done for a
    /// socket on loopback.
    pub port_mapping: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 0)), SocketAddr::from(([0u16; 8], 0))],
            stun: Vec::new(),
            control: None,
            control_socket: true,
            metrics: false,
            port_mapping: true,
            host: HostConfig::default(),
            socket_buffer: 4 << 20,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
        /// Advice for people.
        hint: &'static str,
    },
    /// No socket at all could be bound.
    #[error("no listen address could be bound")]
    NoSocket,
    /// The control socket could not be created.
    #[error("cannot create the control socket {path}: {source}")]
    Control {
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// What an app sees of the node while it acts.
pub struct NodeCtx<'a> {
    /// The engine.
    pub host: &'a mut Host,
    /// The current time.
    pub now: Instant,
    /// The candidates our tokens offer now (see [`Minter`]).
    pub candidates: &'a [Candidate],
    /// Our identity.
    pub identity: &'a Identity,
    /// Mints our invitations and RSVPs with those candidates.
    pub minter: &'a mut Minter,
}

/// What runs on a node: reacts to events and moves application data.
pub trait App {
    /// What the app returns when it is done.
    type Output;
    /// Candidates are known (STUN answered or gave up): start.
    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>);
    /// Every host event, in order.
    fn on_event(&mut self, ctx: &mut NodeCtx<'_>, event: HostEvent);
    /// After each round of input: move data; `Some` ends the run.
    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<Self::Output>;
    /// Resolves when the app has input of its own (must be cancel-safe).
    fn wake(&mut self) -> impl Future<Output = ()>;
    /// A control-socket client did something worth telling the user.
    fn note(&mut self, message: &str) {
        eprintln!("convoke: {message}");
    }
    /// What the app adds to the node's status (under `"overlay"`).
    fn status(&self) -> Option<Value> {
        None
    }
    /// Answers a control request the node itself does not handle
    /// (`None`: this app does not support it).
    fn control(&mut self, _req: &control::Request) -> Option<Value> {
        None
    }
    /// The machine's interface addresses changed; `hosts` are our host
    /// candidates now (the node's own minter has them already).
    fn on_addresses(&mut self, _ctx: &mut NodeCtx<'_>, _hosts: &[SocketAddr]) {}
}

/// A UDP socket with its offload state (GSO/GRO where the kernel has them).
struct Sock {
    io: UdpSocket,
    state: quinn_udp::UdpSocketState,
}

/// Datagrams to one destination, all `seg` bytes but the last, sent with
/// one system call (generic segmentation offload).
struct Batch {
    dest: SocketAddr,
    buf: Vec<u8>,
    seg: usize,
}

/// Datagrams received per system call, and bytes per datagram slot (a GRO
/// slot holds many coalesced datagrams).
const RECV_BATCH: usize = 8;
const RECV_SLOT: usize = 64 * 1024;
/// Largest UDP payload one GSO send may carry.
const GSO_MAX_BYTES: usize = 65_000;

/// Extra sockets the engine opens for birthday probing (see
/// [`SocketId`]): bound on first use at the main socket's address with a
/// port from the kernel, each read by its own task into one channel, closed
/// when the engine says. They carry little (probes at a bounded rate, or
/// one session), so they skip the main sockets' batching.
struct Pool {
    sockets: HashMap<SocketId, (Arc<UdpSocket>, tokio::task::JoinHandle<()>)>,
    tx: mpsc::Sender<(SocketId, SocketAddr, Vec<u8>)>,
    rx: mpsc::Receiver<(SocketId, SocketAddr, Vec<u8>)>,
}

/// Datagrams from pool sockets waiting for the loop.
const POOL_QUEUE: usize = 1024;

impl Pool {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel(POOL_QUEUE);
        Self { sockets: HashMap::new(), tx, rx }
    }

    /// Sends on pool socket `id`, binding it first (at `base`'s address) if
    /// this is its first datagram. A datagram the socket cannot take now is
    /// dropped: probes are many and sessions retransmit.
    fn send(&mut self, id: SocketId, base: Option<SocketAddr>, t: &Transmit) {
        if !self.sockets.contains_key(&id) {
            let Some(base) = base else { return };
            let any = SocketAddr::new(base.ip(), 0);
            let sock = match std::net::UdpSocket::bind(any)
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .and_then(UdpSocket::from_std)
            {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    tracing::debug!("cannot open a probing socket: {e}");
                    return;
                }
            };
            let (reader, tx) = (sock.clone(), self.tx.clone());
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                // Bounded by the socket's life: the task is aborted when the
                // engine closes the socket. Errors (an ICMP unreachable
                // surfacing as a reset) do not end it.
                loop {
                    match reader.recv_from(&mut buf).await {
                        Ok((n, from)) => {
                            if tx.try_send((id, from, buf[..n].to_vec())).is_err() && tx.is_closed() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                        Err(_) => return,
                    }
                }
            });
            self.sockets.insert(id, (sock, task));
        }
        if let Some((sock, _)) = self.sockets.get(&id) {
            // A low TTL for this datagram only (a hard invitee's pool
            // packet), where the kernel lets us set it.
            let restore = t.ttl.and_then(|ttl| set_ttl(sock, t.destination, u32::from(ttl)));
            if let Err(e) = sock.try_send_to(&t.contents, t.destination) {
                tracing::debug!("probing socket send to {} failed: {e}", t.destination);
            }
            if let Some(previous) = restore {
                let _ = set_ttl(sock, t.destination, previous);
            }
        }
    }

    fn close(&mut self, id: SocketId) {
        if let Some((_, task)) = self.sockets.remove(&id) {
            task.abort();
        }
    }
}

/// Sets the TTL (IPv4) or hop limit (IPv6) of `sock` for packets to
/// `dest`'s family; returns the previous value, or `None` if the kernel
/// refused (the datagram then goes with the default).
fn set_ttl(sock: &UdpSocket, dest: SocketAddr, ttl: u32) -> Option<u32> {
    let s = socket2::SockRef::from(sock);
    if dest.is_ipv4() {
        let previous = s.ttl_v4().ok()?;
        s.set_ttl_v4(ttl).ok()?;
        Some(previous)
    } else {
        let previous = s.unicast_hops_v6().ok()?;
        s.set_unicast_hops_v6(ttl).ok()?;
        Some(previous)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (_, task) in self.sockets.values() {
            task.abort();
        }
    }
}

/// A bound node: sockets, engine, control socket.
pub struct Node {
    host: Host,
    identity: Identity,
    v4: Option<Sock>,
    v6: Option<Sock>,
    /// A transmit taken from the host that did not fit the last batch.
    carry: Option<Transmit>,
    /// Probing sockets.
    pool: Pool,
    /// Our addresses and the one place our tokens are minted.
    minter: Minter,
    /// What the minter selects now, for apps and status.
    candidates: Vec<Candidate>,
    stun_pending: usize,
    control: Option<control::Server>,
    started: Instant,
    /// Whether to publish counters every second.
    metrics: bool,
    io: telemetry::Io,
    /// The router port mapping task, while it runs.
    portmap: Option<PortMapper>,
    /// What it last said, for status.
    mapping: MappingState,
    /// The STUN servers to ask again when our host addresses change.
    stun: Vec<SocketAddr>,
}

/// How often the interface addresses are read again (a netlink dump;
/// cheap), so that a laptop that changed networks notices within seconds.
const ADDRESS_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a node waits for its router's port mapping before it calls
/// itself ready: the first token should carry the mapped address, but a
/// router that does not answer must not hold up a start for long.
const PORT_MAPPING_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The port mapping, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MappingState {
    Off,
    Asking,
    Mapped { protocol: Protocol, external: SocketAddr, lifetime: std::time::Duration, since: Instant },
    Unavailable(String),
}

fn bind_one(addr: SocketAddr, buffer: usize) -> Result<Sock, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source: io::Error| {
        let hint = match source.kind() {
            io::ErrorKind::AddrInUse => {
                " (another program, perhaps another convoke, uses this port; pick another with --listen)"
            }
            io::ErrorKind::AddrNotAvailable => " (no interface of this machine has that address)",
            io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
            _ => "",
        };
        StartError::Bind { addr, source, hint }
    };
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(err)?;
    }
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    let io = UdpSocket::from_std(s.into()).map_err(err)?;
    let state = quinn_udp::UdpSocketState::new((&io).into()).map_err(err)?;
    Ok(Sock { io, state })
}

/// Host candidates for a socket bound at `local`: the address itself, or
/// for an unspecified address every usable interface address of its family
/// (loopback only when nothing else exists; IPv6 link-local never, as it
/// needs a scope).
pub fn host_addresses(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut out = Vec::new();
    let mut loopback = Vec::new();
    for iface in if_addrs::get_if_addrs().unwrap_or_default() {
        let ip = iface.ip();
        if ip.is_ipv4() != local.is_ipv4() {
            continue;
        }
        if let IpAddr::V6(v6) = ip
            && (v6.segments()[0] & 0xffc0) == 0xfe80
        {
            continue;
        }
        let a = SocketAddr::new(ip, local.port());
        if ip.is_loopback() { loopback.push(a) } else { out.push(a) }
    }
    if out.is_empty() { loopback } else { out }
}

impl Node {
    /// Binds the sockets and the control socket; asks the STUN servers.
    /// Call it inside the tokio runtime that will [`Node::run`] it: the
    /// sockets register with that runtime's reactor.
    pub fn bind(identity: Identity, config: NodeConfig, seed: [u8; 32]) -> Result<Node, StartError> {
        let now = Instant::now();
        let mut host = Host::new(&identity, config.host.clone(), seed, now, super::unix_now());
        let (mut v4, mut v6) = (None, None);
        let mut addrs = Vec::new();
        for addr in &config.listen {
            let slot = if addr.is_ipv4() { &mut v4 } else { &mut v6 };
            if slot.is_some() {
                continue; // one socket per family: the engine's pairs key on the remote address
            }
            match bind_one(*addr, config.socket_buffer) {
                Ok(s) => {
                    let local =
                        s.io.local_addr().map_err(|source| StartError::Bind { addr: *addr, source, hint: "" })?;
                    addrs.extend(host_addresses(local));
                    *slot = Some(s);
                }
                // A machine without IPv6 still runs on IPv4 when both were
                // asked by default; an address given on purpose must bind.
                Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() && config.listen.len() > 1 => {
                    tracing::debug!("IPv6 unavailable: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        if v4.is_none() && v6.is_none() {
            return Err(StartError::NoSocket);
        }
        // NAT classification compares STUN answers with our own addresses.
        let port = v4.as_ref().or(v6.as_ref()).and_then(|s| s.io.local_addr().ok()).map(|a| a.port());
        let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
        host.set_local_addresses(port, &ips);
        let mut mint_seed = seed;
        mint_seed[0] ^= 0x3c;
        let mut minter = Minter::new(identity.clone(), mint_seed);
        for a in addrs {
            minter.candidates_mut().add_host(a);
        }
        let candidates = minter.candidates().select();
        let usable: Vec<SocketAddr> =
            config.stun.iter().copied().filter(|s| if s.is_ipv4() { v4.is_some() } else { v6.is_some() }).collect();
        for s in &usable {
            host.query_stun(*s, now);
        }
        let portmap = if config.port_mapping {
            v4.as_ref().and_then(|s| s.io.local_addr().ok()).and_then(PortMapper::start)
        } else {
            None
        };
        let mapping = if portmap.is_some() { MappingState::Asking } else { MappingState::Off };
        let control = if config.control_socket {
            Some(
                control::Server::bind(config.control.clone())
                    .map_err(|e| StartError::Control { path: e.path, source: e.source })?,
            )
        } else {
            None
        };
        Ok(Node {
            host,
            identity,
            v4,
            v6,
            carry: None,
            pool: Pool::new(),
            minter,
            candidates,
            stun_pending: usable.len(),
            control,
            started: now,
            metrics: config.metrics,
            io: telemetry::Io::default(),
            portmap,
            mapping,
            stun: usable,
        })
    }

    /// Our host candidates now, from the bound sockets' addresses.
    fn gather_hosts(&self) -> Vec<SocketAddr> {
        [self.v4.as_ref(), self.v6.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.io.local_addr().ok())
            .flat_map(host_addresses)
            .collect()
    }

    /// Reads the interface addresses again; when they changed, tells the
    /// host (NAT classification), the minter and the app, and asks the
    /// STUN servers again.
    fn check_addresses<A: App>(&mut self, app: &mut A, now: Instant, ready: bool) {
        // The minter holds the host addresses last gathered, and says
        // whether the new set differs.
        let hosts = self.gather_hosts();
        if !self.minter.candidates_mut().set_hosts(hosts.clone()) {
            return;
        }
        tracing::info!("interface addresses changed: now {hosts:?}");
        let port = hosts.first().map(SocketAddr::port);
        let ips: Vec<IpAddr> = hosts.iter().map(SocketAddr::ip).collect();
        self.host.set_local_addresses(port, &ips);
        self.candidates = self.minter.candidates().select();
        for s in self.stun.clone() {
            self.host.query_stun(s, now);
        }
        if ready {
            app.on_addresses(&mut self.ctx(now), &hosts);
        }
    }

    /// What an app sees of the node at `now`.
    fn ctx(&mut self, now: Instant) -> NodeCtx<'_> {
        NodeCtx {
            host: &mut self.host,
            now,
            candidates: &self.candidates,
            identity: &self.identity,
            minter: &mut self.minter,
        }
    }

    /// The candidates our tokens offer so far.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// Mints our tokens (with [`Node::candidates`]).
    pub fn minter(&mut self) -> &mut Minter {
        &mut self.minter
    }

    /// The bound local addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        [&self.v4, &self.v6].into_iter().flatten().filter_map(|s| s.io.local_addr().ok()).collect()
    }

    /// The control socket's path.
    pub fn control_path(&self) -> Option<&std::path::Path> {
        self.control.as_ref().map(|c| c.path())
    }

    fn socket_for(&self, dest: SocketAddr) -> Option<&Sock> {
        if dest.is_ipv4() { self.v4.as_ref() } else { self.v6.as_ref() }
    }

    /// The host's next datagrams to one destination, as one batch: equal
    /// sizes but a shorter last one, as many as one GSO send takes.
    fn next_batch(&mut self, now: Instant) -> Option<Batch> {
        let mut first = self.carry.take().or_else(|| self.host.poll_transmit(now))?;
        // Bounded: the host queues finitely many transmits.
        while first.socket != SocketId::MAIN {
            // A socket the engine closed since it queued this stays closed.
            if self.host.endpoint().is_socket_open(first.socket) {
                let base = self.socket_for(first.destination).and_then(|s| s.io.local_addr().ok());
                self.pool.send(first.socket, base, &first);
            }
            first = self.host.poll_transmit(now)?;
        }
        let seg = first.contents.len().max(1);
        let gso = self.socket_for(first.destination).map_or(1, |s| s.state.max_gso_segments());
        let max = gso.min(GSO_MAX_BYTES / seg).max(1);
        let dest = first.destination;
        let mut buf = first.contents;
        let mut n = 1;
        while n < max {
            let Some(t) = self.host.poll_transmit(now) else { break };
            if t.destination != dest || t.contents.len() > seg || t.contents.is_empty() || t.socket != SocketId::MAIN {
                self.carry = Some(t);
                break;
            }
            let last = t.contents.len() < seg;
            buf.extend_from_slice(&t.contents);
            n += 1;
            if last {
                break;
            }
        }
        Some(Batch { dest, buf, seg })
    }

    /// Sends what the host has queued. Returns a batch the socket could
    /// not take yet.
    fn flush(&mut self, now: Instant, mut pending: Option<Batch>) -> Option<Batch> {
        loop {
            let b = match pending.take() {
                Some(b) => b,
                None => self.next_batch(now)?,
            };
            let Some(sock) = self.socket_for(b.dest) else { continue };
            let t = quinn_udp::Transmit {
                destination: b.dest,
                ecn: None,
                contents: &b.buf,
                segment_size: (b.buf.len() > b.seg).then_some(b.seg),
                src_ip: None,
            };
            match sock.io.try_io(tokio::io::Interest::WRITABLE, || sock.state.send((&sock.io).into(), &t)) {
                Ok(()) => {
                    self.io.bytes_out += b.buf.len() as u64;
                    self.io.datagrams_out += b.buf.len().div_ceil(b.seg) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(b),
                // Unreachable networks and the like: the engine retries.
                Err(e) => tracing::debug!("send to {} failed: {e}", b.dest),
            }
        }
    }

    fn mapping_status(&self, now: Instant) -> Value {
        match &self.mapping {
            MappingState::Off => json!({ "state": "off" }),
            MappingState::Asking => json!({ "state": "asking" }),
            MappingState::Mapped { protocol, external, lifetime, since } => json!({
                "state": "mapped",
                "protocol": protocol.name(),
                "external": external.to_string(),
                "expires_in_seconds": lifetime.saturating_sub(now.saturating_duration_since(*since)).as_secs(),
            }),
            MappingState::Unavailable(reason) => json!({ "state": "unavailable", "reason": reason }),
        }
    }

    /// Takes the port mapper's news: the mapped address becomes (or stops
    /// being) a candidate in the tokens we mint from now on.
    fn on_port_mapping(&mut self, report: Report, now: Instant) {
        telemetry::on_port_mapping(&report);
        let mapped = match &report {
            Report::Mapped { protocol, external, lifetime } => {
                let renewed = matches!(&self.mapping,
                    MappingState::Mapped { protocol: p, external: e, .. } if p == protocol && e == external);
                if renewed {
                    tracing::debug!("port mapping: {external} renewed for {lifetime:?}");
                } else {
                    tracing::info!("port mapping: the router forwards {external} to us ({})", protocol.name());
                }
                self.mapping =
                    MappingState::Mapped { protocol: *protocol, external: *external, lifetime: *lifetime, since: now };
                Some(*external)
            }
            Report::Unavailable { reason } => {
                if self.mapping != MappingState::Unavailable(reason.clone()) {
                    tracing::info!("port mapping: none ({reason})");
                }
                self.mapping = MappingState::Unavailable(reason.clone());
                None
            }
        };
        self.host.set_port_mapped(mapped.is_some());
        if self.minter.candidates_mut().set_port_mapped(mapped) {
            self.candidates = self.minter.candidates().select();
        }
    }

    fn status(&self, now: Instant) -> Value {
        let sessions: Vec<Value> = self
            .host
            .sessions()
            .filter_map(|id| self.host.session(id).map(|s| (id, s)))
            .map(|(id, s)| {
                json!({
                    "session": id.0,
                    "peer_id": s.peer.peer_id().to_string(),
                    "remote": s.relay.unwrap_or(s.remote).to_string(),
                    "remote_kind": format!("{:?}", s.remote_kind).to_lowercase(),
                    "relay": s.relay.map(|r| r.to_string()),
                    "established_by": s.via.name(),
                    "we_invited": s.inviter,
                    "up_seconds": now.saturating_duration_since(s.established).as_secs(),
                    "rtt_ms": s.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    "bytes_sent": s.stats.bytes_sent,
                    "bytes_received": s.stats.bytes_received,
                    "packets_lost": s.stats.packets_lost,
                })
            })
            .collect();
        let nat = self.host.nat().map(|n| {
            let (mapping, ports) = telemetry::nat_labels(&n);
            json!({ "mapping": mapping, "ports": ports, "delta": n.delta })
        });
        let e = self.host.endpoint().stats();
        let probing = json!({
            "enabled": self.host.endpoint().config().probing,
            "started": e.probing_started,
            "connected": e.probing_connected,
            "probes_sent": e.probes_sent,
            "pool_sockets_opened": e.pool_sockets_opened,
        });
        json!({
            "peer_id": self.identity.peer_id().to_string(),
            "pid": std::process::id(),
            "up_seconds": now.saturating_duration_since(self.started).as_secs(),
            "listen": self.local_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "candidates": self.minter.candidates().all().iter().map(|c| format!("{} {}", format!("{:?}", c.kind).to_lowercase(), c.address)).collect::<Vec<_>>(),
            "attempts": self.host.endpoint().attempt_count(),
            "stun_served": self.host.endpoint().stats().stun_served,
            "nat": nat,
            "probing": probing,
            "port_mapping": self.mapping_status(now),
            "sessions": sessions,
        })
    }

    fn on_control(&mut self, app: &mut impl App, now: Instant, req: control::Request, reply: oneshot::Sender<Value>) {
        let answer = match req {
            control::Request::Status => {
                let mut v = self.status(now);
                if let Some(o) = app.status() {
                    v["overlay"] = o;
                }
                v
            }
            req @ control::Request::Broadcast { .. } => app.control(&req).unwrap_or_else(|| {
                json!({ "ok": false, "code": "not_a_member", "error": "this node runs no overlay (start one with `convoke up`)" })
            }),
            control::Request::Rsvp { token } => match telemetry::counted(self.host.accept_rsvp(&token, now)) {
                Ok(_) => {
                    app.note("took an RSVP from the control socket; both sides are now trying at once");
                    json!({ "ok": true })
                }
                Err(e) => {
                    let code = match &e {
                        crate::ice::AcceptRsvpError::Token(t) => t.code(),
                        crate::ice::AcceptRsvpError::UnknownInvitation => "unknown_invitation",
                        crate::ice::AcceptRsvpError::Refused => "refused",
                    };
                    json!({ "ok": false, "code": code, "error": e.to_string() })
                }
            },
        };
        let _ = reply.send(answer);
    }

    /// Runs `app` until it returns.
    pub async fn run<A: App>(mut self, app: &mut A) -> io::Result<A::Output> {
        let mut bufs = vec![vec![0u8; RECV_SLOT]; RECV_BATCH];
        let mut pending_tx: Option<Batch> = None;
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<(control::Request, oneshot::Sender<Value>)>(16);
        if let Some(server) = self.control.as_mut() {
            server.start(ctl_tx);
        }
        let mut ready = false;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut addresses = tokio::time::interval(ADDRESS_CHECK);
        addresses.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        addresses.reset();
        loop {
            let now = Instant::now();
            pending_tx = self.flush(now, pending_tx);
            let mut events = Vec::new();
            while let Some(e) = self.host.poll_event() {
                events.push(e);
            }
            for e in events {
                match &e {
                    HostEvent::StunMapped { .. } | HostEvent::StunFailed { .. } => {
                        self.stun_pending = self.stun_pending.saturating_sub(1)
                    }
                    _ => {}
                }
                if self.minter.learn(&e) {
                    self.candidates = self.minter.candidates().select();
                }
                telemetry::on_event(&self.host, &e, now);
                app.on_event(&mut self.ctx(now), e);
            }
            while let Some(e) = self.host.poll_relay_event() {
                tracing::debug!("relay: {e:?}");
            }
            let mapping_settled = self.mapping != MappingState::Asking
                || now.saturating_duration_since(self.started) >= PORT_MAPPING_WAIT;
            if !ready && self.stun_pending == 0 && mapping_settled {
                ready = true;
                app.on_ready(&mut self.ctx(now));
            }
            if ready && let Some(out) = app.step(&mut self.ctx(now)) {
                // Send what the app's last step queued (a CLOSE, a final ACK).
                let now = Instant::now();
                pending_tx = self.flush(now, pending_tx);
                if let Some(b) = pending_tx
                    && let Some(s) = self.socket_for(b.dest)
                {
                    let _ = s.io.writable().await;
                    self.flush(now, Some(b));
                }
                if let Some(m) = self.portmap.take() {
                    m.release().await;
                }
                return Ok(out);
            }
            // Anything the step queued goes out before we sleep.
            pending_tx = self.flush(now, pending_tx);
            while let Some(id) = self.host.poll_socket_close() {
                self.pool.close(id);
            }
            let deadline = self.host.poll_timeout().map(tokio::time::Instant::from_std);
            let v4 = self.v4.as_ref();
            let v6 = self.v6.as_ref();
            let want_write = pending_tx.as_ref().map(|b| b.dest.is_ipv4());
            let portmap = self.portmap.as_mut();
            let mapping_deadline = tokio::time::Instant::from_std(self.started + PORT_MAPPING_WAIT);
            tokio::select! {
                r = async { v4.expect("guarded").io.readable().await }, if v4.is_some() => {
                    r?;
                    self.receive(true, &mut bufs);
                }
                r = async { v6.expect("guarded").io.readable().await }, if v6.is_some() => {
                    r?;
                    self.receive(false, &mut bufs);
                }
                r = async {
                    let s = if want_write == Some(true) { v4 } else { v6 };
                    s.expect("guarded").io.writable().await
                }, if want_write.is_some_and(|w| if w { v4.is_some() } else { v6.is_some() }) => { r?; }
                report = async { portmap.expect("guarded").next().await }, if portmap.is_some() => {
                    self.on_port_mapping(report, Instant::now());
                }
                _ = tokio::time::sleep_until(mapping_deadline), if !ready && !mapping_settled => {}
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    self.host.handle_timeout(Instant::now());
                }
                Some((id, from, mut data)) = self.pool.rx.recv() => {
                    self.io.bytes_in += data.len() as u64;
                    self.io.datagrams_in += 1;
                    self.host.handle_datagram_on(Instant::now(), id, from, &mut data);
                }
                Some((req, reply)) = ctl_rx.recv() => {
                    self.on_control(app, Instant::now(), req, reply);
                }
                _ = tick.tick(), if self.metrics => telemetry::sample(&self.host, &self.io),
                _ = addresses.tick() => self.check_addresses(app, Instant::now(), ready),
                _ = app.wake() => {}
            }
            if pending_tx.as_ref().is_some_and(|b| self.socket_for(b.dest).is_none()) {
                pending_tx = None;
            }
        }
    }

    /// Reads the datagrams waiting on one socket (bounded per wakeup),
    /// several per system call, splitting GRO-coalesced ones.
    fn receive(&mut self, v4: bool, bufs: &mut [Vec<u8>]) {
        let mut meta = [quinn_udp::RecvMeta::default(); RECV_BATCH];
        for _ in 0..32 {
            let sock = if v4 { self.v4.as_ref() } else { self.v6.as_ref() };
            let Some(sock) = sock else { return };
            let got = {
                let mut iovs: Vec<io::IoSliceMut<'_>> = bufs.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
                sock.io
                    .try_io(tokio::io::Interest::READABLE, || sock.state.recv((&sock.io).into(), &mut iovs, &mut meta))
            };
            match got {
                Ok(n) => {
                    let now = Instant::now();
                    for (m, buf) in meta.iter().zip(bufs.iter_mut()).take(n) {
                        let stride = if m.stride == 0 { m.len.max(1) } else { m.stride };
                        let len = m.len.min(buf.len());
                        for d in buf[..len].chunks_mut(stride) {
                            self.io.bytes_in += d.len() as u64;
                            self.io.datagrams_in += 1;
                            self.host.handle_datagram(now, m.addr, d);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors surface here on Linux; they are not fatal.
                Err(e) => tracing::debug!("receive: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{CandidateKind, InvitationParams, NatInfo};

    #[tokio::test(flavor = "current_thread")]
    async fn a_datagram_s_ttl_is_set_for_it_and_restored_after() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let dest: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let default = socket2::SockRef::from(&sock).ttl_v4().expect("ttl");
        assert_eq!(set_ttl(&sock, dest, 5), Some(default));
        assert_eq!(socket2::SockRef::from(&sock).ttl_v4().expect("ttl"), 5);
        assert_eq!(set_ttl(&sock, dest, default), Some(5));
        assert_eq!(socket2::SockRef::from(&sock).ttl_v4().expect("ttl"), default);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_port_mapping_becomes_a_candidate_in_the_next_token_and_leaves_with_the_mapping() {
        let identity = Identity::from_secret_bytes([7; 32]);
        let config = NodeConfig {
            listen: vec!["127.0.0.1:0".parse().expect("addr")],
            control_socket: false,
            ..NodeConfig::default()
        };
        let mut node = Node::bind(identity, config, [1; 32]).expect("binds");
        assert_eq!(node.mapping, MappingState::Off, "no mapper for a loopback socket");
        let external: SocketAddr = "198.18.4.1:40000".parse().expect("addr");
        let now = Instant::now();
        node.on_port_mapping(
            Report::Mapped { protocol: Protocol::Upnp, external, lifetime: std::time::Duration::from_secs(3600) },
            now,
        );
        assert!(node.candidates().iter().any(|c| c.address == external && c.kind == CandidateKind::Srflx));
        let inv = node.minter().invitation(InvitationParams::default(), super::super::unix_now()).expect("mints");
        let ci = &inv.token().body.connection_info;
        assert!(ci.ice_candidates.iter().any(|c| c.address == external), "{:?}", ci.ice_candidates);
        assert_eq!(ci.nat, Some(NatInfo::PORT_MAPPED), "peers are told nothing filters them at that address");
        let status = node.mapping_status(now);
        assert_eq!(status["state"], "mapped");
        assert_eq!(status["external"], "198.18.4.1:40000");
        assert_eq!(status["protocol"], "upnp");
        node.on_port_mapping(Report::Unavailable { reason: "renewal failed".into() }, now);
        assert!(!node.candidates().iter().any(|c| c.address == external), "a lost mapping is not offered");
        let inv = node.minter().invitation(InvitationParams::default(), super::super::unix_now()).expect("mints");
        assert_ne!(inv.token().body.connection_info.nat, Some(NatInfo::PORT_MAPPED));
        assert_eq!(node.mapping_status(now)["state"], "unavailable");
    }
}
