//! `convoke status --topology`: a member's overlay state as text or as
//! Graphviz DOT.

use serde_json::Value;

/// The overlay part of `convoke status --topology`: text, or Graphviz DOT.
pub fn print_topology(node: &Value, dot: bool) {
    let o = &node["overlay"];
    let me = node["peer_id"].as_str().unwrap_or("?");
    let list = |k: &str| -> Vec<String> {
        o[k].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let tail = |s: &str| s[s.len().saturating_sub(8)..].to_string();
    let eager = list("eager");
    let links: Vec<(String, String)> = o["links"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| Some((l[0].as_str()?.to_string(), l[1].as_str()?.to_string()))).collect())
        .unwrap_or_default();
    let t = &o["topology"];
    let supers: Vec<String> = t["super_peers"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    if dot {
        println!("graph convoke {{");
        println!(
            "  // members as {me} knows them ({} policy); bold: its broadcast-tree links; boxes: super-peers",
            t["policy"].as_str().unwrap_or("mesh")
        );
        for m in list("members") {
            let style = if m == me { ", style=filled" } else { "" };
            let shape = if supers.contains(&m) { ", shape=box" } else { "" };
            println!("  \"{}\" [label=\"{}\"{style}{shape}];", tail(&m), tail(&m));
        }
        for (a, b) in &links {
            let tree = (a == me && eager.contains(b)) || (b == me && eager.contains(a));
            println!("  \"{}\" -- \"{}\"{};", tail(a), tail(b), if tree { " [penwidth=3]" } else { "" });
        }
        println!("}}");
        return;
    }
    if o.is_null() {
        println!("  not an overlay member");
        return;
    }
    println!("  overlay: {} members known, {} links", list("members").len(), links.len());
    let violations: Vec<String> = t["violations"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    println!(
        "    policy        {} (this member: {}); roles known: {}",
        t["policy"].as_str().unwrap_or("mesh"),
        t["role"].as_str().unwrap_or("member"),
        t["roles"]
    );
    if let Some(n) = t["max_leaves"].as_u64() {
        let role = if t["role"].as_str() == Some("super-peer") { "" } else { " as a super-peer" };
        println!("    leaves        at most {n} at this member{role}");
    }
    if let (Some(tenure), Some(room)) = (t["standing"]["tenure"].as_u64(), t["standing"]["room"].as_u64()) {
        // The steps of `Config::tenure_steps` and `Standing::room_of`.
        let up = ["under 10 minutes", "10 minutes or more", "an hour or more", "a day or more"];
        let share = ["under a quarter of", "a quarter or more of", "half or more of", "all of"];
        println!(
            "    standing      in the network {}; offers {} the policy's leaf bound",
            up.get(tenure as usize).unwrap_or(&"?"),
            share.get(room as usize).unwrap_or(&"?")
        );
    }
    if violations.is_empty() {
        println!("    invariants    hold");
    } else {
        println!("    invariants    BROKEN: {}", violations.join("; "));
    }
    println!("    active view   {}", list("active").iter().map(|p| tail(p)).collect::<Vec<_>>().join(" "));
    println!("    tree (eager)  {}", eager.iter().map(|p| tail(p)).collect::<Vec<_>>().join(" "));
    println!("    lazy          {}", list("lazy").iter().map(|p| tail(p)).collect::<Vec<_>>().join(" "));
    println!("    passive view  {} peers; suspected: {}", list("passive").len(), list("suspected").len());
    println!("    links:");
    for (a, b) in &links {
        println!("      {} -- {}", tail(a), tail(b));
    }
    println!("    counters      {}", o["stats"]);
}
