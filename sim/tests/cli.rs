//! `convoke-sim` as a user runs it: a scenario in, four files out; a bad
//! scenario refused with the field named and exit status 2.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_convoke-sim");

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("convoke-sim-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

#[test]
fn run_writes_the_report_files() {
    let d = scratch("run");
    let scenario = d.join("s.toml");
    std::fs::write(
        &scenario,
        "name = \"cli\"\nduration_s = 400\n[joins]\npattern = \"matrix\"\nprofiles = [\"public\", \"port-restricted\"]\n",
    )
    .expect("write scenario");
    let out = d.join("out");
    let o = Command::new(BIN).arg("run").arg(&scenario).arg("--out").arg(&out).output().expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report.json")).expect("json");
    assert_eq!(report["joins"]["joins"], 4);
    assert_eq!(report["matrix"]["cells"][0][1]["phase"], "single-token", "public inviter");
    assert_eq!(report["matrix"]["cells"][1][1]["phase"], "rsvp", "port-restricted × port-restricted");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("| inviter \\ invitee | public | port-restricted |"), "{md}");
    let svg = std::fs::read_to_string(out.join("ttc.svg")).expect("ttc.svg");
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    let perf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("perf.json")).expect("perf.json")).expect("json");
    assert!(perf["events"].as_u64().unwrap_or(0) > 100);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_scenarios_are_refused_naming_the_field() {
    let d = scratch("bad");
    for (text, field) in [
        ("name = \"x\"\nduration_s = 10\n[joins]\npattern = \"matrix\"\nprofiles = [\"cone\"]\n", "joins.profiles[0]"),
        ("name = \"x\"\nduration_s = 10\n[joins]\npatern = \"matrix\"\n", "patern"),
        ("name = \"x\"\nduration_s = -1\n[joins]\npattern = \"matrix\"\nprofiles = [\"public\"]\n", "duration_s"),
    ] {
        let p = d.join("bad.toml");
        std::fs::write(&p, text).expect("write");
        let o = Command::new(BIN).arg("check").arg(&p).output().expect("runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(field), "error should name {field}: {err}");
    }
    let o = Command::new(BIN).args(["run", "/nonexistent/s.toml"]).output().expect("runs");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("No such file"));
    let _ = std::fs::remove_dir_all(&d);
}
