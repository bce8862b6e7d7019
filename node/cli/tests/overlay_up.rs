//! Five `convoke up` processes on loopback form one network, each joining
//! with one member's invitation; a broadcast reaches all; one member is
//! killed (no goodbye) and the others detect it, repair their views and
//! tree, and the next broadcast reaches every survivor. Every wait is
//! bounded; every child is killed on the way out.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{Proc, Scratch, convoke, wait_file};

/// One running member: its process and what it printed, line by line.
struct Member {
    proc: Proc,
    peer_id: String,
    control: std::path::PathBuf,
    out: Arc<Mutex<Vec<Value>>>,
    err: Arc<Mutex<Vec<Value>>>,
}

fn collect(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<Value>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                sink.lock().expect("lock").push(v);
            }
        }
    });
    lines
}

fn start(dir: &Scratch, i: usize, join: Option<&str>) -> Member {
    start_on(dir, i, join, "127.0.0.1:0")
}

fn start_on(dir: &Scratch, i: usize, join: Option<&str>, listen: &str) -> Member {
    let card = dir.path(&format!("card{i}"));
    let control = dir.path(&format!("m{i}.sock"));
    let mut c = convoke(dir, &format!("key{i}"));
    c.args(["--json", "up", "--listen", listen, "--round-ms", "300"])
        .arg("--invite-out")
        .arg(&card)
        .arg("--control")
        .arg(&control)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = join {
        c.args(["--join", t]);
    }
    let mut child = c.spawn().expect("spawn convoke up");
    let out = collect(child.stdout.take().expect("stdout"));
    let err = collect(child.stderr.take().expect("stderr"));
    let proc = Proc(child);
    wait_file(&card, Duration::from_secs(20));
    let peer_id = wait_for(&err, Duration::from_secs(10), |v| v["event"] == "invitation")["peer_id"]
        .as_str()
        .expect("peer id")
        .to_owned();
    Member { proc, peer_id, control, out, err }
}

