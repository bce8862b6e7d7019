//! The identity key file.
//!
//! Created on first use with mode 0600 (owner read/write only), in
//! `$XDG_DATA_HOME/convoke/identity.key` (`~/.local/share/convoke/` on Linux,
//! the platform data directory elsewhere) unless a path is given. The file
//! holds one line naming the format and one with the base64url secret seed,
//! so it survives copy and paste.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::identity::Identity;
use crate::token::B64;

const HEADER: &str = "convoke-ed25519-secret-v1";

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// No path was given and the platform has no data directory.
    #[error("no data directory on this system; give a key path with --key")]
    NoDataDir,
    /// Reading or creating the file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file exists but does not hold a Convoke key.
    #[error("key file {0} is not a Convoke identity key (expected a '{HEADER}' line and a base64url seed)")]
    Corrupt(PathBuf),
    /// The file can be read by others; refusing as ssh does.
    #[error("key file {0} can be read by other users; run `chmod 600` on it")]
    TooOpen(PathBuf),
}

/// The default key path: `<data dir>/convoke/identity.key`.
pub fn default_key_path() -> Result<PathBuf, KeyFileError> {
    dirs::data_dir().map(|d| d.join("convoke").join("identity.key")).ok_or(KeyFileError::NoDataDir)
}

/// Loads the identity at `path`, creating it (and its directory) with the
/// OS RNG if the file does not exist. Returns the identity and whether it was
/// created now.
pub fn load_or_create(path: &Path) -> Result<(Identity, bool), KeyFileError> {
    let io_err = |source| KeyFileError::Io { path: path.to_owned(), source };
    // A key file is two short lines; anything far larger is not one.
    match super::read_capped(path, 4096) {
        Ok(text) => {
            check_permissions(path)?;
            parse(&text).map(|id| (id, false)).ok_or_else(|| KeyFileError::Corrupt(path.to_owned()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(io_err)?;
            }
            let identity = Identity::generate(&mut super::os_rng());
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            // create_new: if another process made the file in between, fail
            // rather than overwrite its key.
            let mut f = opts.open(path).map_err(io_err)?;
            writeln!(f, "{HEADER}\n{}", B64.encode(identity.secret_bytes())).map_err(io_err)?;
            f.sync_all().map_err(io_err)?;
            Ok((identity, true))
        }
        Err(e) => Err(io_err(e)),
    }
}

fn parse(text: &str) -> Option<Identity> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next()? != HEADER {
        return None;
    }
    let seed = B64.decode(lines.next()?).ok()?;
    Some(Identity::from_secret_bytes(seed.try_into().ok()?))
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| KeyFileError::Io { path: path.to_owned(), source })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyFileError::TooOpen(path.to_owned()));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path) -> Result<(), KeyFileError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("convoke-keystore-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn creates_once_with_mode_0600_then_loads_the_same_key() {
        let dir = temp_dir("create");
        let path = dir.join("sub").join("identity.key");
        let (a, created) = load_or_create(&path).expect("creates");
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).expect("exists").permissions().mode() & 0o777, 0o600);
        }
        let (b, created) = load_or_create(&path).expect("loads");
        assert!(!created);
        assert_eq!(a.peer_id(), b.peer_id());
        fs::remove_dir_all(dir).expect("cleanup");
    }

    /// An endless file is refused after a few KiB, not read until memory
    /// runs out.
    #[cfg(unix)]
    #[test]
    fn an_endless_key_file_is_refused() {
        let e = load_or_create(Path::new("/dev/zero")).expect_err("refused");
        assert!(e.to_string().contains("larger than 4096 bytes"), "{e}");
    }

    #[test]
    fn corrupt_and_open_files_are_refused() {
        let dir = temp_dir("bad");
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("k");
        fs::write(&path, "not a key\n").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
            assert!(matches!(load_or_create(&path), Err(KeyFileError::Corrupt(_))));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(load_or_create(&path), Err(KeyFileError::TooOpen(_))));
        }
        fs::remove_dir_all(dir).expect("cleanup");
    }
}
