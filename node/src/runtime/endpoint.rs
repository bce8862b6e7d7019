//! Convoke as an async library: an [`Endpoint`] makes invitations, joins
//! them and accepts joiners; each [`Connection`] carries as many streams as
//! the peer allows ([`SendStream`] and [`RecvStream`] implement tokio's
//! `AsyncWrite` and `AsyncRead`) and unreliable datagrams.
//!
//! ```
//! use convoke_node::runtime::endpoint::{Endpoint, EndpointConfig, InviteOptions};
//! use convoke_node::identity::Identity;
//! use convoke_node::runtime::os_rng;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let alice = Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback()).await?;
//! let bob = Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback()).await?;
//! // The invitation travels by any channel: chat, email, a QR code.
//! let invitation = alice.invite(InviteOptions::default()).await?;
//! let (to_alice, from_bob) = tokio::join!(bob.join(&invitation), alice.accept());
//! let (to_alice, from_bob) = (to_alice?, from_bob?);
//! let (mut send, mut recv) = to_alice.open_bi().await?;
//! send.write_all(b"hello").await?;
//! send.finish()?;
//! let (mut back, mut incoming) = from_bob.accept_bi().await?;
//! let mut text = String::new();
//! incoming.read_to_string(&mut text).await?;
//! assert_eq!(text, "hello");
//! back.write_all(b"hi").await?;
//! back.finish()?;
//! let mut reply = Vec::new();
//! recv.read_to_end(&mut reply).await?;
//! assert_eq!(reply, b"hi");
//! # Ok(())
//! # }
//! ```
//!
//! **How it runs.** The engine is sans-IO and single-threaded; an
//! endpoint runs it (a [`Node`]) on a thread of its own with its own tokio
//! runtime, so it works under any runtime the application uses. Handles
//! talk to it through a shared state: writes go into a per-stream buffer
//! ([`STREAM_BUFFER`]) that the engine drains as its flow control allows,
//! and reads come from one the engine fills as bytes arrive in order. The
//! engine's own windows (per stream and per session) apply behind them.
//!
//! **Joining across NATs.** [`Endpoint::join`] runs the connectivity checks
//! the invitation allows. When the inviter's network filters a first
//! contact from outside, it returns [`JoinError::RsvpNeeded`]: hand the
//! [`PendingJoin::rsvp`] token to the inviter by the channel the invitation
//! came by, they pass it to [`Endpoint::accept_rsvp`], and
//! [`PendingJoin::connected`] resolves when both sides' checks meet.
//!
//! **A pipe.** [`Connection::session_stream`] is the session's own
//! bidirectional stream, open on both sides from the handshake on: no open
//! or accept, either side may speak first (`convoke invite` and `convoke
//! join` carry standard input and output on it).
//!
//! **What no call asked about.** [`Endpoint::next_notice`]: a STUN server
//! that did not answer, a joiner that found no path or was refused.
//!
//! **Ending.** Dropping every handle of a connection closes it (code 0);
//! dropping a [`SendStream`] finishes it, dropping a [`RecvStream`] before
//! its end asks the peer to stop (code 0). Dropping every [`Endpoint`]
//! handle closes its sessions and stops its thread; [`Endpoint::shutdown`]
//! does it and waits until the closes are sent (a program about to exit).
//! [`SendStream::acknowledged`] says when the peer has every byte.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, oneshot};

use super::node::{App, Node, NodeConfig, NodeCtx, StartError};
use crate::host::{HostEvent, SessionInfo};
use crate::ice::{AttemptId, Event as IceEvent, FailReason};
use crate::identity::{Identity, PeerId, PublicKey};
use crate::session::{CloseReason, StreamError, StreamId};
use crate::token::{CandidateKind, ConnectionMode, InitialMode, Invitation, InvitationParams};

/// Bytes a stream's handle buffers each way beyond what the engine holds:
/// enough for a write or read to proceed while the engine's thread catches
/// up, small beside the engine's own windows.
pub const STREAM_BUFFER: usize = 1 << 20;

/// Datagrams kept for the application, each way, before the oldest is
/// dropped (the engine keeps as many again).
const DATAGRAM_QUEUE: usize = 64;

/// How an endpoint binds.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The node underneath: listen addresses, STUN servers, port mapping,
    /// the engine's tunables. Its control socket is off by default here.
    pub node: NodeConfig,
}

impl Default for EndpointConfig {
    /// Every interface (IPv4 and IPv6, ephemeral ports), router port
    /// mapping on, no STUN server, no control socket.
    fn default() -> Self {
        Self { node: NodeConfig { control_socket: false, ..NodeConfig::default() } }
    }
}

impl EndpointConfig {
    /// Loopback only (127.0.0.1, an ephemeral port), no port mapping: for
    /// tests and examples on one machine.
    pub fn loopback() -> Self {
        Self {
            node: NodeConfig {
                listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
                control_socket: false,
                port_mapping: false,
                ..NodeConfig::default()
            },
        }
    }
}

/// What an invitation allows.
#[derive(Debug, Clone)]
pub struct InviteOptions {
    /// How long it stays valid: 10 minutes.
    pub lifetime: Duration,
    /// Whether several joiners may use it (else the first one spends it).
    pub reusable: bool,
    /// Whether the joiner must always send an RSVP first (the inviter's
    /// network is known to filter first contacts).
    pub rsvp_required: bool,
    /// How long the inviter keeps trying after an RSVP: 30 s.
    pub rsvp_timeout: Duration,
    /// A relay (`convoke relay`, or a member with `--relay`) the inviter
    /// takes circuits at: an invitee with no direct path asks it for one
    /// and sends it in its RSVP, and the session runs through it, still
    /// end-to-end encrypted. None by default.
    pub relay: Option<SocketAddr>,
}

impl Default for InviteOptions {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(600),
            reusable: false,
            rsvp_required: false,
            rsvp_timeout: Duration::from_secs(30),
            relay: None,
        }
    }
}

/// Why an endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The node could not bind its sockets.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The endpoint's thread or runtime could not start.
    #[error("cannot start the endpoint's thread: {0}")]
    Thread(io::Error),
}

/// The endpoint stopped (every [`Endpoint`] handle was dropped, or its
/// thread ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the endpoint is closed")]
pub struct EndpointClosed;

/// What an endpoint tells its application outside any call it made: for
/// a person watching (the `convoke` command line prints them), from
/// [`Endpoint::next_notice`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// A STUN server did not answer: invitations carry only the addresses
    /// found otherwise.
    StunFailed(SocketAddr),
    /// A joiner of one of our invitations found no path in the time the
    /// invitation allows (we keep listening for others).
    JoinerTimedOut,
    /// A joiner's handshake was refused: its key is not the one its token
    /// names, or it replayed an old one.
    JoinerRefused(String),
    /// Something else worth a line: a control-socket client took an RSVP,
    /// say.
    Note(String),
    /// A session that ran through a relay moved to a direct path.
    Direct {
        /// The peer.
        peer: PeerId,
        /// The direct path's remote address.
        remote: SocketAddr,
        /// Its candidate type.
        remote_kind: CandidateKind,
    },
}

/// Notices kept for the application before the oldest is dropped.
const NOTICE_QUEUE: usize = 64;

/// Why an invitation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    /// The token could not be minted (a lifetime too long, say).
    #[error("cannot make the invitation: {0}")]
    Token(String),
    /// The endpoint is closed.
    #[error(transparent)]
    Closed(#[from] EndpointClosed),
}

/// Why a join did not give a connection.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The inviter's network does not let a first contact in: send it the
    /// RSVP token, then await [`PendingJoin::connected`].
    #[error("the inviter needs an RSVP token")]
    RsvpNeeded(PendingJoin),
    /// No path or no handshake: why, for people.
    #[error("the join failed: {0}")]
    Failed(String),
    /// [`Endpoint::accept_rsvp`]: the token was refused before any check
    /// (malformed, tampered, expired, replayed, or not for an invitation
    /// of ours): why, for people.
    #[error("the RSVP was refused: {0}")]
    Refused(String),
    /// The endpoint is closed.
    #[error(transparent)]
    Closed(#[from] EndpointClosed),
}

