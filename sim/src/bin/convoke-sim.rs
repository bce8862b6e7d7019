//! `convoke-sim`: the simulator's command line. Scenarios arrive with the
//! simulator issue; today it reports its version and refuses to pretend.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (version, overlay) = convoke_sim::engine_versions();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("convoke-sim {version} (overlay protocol {overlay})")
        }
        Some("--help") | Some("-h") | None => {
            println!("convoke-sim {version}\n\nUsage: convoke-sim run SCENARIO [--seed N] [--out DIR]\n");
            println!("The simulator engine is not built yet; `run` exits with an error.");
        }
        Some(other) => {
            eprintln!("convoke-sim: `{other}` is not available yet: the simulator engine is still to be built");
            std::process::exit(2);
        }
    }
}
