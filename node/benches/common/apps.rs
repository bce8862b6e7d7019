//! Nodes on loopback that the runtime benchmarks share: an inviter that
//! greets every session with one byte, a joiner that stops at it, and the
//! setup around them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use convoke_node::host::HostEvent;
use convoke_node::identity::Identity;
use convoke_node::runtime::node::{App, NodeConfig, NodeCtx};
use convoke_node::token::{Candidate, ConnectionMode, Invitation, InvitationParams, Token};
use rand_core::SeedableRng;

use crate::common::unix_now;

pub fn invitation(identity: &Identity, candidates: &[Candidate], reusable: bool, seed: u64) -> Invitation {
    let params = InvitationParams {
        candidates: candidates.to_vec(),
        mode: ConnectionMode { reusable, ..ConnectionMode::default() },
        ..InvitationParams::default()
    };
    let t = Token::new_invitation(identity, params, unix_now(), &mut rand_chacha::ChaCha20Rng::seed_from_u64(seed));
    Invitation::from_token(t, unix_now()).expect("valid")
}

pub fn loopback_config() -> NodeConfig {
    NodeConfig { listen: vec!["127.0.0.1:0".parse().expect("addr")], control_socket: false, ..NodeConfig::default() }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

pub fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Inviter: greets every session with one byte, until told to stop.
pub struct Greeter {
    pub invitation: Invitation,
    pub stop: Arc<AtomicBool>,
}

impl App for Greeter {
    type Output = ();
    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        ctx.host.listen(self.invitation.clone());
    }
    fn on_event(&mut self, ctx: &mut NodeCtx<'_>, event: HostEvent) {
        if let HostEvent::Established { session, .. } = event {
            ctx.host.write(session, b"x");
        }
    }
    fn step(&mut self, _: &mut NodeCtx<'_>) -> Option<()> {
        self.stop.load(Ordering::Relaxed).then_some(())
    }
    async fn wake(&mut self) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Joiner: joins at `on_ready` and stops at the first byte.
pub struct FirstByte {
    pub invitation: Invitation,
    pub started: Instant,
    pub id: Option<convoke_node::ice::AttemptId>,
}

impl App for FirstByte {
    type Output = Duration;
    fn on_ready(&mut self, ctx: &mut NodeCtx<'_>) {
        self.id = Some(ctx.host.join(&self.invitation, ctx.now));
    }
    fn on_event(&mut self, _: &mut NodeCtx<'_>, _: HostEvent) {}
    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<Duration> {
        let id = self.id?;
        let mut b = [0u8; 8];
        (ctx.host.read(id, &mut b) > 0).then(|| {
            let took = self.started.elapsed();
            ctx.host.close(id, ctx.now);
            took
        })
    }
    async fn wake(&mut self) {
        std::future::pending::<()>().await;
    }
}

/// Bytes through quinn (the reference QUIC stack) on loopback: `total`
/// bytes over `streams` concurrent unidirectional streams; the time from
/// the first write to the last byte read.
pub fn quinn_throughput(total: u64, streams: usize) -> Duration {
    static DATA: [u8; 64 * 1024] = [0x5a; 64 * 1024];
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let key = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let cert = CertificateDer::from(cert.cert);
    let server_config = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key.into()).expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let client_config = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let per = total / streams as u64;
    let server = std::thread::spawn(move || {
        rt().block_on(async move {
            let ep = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().expect("addr")).expect("server");
            addr_tx.send(ep.local_addr().expect("addr")).expect("send");
            let conn = ep.accept().await.expect("incoming").await.expect("connection");
            let mut readers = Vec::new();
            for _ in 0..streams {
                let mut s = conn.accept_uni().await.expect("stream");
                readers.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut got = 0u64;
                    while let Some(n) = s.read(&mut buf).await.expect("read") {
                        got += n as u64;
                    }
                    got
                }));
            }
            let mut got = 0;
            for r in readers {
                got += r.await.expect("reader");
            }
            assert_eq!(got, per * streams as u64);
            let end = Instant::now();
            conn.close(0u32.into(), b"done");
            ep.wait_idle().await;
            end
        })
    });
    let addr = addr_rx.recv().expect("addr");
    let start = rt().block_on(async move {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
        ep.set_default_client_config(client_config);
        let conn = ep.connect(addr, "localhost").expect("connect").await.expect("connection");
        let start = Instant::now();
        let mut writers = Vec::new();
        for _ in 0..streams {
            let mut s = conn.open_uni().await.expect("stream");
            writers.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while sent < per {
                    let n = (per - sent).min(DATA.len() as u64) as usize;
                    s.write_all(&DATA[..n]).await.expect("write");
                    sent += n as u64;
                }
                s.finish().expect("finish");
                let _ = s.stopped().await;
            }));
        }
        for w in writers {
            w.await.expect("writer");
        }
        conn.closed().await;
        start
    });
    let end = server.join().expect("server");
    end - start
}