/// A join waiting for the inviter to take our RSVP.
#[derive(Debug)]
pub struct PendingJoin {
    rsvp: String,
    endpoint: Endpoint,
    done: oneshot::Receiver<Result<AttemptId, String>>,
}

impl PendingJoin {
    /// The RSVP token, in compact text, for the inviter.
    pub fn rsvp(&self) -> &str {
        &self.rsvp
    }

    /// Resolves when the checks after the RSVP succeed (the engine keeps
    /// trying for the invitation's RSVP timeout).
    pub async fn connected(self) -> Result<Connection, JoinError> {
        match self.done.await {
            Ok(Ok(id)) => Ok(self.endpoint.connection(id)?),
            Ok(Err(why)) => Err(JoinError::Failed(why)),
            Err(_) => Err(JoinError::Closed(EndpointClosed)),
        }
    }
}

/// An RSVP we took ([`Endpoint::take_rsvp`]), its checks running.
#[derive(Debug)]
pub struct PendingAccept {
    endpoint: Endpoint,
    done: oneshot::Receiver<Result<AttemptId, JoinError>>,
}

impl PendingAccept {
    /// Resolves when both sides' checks meet (the engine keeps trying for
    /// the invitation's RSVP timeout).
    pub async fn connected(self) -> Result<Connection, JoinError> {
        let id = self.done.await.map_err(|_| EndpointClosed)??;
        Ok(self.endpoint.connection(id)?)
    }
}

/// Why a connection operation failed: the session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The session ended, and why.
    #[error("the session ended: {0:?}")]
    Closed(CloseReason),
    /// The endpoint is closed.
    #[error(transparent)]
    EndpointClosed(#[from] EndpointClosed),
}

/// Why a datagram was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendDatagramError {
    /// Larger than one packet carries ([`Connection::max_datagram_size`]).
    #[error("the datagram is larger than {0} bytes")]
    TooLarge(usize),
    /// The session ended.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

/// Why a stream write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The peer asked us to stop, with this code.
    #[error("the peer stopped the stream (code {0})")]
    Stopped(u64),
    /// We finished or reset the stream already.
    #[error("the stream was already finished")]
    Finished,
    /// The session ended.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

/// Why a stream read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The peer reset the stream, with this code.
    #[error("the peer reset the stream (code {0})")]
    Reset(u64),
    /// The session ended before the stream did.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> io::Error {
        let kind = match e {
            WriteError::Stopped(_) | WriteError::Finished => io::ErrorKind::BrokenPipe,
            WriteError::Connection(_) => io::ErrorKind::ConnectionAborted,
        };
        io::Error::new(kind, e)
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> io::Error {
        let kind = match e {
            ReadError::Reset(_) => io::ErrorKind::ConnectionReset,
            ReadError::Connection(_) => io::ErrorKind::ConnectionAborted,
        };
        io::Error::new(kind, e)
    }
}

// ---------- the shared state ----------

#[derive(Debug, Default)]
struct SendBuf {
    buf: VecDeque<u8>,
    /// The application finished (or reset) it; passed to the engine yet.
    fin: bool,
    reset: Option<u64>,
    passed: bool,
    /// The peer stopped it.
    stopped: Option<u64>,
    /// The peer acknowledged every byte and the end.
    acked: bool,
    waker: Option<Waker>,
    /// The handle is alive.
    handle: bool,
}

#[derive(Debug, Default)]
struct RecvBuf {
    buf: VecDeque<u8>,
    /// Every byte is in `buf`: the end follows it.
    fin: bool,
    reset: Option<u64>,
    /// The application asked the peer to stop; passed to the engine yet.
    stop: Option<u64>,
    passed: bool,
    waker: Option<Waker>,
    handle: bool,
    /// The last pass left bytes in the engine (this buffer was full), or
    /// the stream is new: the next pass looks again, event or not.
    recheck: bool,
}

#[derive(Debug, Default)]
struct StreamState {
    send: Option<SendBuf>,
    recv: Option<RecvBuf>,
}

#[derive(Debug)]
struct ConnState {
    info: SessionInfo,
    streams: HashMap<StreamId, StreamState>,
    /// Streams the peer opened, bidirectional and unidirectional, with
    /// their handles not yet taken.
    incoming: [VecDeque<StreamId>; 2],
    dgram_in: VecDeque<Vec<u8>>,
    dgram_out: VecDeque<Vec<u8>>,
    closed: Option<CloseReason>,
    /// The session's own stream was taken ([`Connection::session_stream`]).
    main_taken: bool,
    /// Tasks waiting on the connection (accepts, datagrams, the end).
    wakers: Vec<Waker>,
}

/// Adds a task's waker unless it is there already (a task polled again
/// and again, as in a `select!` loop, keeps one entry).
fn park(wakers: &mut Vec<Waker>, w: &Waker) {
    if !wakers.iter().any(|x| x.will_wake(w)) {
        wakers.push(w.clone());
    }
}

impl ConnState {
    fn wake_all(&mut self) {
        for w in self.wakers.drain(..) {
            w.wake();
        }
        for s in self.streams.values_mut() {
            if let Some(w) = s.send.as_mut().and_then(|h| h.waker.take()) {
                w.wake();
            }
            if let Some(w) = s.recv.as_mut().and_then(|h| h.waker.take()) {
                w.wake();
            }
        }
    }

    fn check_open(&self) -> Result<(), ConnectionError> {
        match &self.closed {
            Some(r) => Err(ConnectionError::Closed(r.clone())),
            None => Ok(()),
        }
    }
}

enum Command {
    Invite(InviteOptions, oneshot::Sender<Result<Invitation, InviteError>>),
    Join(Box<Invitation>, oneshot::Sender<JoinStep>, oneshot::Sender<Result<AttemptId, String>>),
    AcceptRsvp(String, oneshot::Sender<Result<(), JoinError>>, RsvpReply),
    Open(AttemptId, bool, oneshot::Sender<Result<StreamId, ConnectionError>>),
    Close(AttemptId, u64, String),
    /// Every handle of the session is gone: close it and forget it.
    Forget(AttemptId),
}

enum JoinStep {
    Connected(AttemptId),
    Rsvp(String),
    Failed(String),
}

#[derive(Default)]
struct State {
    ready: bool,
    /// The driver stopped.
    stopped: bool,
    /// Every endpoint handle was dropped.
    shutdown: bool,
    /// Why the node stopped, when it failed.
    failure: Option<String>,
    commands: VecDeque<Command>,
    conns: HashMap<AttemptId, ConnState>,
    /// Sessions from our invitations, not yet accepted.
    incoming: VecDeque<AttemptId>,
    notices: VecDeque<Notice>,
    wakers: Vec<Waker>,
}

impl State {
    fn wake(&mut self) {
        for w in self.wakers.drain(..) {
            w.wake();
        }
    }

