//! `convoke-sim`: run a scenario, check one, or run the scale benchmark.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use convoke_sim::scenario::{Pattern, Scenario, ScenarioError};
use convoke_sim::{Perf, simulate};

/// The scale benchmark's scenario, built in so `bench` runs anywhere.
const SCALE: &str = include_str!("../../scenarios/scale.toml");

#[derive(Parser)]
#[command(
    name = "convoke-sim",
    version,
    about = "Discrete-event simulator running the real Convoke engine behind emulated NATs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario and write report.json, report.md, ttc.svg and perf.json.
    Run {
        /// The scenario file (TOML; see sim/scenarios/).
        scenario: PathBuf,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Where to write the report.
        #[arg(long, default_value = "sim-out")]
        out: PathBuf,
        /// Override the population size (patterns random-earlier and
        /// network); the run's duration follows, keeping the time after the
        /// last join, and what happens after the joins (broadcasts,
        /// failures, partitions, moves) keeps its distance from their end.
        #[arg(long)]
        nodes: Option<u32>,
        /// The topology policy the members run (pattern network): mesh,
        /// spanning-tree, hierarchical or star (default: the scenario's
        /// `topology`, else mesh).
        #[arg(long)]
        topology: Option<String>,
        /// Every member's own leaf capacity as a super-peer or hub, below
        /// the policy's bound, as `convoke up --max-leaves` (default: the
        /// scenario's `max_leaves`, else the policy's bound).
        #[arg(long)]
        max_leaves: Option<usize>,
        /// Members choose super-peers (hubs) uniformly at random, not by
        /// their standing (time in the network, leaf capacity): what the
        /// standing buys, measured against the same run with it (sets the
        /// scenario's `prefer_standing = false`).
        #[arg(long)]
        no_standing: bool,
        /// No progress bar, no summary.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Compare a measured NAT matrix (the netns testbed's) with an expected
    /// one cell by cell; exit status 1 when any cell disagrees.
    ///
    /// Both files are Markdown; the first table whose header starts with
    /// `| inviter` is read, and a cell's phase is its first word.
    Compare {
        /// The expected matrix (sim/README.md, or a run's report.md).
        expected: PathBuf,
        /// The measured matrix; its cells must all exist in the expected one.
        measured: PathBuf,
    },
    /// Run an overlay scenario (membership, broadcast, introducer relay or
    /// topology policies at scale; see sim/scenarios/overlay-*.toml) and
    /// write report.json and report.md.
    Overlay {
        /// The overlay scenario file (TOML).
        scenario: PathBuf,
        /// Where to write the report.
        #[arg(long, default_value = "sim-out")]
        out: PathBuf,
        /// Override the number of members.
        #[arg(long)]
        nodes: Option<u32>,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// The topology policy members run: mesh, spanning-tree,
        /// hierarchical or star (default: the scenario's `[policy]`, else
        /// mesh).
        #[arg(long)]
        topology: Option<String>,
        /// No summary.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Validate a scenario without running it.
    Check {
        /// The scenario file.
        scenario: PathBuf,
    },
    /// The scale benchmark: N nodes join one by one, each by one invitation
    /// from a random earlier node, under a mixed NAT population; one process
    /// per N so peak memory is that run's.
    Bench {
        /// Population sizes.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        nodes: Vec<u32>,
        /// Scenario (default: the built-in sim/scenarios/scale.toml).
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
}

fn load(path: &Path, nodes: Option<u32>) -> Result<Scenario, String> {
    let mut s = Scenario::load(path).map_err(|e| match e {
        ScenarioError::Io { .. } => e.to_string(),
        _ => format!("{}: {e}", path.display()),
    })?;
    if let Some(n) = nodes {
        match (&mut s.population, s.joins.pattern) {
            (Some(p), Pattern::RandomEarlier | Pattern::Network) => {
                // Keep the time after the last join starts: the run is as
                // long as the joins plus the same tail.
                // What the scenario times after its last join (broadcasts,
                // failures, moves) moves with the joins' end, so that it
                // still happens at the same distance from it.
                let j = &s.joins;
                let joins_end = j.start_s + f64::from(p.nodes) * j.interval_s;
                let tail = s.duration_s - joins_end;
                p.nodes = n;
                let shift = (j.start_s + f64::from(n) * j.interval_s) - joins_end;
                s.duration_s = (joins_end + shift + tail.max(0.0)).max(1.0);
                let later = |t: &mut f64| {
                    if *t >= joins_end {
                        *t = (*t + shift).max(0.0);
                    }
                };
                if let Some(b) = s.broadcasts.as_mut() {
                    later(&mut b.start_s);
                }
                s.failures.iter_mut().for_each(|f| later(&mut f.at_s));
                s.moves.iter_mut().for_each(|m| later(&mut m.at_s));
                for x in &mut s.partitions {
                    if x.at_s >= joins_end {
                        later(&mut x.at_s);
                        later(&mut x.heal_s);
                    }
                }
            }
            _ => {
                return Err(
                    "--nodes needs a scenario with pattern = \"random-earlier\" or \"network\" and a [population]"
                        .into(),
                );
            }
        }
        s.validate().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(s)
}

/// Writes a run's report files into `out`, creating it.
fn write_files<const N: usize>(out: &Path, files: [(&str, String); N]) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    for (file, text) in files {
        let p = out.join(file);
        std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    Ok(())
}

/// What `run`'s flags change in the scenario.
struct Overrides {
    nodes: Option<u32>,
    topology: Option<String>,
    max_leaves: Option<usize>,
    no_standing: bool,
}

fn run(path: &Path, seed: Option<u64>, out: &Path, o: Overrides, quiet: bool) -> Result<(), String> {
    let Overrides { nodes, topology, max_leaves, no_standing } = o;
    let mut scenario = load(path, nodes)?;
    scenario.prefer_standing &= !no_standing;
    if topology.is_some() || max_leaves.is_some() {
        scenario.topology = topology.or(scenario.topology);
        scenario.max_leaves = max_leaves.or(scenario.max_leaves);
        scenario.validate().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let seed = seed.unwrap_or(scenario.seed);
    let name = scenario.name.clone();
    let bar = !quiet && std::io::stderr().is_terminal();
    let mut last = Instant::now();
    let mut progress = |now: u64, end: u64, events: u64| {
        if bar && last.elapsed().as_millis() >= 100 {
            last = Instant::now();
            let f = (now as f64 / end.max(1) as f64).min(1.0);
            let filled = (f * 30.0) as usize;
            eprint!(
                "\r[{}{}] {:5.1}%  t = {:.0} s  {:.1}M events ",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                f * 100.0,
                now as f64 / 1e9,
                events as f64 / 1e6
            );
            let _ = std::io::stderr().flush();
        }
    };
    let (report, perf) = simulate(scenario, seed, &mut progress).map_err(|e| e.to_string())?;
    if bar {
        eprintln!();
    }
    write_files(
        out,
        [
            ("report.json", report.to_json()),
            ("report.md", report.to_markdown()),
            ("ttc.svg", report.to_svg()),
            ("perf.json", serde_json::to_string_pretty(&perf).unwrap_or_default() + "\n"),
        ],
    )?;
    if !quiet {
        let j = &report.joins;
        eprintln!(
            "{name} (seed {seed}): {} joins — {} single token, {} RSVP, {} port mapped, {} predicted, {} birthday, {} failed",
            j.joins, j.single_token, j.rsvp, j.port_mapped, j.predicted, j.birthday, j.failed
        );
        eprintln!(
            "{} events in {:.2} s wall ({:.2}M events/s), peak memory {:.1} MiB; report in {}",
            perf.events,
            perf.wall_s,
            perf.events_per_s / 1e6,
            perf.peak_rss_bytes as f64 / (1 << 20) as f64,
            out.display()
        );
    }
    Ok(())
}

fn overlay(
    path: &Path,
    out: &Path,
    nodes: Option<u32>,
    seed: Option<u64>,
    topology: Option<String>,
    quiet: bool,
) -> Result<(), String> {
    use convoke_sim::overlay::{OverlayScenario, PolicySection};
    let mut s = OverlayScenario::load(path).map_err(|e| match e {
        ScenarioError::Io { .. } => e.to_string(),
        _ => format!("{}: {e}", path.display()),
    })?;
    if let Some(n) = nodes {
        s.nodes = n;
    }
    if let Some(t) = topology {
        s.policy.get_or_insert_with(PolicySection::default).topology = t;
    }
    s.validate().map_err(|e| format!("{}: {e}", path.display()))?;
    let seed = seed.unwrap_or(s.seed);
    let started = Instant::now();
    let report = convoke_sim::overlay::run(&s, seed);
    let wall = started.elapsed().as_secs_f64();
    write_files(out, [("report.json", report.to_json()), ("report.md", report.to_markdown())])?;
    if !quiet {
        let (peak, _) = convoke_sim::memory();
        eprintln!(
            "{} (seed {seed}, N = {}): {} events, {} messages, {:.1} s simulated in {wall:.1} s wall, peak memory {:.0} MiB; report in {}",
            s.name,
            s.nodes,
            report.events,
            report.messages,
            report.sim_ms as f64 / 1000.0,
            peak as f64 / (1 << 20) as f64,
            out.display()
        );
    }
    Ok(())
}

fn bench(nodes: &[u32], scenario: Option<PathBuf>) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("convoke-sim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = match scenario {
        Some(p) => p,
        None => {
            let p = dir.join("scale.toml");
            std::fs::write(&p, SCALE).map_err(|e| format!("writing {}: {e}", p.display()))?;
            p
        }
    };
    load(&path, None)?;
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    println!("scale benchmark: {} (one process per N)\n", path.display());
    println!(
        "| N | joined | single token | RSVP | predicted | birthday | failed | events | wall s | events/s | peak RSS MiB | bytes/node | sim s / wall s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in nodes {
        let out = dir.join(format!("n{n}"));
        let status = std::process::Command::new(&exe)
            .arg("run")
            .arg(&path)
            .args(["--nodes", &n.to_string(), "--quiet", "--out"])
            .arg(&out)
            .status()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        if !status.success() {
            return Err(format!("the run with N = {n} failed ({status})"));
        }
        let read = |f: &str| std::fs::read_to_string(out.join(f)).map_err(|e| format!("reading {f}: {e}"));
        let perf: Perf = serde_json::from_str(&read("perf.json")?).map_err(|e| e.to_string())?;
        let report: serde_json::Value = serde_json::from_str(&read("report.json")?).map_err(|e| e.to_string())?;
        let j = &report["joins"];
        let joined: u64 = ["single_token", "rsvp", "port_mapped", "predicted", "birthday"]
            .iter()
            .map(|k| j[*k].as_u64().unwrap_or(0))
            .sum();
        println!(
            "| {n} | {joined} | {} | {} | {} | {} | {} | {} | {:.1} | {:.2}M | {:.0} | {} | {:.0} |",
            j["single_token"],
            j["rsvp"],
            j["predicted"],
            j["birthday"],
            j["failed"],
            perf.events,
            perf.wall_s,
            perf.events_per_s / 1e6,
            perf.peak_rss_bytes as f64 / (1 << 20) as f64,
            perf.bytes_per_node,
            perf.speedup
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Prints the comparison; `Ok(false)` when some cell disagrees.
fn compare(expected: &Path, measured: &Path) -> Result<bool, String> {
    let read = |p: &Path| {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        convoke_sim::report::parse_matrix(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let (want, got) = (read(expected)?, read(measured)?);
    let bad = convoke_sim::report::compare_matrices(&want, &got);
    for m in &bad {
        println!(
            "MISMATCH {} × {}: expected {}, measured {}",
            m.inviter,
            m.invitee,
            m.expected.as_deref().unwrap_or("(no such cell)"),
            m.measured
        );
    }
    for m in convoke_sim::report::early_connections(&want, &got) {
        println!(
            "EARLY {} × {}: expected {}, connected in the RSVP round (a check landed on a port the probes had opened; counted as agreeing)",
            m.inviter,
            m.invitee,
            m.expected.as_deref().unwrap_or("?")
        );
    }
    println!("{} of {} cells agree with {}", got.len() - bad.len(), got.len(), expected.display());
    Ok(bad.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { scenario, seed, out, nodes, topology, max_leaves, no_standing, quiet } => {
            run(&scenario, seed, &out, Overrides { nodes, topology, max_leaves, no_standing }, quiet)
        }
        Command::Overlay { scenario, out, nodes, seed, topology, quiet } => {
            overlay(&scenario, &out, nodes, seed, topology, quiet)
        }
        Command::Check { scenario } => {
            load(&scenario, None).map(|s| println!("{}: ok ({})", scenario.display(), s.name))
        }
        Command::Bench { nodes, scenario } => bench(&nodes, scenario),
        Command::Compare { expected, measured } => match compare(&expected, &measured) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convoke-sim: {e}");
            ExitCode::from(2)
        }
    }
}
