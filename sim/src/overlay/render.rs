//! The report in Markdown.

use super::*;

impl OverlayReport {
    /// Pretty JSON (deterministic).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Markdown tables.
    pub fn to_markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# Overlay scenario `{}` (seed {}, N = {})\n", self.scenario, self.seed, self.nodes);
        let _ = writeln!(
            m,
            "Simulated {:.1} s, {} messages delivered, {} events. A membership round is 1000 ms.\n",
            self.sim_ms as f64 / 1000.0,
            self.messages,
            self.events
        );
        for (title, inv) in [("After settling", &self.settled), ("At the end", &self.end)] {
            if let Some(i) = inv {
                let _ = writeln!(m, "## {title}: live overlay invariants\n");
                m.push_str(&invariants_md(i));
            }
        }
        for (title, f) in [("After settling", &self.policy_settled), ("At the end", &self.policy_end)] {
            if let Some(f) = f {
                let _ = writeln!(m, "## {title}: the {} policy's shape\n", f.topology);
                let _ = writeln!(
                    m,
                    "| super-peers / leaves / members | promoted | leaves per super-peer: max / mean (bound) | links: max super-peer / max any / max eager | mean links super-peer / leaf | leaf–leaf links | leaves without uplink | members violating / violation events | check |"
                );
                let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|");
                let _ = writeln!(
                    m,
                    "| {} / {} / {} | {} | {} / {:.1} ({}) | {} / {} / {} | {:.1} / {:.1} | {} | {} | {} / {} | {} |\n",
                    f.supers,
                    f.leaves,
                    f.members,
                    f.promoted,
                    f.max_super_leaves,
                    f.mean_super_leaves,
                    f.bound,
                    f.max_super_degree,
                    f.max_degree,
                    f.max_eager_degree,
                    f.mean_super_degree,
                    f.mean_leaf_degree,
                    f.leaf_links,
                    f.leaves_without_uplink,
                    f.members_violating,
                    f.violation_events,
                    f.check
                );
            }
        }
        if let Some(a) = &self.aggregate {
            let _ = writeln!(m, "## Broadcasts: aggregate\n");
            let _ = writeln!(
                m,
                "| broadcasts | missed | min delivery | RMR first | RMR later (mean / max) | max last hop | target 2·log2 N |"
            );
            let _ = writeln!(m, "|---|---|---|---|---|---|---|");
            let _ = writeln!(
                m,
                "| {} | {} | {:.4} | {:.3} | {:.4} / {:.4} | {} | {:.1} |\n",
                a.broadcasts,
                a.missed,
                a.min_delivery_ratio,
                a.rmr_first,
                a.rmr_later_mean,
                a.rmr_later_max,
                a.max_last_hop,
                a.hop_target
            );
        }
        if let Some(b) = &self.steady {
            let _ = writeln!(m, "## Steady-state broadcasts\n");
            m.push_str(&broadcasts_md(b));
        }
        if let Some(f) = &self.failure {
            let _ = writeln!(
                m,
                "## Simultaneous failure: {:.0}% ({} nodes) at {} ms\n",
                f.fraction * 100.0,
                f.killed,
                f.at_ms
            );
            let _ = writeln!(
                m,
                "Survivors' active views free of dead peers after: {}.\n",
                f.views_clean_after_ms.map_or("not within the run".to_owned(), |t| format!("{t} ms"))
            );
            let _ = writeln!(
                m,
                "Dead entries in survivors' active views, per second after the crash: {:?}\n",
                f.dead_entries_per_s
            );
            let _ = writeln!(
                m,
                "Components of the survivors' active graph, per second after the crash: {:?}; one component after: {}.\n",
                f.components_per_s,
                f.one_component_after_ms.map_or("not within the run".to_owned(), |t| format!("{t} ms"))
            );
            m.push_str(&broadcasts_md(&f.broadcasts));
        }
        if let Some(mm) = &self.membership {
            let _ = writeln!(m, "## Membership: newcomer {} joins through {}\n", mm.newcomer, mm.contact);
            let _ = writeln!(
                m,
                "{} of {} nodes ({:.4}%) got `MemberJoined`; within 16 hops: {:.4}%. A gossip round here is one hop of the contact's Plumtree announcement.\n",
                mm.informed,
                mm.nodes,
                mm.fraction * 100.0,
                mm.within_16 * 100.0
            );
            let _ = writeln!(m, "| hops | nodes |\n|---|---|");
            for (h, c) in &mm.hops {
                let _ = writeln!(m, "| {h} | {c} |");
            }
            m.push('\n');
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(m, "## Churn: {} left, {} joined\n", c.left, c.joined);
            m.push_str(&broadcasts_md(&c.broadcasts));
        }
        if let Some(h) = &self.hostile {
            let _ = writeln!(m, "## Hostile members: {} ({:?})\n", h.hostile, h.behaviours);
            let _ = writeln!(
                m,
                "They swallowed {} broadcast and relay messages, sent {} garbage messages, forced {} links and told {} false views; {} announced ids were refused past the cap.\n",
                h.dropped, h.garbage_sent, h.flood_links, h.views_faked, h.missing_refused
            );
            let _ = writeln!(
                m,
                "Hostile share of honest members' active views: {:.3} when they turned, {:.3} at the end.\n",
                h.hostile_share_of_views[0], h.hostile_share_of_views[1]
            );
            let _ = writeln!(
                m,
                "Entries an honest member holds: max {} / mean {:.1} before, max {} during, max {} / mean {:.1} at the end.\n",
                h.honest_held_before[0],
                h.honest_held_before[1],
                h.honest_held_max,
                h.honest_held_end[0],
                h.honest_held_end[1]
            );
            m.push_str(&broadcasts_md(&h.broadcasts));
        }
        if let Some(p) = &self.partition {
            let _ = writeln!(m, "## Partition: {} nodes cut off from {} to {} ms\n", p.side, p.cut_ms[0], p.cut_ms[1]);
            let _ = writeln!(
                m,
                "A broadcast from the small side during the partition reached {:.4} of its side and {:.4} of the other.\n",
                p.during_own_side, p.during_other_side
            );
            let _ = writeln!(m, "Just before healing:\n");
            m.push_str(&invariants_md(&p.before_heal));
            let _ = writeln!(m, "After healing:\n");
            m.push_str(&broadcasts_md(&p.after));
        }
        if let Some(i) = &self.introducer {
            let _ = writeln!(m, "## Introducer-assisted connections\n");
            let _ = writeln!(m, "Population: {:?}\n", i.population);
            let _ = writeln!(m, "| expected | attempts | succeeded |\n|---|---|---|");
            for (k, [a, s]) in &i.totals {
                let _ = writeln!(m, "| {k} | {a} | {s} |");
            }
            let _ = writeln!(
                m,
                "\nSuccesses in `failed` cells: {}. Direct-path attempts to live peers that failed unexplained: {}.\n",
                i.success_in_failed_cells, i.unexplained_failures
            );
            let _ = writeln!(m, "Why RSVPs to live peers were lost in the relays: {:?}\n", i.rsvp_losses);
            let _ = writeln!(
                m,
                "| inviter | invitee | expected | attempts | succeeded | target dead | RSVP no route | RSVP relay lost |\n|---|---|---|---|---|---|---|---|"
            );
            for c in &i.cells {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.inviter,
                    c.invitee,
                    c.expected,
                    c.attempts,
                    c.succeeded,
                    c.target_dead,
                    c.rsvp_no_route,
                    c.rsvp_relay_lost
                );
            }
            m.push('\n');
            m.push_str(&broadcasts_md(&i.broadcasts));
        }
        if let Some(t) = &self.topology {
            let _ = writeln!(m, "## Topology policies\n\nPopulation: {:?}\n", t.reach);
            let _ = writeln!(
                m,
                "| policy | check | edges | max degree | depth | Plumtree RMR 1st | RMR 2nd | last hop 2nd | all delivered | eager depth | eager max degree |\n|---|---|---|---|---|---|---|---|---|---|---|"
            );
            for p in &t.policies {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {:.3} | {:.4} | {} | {} | {} | {} |",
                    p.policy,
                    p.check,
                    p.edges,
                    p.max_degree,
                    p.depth,
                    p.rmr_first,
                    p.rmr_second,
                    p.last_hop_second,
                    p.delivered_all,
                    p.eager_depth,
                    p.eager_max_degree
                );
            }
            m.push('\n');
        }
        m
    }
}