    fn notice(&mut self, n: Notice) {
        if self.notices.len() >= NOTICE_QUEUE {
            self.notices.pop_front();
        }
        self.notices.push_back(n);
        self.wake();
    }
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the driver: a handle changed something.
    driver: Notify,
    identity_key: PublicKey,
    local: Vec<SocketAddr>,
    /// The largest datagram payload a packet carries.
    max_datagram: usize,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as it was at the
        // panic; the data stays consistent enough to report closes.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `ready` finds what it looks for in the endpoint's state
    /// (it runs again whenever the state wakes its waiters).
    async fn wait<T>(&self, mut ready: impl FnMut(&mut State) -> Option<T>) -> T {
        poll_fn(|cx| {
            let mut s = self.lock();
            match ready(&mut s) {
                Some(t) => Poll::Ready(t),
                None => {
                    park(&mut s.wakers, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn command(&self, c: Command) -> Result<(), EndpointClosed> {
        let mut s = self.lock();
        if s.stopped {
            return Err(EndpointClosed);
        }
        s.commands.push_back(c);
        drop(s);
        self.driver.notify_one();
        Ok(())
    }
}

// ---------- the endpoint ----------

/// A Convoke node as a library: see the [module documentation](self).
#[derive(Clone)]
pub struct Endpoint {
    handle: Arc<EndpointHandle>,
}

/// Shuts the driver down when the last [`Endpoint`] clone goes.
struct EndpointHandle {
    inner: Arc<Inner>,
}

impl Drop for EndpointHandle {
    fn drop(&mut self) {
        self.inner.lock().shutdown = true;
        self.inner.driver.notify_one();
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("peer_id", &self.peer_id()).finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Binds the sockets and starts the engine on its own thread; resolves
    /// once our candidates are known (STUN answered or gave up, a port
    /// mapping settled), so the first invitation already carries them.
    ///
    /// ```
    /// # use convoke_node::runtime::endpoint::*;
    /// # use convoke_node::{identity::Identity, runtime::os_rng};
    /// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bind = || Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback());
    /// # let (alice, bob) = (bind().await?, bind().await?);
    /// assert!(alice.local_addrs().iter().all(|a| a.ip().is_loopback()));
    /// assert_ne!(alice.peer_id(), bob.peer_id());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn bind(identity: Identity, config: EndpointConfig) -> Result<Endpoint, BindError> {
        let (tx, rx) = oneshot::channel();
        let key = identity.public_key();
        std::thread::Builder::new()
            .name("convoke-endpoint".into())
            .spawn(move || drive(identity, config, tx))
            .map_err(BindError::Thread)?;
        let inner = rx.await.map_err(|_| BindError::Thread(io::Error::other("the endpoint's thread ended")))??;
        debug_assert_eq!(inner.identity_key, key);
        inner.wait(|s| (s.ready || s.stopped).then_some(())).await;
        Ok(Endpoint { handle: Arc::new(EndpointHandle { inner }) })
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    /// Our identity's key.
    pub fn public_key(&self) -> PublicKey {
        self.inner().identity_key
    }

    /// Our peer id (the one tokens and peers name us by).
    pub fn peer_id(&self) -> PeerId {
        self.inner().identity_key.peer_id()
    }

    /// The addresses the sockets are bound to.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.inner().local
    }

    /// Makes a signed invitation with our candidates and listens for it.
    ///
    /// ```
    /// # use convoke_node::runtime::endpoint::*;
    /// # use convoke_node::{identity::Identity, runtime::os_rng};
    /// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bind = || Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback());
    /// # let (alice, bob) = (bind().await?, bind().await?);
    /// let invitation = alice.invite(InviteOptions { reusable: true, ..InviteOptions::default() }).await?;
    /// assert_eq!(invitation.inviter(), alice.peer_id());
    /// // Two encodings of one signed token: compact text and a URI.
    /// assert!(invitation.token().encode_compact().starts_with("scpc:"));
    /// assert!(invitation.token().encode_text().starts_with("scpi://"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invite(&self, options: InviteOptions) -> Result<Invitation, InviteError> {
        let (tx, rx) = oneshot::channel();
        self.inner().command(Command::Invite(options, tx))?;
        rx.await.map_err(|_| EndpointClosed)?
    }

    /// Joins an invitation: the connectivity checks, then the encrypted
    /// handshake. See [`JoinError::RsvpNeeded`] for networks that need a
    /// reply first.
    ///
    /// ```
    /// # use convoke_node::runtime::endpoint::*;
    /// # use convoke_node::{identity::Identity, runtime::os_rng};
    /// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bind = || Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback());
    /// # let (alice, bob) = (bind().await?, bind().await?);
    /// let invitation = alice.invite(InviteOptions::default()).await?;
    /// let (joined, accepted) = tokio::join!(bob.join(&invitation), alice.accept());
    /// assert_eq!(joined?.peer_id(), alice.peer_id());
    /// assert_eq!(accepted?.peer_id(), bob.peer_id());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn join(&self, invitation: &Invitation) -> Result<Connection, JoinError> {
        let (step_tx, step_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        self.inner().command(Command::Join(Box::new(invitation.clone()), step_tx, done_tx))?;
        match step_rx.await.map_err(|_| EndpointClosed)? {
            JoinStep::Connected(id) => Ok(self.connection(id)?),
            JoinStep::Failed(why) => Err(JoinError::Failed(why)),
            JoinStep::Rsvp(rsvp) => {
                Err(JoinError::RsvpNeeded(PendingJoin { rsvp, endpoint: self.clone(), done: done_rx }))
            }
        }
    }

    /// Takes a joiner's RSVP token (for one of our invitations); resolves
    /// with the connection when both sides' checks meet.
    ///
    /// ```
    /// # use convoke_node::runtime::endpoint::*;
    /// # use convoke_node::{identity::Identity, runtime::os_rng};
    /// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bind = || Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback());
    /// # let (alice, bob) = (bind().await?, bind().await?);
    /// let options = InviteOptions { rsvp_required: true, ..InviteOptions::default() };
    /// let invitation = alice.invite(options).await?;
    /// let Err(JoinError::RsvpNeeded(pending)) = bob.join(&invitation).await else { panic!("an RSVP first") };
    /// let rsvp = pending.rsvp().to_owned(); // back to the inviter by any channel
    /// let (accepted, joined) = tokio::join!(alice.accept_rsvp(&rsvp), pending.connected());
    /// assert_eq!(accepted?.peer_id(), bob.peer_id());
    /// assert_eq!(joined?.peer_id(), alice.peer_id());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn accept_rsvp(&self, rsvp: &str) -> Result<Connection, JoinError> {
        self.take_rsvp(rsvp).await?.connected().await
    }

    /// [`Self::accept_rsvp`] in two steps: resolves once the token is taken
    /// (or refused, [`JoinError::Refused`]: malformed, tampered, expired,
    /// replayed, not for an invitation of ours) and the checks have
    /// started; [`PendingAccept::connected`] then waits for them. For a
    /// program that tells its user at once whether the token was good.
    ///
    /// ```
    /// # use convoke_node::runtime::endpoint::*;
    /// # use convoke_node::{identity::Identity, runtime::os_rng};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bind = || Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback());
    /// # let alice = bind().await?;
    /// assert!(matches!(alice.take_rsvp("scpc:not-a-token").await, Err(JoinError::Refused(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn take_rsvp(&self, rsvp: &str) -> Result<PendingAccept, JoinError> {
        let (step_tx, step_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        self.inner().command(Command::AcceptRsvp(rsvp.trim().to_owned(), step_tx, done_tx))?;
        step_rx.await.map_err(|_| EndpointClosed)??;
        Ok(PendingAccept { endpoint: self.clone(), done: done_rx })
    }

    /// The next joiner of one of our invitations.
    pub async fn accept(&self) -> Result<Connection, EndpointClosed> {
        let id = self
            .inner()
            .wait(|s| match s.incoming.pop_front() {
                Some(id) => Some(Ok(id)),
                None => s.stopped.then_some(Err(EndpointClosed)),
            })
            .await?;
        self.connection(id)
    }

    /// The next [`Notice`]: what happened that no call of ours asked about
    /// (a STUN server silent, a joiner that found no path). `None` once
    /// the endpoint stopped. Notices wait here until read, the oldest
    /// dropped beyond 64.
    pub async fn next_notice(&self) -> Option<Notice> {
        self.inner()
            .wait(|s| match s.notices.pop_front() {
                Some(n) => Some(Some(n)),
                None => s.stopped.then_some(None),
            })
            .await
    }

    /// Closes every session (code 0), sends the closes, gives a router's
    /// port mapping back and stops the engine's thread; resolves once it
    /// has. Every call fails afterwards: the endpoint's with
    /// [`EndpointClosed`], a connection's as closed by us. (Just
    /// dropping the endpoint does the same without waiting: a program that
    /// is about to exit calls this, so its peers hear the close.)
    ///
    /// ```
    /// # use convoke_node::runtime::endpoint::*;
    /// # use convoke_node::{identity::Identity, runtime::os_rng, session::CloseReason};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bind = || Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback());
    /// # let (alice, bob) = (bind().await?, bind().await?);
    /// # let invitation = alice.invite(InviteOptions::default()).await?;
    /// # let (to_alice, from_bob) = tokio::join!(bob.join(&invitation), alice.accept());
    /// # let (to_alice, from_bob) = (to_alice?, from_bob?);
    /// bob.shutdown().await;
    /// assert_eq!(to_alice.open_uni().await.err(), Some(ConnectionError::Closed(CloseReason::Local)));
    /// assert!(matches!(from_bob.closed().await, CloseReason::Peer { code: 0, .. }));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(&self) {
        self.inner().lock().shutdown = true;
        self.inner().driver.notify_one();
        self.inner().wait(|s| s.stopped.then_some(())).await
    }

    /// Why the endpoint stopped, when its node failed (a socket error):
    /// `None` while it runs and after a [`Self::shutdown`] or a drop.
    pub fn failure(&self) -> Option<String> {
        self.inner().lock().failure.clone()
    }

    fn connection(&self, id: AttemptId) -> Result<Connection, EndpointClosed> {
        let s = self.inner().lock();
        let c = s.conns.get(&id).ok_or(EndpointClosed)?;
        let peer = c.info.peer;
        drop(s);
        Ok(Connection { handle: Arc::new(ConnHandle { inner: self.inner().clone(), id, peer }) })
    }
}

// ---------- connections ----------

/// One encrypted session with a peer; clones share it. Dropping every
/// clone (and every stream of it) closes it.
#[derive(Clone)]
pub struct Connection {
    handle: Arc<ConnHandle>,
}

struct ConnHandle {
    inner: Arc<Inner>,
    id: AttemptId,
    peer: PublicKey,
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        let _ = self.inner.command(Command::Forget(self.id));
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("peer_id", &self.peer_id()).finish_non_exhaustive()
    }
}

impl Connection {
    /// Runs `f` on the connection's state.
    fn with<T>(&self, f: impl FnOnce(&mut ConnState) -> T) -> Result<T, ConnectionError> {
        let mut s = self.handle.inner.lock();
        let stopped = s.stopped;
        match s.conns.get_mut(&self.handle.id) {
            Some(c) => Ok(f(c)),
            None if stopped => Err(EndpointClosed.into()),
            None => Err(ConnectionError::Closed(CloseReason::Local)),
        }
    }

    /// The peer's key, authenticated by the handshake.
    pub fn public_key(&self) -> PublicKey {
        self.handle.peer
    }

    /// The peer's id.
    pub fn peer_id(&self) -> PeerId {
        self.handle.peer.peer_id()
    }

    /// The path and the session's counters, as of the engine's last look
    /// (it refreshes them whenever it handles the session).
    pub fn info(&self) -> Result<SessionInfo, ConnectionError> {
        self.with(|c| c.info.clone())
    }

    /// The largest datagram [`Self::send_datagram`] takes.
    pub fn max_datagram_size(&self) -> usize {
        self.handle.inner.max_datagram
    }

    /// The session's own stream: bidirectional, open on both sides from
    /// the handshake on, so neither side opens or accepts it — a byte pipe
    /// like netcat's, where either side may speak first (`convoke invite`
    /// and `convoke join` carry standard input and output on it). `None`
    /// when it was taken already. Take it before the session ends: what
    /// the peer sent on it stays in the engine, under its window, until
    /// then.
    ///
    /// ```
    /// # use convoke_node::runtime::endpoint::*;
    /// # use convoke_node::{identity::Identity, runtime::os_rng};
    /// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bind = || Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback());
    /// # let (alice, bob) = (bind().await?, bind().await?);
    /// # let invitation = alice.invite(InviteOptions::default()).await?;
    /// # let (to_alice, from_bob) = tokio::join!(bob.join(&invitation), alice.accept());
    /// # let (to_alice, from_bob) = (to_alice?, from_bob?);
    /// let (mut to_bob, _) = from_bob.session_stream().expect("not taken yet");
    /// to_bob.write_all(b"the inviter speaks first").await?;
    /// to_bob.finish()?;
    /// to_bob.acknowledged().await?; // bob's side has every byte
    /// let (_, mut from_alice) = to_alice.session_stream().expect("not taken yet");
    /// let mut text = String::new();
    /// from_alice.read_to_string(&mut text).await?;
    /// assert_eq!(text, "the inviter speaks first");
    /// assert!(to_alice.session_stream().is_none(), "taken once");
    /// # Ok(())
    /// # }
    /// ```
    pub fn session_stream(&self) -> Option<(SendStream, RecvStream)> {
        let taken = self.with(|c| {
            if std::mem::replace(&mut c.main_taken, true) {
                return false;
            }
            let st = c.streams.entry(StreamId::MAIN).or_default();
            st.send = Some(SendBuf { handle: true, ..SendBuf::default() });
            st.recv = Some(RecvBuf { handle: true, recheck: true, ..RecvBuf::default() });
            true
        });
        // Taken already, or the session is gone: no handles.
        if taken != Ok(true) {
            return None;
        }
        self.handle.inner.driver.notify_one();
        let id = StreamId::MAIN;
        Some((SendStream { conn: self.clone(), id }, RecvStream { conn: self.clone(), id }))
    }

    async fn open(&self, uni: bool) -> Result<StreamId, ConnectionError> {
        self.with(|c| c.check_open())??;
        let (tx, rx) = oneshot::channel();
        self.handle.inner.command(Command::Open(self.handle.id, uni, tx))?;
        rx.await.map_err(|_| EndpointClosed)?
    }

    /// Opens a bidirectional stream; waits while the peer allows no more.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let id = self.open(false).await?;
        Ok((self.send_handle(id), self.recv_handle(id)))
    }

    /// Opens a unidirectional stream (we send, the peer reads).
    ///
    /// ```
    /// # use convoke_node::runtime::endpoint::*;
    /// # use convoke_node::{identity::Identity, runtime::os_rng};
    /// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bind = || Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback());
    /// # let (alice, bob) = (bind().await?, bind().await?);
    /// # let invitation = alice.invite(InviteOptions::default()).await?;
    /// # let (to_alice, from_bob) = tokio::join!(bob.join(&invitation), alice.accept());
    /// # let (to_alice, from_bob) = (to_alice?, from_bob?);
    /// let mut send = to_alice.open_uni().await?;
    /// send.write_all(b"one way").await?;
    /// send.finish()?;
    /// let mut recv = from_bob.accept_uni().await?;
    /// let mut text = String::new();
    /// recv.read_to_string(&mut text).await?;
    /// assert_eq!(text, "one way");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open_uni(&self) -> Result<SendStream, ConnectionError> {
        let id = self.open(true).await?;
        Ok(self.send_handle(id))
    }

