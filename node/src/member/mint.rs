//! The one place that mints our tokens: invitations (and the cards made of
//! them) and RSVPs, always with the candidates [`LocalCandidates::select`]
//! picks, so no token we make is refused for carrying too many.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use convoke_overlay::Card;

use super::candidates::LocalCandidates;
use crate::host::HostEvent;
use crate::ice::Event as IceEvent;
use crate::identity::{Identity, PeerId};
use crate::token::{Invitation, InvitationParams, NatInfo, Token, TokenError, TokenId};

/// Mints our tokens from our identity and candidates. Randomness (token
/// ids, ICE passwords) comes from a seed: the runtime seeds it from the
/// operating system, the simulator from its own seeded stream.
pub struct Minter {
    identity: Identity,
    candidates: LocalCandidates,
    rng: ChaCha20Rng,
    /// Our NAT as the host last classified it.
    nat: Option<NatInfo>,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter").field("peer", &self.identity.peer_id()).field("candidates", &self.candidates).finish()
    }
}

impl Minter {
    /// A minter for `identity` with no candidates yet.
    pub fn new(identity: Identity, seed: [u8; 32]) -> Self {
        Self { identity, candidates: LocalCandidates::new(), rng: ChaCha20Rng::from_seed(seed), nat: None }
    }

    /// Our identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    /// Our candidates.
    pub fn candidates(&self) -> &LocalCandidates {
        &self.candidates
    }

    /// Our candidates, to add interface addresses to.
    pub fn candidates_mut(&mut self) -> &mut LocalCandidates {
        &mut self.candidates
    }

    /// Our NAT's classification, as STUN answers showed it.
    pub fn nat(&self) -> Option<NatInfo> {
        self.nat
    }

    /// What our tokens say of our NAT. With a port mapping the router lets
    /// anyone in at the mapped address, which is all a peer needs to know:
    /// the token then says no NAT stands in the way, so the peer neither
    /// asks for an RSVP early nor starts probing, and checks that address.
    pub fn token_nat(&self) -> Option<NatInfo> {
        match self.candidates.port_mapped() {
            Some(_) => Some(NatInfo::PORT_MAPPED),
            None => self.nat,
        }
    }

    /// Sets our NAT's classification (as [`crate::host::Host::nat`] has it).
    pub fn set_nat(&mut self, nat: Option<NatInfo>) {
        self.nat = nat;
    }

    /// Learns our reflexive addresses from a host event (a STUN answer, a
    /// peer's check) and our NAT's classification. Returns whether a new
    /// address was kept.
    pub fn learn(&mut self, e: &HostEvent) -> bool {
        match e {
            HostEvent::NatClassified(nat) => {
                self.nat = Some(*nat);
                false
            }
            HostEvent::StunMapped { address, .. } => self.candidates.add_server_reflexive(*address),
            HostEvent::Ice(IceEvent::Mapped { address }) => self.candidates.add_peer_reflexive(*address),
            _ => false,
        }
    }

    /// A signed invitation offering our selected candidates (whatever
    /// `params.candidates` held), checked as a reader would check it.
    pub fn invitation(&mut self, params: InvitationParams, unix_now: u64) -> Result<Invitation, TokenError> {
        let params = InvitationParams { candidates: self.candidates.select(), nat: self.token_nat(), ..params };
        let t = Token::new_invitation(&self.identity, params, unix_now, &mut self.rng);
        Invitation::from_token(t, unix_now)
    }

    /// Our RSVP to `invitation` for the attempt whose credentials
    /// `token_id` fixes (see [`crate::ice::Endpoint::rsvp_token_id`]).
    pub fn rsvp(&self, invitation: &Invitation, token_id: TokenId, unix_now: u64) -> Token {
        self.rsvp_relayed(invitation, token_id, Vec::new(), unix_now)
    }

    /// [`Minter::rsvp`] carrying relay hints (the circuits the host holds
    /// for the attempt: [`crate::host::Host::relay_hints`]).
    pub fn rsvp_relayed(&self, invitation: &Invitation, token_id: TokenId, relay: Vec<String>, unix_now: u64) -> Token {
        let (candidates, nat) = (self.candidates.select(), self.token_nat());
        Token::new_rsvp_relayed(invitation, &self.identity, token_id, candidates, nat, relay, unix_now)
    }
}

/// The card of an invitation: its inviter and the token in compact text.
pub fn card_of(invitation: &Invitation) -> Card<PeerId> {
    Card::new(invitation.inviter(), invitation.token().encode_compact().into_bytes())
}

/// A card is usable only as a valid invitation signed by the peer it
/// names: members relay cards, and none can pass off its own invitation
/// (or a stale one) as someone else's.
pub fn check_card(card: &Card<PeerId>, unix_now: u64) -> Result<Invitation, String> {
    let text = std::str::from_utf8(&card.token).map_err(|_| "its card is not text".to_string())?;
    match Invitation::parse(text, unix_now) {
        Ok(inv) if inv.inviter() == card.peer => Ok(inv),
        Ok(inv) => Err(format!("its card is signed by {}, not by it", inv.inviter())),
        Err(e) => Err(format!("its card is unusable: {e}")),
    }
}
