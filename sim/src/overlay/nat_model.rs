//! Which pairs connect: the NAT model's answer for every pair of profiles.

use super::*;

/// What the expected matrix says of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cell {
    Single,
    Rsvp,
    Failed,
}

pub(super) struct Matrix {
    pub(super) profiles: Vec<String>,
    /// cells[inviter][invitee]
    pub(super) cells: Vec<Vec<Cell>>,
}

/// What the NAT model says of every pair of built-in profiles.
pub(super) fn expected_matrix() -> Matrix {
    let builtin = builtin_profiles();
    let cgnat = Cgnat::default();
    let chains: Vec<_> = builtin.values().map(|p| p.nat_chain(&cgnat)).collect();
    let cells = crate::reach::matrix(&chains)
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|r| match r {
                    Ladder::SingleToken => Cell::Single,
                    // Probing starts with the RSVP round: the model's
                    // message network treats it as one.
                    Ladder::Rsvp | Ladder::PortPrediction | Ladder::Birthday => Cell::Rsvp,
                    Ladder::Never => Cell::Failed,
                })
                .collect()
        })
        .collect();
    Matrix { profiles: builtin.into_keys().collect(), cells }
}

pub(super) fn draw_profile(rng: &mut SimRng, mix: &[(usize, f64)]) -> usize {
    let total: f64 = mix.iter().map(|m| m.1).sum();
    let mut x = rng.unit() * total;
    for &(p, w) in mix {
        if x < w {
            return p;
        }
        x -= w;
    }
    mix.last().map_or(0, |m| m.0)
}