    async fn accept(&self, uni: bool) -> Result<StreamId, ConnectionError> {
        poll_fn(|cx| {
            self.with(|c| {
                if let Some(id) = c.incoming[usize::from(uni)].pop_front() {
                    return Poll::Ready(Ok(id));
                }
                if let Err(e) = c.check_open() {
                    return Poll::Ready(Err(e));
                }
                park(&mut c.wakers, cx.waker());
                Poll::Pending
            })?
        })
        .await
    }

    /// The next bidirectional stream the peer opened.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        let id = self.accept(false).await?;
        Ok((self.send_handle(id), self.recv_handle(id)))
    }

    /// The next unidirectional stream the peer opened.
    pub async fn accept_uni(&self) -> Result<RecvStream, ConnectionError> {
        let id = self.accept(true).await?;
        Ok(self.recv_handle(id))
    }

    fn send_handle(&self, id: StreamId) -> SendStream {
        SendStream { conn: self.clone(), id }
    }

    fn recv_handle(&self, id: StreamId) -> RecvStream {
        RecvStream { conn: self.clone(), id }
    }

    /// Sends an unreliable datagram: it may be lost, and a full queue drops
    /// the oldest.
    ///
    /// ```
    /// # use convoke_node::runtime::endpoint::*;
    /// # use convoke_node::{identity::Identity, runtime::os_rng};
    /// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bind = || Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback());
    /// # let (alice, bob) = (bind().await?, bind().await?);
    /// # let invitation = alice.invite(InviteOptions::default()).await?;
    /// # let (to_alice, from_bob) = tokio::join!(bob.join(&invitation), alice.accept());
    /// # let (to_alice, from_bob) = (to_alice?, from_bob?);
    /// assert!(to_alice.send_datagram(&vec![0; to_alice.max_datagram_size() + 1]).is_err());
    /// // Unreliable: send until one arrives.
    /// let got = loop {
    ///     to_alice.send_datagram(b"tick")?;
    ///     let wait = tokio::time::timeout(std::time::Duration::from_millis(100), from_bob.read_datagram());
    ///     if let Ok(d) = wait.await { break d? }
    /// };
    /// assert_eq!(got, b"tick");
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_datagram(&self, data: &[u8]) -> Result<(), SendDatagramError> {
        let max = self.max_datagram_size();
        if data.len() > max {
            return Err(SendDatagramError::TooLarge(max));
        }
        self.with(|c| {
            c.check_open()?;
            if c.dgram_out.len() >= DATAGRAM_QUEUE {
                c.dgram_out.pop_front();
            }
            c.dgram_out.push_back(data.to_vec());
            Ok::<_, ConnectionError>(())
        })??;
        self.handle.inner.driver.notify_one();
        Ok(())
    }

    /// The next datagram from the peer.
    pub async fn read_datagram(&self) -> Result<Vec<u8>, ConnectionError> {
        poll_fn(|cx| {
            self.with(|c| {
                if let Some(d) = c.dgram_in.pop_front() {
                    return Poll::Ready(Ok(d));
                }
                if let Err(e) = c.check_open() {
                    return Poll::Ready(Err(e));
                }
                park(&mut c.wakers, cx.waker());
                Poll::Pending
            })?
        })
        .await
    }

    /// Closes the session, telling the peer `code` and `reason`.
    ///
    /// ```
    /// # use convoke_node::runtime::endpoint::*;
    /// # use convoke_node::{identity::Identity, runtime::os_rng};
    /// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bind = || Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback());
    /// # let (alice, bob) = (bind().await?, bind().await?);
    /// # let invitation = alice.invite(InviteOptions::default()).await?;
    /// # let (to_alice, from_bob) = tokio::join!(bob.join(&invitation), alice.accept());
    /// # let (to_alice, from_bob) = (to_alice?, from_bob?);
    /// to_alice.close(3, "bye");
    /// let why = from_bob.closed().await;
    /// assert_eq!(why, convoke_node::session::CloseReason::Peer { code: 3, reason: "bye".into() });
    /// # Ok(())
    /// # }
    /// ```
    pub fn close(&self, code: u64, reason: &str) {
        let _ = self.handle.inner.command(Command::Close(self.handle.id, code, reason.to_owned()));
    }

    /// Resolves when the session ends, with why.
    pub async fn closed(&self) -> CloseReason {
        poll_fn(|cx| match self.with(|c| c.closed.clone().ok_or_else(|| park(&mut c.wakers, cx.waker()))) {
            Ok(Ok(r)) => Poll::Ready(r),
            Ok(Err(())) => Poll::Pending,
            Err(ConnectionError::Closed(r)) => Poll::Ready(r),
            Err(ConnectionError::EndpointClosed(_)) => Poll::Ready(CloseReason::Local),
        })
        .await
    }
}

