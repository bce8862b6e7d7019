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
