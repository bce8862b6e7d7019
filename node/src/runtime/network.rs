//! Network membership as a library: a [`Network`] is one member of a
//! Convoke network — the member engine (overlay membership, introducers
//! relaying tokens and RSVPs, broadcast) on a node of its own — driven the
//! way `convoke up` drives it, with commands as methods and events from
//! [`Network::next_event`].
//!
//! ```
//! use convoke_node::identity::Identity;
//! use convoke_node::runtime::endpoint::EndpointConfig;
//! use convoke_node::runtime::network::{MemberConfig, MemberEvent, Network};
//! use convoke_node::runtime::os_rng;
//! use convoke_node::token::Invitation;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let start = |join: Option<Invitation>| {
//!     let config = MemberConfig { join, ..MemberConfig::default() };
//!     Network::start(Identity::generate(&mut os_rng()), EndpointConfig::loopback(), config)
//! };
//! let alice = start(None).await?;
//! // Alice's card: anyone with it joins her network (it travels by any channel).
//! let card = alice.card().clone();
//! let bob = start(Some(card)).await?;
//! // Wait until alice and bob are neighbours, then broadcast.
//! while !matches!(bob.next_event().await, Some(MemberEvent::NeighborUp(p)) if p == alice.peer_id()) {}
//! alice.broadcast(b"hello, network")?;
//! loop {
//!     if let Some(MemberEvent::Message { origin, data, .. }) = bob.next_event().await {
//!         assert_eq!((origin, data.as_slice()), (alice.peer_id(), &b"hello, network"[..]));
//!         break;
//!     }
//! }
//! bob.leave();
//! while bob.next_event().await.is_some() {} // its events end once it has left
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::endpoint::{BindError, EndpointConfig, own_runtime_node};
use super::member::Member;
pub use super::member::Snapshot;
use super::state::StateFile;
use crate::identity::{Identity, PeerId};
use crate::token::Invitation;

pub use crate::member::MAX_PAYLOAD;
pub use crate::member::{CommandError, MemberCommand, MemberConfig, MemberEvent, SuperPeer};

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node underneath could not start.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The member engine stopped before its card was ready (it could not
    /// mint its invitation: the reason is in the log).
    #[error("the member stopped before its card was ready")]
    NoCard,
}

/// One member of a Convoke network: see the [module documentation](self).
/// Dropping it leaves the network.
pub struct Network {
    commands: Commands,
    events: tokio::sync::Mutex<Events>,
    snapshot: Arc<Mutex<Snapshot>>,
    peer_id: PeerId,
    card: Invitation,
    local: Vec<SocketAddr>,
    control: Option<PathBuf>,
    /// Why the node stopped, when it failed.
    failure: Arc<Mutex<Option<String>>>,
    /// The events ended: the member stopped, and takes no more commands.
    stopped: AtomicBool,
}

/// What the member's thread reports once its node is bound: its sockets
/// and control socket.
type Bound = Result<(Vec<SocketAddr>, Option<PathBuf>), BindError>;

/// Events that came before the card, then the engine's channel.
struct Events {
    early: VecDeque<MemberEvent>,
    rx: mpsc::UnboundedReceiver<MemberEvent>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").field("peer_id", &self.peer_id).finish_non_exhaustive()
    }
}

/// The member's command channel; dropping it (the [`Network`], or a
/// [`Network::start`] cancelled or failed half-way) makes the member
/// leave, so its thread and sockets end.
struct Commands(mpsc::UnboundedSender<MemberCommand>);

impl Drop for Commands {
    fn drop(&mut self) {
        let _ = self.0.send(MemberCommand::Leave);
    }
}

impl Network {
    /// Starts a member on its own thread (its node binds as `config`
    /// says) and resolves once its card is ready. With
    /// [`MemberConfig::join`] it joins that member's network; without, it
    /// starts a network of its own that others join with its card.
    pub async fn start(
        identity: Identity,
        config: EndpointConfig,
        member: MemberConfig,
    ) -> Result<Network, StartError> {
        Self::start_with_state(identity, config, member, None).await
    }