// ---------- streams ----------

/// Our sending half of a stream. Dropping it finishes the stream.
pub struct SendStream {
    conn: Connection,
    id: StreamId,
}

impl std::fmt::Debug for SendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendStream").field("id", &self.id).finish_non_exhaustive()
    }
}

impl SendStream {
    /// The stream's identifier within its session.
    pub fn id(&self) -> StreamId {
        self.id
    }

    fn with<T>(&self, f: impl FnOnce(&mut SendBuf, &Option<CloseReason>) -> T) -> Result<T, ConnectionError> {
        self.conn.with(|c| {
            let closed = c.closed.clone();
            let h = c
                .streams
                .entry(self.id)
                .or_default()
                .send
                .get_or_insert_with(|| SendBuf { handle: true, ..SendBuf::default() });
            f(h, &closed)
        })
    }

    fn poll_write_inner(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<Result<usize, WriteError>> {
        let r = self.with(|h, closed| {
            if let Some(code) = h.stopped {
                return Poll::Ready(Err(WriteError::Stopped(code)));
            }
            if h.fin || h.reset.is_some() {
                return Poll::Ready(Err(WriteError::Finished));
            }
            if let Some(r) = closed {
                return Poll::Ready(Err(ConnectionError::Closed(r.clone()).into()));
            }
            let room = STREAM_BUFFER.saturating_sub(h.buf.len());
            if room == 0 {
                h.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = room.min(data.len());
            h.buf.extend(&data[..n]);
            Poll::Ready(Ok(n))
        });
        // (The driver is told either way: a write that finds the buffer
        // full must not wait on a driver that does not know.)
        self.conn.handle.inner.driver.notify_one();
        match r {
            Ok(p) => p,
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    /// Writes some of `data`; waits while the stream's buffer is full.
    pub async fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        poll_fn(|cx| self.poll_write_inner(cx, data)).await
    }

    /// Ends the stream after what was written.
    pub fn finish(&mut self) -> Result<(), WriteError> {
        let r = self.with(|h, _| {
            if let Some(code) = h.stopped {
                return Err(WriteError::Stopped(code));
            }
            if h.fin || h.reset.is_some() {
                return Err(WriteError::Finished);
            }
            h.fin = true;
            Ok(())
        })?;
        self.conn.handle.inner.driver.notify_one();
        r
    }

    /// Abandons the stream: what the peer has not received is dropped and
    /// its reader sees `code`.
    ///
    /// ```
    /// # use convoke_node::runtime::endpoint::*;
    /// # use convoke_node::{identity::Identity, runtime::os_rng};
    /// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bind = || Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback());
    /// # let (alice, bob) = (bind().await?, bind().await?);
    /// # let invitation = alice.invite(InviteOptions::default()).await?;
    /// # let (to_alice, from_bob) = tokio::join!(bob.join(&invitation), alice.accept());
    /// # let (to_alice, from_bob) = (to_alice?, from_bob?);
    /// let mut send = to_alice.open_uni().await?;
    /// send.write_all(b"never mind").await?;
    /// let mut recv = from_bob.accept_uni().await?;
    /// send.reset(7)?;
    /// let mut rest = Vec::new();
    /// let err = recv.read_to_end(&mut rest).await.expect_err("reset");
    /// assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    /// # Ok(())
    /// # }
    /// ```
    pub fn reset(&mut self, code: u64) -> Result<(), WriteError> {
        let r = self.with(|h, _| {
            if h.reset.is_some() || (h.fin && h.passed && h.buf.is_empty()) {
                return Err(WriteError::Finished);
            }
            h.reset = Some(code);
            h.buf.clear();
            Ok(())
        })?;
        self.conn.handle.inner.driver.notify_one();
        r
    }

    /// Resolves once the peer has acknowledged every byte and the end
    /// (after [`Self::finish`]): what was written has arrived, and closing
    /// the session now loses nothing. Fails when the peer stopped the
    /// stream or the session ended first.
    pub async fn acknowledged(&mut self) -> Result<(), WriteError> {
        poll_fn(|cx| {
            let r = self.with(|h, closed| {
                if let Some(code) = h.stopped {
                    return Poll::Ready(Err(WriteError::Stopped(code)));
                }
                if h.acked {
                    return Poll::Ready(Ok(()));
                }
                if h.reset.is_some() {
                    return Poll::Ready(Err(WriteError::Finished));
                }
                if let Some(r) = closed {
                    return Poll::Ready(Err(ConnectionError::Closed(r.clone()).into()));
                }
                h.waker = Some(cx.waker().clone());
                Poll::Pending
            });
            r.unwrap_or_else(|e| Poll::Ready(Err(e.into())))
        })
        .await
    }

    /// Resolves when the peer asks us to stop, with its code (or `None` if
    /// the session ended first).
    pub async fn stopped(&mut self) -> Option<u64> {
        poll_fn(|cx| match self.with(|h, closed| (h.stopped, closed.is_some())) {
            Ok((Some(code), _)) => Poll::Ready(Some(code)),
            Ok((None, true)) | Err(_) => Poll::Ready(None),
            Ok((None, false)) => {
                let _ = self.with(|h, _| h.waker = Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let _ = self.with(|h, _| {
            h.handle = false;
            if h.reset.is_none() {
                h.fin = true;
            }
        });
        self.conn.handle.inner.driver.notify_one();
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_inner(cx, buf).map_err(Into::into)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What was written is the engine's to send: nothing to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = this.with(|h, _| {
            h.fin = true;
        });
        this.conn.handle.inner.driver.notify_one();
        Poll::Ready(r.map_err(|e| WriteError::from(e).into()))
    }
}

/// Our receiving half of a stream. Dropping it before the end asks the
/// peer to stop.
pub struct RecvStream {
    conn: Connection,
    id: StreamId,
}

impl std::fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvStream").field("id", &self.id).finish_non_exhaustive()
    }
}

impl RecvStream {
    /// The stream's identifier within its session.
    pub fn id(&self) -> StreamId {
        self.id
    }

    fn with<T>(&self, f: impl FnOnce(&mut RecvBuf, &Option<CloseReason>) -> T) -> Result<T, ConnectionError> {
        self.conn.with(|c| {
            let closed = c.closed.clone();
            let h = c
                .streams
                .entry(self.id)
                .or_default()
                .recv
                .get_or_insert_with(|| RecvBuf { handle: true, ..RecvBuf::default() });
            f(h, &closed)
        })
    }

    /// Reads into `out`: how many bytes, and whether the driver should
    /// refill the buffer.
    fn poll_read_inner(&mut self, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<Result<usize, ReadError>> {
        let r = self.with(|h, closed| {
            if !h.buf.is_empty() {
                let n = out.len().min(h.buf.len());
                let (a, b) = h.buf.as_slices();
                let first = n.min(a.len());
                out[..first].copy_from_slice(&a[..first]);
                out[first..n].copy_from_slice(&b[..n - first]);
                h.buf.drain(..n);
                // The engine refills a buffer that fell below half.
                let refill = h.buf.len() < STREAM_BUFFER / 2 && !h.fin;
                return Poll::Ready(Ok((n, refill)));
            }
            if h.fin || h.stop.is_some() {
                return Poll::Ready(Ok((0, false)));
            }
            if let Some(code) = h.reset {
                return Poll::Ready(Err(ReadError::Reset(code)));
            }
            if let Some(r) = closed {
                return Poll::Ready(Err(ConnectionError::Closed(r.clone()).into()));
            }
            h.waker = Some(cx.waker().clone());
            Poll::Pending
        });
        let r = match r {
            Ok(p) => p,
            Err(e) => Poll::Ready(Err(e.into())),
        };
        // Room freed, or nothing there: the engine may move more bytes in.
        if matches!(r, Poll::Pending | Poll::Ready(Ok((_, true)))) {
            self.conn.handle.inner.driver.notify_one();
        }
        r.map_ok(|(n, _)| n)
    }

    /// Reads some bytes in order: `Ok(0)` at the end of the stream.
    pub async fn read(&mut self, out: &mut [u8]) -> Result<usize, ReadError> {
        poll_fn(|cx| self.poll_read_inner(cx, out)).await
    }

    /// Asks the peer to stop sending, with `code`; what still arrives is
    /// dropped.
    ///
    /// ```
    /// # use convoke_node::runtime::endpoint::*;
    /// # use convoke_node::{identity::Identity, runtime::os_rng};
    /// # use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let bind = || Endpoint::bind(Identity::generate(&mut os_rng()), EndpointConfig::loopback());
    /// # let (alice, bob) = (bind().await?, bind().await?);
    /// # let invitation = alice.invite(InviteOptions::default()).await?;
    /// # let (to_alice, from_bob) = tokio::join!(bob.join(&invitation), alice.accept());
    /// # let (to_alice, from_bob) = (to_alice?, from_bob?);
    /// let (mut send, _recv) = to_alice.open_bi().await?;
    /// send.write_all(b"unwanted").await?;
    /// let (_back, mut incoming) = from_bob.accept_bi().await?;
    /// incoming.stop(42)?;
    /// assert_eq!(send.stopped().await, Some(42));
    /// assert_eq!(send.write(b"more").await, Err(WriteError::Stopped(42)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn stop(&mut self, code: u64) -> Result<(), ConnectionError> {
        self.with(|h, _| {
            if !h.fin && h.reset.is_none() && h.stop.is_none() {
                h.stop = Some(code);
                h.buf.clear();
            }
        })?;
        self.conn.handle.inner.driver.notify_one();
        Ok(())
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        let _ = self.with(|h, _| {
            h.handle = false;
            if !h.fin && h.reset.is_none() && h.stop.is_none() {
                h.stop = Some(0);
                h.buf.clear();
            }
        });
        self.conn.handle.inner.driver.notify_one();
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_read_inner(cx, buf.initialize_unfilled()) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

// ---------- the driver ----------

/// A node bound on a current-thread tokio runtime of the calling thread's
/// own (its sockets register with that runtime's reactor): how an
/// [`Endpoint`] and a [`Network`](super::network::Network) each run their
/// node on a thread of their own, under whatever runtime the application
/// uses.
pub(super) fn own_runtime_node(
    identity: Identity,
    config: NodeConfig,
) -> Result<(tokio::runtime::Runtime, Node), BindError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(BindError::Thread)?;
    let mut seed = [0u8; 32];
    rand_core::Rng::fill_bytes(&mut super::os_rng(), &mut seed);
    let node = {
        let _entered = rt.enter();
        Node::bind(identity, config, seed)?
    };
    Ok((rt, node))
}

/// Runs the node on this thread until every endpoint handle is gone.
fn drive(identity: Identity, config: EndpointConfig, started: oneshot::Sender<Result<Arc<Inner>, BindError>>) {
    let key = identity.public_key();
    let max_datagram = crate::session::conn::max_datagram_payload(config.node.host.session.max_datagram_size);
    let (rt, node) = match own_runtime_node(identity, config.node) {
        Ok(x) => x,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            driver: Notify::new(),
            identity_key: key,
            local: node.local_addrs(),
            max_datagram,
        });
        if started.send(Ok(inner.clone())).is_err() {
            return;
        }
        let mut driver = Driver {
            inner: inner.clone(),
            joins: HashMap::new(),
            rsvps: HashMap::new(),
            opens: Vec::new(),
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
        };
        let result = node.run(&mut driver).await;
        let mut s = inner.lock();
        if let Err(e) = result {
            s.failure = Some(e.to_string());
        }
        s.stopped = true;
        // Whoever waits on a command nobody will run learns the endpoint
        // is closed (its answer's sender goes), instead of waiting for ever.
        s.commands.clear();
        s.wake();
        for c in s.conns.values_mut() {
            c.closed.get_or_insert(CloseReason::Local);
            c.wake_all();
        }
    });
}

/// Where a session's outcome goes: its id, or why it failed.
type SessionReply = oneshot::Sender<Result<AttemptId, String>>;

/// Where the outcome of an RSVP we take goes.
type RsvpReply = oneshot::Sender<Result<AttemptId, JoinError>>;

/// A stream asked for: the session, unidirectional or not, the answer.
type OpenRequest = (AttemptId, bool, oneshot::Sender<Result<StreamId, ConnectionError>>);

/// A join of ours: the first step's answer (until given), the answer after
/// an RSVP, and the invitation (the RSVP answers it).
struct JoinWait {
    step: Option<oneshot::Sender<JoinStep>>,
    done: SessionReply,
    invitation: Invitation,
}

/// Why the driver moves bytes for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Its own step (a handle wrote, read or asked something): only the
    /// receiving sides a previous pass left bytes behind for (a full
    /// buffer the reader has since drained) are looked at — a pass over
    /// every stream on every step costs the 16-stream transfer a third of
    /// its speed.
    Step,
    /// The engine said something changed on the session (bytes, ends,
    /// resets, stops arrived): every stream the application accepted.
    Event,
    /// The session closed: every stream, accepted or not, so what arrived
    /// stays readable.
    Closing,
}

