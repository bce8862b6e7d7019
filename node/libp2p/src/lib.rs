//! A [rust-libp2p](https://docs.rs/libp2p) transport over Convoke: a Swarm
//! (identify, ping, gossipsub, kademlia, any behaviour) dials and listens
//! with Convoke invitations, so two peers behind NATs connect without a
//! relay server: Convoke's connectivity checks, and its RSVP step when the
//! inviter's network filters a first contact, find the path; its
//! authenticated, encrypted session carries libp2p's substreams, one Convoke
//! stream each.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use convoke_libp2p::{Transport, InviteOptions, EndpointConfig};
//! let keypair = libp2p_identity::Keypair::generate_ed25519();
//! let transport = Transport::bind(&keypair, EndpointConfig::default()).await?;
//! let invitations = transport.handle();
//! // ... hand `transport` to a libp2p Swarm (SwarmBuilder::with_other_transport)
//! // and listen on "/ip4/0.0.0.0/udp/0", then:
//! let invitation = invitations.invite(InviteOptions::default()).await?;
//! println!("{}", invitation.token().encode_compact()); // send it by any channel
//! // The joiner, on its own machine, with its own transport's handle:
//! //   let address = handle.import(Invitation::parse(&text, now)?);
//! //   swarm.dial(address)?;
//! # Ok(())
//! # }
//! ```
//!
//! # How a libp2p address names an invitation
//!
//! ```text
//! /ip4/198.18.0.5/udp/40123/certhash/uEiD…/p2p/12D3KooW…
//! ```
//!
//! - `ip4`/`ip6` and `udp`: the invitation's address as the Internet sees
//!   it (its first server-reflexive or mapped candidate), else its first
//!   candidate. Informative: the checks try every candidate the token
//!   carries.
//! - `certhash`: the SHA-256 multihash of the invitation's signed body (the
//!   digest its signature covers). It plays the part a certificate hash
//!   plays for libp2p's WebRTC and WebTransport addresses: it pins the
//!   credential that authenticates the listener. No new multiaddr protocol
//!   code is needed, so every libp2p parser reads the address.
//! - `p2p`: the inviter's PeerId, which is its token key's: Convoke and
//!   libp2p derive the same id from the same Ed25519 key.
//!
//! The address alone is not enough to dial, by design: the token carries
//! connectivity-check credentials that must not be broadcast, so a dialer
//! first imports the token ([`Handle::import`], which returns the address).
//! Addresses are safe to gossip (identify, kademlia): they reveal no
//! secret, and a node that does not hold the token refuses to dial one
//! ([`Error::UnknownInvitation`]). An address without `certhash` is not
//! this transport's ([`TransportError::MultiaddrNotSupported`]), so it
//! composes with others (`or_transport`).
//!
//! # Listening
//!
//! The transport's sockets are bound by [`Transport::bind`] (one Convoke
//! endpoint, shared by listening and dialing, as QUIC shares one socket:
//! the checks need the same port both ways). `listen_on` takes an
//! `/ip4|ip6/…/udp/…` address that those sockets serve (an unspecified IP
//! or port 0 matches them) and starts handing joiners of our invitations to
//! the Swarm; it reports the sockets as listen addresses.
//!
//! # The RSVP step
//!
//! When a dial needs the inviter's network to open first, the dial does not
//! fail: it waits, and [`Handle::next_rsvp`] yields an [`RsvpRequest`] whose
//! token the application sends to the inviter by the channel the invitation
//! came by. The inviter passes it to [`Handle::accept_rsvp`]; both sides'
//! checks meet, the dial resolves, and the inviter's Swarm sees an incoming
//! connection. The join keeps trying for the invitation's RSVP timeout.
//!
//! The Swarm builder bounds every dial by its connection timeout (10 s by
//! default), RSVP step included: when a person carries the RSVP, raise it
//! (`SwarmBuilder::with_connection_timeout`) to the time that takes.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use futures::future::BoxFuture;
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_core::multihash::Multihash;
use libp2p_core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p_core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p_identity::{Keypair, PeerId};
use tokio::io::{AsyncRead as _, AsyncWrite as _, ReadBuf};