/// Waits for a line matching `f`, returning it.
fn wait_for(lines: &Arc<Mutex<Vec<Value>>>, limit: Duration, f: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(v) = lines.lock().expect("lock").iter().find(|v| f(v)) {
            return v.clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no matching line within {limit:?}; got {:?}", lines.lock().expect("lock"));
}

fn got_message(m: &Member, text: &str) -> bool {
    m.out.lock().expect("lock").iter().any(|v| v["event"] == "message" && v["data"] == text)
}

fn broadcast(dir: &Scratch, from: &Member, text: &str) {
    let ok = convoke(dir, "client")
        .args(["broadcast", text, "--control"])
        .arg(&from.control)
        .status()
        .expect("convoke broadcast");
    assert!(ok.success(), "convoke broadcast failed");
}

fn topology(dir: &Scratch, m: &Member) -> Value {
    let out = convoke(dir, "client")
        .args(["--json", "status", "--topology", "--control"])
        .arg(&m.control)
        .output()
        .expect("convoke status");
    let v: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    v[0]["overlay"].clone()
}

/// Waits until every member in `who` printed `text` on standard output.
fn all_get(who: &[&Member], text: &str, limit: Duration) -> Vec<String> {
    let end = Instant::now() + limit;
    loop {
        let missing: Vec<String> = who.iter().filter(|m| !got_message(m, text)).map(|m| m.peer_id.clone()).collect();
        if missing.is_empty() || Instant::now() >= end {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn five_members_broadcast_and_repair_after_a_kill() {
    let dir = Scratch::new("overlay-up");
    let token = |i: usize| std::fs::read_to_string(dir.path(&format!("card{i}"))).expect("card").trim().to_owned();
    let mut members = vec![start(&dir, 0, None)];
    // Each newcomer joins with one member's invitation: 0, 0, 1, 2.
    for (i, contact) in [(1, 0), (2, 0), (3, 1), (4, 2)] {
        let t = token(contact);
        members.push(start(&dir, i, Some(&t)));
        wait_for(&members[i].err, Duration::from_secs(20), |v| v["event"] == "joined");
    }
    // Introductions give everyone more than its contact.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let views: Vec<usize> =
            members.iter().map(|m| topology(&dir, m)["active"].as_array().map_or(0, Vec::len)).collect();
        if views.iter().all(|&n| n >= 2) {
            break;
        }
        assert!(Instant::now() < end, "active views stayed small: {views:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let introduced = members.iter().any(|m| m.err.lock().expect("lock").iter().any(|v| v["event"] == "connecting"));
    assert!(introduced, "some member connected to one it got no token from");

    broadcast(&dir, &members[4], "first");
    let others: Vec<&Member> = members[..4].iter().collect();
    assert_eq!(all_get(&others, "first", Duration::from_secs(10)), Vec::<String>::new(), "first broadcast missed");

    // Kill member 1 without a goodbye; survivors must notice by themselves.
    let victim = members.remove(1);
    let victim_id = victim.peer_id.clone();
    drop(victim);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let holding: Vec<String> = members
            .iter()
            .filter(|m| {
                topology(&dir, m)["active"].as_array().is_some_and(|a| a.iter().any(|p| p == victim_id.as_str()))
            })
            .map(|m| m.peer_id.clone())
            .collect();
        if holding.is_empty() {
            break;
        }
        assert!(Instant::now() < end, "{holding:?} still hold the killed member");
        std::thread::sleep(Duration::from_millis(200));
    }
    let noticed = members.iter().any(|m| {
        m.err.lock().expect("lock").iter().any(|v| v["event"] == "neighbor_down" && v["peer"] == victim_id.as_str())
    });
    assert!(noticed, "a neighbour of the killed member reported it down");

    broadcast(&dir, &members[3], "after the kill");
    let others: Vec<&Member> = members[..3].iter().collect();
    assert_eq!(all_get(&others, "after the kill", Duration::from_secs(10)), Vec::<String>::new(), "repair failed");
    // The survivors' views are connected again and their trees hold no dead links.
    for m in &members {
        let t = topology(&dir, m);
        let eager = t["eager"].as_array().cloned().unwrap_or_default();
        assert!(!eager.iter().any(|p| p == victim_id.as_str()), "a tree link to the dead member remains");
        assert!(!t["active"].as_array().is_some_and(|a| a.is_empty()), "{} is isolated", m.peer_id);
    }
    // A clean leave (SIGTERM) ends the process with status 0.
    let mut last = members.pop().expect("member");
    let pid = last.proc.0.id();
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    assert!(last.proc.wait_for(Duration::from_secs(10)).success());
}

/// Without `--json`, a member shows its invitation on a line of its own
/// (ready to copy, no escaped line breaks around it); `convoke status
/// --control` answers for it, and fails with exit status 1 for a socket
/// nobody answers on (what a health check needs).
#[test]
fn a_member_shows_its_invitation_on_a_line_and_status_checks_its_health() {
    let dir = Scratch::new("overlay-up-human");
    let card = dir.path("card");
    let control = dir.path("m.sock");
    let err = std::fs::File::create(dir.path("err")).expect("err file");
    let mut c = convoke(&dir, "key");
    c.args(["up", "--listen", "127.0.0.1:0", "--no-port-mapping", "--invite-out"])
        .arg(&card)
        .arg("--control")
        .arg(&control)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    let _member = Proc(c.spawn().expect("spawn convoke up"));
    let token = wait_file(&card, Duration::from_secs(20));
    let end = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let text = std::fs::read_to_string(dir.path("err")).expect("err");
        if text.lines().any(|l| l == token) || Instant::now() >= end {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(shown.lines().any(|l| l == token), "the invitation is not on a line of its own:\n{shown}");
    assert!(!shown.contains("\\n"), "escaped line breaks in the output:\n{shown}");

    let ok = convoke(&dir, "client").args(["status", "--control"]).arg(&control).output().expect("status");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let dead =
        convoke(&dir, "client").args(["status", "--control"]).arg(dir.path("none.sock")).output().expect("status");
    assert_eq!(dead.status.code(), Some(1));
    let why = String::from_utf8_lossy(&dead.stderr);
    assert!(why.contains("no convoke node answered on"), "{why}");
}

/// Three members save the cards they know (`--state`, here the default
/// under XDG_DATA_HOME). One is killed with SIGKILL and started again on a
/// new port without `--join`: it rejoins through its saved cards, has an
/// active link within 30 s, and a broadcast reaches it.
#[test]
fn a_killed_member_restarts_on_a_new_port_and_rejoins_through_its_saved_cards() {
    let dir = Scratch::new("overlay-rejoin");
    let token = |i: usize| std::fs::read_to_string(dir.path(&format!("card{i}"))).expect("card").trim().to_owned();
    let a = start(&dir, 0, None);
    let b = start(&dir, 1, Some(&token(0)));
    wait_for(&b.err, Duration::from_secs(20), |v| v["event"] == "joined");
    let c = start(&dir, 2, Some(&token(0)));
    wait_for(&c.err, Duration::from_secs(20), |v| v["event"] == "joined");
    let old_card = token(2);
    // The state file: one per identity, owner-only, with cards in it.
    let state = dir.path("data").join("convoke").join("state").join(format!("{}.json", c.peer_id));
    let end = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("scpc:")) {
        assert!(Instant::now() < end, "no cards saved in {}", state.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state).expect("state").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the state file is readable by others");
    }
    let c_id = c.peer_id.clone();
    drop(c); // SIGKILL: no goodbye, no last save

    let c = start(&dir, 2, None);
    assert_eq!(c.peer_id, c_id, "same key, same member");
    assert_ne!(token(2), old_card, "a new card (new port)");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let active = topology(&dir, &c)["active"].as_array().map_or(0, Vec::len);
        if active > 0 {
            break;
        }
        assert!(Instant::now() < end, "the restarted member has no active link after 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The tree may still be settling: a few broadcasts, each given 5 s.
    let mut got = false;
    for i in 0..4 {
        let text = format!("welcome back {i}");
        broadcast(&dir, &a, &text);
        if all_get(&[&c], &text, Duration::from_secs(5)).is_empty() {
            got = true;
            break;
        }
    }
    assert!(got, "no broadcast from the first member reached the restarted one");
    drop(b);
}

/// No STUN server anywhere: a member on 127.0.0.3 linked to members on
/// 127.0.0.1 and 127.0.0.2 asks both where they see it, learns that its
/// address is its own (no NAT), and puts that in a new card.
#[test]
fn a_member_learns_its_nat_from_two_neighbours_without_a_stun_server() {
    let dir = Scratch::new("overlay-observed");
    let token = |i: usize| std::fs::read_to_string(dir.path(&format!("card{i}"))).expect("card").trim().to_owned();
    let _a = start_on(&dir, 0, None, "127.0.0.1:0");
    let b = start_on(&dir, 1, Some(&token(0)), "127.0.0.2:0");
    wait_for(&b.err, Duration::from_secs(20), |v| v["event"] == "joined");
    let c = start_on(&dir, 2, Some(&token(0)), "127.0.0.3:0");
    let first = token(2);
    let end = Instant::now() + Duration::from_secs(30);
    let status = |m: &Member| -> Value {
        let out =
            convoke(&dir, "client").args(["--json", "status", "--control"]).arg(&m.control).output().expect("status");
        serde_json::from_slice::<Value>(&out.stdout).expect("status JSON")[0].clone()
    };
    loop {
        let s = status(&c);
        if s["nat"]["mapping"] == "none" && s["overlay"]["invitation"].as_str().is_some_and(|t| t != first) {
            break;
        }
        assert!(Instant::now() < end, "c never classified its NAT from its neighbours: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The new card was announced (and written to --invite-out) too.
    let cards: Vec<Value> =
        c.err.lock().expect("lock").iter().filter(|v| v["event"] == "invitation").cloned().collect();
    assert!(cards.len() >= 2, "{cards:?}");
    assert_ne!(token(2), first, "--invite-out holds the new card");
}