struct Driver {
    inner: Arc<Inner>,
    joins: HashMap<AttemptId, JoinWait>,
    /// RSVPs we took, waiting for their sessions.
    rsvps: HashMap<AttemptId, RsvpReply>,
    /// Streams asked for while the peer allowed no more.
    opens: Vec<OpenRequest>,
    /// Where bytes read from the engine pass on their way to a handle's
    /// buffer: one for the driver, not one (zeroed) per pass.
    scratch: Box<[u8]>,
}

impl Driver {
    fn command(&mut self, ctx: &mut NodeCtx<'_>, c: Command, state: &mut State) {
        match c {
            Command::Invite(o, reply) => {
                let params = InvitationParams {
                    lifetime_secs: o.lifetime.as_secs(),
                    mode: ConnectionMode {
                        initial: if o.rsvp_required { InitialMode::Bidirectional } else { InitialMode::Unidirectional },
                        rsvp_supported: true,
                        rsvp_timeout_seconds: u32::try_from(o.rsvp_timeout.as_secs()).unwrap_or(u32::MAX),
                        reusable: o.reusable,
                    },
                    relay: o.relay.map(|r| crate::relay::client::Hint::Relay(r).to_string()).into_iter().collect(),
                    ..InvitationParams::default()
                };
                let out =
                    ctx.minter.invitation(params, super::unix_now()).map_err(|e| InviteError::Token(e.to_string()));
                if let Ok(inv) = &out {
                    super::telemetry::token_issued("invitation");
                    ctx.host.listen(inv.clone());
                }
                let _ = reply.send(out);
            }
            Command::Join(inv, step, done) => {
                super::telemetry::token_accepted("invitation");
                let id = ctx.host.join(&inv, ctx.now);
                self.joins.insert(id, JoinWait { step: Some(step), done, invitation: *inv });
            }
            Command::AcceptRsvp(text, step, reply) => {
                match super::telemetry::counted(ctx.host.accept_rsvp(&text, ctx.now)) {
                    Ok(id) => {
                        let _ = step.send(Ok(()));
                        self.rsvps.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = step.send(Err(JoinError::Refused(e.to_string())));
                    }
                }
            }
            Command::Open(id, uni, reply) => self.open(ctx, state, id, uni, reply),
            Command::Close(id, code, reason) => {
                if let Some(c) = state.conns.get_mut(&id)
                    && c.closed.is_none()
                {
                    ctx.host.close_with(id, code, &reason, ctx.now);
                    c.closed = Some(CloseReason::Local);
                    c.wake_all();
                }
            }
            Command::Forget(id) => {
                if let Some(c) = state.conns.remove(&id) {
                    if c.closed.is_none() {
                        ctx.host.close(id, ctx.now);
                    }
                    // The engine keeps a closed session while it holds
                    // bytes nobody read; nobody will now.
                    let mut streams: Vec<StreamId> = c.streams.keys().copied().collect();
                    streams.push(StreamId::MAIN);
                    for uni in [false, true] {
                        while let Some(s) = ctx.host.accept_stream(id, uni) {
                            streams.push(s);
                        }
                    }
                    for s in streams {
                        while let Ok(1..) = ctx.host.read_stream(id, s, &mut self.scratch) {}
                    }
                }
            }
        }
    }