use convoke_node::identity::Identity;
pub use convoke_node::runtime::endpoint::{
    BindError, Connection, ConnectionError, Endpoint, EndpointClosed, EndpointConfig, InviteError, InviteOptions,
    JoinError, RecvStream, SendStream,
};
use convoke_node::token::CandidateKind;
pub use convoke_node::token::Invitation;

/// The multihash code of SHA-256.
const SHA2_256: u64 = 0x12;

/// The close code a Swarm's close sends the peer.
const CLOSE_CODE: u64 = 0;

/// Why the transport, a dial or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Convoke identities are Ed25519 keys; the Swarm's keypair is another
    /// kind.
    #[error("Convoke needs an Ed25519 keypair (libp2p_identity::Keypair::generate_ed25519)")]
    NotEd25519,
    /// The endpoint could not start.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The address names an invitation this transport does not hold.
    #[error("no invitation known for {0}: import the inviter's token first (Handle::import)")]
    UnknownInvitation(Multiaddr),
    /// The address's `/p2p` is not the invitation's inviter.
    #[error("the address names peer {}, but its invitation is from {}", .0.named, .0.inviter)]
    WrongPeer(Box<PeerMismatch>),
    /// The invitation could not be made.
    #[error(transparent)]
    Invite(#[from] InviteError),
    /// The join found no path, the handshake failed, or the RSVP step timed
    /// out: why, for people.
    #[error("{0}")]
    Join(String),
    /// The session ended or failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The endpoint is closed.
    #[error(transparent)]
    Closed(#[from] EndpointClosed),
}

impl From<JoinError> for Error {
    fn from(e: JoinError) -> Self {
        match e {
            JoinError::Closed(c) => Error::Closed(c),
            other => Error::Join(other.to_string()),
        }
    }
}

/// An address whose `/p2p` is not its invitation's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMismatch {
    /// The PeerId in the address.
    pub named: PeerId,
    /// The invitation's key.
    pub inviter: PeerId,
}

/// A dial waiting for the inviter to take our RSVP: send [`rsvp`](Self::rsvp)
/// to the peer by the channel its invitation came by.
#[derive(Debug, Clone)]
pub struct RsvpRequest {
    /// The inviter.
    pub peer: PeerId,
    /// The address being dialed.
    pub address: Multiaddr,
    /// The RSVP token, compact text.
    pub rsvp: String,
}

/// What the transport and its handles share.
#[derive(Default)]
struct State {
    /// Invitations we may dial, by the digest their address carries.
    book: HashMap<[u8; 32], Invitation>,
    /// Connections made by [`Handle::accept_rsvp`], for the listener.
    incoming: VecDeque<Connection>,
    /// The transport's task, to wake when `incoming` grows.
    transport: Option<Waker>,
    /// Dials waiting on an RSVP.
    rsvps: VecDeque<RsvpRequest>,
    /// Tasks in [`Handle::next_rsvp`].
    rsvp_wakers: Vec<Waker>,
}

