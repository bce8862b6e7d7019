//! What the benchmarks share: a counting allocator (the heap in use, for
//! memory figures), the wall clock in unix seconds, medians, and the
//! in-memory wire that connects many peers to one inviter.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use convoke_node::host::{Host, HostEvent};
use convoke_node::ice::{Endpoint, Event};

/// Counts the bytes allocated and not yet freed.
pub struct Counting;
/// Heap bytes in use.
pub static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A relay with no caps but the circuit count (and no signature budget),
/// for measuring.
#[allow(dead_code)]
pub fn unlimited_relay() -> convoke_node::relay::RelayConfig {
    use convoke_node::relay::{RelayConfig, RelayLimits};
    RelayConfig { limits: RelayLimits { verifications_per_s: u32::MAX, ..RelayLimits::unlimited() }, allow: None }
}

/// `convoke relay`'s driver (`runtime::relay::serve`) on its own thread and
/// runtime, on a loopback socket: its address, what stops it, and the
/// thread, which returns its counters.
#[allow(dead_code)]
pub fn spawn_relay()
-> (SocketAddr, tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<convoke_node::relay::RelayStats>) {
    let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("relay");
    let s = socket2::SockRef::from(&server);
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    server.set_nonblocking(true).expect("nonblocking");
    let at = server.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let socket = tokio::net::UdpSocket::from_std(server).expect("tokio socket");
            convoke_node::runtime::relay::serve(socket, unlimited_relay(), |_| {}, async move {
                let _ = stopped.await;
            })
            .await
            .expect("serves")
        })
    });
    (at, stop, thread)
}

/// The wall clock in unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The middle value.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One side of the in-memory wire: an endpoint alone, or a whole host.
pub trait Engine {
    fn input(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]);
    fn output(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)>;
    /// Counts connections (ICE nominated, or session established).
    fn events(&mut self) -> usize;
    fn deadline(&self) -> Option<Instant>;
    fn timeout(&mut self, now: Instant);
}

impl Engine for Endpoint {
    fn input(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        self.handle_datagram(now, from, data);
    }
    fn output(&mut self, _: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        self.poll_transmit().map(|t| (t.destination, t.contents))
    }
    fn events(&mut self) -> usize {
        std::iter::from_fn(|| self.poll_event()).filter(|e| matches!(e, Event::Connected { .. })).count()
    }
    fn deadline(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn timeout(&mut self, now: Instant) {
        self.handle_timeout(now);
    }
}

impl Engine for Host {
    fn input(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        self.handle_datagram(now, from, data);
    }
    fn output(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        self.poll_transmit(now).map(|t| (t.destination, t.contents))
    }
    fn events(&mut self) -> usize {
        std::iter::from_fn(|| self.poll_event()).filter(|e| matches!(e, HostEvent::Established { .. })).count()
    }
    fn deadline(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn timeout(&mut self, now: Instant) {
        self.handle_timeout(now);
    }
}

/// Heap the inviter holds per connected peer: `n` peers join one reusable
/// invitation on the in-memory wire; after all connected and `quiet` more
/// of virtual time (consent checks only), the inviter is dropped and the
/// heap it freed is divided by `n`.
pub fn held_per_peer<E: Engine>(
    n: usize,
    quiet: Duration,
    make: impl Fn(usize) -> E,
    listen: impl FnOnce(&mut E),
    join: impl Fn(&mut E, Instant),
) -> f64 {
    let base = Instant::now();
    let inviter_addr: SocketAddr = "198.18.0.1:4433".parse().expect("addr");
    let mut inviter = make(0);
    listen(&mut inviter);
    let addrs: Vec<SocketAddr> =
        (0..n).map(|i| format!("198.18.{}.{}:5000", 1 + i / 250, i % 250 + 1).parse().expect("addr")).collect();
    let index: HashMap<SocketAddr, usize> = addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
    let mut peers: Vec<E> = (1..=n).map(&make).collect();
    for p in &mut peers {
        join(p, base);
    }
    let mut now = base;
    let mut connected = 0;
    let quiet_until = base + quiet;
    let mut queue: VecDeque<(Option<usize>, SocketAddr, Vec<u8>)> = VecDeque::new();
    for _ in 0..5_000_000 {
        for (i, p) in peers.iter_mut().enumerate() {
            while let Some((_, c)) = p.output(now) {
                queue.push_back((None, addrs[i], c));
            }
            p.events();
        }
        while let Some((to, c)) = inviter.output(now) {
            if let Some(&i) = index.get(&to) {
                queue.push_back((Some(i), inviter_addr, c));
            }
        }
        connected += inviter.events();
        if queue.is_empty() {
            if connected == n && now >= quiet_until {
                break;
            }
            let next = peers.iter().filter_map(Engine::deadline).chain(inviter.deadline()).min();
            now = next.expect("something is pending").max(now);
            inviter.timeout(now);
            for p in &mut peers {
                if p.deadline().is_some_and(|t| t <= now) {
                    p.timeout(now);
                }
            }
        }
        while let Some((to, from, mut bytes)) = queue.pop_front() {
            match to {
                None => inviter.input(now, from, &mut bytes),
                Some(i) => peers[i].input(now, from, &mut bytes),
            }
        }
    }
    assert_eq!(connected, n, "all peers connect");
    drop(peers);
    drop(queue);
    let with = LIVE.load(Ordering::Relaxed);
    drop(inviter);
    let without = LIVE.load(Ordering::Relaxed);
    (with - without) as f64 / n as f64
}
