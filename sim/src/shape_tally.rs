//! A live network's shape under a topology policy, tallied one member at
//! a time: the overlay scenarios and the whole-system run count it alike.

use convoke_overlay::Role;

/// Roles, leaves per super-peer, degrees and the links a policy forbids.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShapeTally {
    /// Super-peers (hubs) counted.
    pub supers: u64,
    /// Leaves counted.
    pub leaves: u64,
    /// Members of a mesh or spanning tree counted.
    pub members: u64,
    /// Most leaves linked to one super-peer, and their sum.
    pub max_super_leaves: u64,
    /// ...
    pub super_leaves: u64,
    /// Most links at one super-peer, and their sum.
    pub max_super_degree: u64,
    /// ...
    pub super_links: u64,
    /// Links of leaves, summed.
    pub leaf_degrees: u64,
    /// Leaf-to-leaf links, each counted from both ends.
    pub leaf_leaf_ends: u64,
    /// Leaves with no super-peer link.
    pub leaves_without_uplink: u64,
    /// Most links at one member of any role.
    pub max_degree: u64,
}

impl ShapeTally {
    /// Counts one member of role `role` whose live neighbours have roles
    /// `neighbours` (`None`: a neighbour with no overlay to ask).
    pub fn add(&mut self, role: Role, neighbours: impl IntoIterator<Item = Option<Role>>) {
        let (mut degree, mut leaves, mut supers) = (0u64, 0u64, 0u64);
        for r in neighbours {
            degree += 1;
            leaves += u64::from(r == Some(Role::Leaf));
            supers += u64::from(r == Some(Role::Super));
        }
        self.max_degree = self.max_degree.max(degree);
        match role {
            Role::Super => {
                self.supers += 1;
                self.super_links += degree;
                self.super_leaves += leaves;
                self.max_super_leaves = self.max_super_leaves.max(leaves);
                self.max_super_degree = self.max_super_degree.max(degree);
            }
            Role::Leaf => {
                self.leaves += 1;
                self.leaf_degrees += degree;
                self.leaf_leaf_ends += leaves;
                self.leaves_without_uplink += u64::from(supers == 0);
            }
            Role::Member => self.members += 1,
        }
    }

    /// Leaf-to-leaf links.
    pub fn leaf_links(&self) -> u64 {
        self.leaf_leaf_ends / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_roles_bounds_and_forbidden_links() {
        let mut t = ShapeTally::default();
        let (s, l) = (Some(Role::Super), Some(Role::Leaf));
        t.add(Role::Super, [l, l, s]);
        t.add(Role::Leaf, [s]);
        t.add(Role::Leaf, [l]);
        t.add(Role::Leaf, [l, None]);
        t.add(Role::Member, []);
        assert_eq!((t.supers, t.leaves, t.members), (1, 3, 1));
        assert_eq!((t.max_super_leaves, t.max_super_degree, t.max_degree), (2, 3, 3));
        assert_eq!((t.leaf_links(), t.leaves_without_uplink, t.leaf_degrees), (1, 2, 4));
    }
}