#[derive(Default)]
struct Shared(Mutex<State>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The libp2p peer id of a Convoke key.
fn libp2p_peer(id: convoke_node::identity::PeerId) -> PeerId {
    PeerId::from_bytes(&id.to_bytes()).expect("a Convoke peer id is a libp2p identity multihash of an Ed25519 key")
}

/// The Convoke identity of a libp2p Ed25519 keypair: the same key, so the
/// same PeerId.
pub fn identity_of(keypair: &Keypair) -> Result<Identity, Error> {
    let ed = keypair.clone().try_into_ed25519().map_err(|_| Error::NotEd25519)?;
    let secret = ed.secret();
    let seed: [u8; 32] = secret.as_ref().try_into().map_err(|_| Error::NotEd25519)?;
    Ok(Identity::from_secret_bytes(seed))
}

/// The libp2p address that names `invitation` (see the
/// [crate documentation](crate) for its form).
pub fn invitation_address(invitation: &Invitation) -> Multiaddr {
    let body = &invitation.token().body;
    let mut addr = Multiaddr::empty();
    let candidates = &body.connection_info.ice_candidates;
    let shown = candidates.iter().find(|c| c.kind != CandidateKind::Host).or(candidates.first());
    if let Some(c) = shown {
        addr.push(match c.address.ip() {
            IpAddr::V4(ip) => Protocol::Ip4(ip),
            IpAddr::V6(ip) => Protocol::Ip6(ip),
        });
        addr.push(Protocol::Udp(c.address.port()));
    }
    let hash = Multihash::wrap(SHA2_256, &body.signing_digest()).expect("a SHA-256 digest fits a multihash");
    addr.push(Protocol::Certhash(hash));
    addr.push(Protocol::P2p(libp2p_peer(invitation.inviter())));
    addr
}

/// The invitation digest an address of ours carries, and the PeerId it
/// names; `None` if the address is not of our form.
fn parse_dial_address(addr: &Multiaddr) -> Option<([u8; 32], Option<PeerId>)> {
    let mut it = addr.iter().peekable();
    if matches!(it.peek(), Some(Protocol::Ip4(_) | Protocol::Ip6(_))) {
        it.next();
        if !matches!(it.next(), Some(Protocol::Udp(_))) {
            return None;
        }
    }
    let Some(Protocol::Certhash(hash)) = it.next() else { return None };
    if hash.code() != SHA2_256 {
        return None;
    }
    let digest: [u8; 32] = hash.digest().try_into().ok()?;
    let peer = match it.next() {
        None => None,
        Some(Protocol::P2p(p)) => Some(p),
        Some(_) => return None,
    };
    it.next().is_none().then_some((digest, peer))
}

/// The socket an `/ip4|ip6/…/udp/…` address names.
fn parse_listen_address(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut it = addr.iter();
    let ip = match it.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    let Protocol::Udp(port) = it.next()? else { return None };
    it.next().is_none().then_some(SocketAddr::new(ip, port))
}

fn socket_address(a: SocketAddr) -> Multiaddr {
    let ip = match a.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty().with(ip).with(Protocol::Udp(a.port()))
}

/// The upgrade of an incoming connection: already done (the handshake
/// authenticated the peer before the connection surfaced).
pub type ListenerUpgrade = futures::future::Ready<Result<(PeerId, Muxer), Error>>;

/// A dial in progress: the checks, the RSVP step if needed, the handshake.
pub type Dial = BoxFuture<'static, Result<(PeerId, Muxer), Error>>;

/// The transport: give it to a Swarm; keep a [`Handle`] for invitations.
pub struct Transport {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    listeners: Vec<ListenerId>,
    events: VecDeque<TransportEvent<ListenerUpgrade, Error>>,
    accept: Option<BoxFuture<'static, Result<Connection, EndpointClosed>>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds a Convoke endpoint for `keypair` (Ed25519, the Swarm's own) and
    /// resolves once its candidates are known.
    pub async fn bind(keypair: &Keypair, config: EndpointConfig) -> Result<Transport, Error> {
        let endpoint = Endpoint::bind(identity_of(keypair)?, config).await?;
        Ok(Transport { endpoint, shared: Arc::default(), listeners: Vec::new(), events: VecDeque::new(), accept: None })
    }

    /// A handle for invitations and RSVPs, usable after the transport moved
    /// into a Swarm.
    pub fn handle(&self) -> Handle {
        Handle { endpoint: self.endpoint.clone(), shared: self.shared.clone() }
    }

    /// The sockets the endpoint bound.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.endpoint.local_addrs()
    }

    fn incoming(&self, listener_id: ListenerId, conn: Connection) -> TransportEvent<ListenerUpgrade, Error> {
        let local = self.endpoint.local_addrs().first().copied().map(socket_address).unwrap_or_else(Multiaddr::empty);
        let remote = conn.info().map(|i| socket_address(i.remote)).unwrap_or_else(|_| Multiaddr::empty());
        let peer = libp2p_peer(conn.peer_id());
        TransportEvent::Incoming {
            listener_id,
            upgrade: futures::future::ready(Ok((peer, Muxer::new(conn)))),
            local_addr: local,
            send_back_addr: remote,
        }
    }
}