    fn open(
        &mut self,
        ctx: &mut NodeCtx<'_>,
        state: &mut State,
        id: AttemptId,
        uni: bool,
        reply: oneshot::Sender<Result<StreamId, ConnectionError>>,
    ) {
        let Some(c) = state.conns.get_mut(&id) else {
            let _ = reply.send(Err(ConnectionError::Closed(CloseReason::Local)));
            return;
        };
        if let Err(e) = c.check_open() {
            let _ = reply.send(Err(e));
            return;
        }
        match ctx.host.open_stream(id, uni) {
            Ok(s) => {
                let st = c.streams.entry(s).or_default();
                st.send = Some(SendBuf { handle: true, ..SendBuf::default() });
                if !uni {
                    st.recv = Some(RecvBuf { handle: true, ..RecvBuf::default() });
                }
                if reply.send(Ok(s)).is_err() {
                    // Whoever asked is gone (a cancelled open): end it.
                    c.streams.remove(&s);
                    let _ = ctx.host.finish_stream(id, s);
                    if !uni {
                        let _ = ctx.host.stop_stream(id, s, 0);
                    }
                }
            }
            Err(StreamError::Limit) => self.opens.push((id, uni, reply)),
            Err(_) => {
                let _ = reply.send(Err(ConnectionError::Closed(c.closed.clone().unwrap_or(CloseReason::Local))));
            }
        }
    }

    /// Moves bytes between the handles' buffers and the engine, for one
    /// session; `pass` says why (see [`Pass`]).
    fn pump(ctx: &mut NodeCtx<'_>, id: AttemptId, c: &mut ConnState, chunk: &mut [u8], pass: Pass) {
        let event = pass != Pass::Step;
        let host = &mut *ctx.host;
        for uni in [false, true] {
            while let Some(s) = host.accept_stream(id, uni) {
                let st = c.streams.entry(s).or_default();
                if !uni {
                    st.send = Some(SendBuf { handle: true, ..SendBuf::default() });
                }
                st.recv = Some(RecvBuf { handle: true, recheck: true, ..RecvBuf::default() });
                c.incoming[usize::from(uni)].push_back(s);
                for w in c.wakers.drain(..) {
                    w.wake();
                }
            }
        }
        c.streams.retain(|&s, st| {
            if let Some(h) = st.send.as_mut() {
                let before = h.buf.len();
                if let Some(code) = h.reset.filter(|_| !h.passed) {
                    let _ = host.reset_stream(id, s, code);
                    h.passed = true;
                }
                while !h.buf.is_empty() && !h.passed {
                    let (a, _) = h.buf.as_slices();
                    match host.write_stream(id, s, a) {
                        Ok(0) => break,
                        Ok(n) => {
                            h.buf.drain(..n);
                        }
                        Err(StreamError::Stopped(code)) => {
                            h.stopped = Some(code);
                            h.buf.clear();
                        }
                        Err(_) => {
                            h.buf.clear();
                        }
                    }
                }
                if h.buf.is_empty() && h.fin && !h.passed {
                    if let Err(StreamError::Stopped(code)) = host.finish_stream(id, s) {
                        h.stopped = Some(code);
                    }
                    h.passed = true;
                }
                // A peer's STOP_SENDING comes with an event.
                if event
                    && h.stopped.is_none()
                    && let Err(StreamError::Stopped(code)) = host.write_stream(id, s, &[])
                {
                    h.stopped = Some(code);
                }
                // Acknowledgements come with no event: looked for on every
                // pass while a handle waits to know. (A stream the peer
                // stopped was reset, and a reset acknowledged is no delivery.)
                let acked = h.fin
                    && h.passed
                    && !h.acked
                    && h.reset.is_none()
                    && h.stopped.is_none()
                    && host.stream_send_done(id, s);
                h.acked |= acked;
                if (h.buf.len() < before || h.stopped.is_some() || acked)
                    && let Some(w) = h.waker.take()
                {
                    w.wake();
                }
            }
            // A stream the application has not accepted yet keeps its bytes
            // in the engine, where its window holds the peer back (until
            // the session closes: then what arrived is taken out to stay
            // readable).
            let waiting = pass != Pass::Closing && c.incoming[usize::from(s.is_uni())].contains(&s);
            if let Some(h) =
                st.recv.as_mut().filter(|h| !waiting && (event || h.recheck || (h.stop.is_some() && !h.passed)))
            {
                if let Some(code) = h.stop.filter(|_| !h.passed) {
                    if host.stop_stream(id, s, code).is_err() {
                        // A session the peer closed takes no stop: drop what
                        // it holds, or it waits for a reader for ever.
                        while let Ok(1..) = host.read_stream(id, s, chunk) {}
                    }
                    h.passed = true;
                }
                let mut moved = false;
                h.recheck = false;
                while h.stop.is_none() && !h.fin && h.reset.is_none() {
                    if h.buf.len() >= STREAM_BUFFER {
                        h.recheck = true;
                        break;
                    }
                    let room = (STREAM_BUFFER - h.buf.len()).min(chunk.len());
                    match host.read_stream(id, s, &mut chunk[..room]) {
                        Ok(0) => {
                            if host.stream_finished(id, s) {
                                h.fin = true;
                                moved = true;
                            }
                            break;
                        }
                        Ok(n) => {
                            h.buf.extend(&chunk[..n]);
                            moved = true;
                        }
                        Err(StreamError::Reset(code)) => {
                            h.reset = Some(code);
                            moved = true;
                        }
                        // Forgotten: it ended and everything was read.
                        Err(StreamError::Unknown) => {
                            h.fin = true;
                            moved = true;
                        }
                        // The session is gone before the stream's end: the
                        // reader learns why from the session, not an end.
                        Err(_) => break,
                    }
                }
                if moved && let Some(w) = h.waker.take() {
                    w.wake();
                }
            }
            // Forget a stream whose handles are gone and whose last word
            // reached the engine.
            let send_over = st.send.as_ref().is_none_or(|h| !h.handle && (h.passed || h.stopped.is_some()));
            let recv_over = st.recv.as_ref().is_none_or(|h| !h.handle && (h.passed || h.fin || h.reset.is_some()));
            !(send_over && recv_over)
        });
        while let Some(d) = c.dgram_out.pop_front() {
            host.send_datagram(id, &d);
        }
        let mut got = false;
        while let Some(d) = host.recv_datagram(id) {
            if c.dgram_in.len() >= DATAGRAM_QUEUE {
                c.dgram_in.pop_front();
            }
            c.dgram_in.push_back(d);
            got = true;
        }
        if got {
            for w in c.wakers.drain(..) {
                w.wake();
            }
        }
        if let Some(info) = host.session(id) {
            c.info = info;
        }
    }

