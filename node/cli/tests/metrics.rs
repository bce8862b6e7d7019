//! `convoke … --metrics`: a running node's `/metrics` parses as the
//! Prometheus text format, carries every documented series with its type,
//! follows the naming rules, counts an invite/join, and every query of every
//! dashboard in `dashboards/` names only series the node exports.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use convoke_node::runtime::telemetry::SERIES;

const BIN: &str = env!("CARGO_BIN_EXE_convoke");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("convoke-metrics-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).expect("scratch");
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, rest) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| rest.to_owned())
}

/// A parsed exposition: families by name (type, help) and samples.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// Parses the Prometheus text format (version 0.0.4) strictly enough to
/// catch a broken exposition; chunked transfer framing is tolerated by
/// skipping lines that are bare hexadecimal lengths.
fn parse(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    for line in text.lines().map(str::trim_end) {
        if line.is_empty() || (line.len() <= 8 && u64::from_str_radix(line, 16).is_ok()) {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE line: {line}"))?;
            if !valid_name(name) || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("bad TYPE line: {line}"));
            }
            e.types.insert(name.into(), kind.into());
            continue;
        }
        if line.starts_with('#') {
            continue; // HELP and comments
        }
        let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value: {line}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').ok_or(format!("unclosed labels: {line}"))?),
            None => (series, ""),
        };
        if !valid_name(name) {
            return Err(format!("bad metric name: {line}"));
        }
        let mut map = BTreeMap::new();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or(format!("bad label: {line}"))?;
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).ok_or(format!("unquoted label: {line}"))?;
            if !valid_name(k) {
                return Err(format!("bad label name: {line}"));
            }
            map.insert(k.to_owned(), v.to_owned());
        }
        e.samples.push((name.to_owned(), map, value));
    }
    Ok(e)
}

impl Exposition {
    /// The family a sample belongs to (histogram parts fold into their base).
    fn family<'a>(&self, name: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && self.types.get(base).is_some_and(|t| t == "histogram")
            {
                return base;
            }
        }
        name
    }

    fn sum(&self, name: &str, label: (&str, &str)) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && l.get(label.0).is_some_and(|v| v == label.1))
            .map(|(_, _, v)| v)
            .sum()
    }
}

