//! The simulator's readers: scenario TOML (parse + validate) and the
//! Markdown matrix table. Any input: an error or a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(s) = convoke_sim::scenario::Scenario::parse(text) {
        // A valid scenario names only known profiles.
        let known = s.all_profiles();
        assert!(s.joins.profiles.iter().all(|p| known.contains_key(p)));
    }
    let _ = convoke_sim::report::parse_matrix(text);
});
