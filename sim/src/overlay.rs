//! Overlay simulations: N [`convoke_overlay::Overlay`] members (HyParView
//! membership, Plumtree broadcast, the introducer's relay) over a simulated
//! message network, at N = 10,000 by default.
//!
//! The network is abstract (no packets, no NAT boxes): every pair of nodes
//! has a fixed one-way latency drawn from a hash of the pair and the seed,
//! so messages between two nodes arrive in the order they were sent. A
//! *link* is a pair in a set; a message is sent only over a link. When the
//! overlay asks for a link ([`convoke_overlay::Output::Connect`]) it comes
//! up one round trip later if the target is alive and reachable; otherwise
//! the asker hears `link_failed` after a transport timeout. With a NAT
//! population (`[introducer]`), the NAT model decides each connection
//! instead ([`crate::reach`], the same answer the packet world's engine
//! meets): `single-token` as above, `rsvp` only if
//! the driver's RSVP, sent along the overlay's route with
//! [`convoke_overlay::Overlay::introduce`], reaches the peer through the
//! relays, `failed` never. Dead nodes drop everything; survivors are not
//! told, they notice by the overlay's own pings and timeouts.
//!
//! Each node's `tick` is scheduled at its `poll_timeout()`. Time is
//! milliseconds; one seeded ChaCha stream decides everything, and nothing
//! iterates a hash map to decide, so a scenario and seed give a
//! byte-identical `report.json`.
//!
//! A scenario (TOML) grows the network by joins and settles it, then runs
//! exactly one measurement: `[steady]`, `[failure]`, `[membership]`,
//! `[churn]`, `[partition]`, `[introducer]`, `[hostile]` (a share of
//! members turn hostile, [`Behaviour`]), or `[topology]` (which builds
//! each topology policy's graph instead of growing an overlay).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use convoke_overlay::plumtree::{PlumConfig, Plumtree};
use convoke_overlay::topology::{self, NodeInfo, Reach};
use convoke_overlay::{Card, Config, Event, Kind, Message, MsgId, Output, Overlay};
use serde::{Deserialize, Serialize};

use crate::queue::Queue;
use crate::reach::Reach as Ladder;
use crate::scenario::{Cgnat, ScenarioError, builtin_profiles};
use crate::{FastHash, SimRng};

mod hostile;
mod measure;
mod model;
mod nat_model;
mod render;
mod run;
mod schema;

pub use hostile::HostileFigures;
pub use measure::*;
pub use model::*;
use nat_model::*;
pub use run::*;
pub use schema::*;
