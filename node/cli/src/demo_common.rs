//! What both demos share: their arguments.

use clap::Args;

/// `convoke demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How many nodes form the network.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(2..=64))]
    pub nodes: u16,
    /// Require an RSVP, as for an inviter whose network lets no first
    /// contact in: the demo carries a newcomer's first RSVP back by itself,
    /// and members relay every later one (introductions).
    #[arg(long)]
    pub rsvp: bool,
    /// The two-node demo: one invitation, one greeting each way.
    #[arg(long)]
    pub pair: bool,
    /// The topology policy the members run: mesh, spanning-tree,
    /// hierarchical (every fourth node can serve as a super-peer) or star
    /// (every sixth node is a hub, and newcomers join with a hub's
    /// invitation).
    #[arg(long, value_name = "POLICY", default_value = "mesh", value_parser = ["mesh", "spanning-tree", "hierarchical", "star"])]
    pub topology: String,
}