    /// [`Self::start`], saving the cards of the members we know to `state`
    /// as they change (at most every 5 s) and when we stop, so that a
    /// restart rejoins through them: load them with [`StateFile::load`]
    /// into [`MemberConfig::rejoin`] and [`MemberConfig::own_cards`].
    pub async fn start_with_state(
        identity: Identity,
        config: EndpointConfig,
        member: MemberConfig,
        state: Option<StateFile>,
    ) -> Result<Network, StartError> {
        let peer_id = identity.public_key().peer_id();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let cmd_tx = Commands(cmd_tx);
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let mut seed = [0u8; 32];
        rand_core::Rng::fill_bytes(&mut super::os_rng(), &mut seed);
        let mut member = Member::new(member, seed, ev_tx, cmd_rx);
        if let Some(s) = state {
            member = member.with_state(s);
        }
        let snapshot = member.snapshot();
        let failure = Arc::new(Mutex::new(None));
        let (bound_tx, bound_rx) = oneshot::channel();
        let failed = failure.clone();
        std::thread::Builder::new()
            .name("convoke-member".into())
            .spawn(move || drive(identity, config, member, bound_tx, failed))
            .map_err(BindError::Thread)?;
        let (local, control) =
            bound_rx.await.map_err(|_| BindError::Thread(io::Error::other("the member's thread ended")))??;
        let mut early = VecDeque::new();
        let card = loop {
            match ev_rx.recv().await {
                Some(MemberEvent::Invitation(text)) => match Invitation::parse(&text, super::unix_now()) {
                    Ok(card) => break card,
                    Err(_) => return Err(StartError::NoCard),
                },
                Some(other) => early.push_back(other),
                None => return Err(StartError::NoCard),
            }
        };
        Ok(Network {
            commands: cmd_tx,
            events: tokio::sync::Mutex::new(Events { early, rx: ev_rx }),
            snapshot,
            peer_id,
            card,
            local,
            control,
            failure,
            stopped: AtomicBool::new(false),
        })
    }

    /// The node's control socket (for `convoke status`, `convoke rsvp`
    /// and `convoke broadcast`), when [`EndpointConfig::node`] asks for
    /// one.
    pub fn control_path(&self) -> Option<&std::path::Path> {
        self.control.as_deref()
    }

    /// Our place in the network now: neighbours, broadcast-tree links,
    /// role, the topology policy's broken invariants.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Why the member stopped, when its node failed (a socket error); `None`
    /// while it runs and after a clean leave. Ask once
    /// [`Self::next_event`] has returned `None`.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Our card: the invitation others join the network with (reusable;
    /// encode it with `card().token().encode_compact()` or `encode_text()`).
    pub fn card(&self) -> &Invitation {
        &self.card
    }

    /// Our PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The sockets our node bound.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Our neighbours now (the overlay's active view).
    pub fn neighbours(&self) -> Vec<PeerId> {
        self.snapshot.lock().map(|s| s.active.clone()).unwrap_or_default()
    }

    /// The next event: links, neighbours, members joining, broadcasts
    /// arriving, RSVPs to carry. `None` once the member has stopped (it
    /// left, or failed). Events wait here until read: an application that
    /// only sends should still drain them (every broadcast received is
    /// one).
    pub async fn next_event(&self) -> Option<MemberEvent> {
        let mut events = self.events.lock().await;
        let event = match events.early.pop_front() {
            Some(e) => Some(e),
            None => events.rx.recv().await,
        };
        if event.is_none() {
            self.stopped.store(true, Ordering::Relaxed);
        }
        event
    }

    fn command(&self, c: MemberCommand) -> Result<(), CommandError> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(CommandError::Leaving);
        }
        self.commands.0.send(c).map_err(|_| CommandError::Leaving)
    }

    /// Sends `data` to every member (Plumtree broadcast over the overlay):
    /// at most [`MAX_PAYLOAD`] bytes.
    pub fn broadcast(&self, data: &[u8]) -> Result<(), CommandError> {
        if data.len() > MAX_PAYLOAD {
            return Err(CommandError::TooLarge(data.len()));
        }
        self.command(MemberCommand::Broadcast(data.to_vec()))
    }

    /// Joins the network of `card` (another member's invitation), for a
    /// member started without [`MemberConfig::join`] or to bridge two
    /// networks.
    pub fn join(&self, card: &Invitation) -> Result<(), CommandError> {
        self.command(MemberCommand::Join(Box::new(card.clone())))
    }

    /// Takes an RSVP that a newcomer sent out of band
    /// ([`MemberEvent::RsvpForContact`] on its side).
    pub fn accept_rsvp(&self, rsvp: &str) -> Result<(), CommandError> {
        self.command(MemberCommand::AcceptRsvp(rsvp.trim().to_owned()))
    }

    /// Leaves: tells the neighbours, closes the sessions; the events end
    /// when it is done.
    pub fn leave(&self) {
        let _ = self.command(MemberCommand::Leave);
    }
}

/// The member's thread: its own runtime, the node, the member app.
fn drive(
    identity: Identity,
    config: EndpointConfig,
    mut member: Member,
    bound: oneshot::Sender<Bound>,
    failure: Arc<Mutex<Option<String>>>,
) {
    let (rt, node) = match own_runtime_node(identity, config.node) {
        Ok(x) => x,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    if bound.send(Ok((node.local_addrs(), node.control_path().map(Into::into)))).is_err() {
        return;
    }
    if let Err(e) = rt.block_on(node.run(&mut member)) {
        tracing::warn!("the member's node stopped: {e}");
        if let Ok(mut f) = failure.lock() {
            *f = Some(e.to_string());
        }
    }
    // The events end with the member, after the failure is there to read.
    drop(member);
}