pub(super) fn invariants_md(i: &Invariants) -> String {
    format!(
        "| live | asymmetric entries | dead entries | isolated | mean active | active connected (components) | eager edges | eager acyclic (extra edges) | eager spanning | eager max degree | eager depth from {} |\n|---|---|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {:.2} | {} ({}) | {} | {} ({}) | {} | {} | {} |\n\n",
        i.depth_root,
        i.live,
        i.asymmetric_entries,
        i.dead_entries,
        i.isolated,
        i.mean_active,
        i.active_connected,
        i.active_components,
        i.eager_edges,
        i.eager_acyclic,
        i.eager_extra_edges,
        i.eager_connected,
        i.eager_max_degree,
        i.eager_depth
    )
}

pub(super) fn broadcasts_md(b: &[BroadcastFigures]) -> String {
    let mut m = String::from(
        "| # | origin | sent ms | eligible | missed | delivery | ≤1 round | ≤2 rounds | ≤3 rounds | copies | RMR | last hop | last delivery ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in b {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {:.4} | {} | {} |",
            f.index,
            f.origin,
            f.sent_ms,
            f.eligible,
            f.missed,
            f.delivery_ratio,
            f.within_rounds[0],
            f.within_rounds[1],
            f.within_rounds[2],
            f.copies,
            f.rmr,
            f.last_hop,
            f.last_delivery_ms
        );
    }
    m.push('\n');
    m
}