/// Starts a reusable inviter with metrics, joins it once; returns the
/// inviter (still running) and its metrics port.
fn node_after_one_join(name: &str) -> (Proc, u16, PathBuf) {
    let dir = scratch(name);
    let port = free_port();
    let mut c = Command::new(BIN);
    c.args(["--json", "--key"])
        .arg(dir.join("a.key"))
        .args(["invite", "--reusable", "--listen", "127.0.0.1:0", "--metrics", &format!("127.0.0.1:{port}")])
        .arg("--token-out")
        .arg(dir.join("token"))
        .arg("--control")
        .arg(dir.join("a.sock"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("a.err")).expect("err"));
    let inviter = Proc(c.spawn().expect("spawn"));
    let end = Instant::now() + Duration::from_secs(20);
    let token = loop {
        if let Ok(t) = fs::read_to_string(dir.join("token"))
            && t.ends_with('\n')
        {
            break t.trim().to_owned();
        }
        assert!(Instant::now() < end, "no token: {}", fs::read_to_string(dir.join("a.err")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Command::new(BIN)
        .args(["--json", "--key"])
        .arg(dir.join("b.key"))
        .args(["join", &token, "--listen", "127.0.0.1:0", "--control"])
        .arg(dir.join("b.sock"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("join");
    assert!(out.status.success(), "join: {}", String::from_utf8_lossy(&out.stderr));
    (inviter, port, dir)
}

/// Scrapes until `ok` holds (the node samples its counters every second).
fn scrape_until(port: u16, ok: impl Fn(&Exposition) -> bool) -> Exposition {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(body) = get(port, "/metrics") {
            let e = parse(&body).unwrap_or_else(|err| panic!("not Prometheus text format: {err}\n{body}"));
            if ok(&e) || Instant::now() > end {
                return e;
            }
        } else {
            assert!(Instant::now() < end, "no /metrics on port {port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_parse_follow_the_naming_rules_and_count_a_join() {
    let (_inviter, port, dir) = node_after_one_join("join");
    let e = scrape_until(port, |e| e.sum("convoke_connection_attempts_total", ("role", "inviter")) >= 1.0);
    // Every documented series, with its documented type.
    for (name, kind, _) in SERIES {
        assert_eq!(e.types.get(*name).map(String::as_str), Some(*kind), "{name} missing or mistyped");
    }
    // Naming (docs/DESIGN.md §7): prefix, counters end in _total, no peer or address labels.
    for (name, labels, _) in &e.samples {
        let family = e.family(name);
        assert!(family.starts_with("convoke_"), "{name}");
        assert!(e.types.contains_key(family), "{name} has no TYPE line");
        if e.types[family] == "counter" {
            assert!(family.ends_with("_total"), "counter {family} must end in _total");
        }
        for (k, v) in labels {
            assert!(!["peer", "peer_id", "addr", "address", "remote", "port"].contains(&k.as_str()), "{name}: {k}");
            assert!(!v.contains(':') && !v.starts_with("12D3KooW"), "{name}: label value {v:?} looks like an address");
        }
    }
    // The invite/join was counted.
    assert_eq!(e.sum("convoke_tokens_issued_total", ("kind", "invitation")), 1.0);
    assert_eq!(e.sum("convoke_connections_established_total", ("role", "inviter")), 1.0);
    assert_eq!(e.sum("convoke_connect_duration_seconds_count", ("role", "inviter")), 1.0);
    assert!(e.sum("convoke_udp_datagrams_total", ("direction", "in")) >= 3.0);
    assert!(e.sum("convoke_udp_bytes_total", ("direction", "out")) > 100.0);
    assert_eq!(e.sum("convoke_build_info", ("version", env!("CARGO_PKG_VERSION"))), 1.0);
    let _ = fs::remove_dir_all(dir);
}

/// Every `convoke_…` name in a dashboard's queries.
fn dashboard_names(v: &serde_json::Value, out: &mut BTreeSet<String>, exprs: &mut usize) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if let (true, Some(s)) = (k == "expr" || k == "definition", x.as_str()) {
                    *exprs += 1;
                    let mut rest = s;
                    while let Some(i) = rest.find("convoke_") {
                        let tail = &rest[i..];
                        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
                        out.insert(tail[..end].to_owned());
                        rest = &tail[end..];
                    }
                }
                dashboard_names(x, out, exprs);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_names(x, out, exprs)),
        _ => {}
    }
}

#[test]
fn every_dashboard_query_names_only_exported_series() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("dashboards/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    let (_inviter, port, tmp) = node_after_one_join("dash");
    let e = scrape_until(port, |e| e.sum("convoke_connection_attempts_total", ("role", "inviter")) >= 1.0);
    let exported: BTreeSet<&str> = e.samples.iter().map(|(n, _, _)| n.as_str()).collect();
    for f in files {
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&f).expect("read")).expect("dashboard JSON");
        let (mut names, mut exprs) = (BTreeSet::new(), 0);
        dashboard_names(&v, &mut names, &mut exprs);
        assert!(exprs >= 5 && !names.is_empty(), "{}: only {exprs} queries", f.display());
        for n in &names {
            assert!(exported.contains(n.as_str()), "{} queries {n}, which the node does not export", f.display());
        }
        // Both variables exist and the panels use the instance one.
        let vars: Vec<&str> =
            v["templating"]["list"].as_array().expect("templating").iter().filter_map(|t| t["name"].as_str()).collect();
        assert!(vars.contains(&"datasource") && vars.contains(&"instance"), "{}: {vars:?}", f.display());
    }
    let _ = fs::remove_dir_all(tmp);
}

#[test]
fn the_parser_rejects_broken_expositions() {
    assert!(parse("# TYPE a counter\na_total 1\n").is_ok());
    assert!(parse("a{b=\"c\"} x\n").is_err());
    assert!(parse("a{b=c} 1\n").is_err());
    assert!(parse("9a 1\n").is_err());
    assert!(parse("# TYPE a countr\n").is_err());
}

#[test]
fn an_occupied_metrics_port_is_a_clear_error() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let dir = scratch("busy");
    let out = Command::new(BIN)
        .arg("--key")
        .arg(dir.join("a.key"))
        .args(["invite", "--listen", "127.0.0.1:0", "--metrics", &format!("127.0.0.1:{port}")])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("invite");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot serve metrics") && err.contains(&port.to_string()), "{err}");
    let _ = fs::remove_dir_all(dir);
}
