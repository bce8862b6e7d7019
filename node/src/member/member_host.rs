//! A member and the host it sits on, as one sans-IO state machine:
//! datagrams, timeouts and commands in; datagrams, a deadline and events
//! out. The simulator and the tests drive this; the tokio runtime drives
//! the two halves itself (its node owns the host for the CLI's other
//! commands too).

use std::net::SocketAddr;
use std::time::Instant;

use super::{CommandError, Member, MemberCommand, MemberConfig, MemberEvent};
use crate::host::{Host, HostConfig};
use crate::ice::Transmit;
use crate::identity::Identity;
use crate::token::TokenError;

/// A [`Member`] on its own [`Host`].
#[derive(Debug)]
pub struct MemberHost {
    /// The connectivity engine and sessions.
    pub host: Host,
    /// The member.
    pub member: Member,
    /// Unix seconds at `base` (token validity is checked in unix time).
    unix_base: u64,
    base: Instant,
    started: bool,
}

impl MemberHost {
    /// A member for `identity` on a new host. `seed` keys all randomness;
    /// `now` and `unix_now` are the same moment on the two clocks.
    pub fn new(
        identity: Identity,
        config: MemberConfig,
        host: HostConfig,
        seed: [u8; 32],
        now: Instant,
        unix_now: u64,
    ) -> Self {
        let mut host_seed = seed;
        host_seed[31] ^= 0xa5;
        Self {
            host: Host::new(&identity, host, host_seed, now, unix_now),
            member: Member::new(identity, config, seed, now),
            unix_base: unix_now,
            base: now,
            started: false,
        }
    }

    fn unix(&self, now: Instant) -> u64 {
        self.unix_base + now.saturating_duration_since(self.base).as_secs()
    }

    /// Mints our card and starts (once our candidates are known).
    pub fn start(&mut self, now: Instant) -> Result<(), TokenError> {
        let unix = self.unix(now);
        self.started = true;
        let r = self.member.start(&mut self.host, now, unix);
        self.pump(now);
        r
    }

    /// Whether [`MemberHost::start`] ran.
    pub fn started(&self) -> bool {
        self.started
    }

    /// One datagram from the network.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        self.host.handle_datagram(now, from, data);
        self.pump(now);
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.host.handle_timeout(now);
        let unix = self.unix(now);
        if self.started {
            self.member.handle_timeout(&mut self.host, now, unix);
        }
        self.pump(now);
    }

    /// An application's command.
    pub fn command(&mut self, c: MemberCommand, now: Instant) -> Result<(), CommandError> {
        let unix = self.unix(now);
        let r = self.member.command(&mut self.host, c, now, unix);
        self.pump(now);
        r
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.host.poll_transmit(now)
    }

    /// The next event: the member's (host events go to the member).
    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.member.poll_event()
    }

    /// When [`MemberHost::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let m = if self.started { self.member.poll_timeout() } else { None };
        [self.host.poll_timeout(), m].into_iter().flatten().min()
    }

    /// Hands the host's events to the member (the drive rule, inside one
    /// machine).
    fn pump(&mut self, now: Instant) {
        let unix = self.unix(now);
        for _ in 0..10_000 {
            let Some(e) = self.host.poll_event() else { break };
            if self.started {
                self.member.handle_host_event(&mut self.host, e, now, unix);
            } else {
                self.member.minter().learn(&e);
            }
        }
    }
}