impl libp2p_core::Transport for Transport {
    type Output = (PeerId, Muxer);
    type Error = Error;
    type ListenerUpgrade = ListenerUpgrade;
    type Dial = Dial;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<Error>> {
        let Some(wanted) = parse_listen_address(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let served: Vec<SocketAddr> = self
            .endpoint
            .local_addrs()
            .iter()
            .copied()
            .filter(|l| {
                l.is_ipv4() == wanted.is_ipv4()
                    && (wanted.ip().is_unspecified() || wanted.ip() == l.ip())
                    && (wanted.port() == 0 || wanted.port() == l.port())
            })
            .collect();
        if served.is_empty() {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        self.listeners.push(id);
        for a in served {
            self.events.push_back(TransportEvent::NewAddress { listener_id: id, listen_addr: socket_address(a) });
        }
        if let Some(w) = self.shared.lock().transport.take() {
            w.wake();
        }
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let before = self.listeners.len();
        self.listeners.retain(|l| *l != id);
        if self.listeners.len() == before {
            return false;
        }
        self.events.push_back(TransportEvent::ListenerClosed { listener_id: id, reason: Ok(()) });
        if let Some(w) = self.shared.lock().transport.take() {
            w.wake();
        }
        true
    }

    fn dial(&mut self, addr: Multiaddr, _opts: DialOpts) -> Result<Dial, TransportError<Error>> {
        // Convoke's checks settle the ICE roles themselves (RFC 8445
        // tie-breakers), so a hole punch's "dial as listener" needs nothing
        // different here.
        let Some((digest, named)) = parse_dial_address(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let Some(invitation) = self.shared.lock().book.get(&digest).cloned() else {
            return Err(TransportError::Other(Error::UnknownInvitation(addr)));
        };
        let inviter = libp2p_peer(invitation.inviter());
        if let Some(named) = named.filter(|n| *n != inviter) {
            return Err(TransportError::Other(Error::WrongPeer(Box::new(PeerMismatch { named, inviter }))));
        }
        let endpoint = self.endpoint.clone();
        let shared = self.shared.clone();
        Ok(Box::pin(async move {
            let conn = match endpoint.join(&invitation).await {
                Ok(conn) => conn,
                Err(JoinError::RsvpNeeded(pending)) => {
                    let rsvp = pending.rsvp().to_owned();
                    let request = RsvpRequest { peer: inviter, address: addr, rsvp: rsvp.clone() };
                    let wakers = {
                        let mut s = shared.lock();
                        s.rsvps.push_back(request);
                        std::mem::take(&mut s.rsvp_wakers)
                    };
                    wakers.into_iter().for_each(Waker::wake);
                    // A dial that ends (connected, failed, or dropped by the
                    // Swarm's timeout) takes back a request nobody read.
                    let _withdraw = Withdraw { shared: shared.clone(), rsvp };
                    pending.connected().await?
                }
                Err(e) => return Err(e.into()),
            };
            Ok((libp2p_peer(conn.peer_id()), Muxer::new(conn)))
        }))
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TransportEvent<ListenerUpgrade, Error>> {
        let this = &mut *self;
        if let Some(event) = this.events.pop_front() {
            return Poll::Ready(event);
        }
        let Some(&listener_id) = this.listeners.first() else {
            this.shared.lock().transport = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let rsvp_accepted = {
            let mut s = this.shared.lock();
            let c = s.incoming.pop_front();
            if c.is_none() {
                s.transport = Some(cx.waker().clone());
            }
            c
        };
        if let Some(conn) = rsvp_accepted {
            return Poll::Ready(this.incoming(listener_id, conn));
        }
        let endpoint = this.endpoint.clone();
        let accept = this.accept.get_or_insert_with(|| Box::pin(async move { endpoint.accept().await }));
        let result = ready!(accept.as_mut().poll(cx));
        this.accept = None;
        match result {
            Ok(conn) => Poll::Ready(this.incoming(listener_id, conn)),
            Err(closed) => {
                this.listeners.retain(|l| *l != listener_id);
                Poll::Ready(TransportEvent::ListenerClosed { listener_id, reason: Err(closed.into()) })
            }
        }
    }
}

/// Takes an unread [`RsvpRequest`] back when its dial ends.
struct Withdraw {
    shared: Arc<Shared>,
    rsvp: String,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        self.shared.lock().rsvps.retain(|r| r.rsvp != self.rsvp);
    }
}

/// The application's side of a [`Transport`]: invitations out, tokens in.
#[derive(Clone)]
pub struct Handle {
    endpoint: Endpoint,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl Handle {
    /// Our PeerId (the same in Convoke and libp2p).
    pub fn peer_id(&self) -> PeerId {
        libp2p_peer(self.endpoint.peer_id())
    }

    /// Makes an invitation to us; its joiners reach the Swarm as incoming
    /// connections once it listens. [`invitation_address`] names it.
    pub async fn invite(&self, options: InviteOptions) -> Result<Invitation, Error> {
        Ok(self.endpoint.invite(options).await?)
    }

    /// Keeps a peer's invitation so the transport can dial it; returns the
    /// address to dial.
    pub fn import(&self, invitation: Invitation) -> Multiaddr {
        let address = invitation_address(&invitation);
        self.shared.lock().book.insert(invitation.token().body.signing_digest(), invitation);
        address
    }

    /// The next dial waiting for its inviter to take an RSVP.
    pub async fn next_rsvp(&self) -> RsvpRequest {
        poll_fn(|cx| {
            let mut s = self.shared.lock();
            match s.rsvps.pop_front() {
                Some(r) => Poll::Ready(r),
                None => {
                    if !s.rsvp_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                        s.rsvp_wakers.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Takes a joiner's RSVP (for one of our invitations); once both sides'
    /// checks meet, the Swarm sees the connection as incoming on its first
    /// listener. Resolves with the joiner's PeerId.
    pub async fn accept_rsvp(&self, rsvp: &str) -> Result<PeerId, Error> {
        let conn = self.endpoint.accept_rsvp(rsvp).await?;
        let peer = libp2p_peer(conn.peer_id());
        let waker = {
            let mut s = self.shared.lock();
            s.incoming.push_back(conn);
            s.transport.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(peer)
    }
}

/// A Convoke session as a libp2p stream muxer: each substream is one
/// bidirectional Convoke stream, flow-controlled on its own under the
/// session's window.
pub struct Muxer {
    conn: Connection,
    inbound: Option<PendingStream>,
    outbound: Option<PendingStream>,
    closed: Option<BoxFuture<'static, convoke_node::session::CloseReason>>,
    refuse_uni: Option<BoxFuture<'static, Result<RecvStream, ConnectionError>>>,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer").field("conn", &self.conn).finish_non_exhaustive()
    }
}

impl Muxer {
    fn new(conn: Connection) -> Self {
        Muxer { conn, inbound: None, outbound: None, closed: None, refuse_uni: None }
    }

    /// The Convoke connection underneath (path, round trip, counters,
    /// datagrams).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl StreamMuxer for Muxer {
    type Substream = Substream;
    type Error = Error;

    fn poll_inbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Substream, Error>> {
        let conn = self.conn.clone();
        poll_substream(&mut self.inbound, cx, || Box::pin(async move { conn.accept_bi().await }))
    }

    fn poll_outbound(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Substream, Error>> {
        let conn = self.conn.clone();
        poll_substream(&mut self.outbound, cx, || Box::pin(async move { conn.open_bi().await }))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.conn.close(CLOSE_CODE, "closed by libp2p");
        Poll::Ready(Ok(()))
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<StreamMuxerEvent, Error>> {
        // libp2p has no unidirectional substreams: one the peer opens is
        // taken and dropped (the peer is asked to stop), so it holds
        // neither memory nor the peer's stream credit here.
        loop {
            let conn = self.conn.clone();
            let fut = self.refuse_uni.get_or_insert_with(|| Box::pin(async move { conn.accept_uni().await }));
            match fut.as_mut().poll(cx) {
                Poll::Ready(Ok(stream)) => {
                    drop(stream);
                    self.refuse_uni = None;
                }
                // The session ended: the close below reports it.
                Poll::Ready(Err(_)) => {
                    self.refuse_uni = Some(Box::pin(std::future::pending()));
                    break;
                }
                Poll::Pending => break,
            }
        }
        let conn = self.conn.clone();
        let fut = self.closed.get_or_insert_with(|| Box::pin(async move { conn.closed().await }));
        let reason = ready!(fut.as_mut().poll(cx));
        self.closed = None;
        Poll::Ready(Err(Error::Connection(ConnectionError::Closed(reason))))
    }
}

/// A stream being accepted or opened.
type PendingStream = BoxFuture<'static, Result<(SendStream, RecvStream), ConnectionError>>;

/// Polls the stream in `slot` (started with `start` if none is under
/// way); the slot empties once it resolves.
fn poll_substream(
    slot: &mut Option<PendingStream>,
    cx: &mut Context<'_>,
    start: impl FnOnce() -> PendingStream,
) -> Poll<Result<Substream, Error>> {
    let result = ready!(slot.get_or_insert_with(start).as_mut().poll(cx));
    *slot = None;
    Poll::Ready(result.map(|(send, recv)| Substream { send, recv }).map_err(Error::from))
}

/// One libp2p substream: a bidirectional Convoke stream.
#[derive(Debug)]
pub struct Substream {
    send: SendStream,
    recv: RecvStream,
}

impl futures::AsyncRead for Substream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        let mut out = ReadBuf::new(buf);
        ready!(Pin::new(&mut self.recv).poll_read(cx, &mut out))?;
        Poll::Ready(Ok(out.filled().len()))
    }
}

impl futures::AsyncWrite for Substream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_our_form_parse_and_others_do_not() {
        let hash = Multihash::wrap(SHA2_256, &[7u8; 32]).expect("fits");
        let peer = PeerId::random();
        let full: Multiaddr = Multiaddr::empty()
            .with(Protocol::Ip4([198, 18, 0, 5].into()))
            .with(Protocol::Udp(4000))
            .with(Protocol::Certhash(hash))
            .with(Protocol::P2p(peer));
        assert_eq!(parse_dial_address(&full), Some(([7u8; 32], Some(peer))));
        let bare = Multiaddr::empty().with(Protocol::Certhash(hash));
        assert_eq!(parse_dial_address(&bare), Some(([7u8; 32], None)));
        // libp2p's own WebRTC addresses carry a certhash too: not ours.
        let webrtc: Multiaddr =
            "/ip4/127.0.0.1/udp/4000/webrtc-direct/certhash/uEiAkH5a4DPGKUuOBjYw0CgwjvcJCJMD2K_1sluCy8VDJuw"
                .parse()
                .expect("valid");
        assert_eq!(parse_dial_address(&webrtc), None);
        let quic: Multiaddr = "/ip4/127.0.0.1/udp/4000/quic-v1".parse().expect("valid");
        assert_eq!(parse_dial_address(&quic), None);
        assert_eq!(parse_listen_address(&quic), None);
        let listen: Multiaddr = "/ip6/::1/udp/0".parse().expect("valid");
        assert_eq!(parse_listen_address(&listen), Some("[::1]:0".parse().expect("valid")));
        let other_hash = Multihash::wrap(0x16, &[7u8; 32]).expect("fits");
        assert_eq!(parse_dial_address(&Multiaddr::empty().with(Protocol::Certhash(other_hash))), None);
    }

    #[test]
    fn the_peer_id_is_the_same_in_convoke_and_libp2p() {
        let keypair = Keypair::generate_ed25519();
        let identity = identity_of(&keypair).expect("ed25519");
        assert_eq!(libp2p_peer(identity.public_key().peer_id()), keypair.public().to_peer_id());
        assert_eq!(identity.public_key().peer_id().to_string(), keypair.public().to_peer_id().to_string());
    }
}