    fn established(&mut self, ctx: &mut NodeCtx<'_>, state: &mut State, session: AttemptId, inviter: bool) {
        let Some(info) = ctx.host.session(session) else { return };
        state.conns.insert(
            session,
            ConnState {
                info,
                streams: HashMap::new(),
                incoming: Default::default(),
                dgram_in: VecDeque::new(),
                dgram_out: VecDeque::new(),
                closed: None,
                main_taken: false,
                wakers: Vec::new(),
            },
        );
        // Whether someone asked for this session, and is still there.
        let asked = if let Some(j) = self.joins.remove(&session) {
            Some(match j.step {
                Some(step) => step.send(JoinStep::Connected(session)).is_ok(),
                None => j.done.send(Ok(session)).is_ok(),
            })
        } else {
            self.rsvps.remove(&session).map(|reply| reply.send(Ok(session)).is_ok())
        };
        match asked {
            Some(true) => {}
            None if inviter => {
                state.incoming.push_back(session);
                state.wake();
            }
            // A cancelled join (no handle will ever close it), or a session
            // nobody here asked for (the engine's own): not ours.
            Some(false) | None => {
                state.conns.remove(&session);
                ctx.host.close(session, ctx.now);
            }
        }
    }

    /// Tells whoever waits on `attempt` why it failed; `false` when nobody
    /// does (a joiner of ours, or a control-socket RSVP's attempt).
    fn failed(&mut self, attempt: AttemptId, why: String) -> bool {
        if let Some(j) = self.joins.remove(&attempt) {
            match j.step {
                Some(step) => {
                    let _ = step.send(JoinStep::Failed(why));
                }
                None => {
                    let _ = j.done.send(Err(why));
                }
            }
        } else if let Some(reply) = self.rsvps.remove(&attempt) {
            let _ = reply.send(Err(JoinError::Failed(why)));
        } else {
            return false;
        }
        true
    }
}

impl App for Driver {
    type Output = ();

    fn on_ready(&mut self, _: &mut NodeCtx<'_>) {
        let mut s = self.inner.lock();
        s.ready = true;
        s.wake();
    }

    fn on_event(&mut self, ctx: &mut NodeCtx<'_>, event: HostEvent) {
        let inner = self.inner.clone();
        let mut state = inner.lock();
        match event {
            HostEvent::Established { session, inviter, .. } => self.established(ctx, &mut state, session, inviter),
            HostEvent::Ice(IceEvent::RsvpNeeded { attempt }) => {
                let Some(j) = self.joins.get_mut(&attempt) else { return };
                let (Some(token), Some(step)) = (ctx.host.endpoint().rsvp_token_id(attempt), j.step.take()) else {
                    return;
                };
                // With the circuit the invitee holds at the inviter's relay.
                let hints = ctx.host.relay_hints(attempt);
                let t = ctx.minter.rsvp_relayed(&j.invitation, token, hints, super::unix_now());
                super::telemetry::token_issued("rsvp");
                let _ = step.send(JoinStep::Rsvp(t.encode_compact()));
            }
            HostEvent::Ice(IceEvent::Failed { attempt, reason, .. }) => {
                let why = match reason {
                    FailReason::Timeout => "no path to the peer within the time the invitation allows",
                    FailReason::Closed => "the attempt was closed",
                    FailReason::Crossed => "the peer is connecting to us with its own invitation",
                };
                if !self.failed(attempt, why.into()) && reason == FailReason::Timeout {
                    state.notice(Notice::JoinerTimedOut);
                }
            }
            HostEvent::HandshakeFailed { session, reason } => {
                let ours = self.failed(session, format!("the handshake failed: {reason}"));
                if !ours {
                    state.notice(Notice::JoinerRefused(reason.to_string()));
                }
            }
            HostEvent::StunFailed { server } => state.notice(Notice::StunFailed(server)),
            HostEvent::PathChanged { session, remote, remote_kind } => {
                if let Some(peer) = ctx.host.session(session).map(|s| s.peer.peer_id()) {
                    state.notice(Notice::Direct { peer, remote, remote_kind });
                }
            }
            HostEvent::Closed { session, reason } => {
                if let Some(c) = state.conns.get_mut(&session) {
                    // Bytes that arrived before the close stay readable.
                    Self::pump(ctx, session, c, &mut self.scratch, Pass::Closing);
                    c.closed.get_or_insert(reason);
                    c.wake_all();
                }
            }
            HostEvent::Readable { session } => {
                if let Some(c) = state.conns.get_mut(&session) {
                    Self::pump(ctx, session, c, &mut self.scratch, Pass::Event);
                }
            }
            _ => {}
        }
    }

    fn step(&mut self, ctx: &mut NodeCtx<'_>) -> Option<()> {
        let inner = self.inner.clone();
        let mut state = inner.lock();
        // Commands first, also at a shutdown: a close queued just before it
        // keeps its code and reason.
        while let Some(c) = state.commands.pop_front() {
            self.command(ctx, c, &mut state);
        }
        if state.shutdown {
            for (&id, c) in state.conns.iter_mut() {
                if c.closed.is_none() {
                    ctx.host.close(id, ctx.now);
                }
            }
            return Some(());
        }
        for (id, uni, reply) in std::mem::take(&mut self.opens) {
            self.open(ctx, &mut state, id, uni, reply);
        }
        for (&id, c) in state.conns.iter_mut() {
            if c.closed.is_none() {
                Self::pump(ctx, id, c, &mut self.scratch, Pass::Step);
            }
        }
        None
    }

    async fn wake(&mut self) {
        self.inner.driver.notified().await;
    }

    fn note(&mut self, message: &str) {
        self.inner.lock().notice(Notice::Note(message.to_owned()));
    }
}
