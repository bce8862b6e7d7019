//! Helpers shared by the tests that run the `convoke` binary: scratch
//! directories, children killed on drop, bounded waits.
// Each test crate uses its own subset.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_convoke");

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("convoke-cli-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn wait_for(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(s) = self.0.try_wait().expect("try_wait") {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("process did not finish within {limit:?}");
    }
}

pub fn convoke(dir: &Scratch, key: &str) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--key")
        .arg(dir.path(key))
        .env_remove("RUST_LOG")
        .env_remove("CONVOKE_JOIN")
        .env("XDG_RUNTIME_DIR", dir.path("run"))
        .env("XDG_DATA_HOME", dir.path("data"));
    c
}

/// Waits until `file` has content.
pub fn wait_file(file: &Path, limit: Duration) -> String {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(s) = fs::read_to_string(file)
            && s.ends_with('\n')
        {
            return s.trim().to_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} did not appear within {limit:?}", file.display());
}
