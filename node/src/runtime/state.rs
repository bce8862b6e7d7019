//! A member's saved membership: the cards it can rejoin its network
//! through after a restart, a crash or a reboot, with no new invitation.
//!
//! One JSON file per identity, `<dir>/<peer id>.json`, mode 0600, replaced
//! atomically (written beside, synced, renamed), at most [`MAX_CARDS`]
//! cards and [`MAX_BYTES`] bytes (the format: [`crate::member::saved`]). The default directory is
//! `$XDG_DATA_HOME/convoke/state` (`~/.local/share/convoke/state`). A card
//! is a member's signed invitation: it names candidates, so a card is only
//! as good as its member's address, and it expires (7 days by default).
//! A restarted member tries them in turn ([`crate::member::MemberConfig::rejoin`]).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::identity::PeerId;
pub use crate::member::saved::{Loaded, MAX_BYTES, MAX_CARDS};
use crate::token::Invitation;

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not a state file of this version, or belongs to another
    /// identity.
    #[error("state file {path} is not usable: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The state file of one identity.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    peer: PeerId,
}

impl StateFile {
    /// The file for `peer` in `dir`.
    pub fn new(dir: &Path, peer: PeerId) -> Self {
        Self { path: dir.join(format!("{peer}.json")), peer }
    }

    /// `<data dir>/convoke/state`, if the platform has a data directory.
    pub fn default_dir() -> Option<PathBuf> {
        dirs::data_dir().map(|d| d.join("convoke").join("state"))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the saved cards, keeping those valid at `unix_now`. `Ok(None)`
    /// when nothing was saved yet.
    pub fn load(&self, unix_now: u64) -> Result<Option<Loaded>, StateError> {
        let text = match super::read_capped(&self.path, MAX_BYTES as u64) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path: self.path.clone(), source }),
        };
        crate::member::saved::decode(&text, self.peer, unix_now)
            .map(Some)
            .map_err(|why| StateError::Corrupt { path: self.path.clone(), why })
    }

    /// Replaces the file with `cards` (the first [`MAX_CARDS`]), creating
    /// the directory (mode 0700) if needed.
    pub fn save(&self, cards: &[Invitation], own: &[Invitation], unix_now: u64) -> Result<(), StateError> {
        let text = crate::member::saved::encode(self.peer, cards, own, unix_now);
        self.replace(text.as_bytes()).map_err(|source| StateError::Io { path: self.path.clone(), source })
    }

    /// Atomic replace: write a temporary file beside, sync it, rename it
    /// over the old one, sync the directory. (Four standard library calls;
    /// the `tempfile` crate's `persist` does the same with a dependency
    /// tree of its own.)
    fn replace(&self, bytes: &[u8]) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &self.path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::token::{Candidate, CandidateKind, InvitationParams, Token};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("convoke-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn card(id: &Identity, lifetime: u64, rng: &mut ChaCha20Rng) -> Invitation {
        let params = InvitationParams {
            candidates: Candidate::list([(CandidateKind::Host, "127.0.0.1:9".parse().expect("addr"))]),
            lifetime_secs: lifetime,
            ..InvitationParams::default()
        };
        Invitation::from_token(Token::new_invitation(id, params, 1_000, rng), 1_000).expect("valid")
    }

    #[test]
    fn saved_cards_come_back_minus_the_expired_ones_with_mode_0600() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let me = Identity::generate(&mut rng);
        let (a, b) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
        let dir = temp_dir("round-trip");
        let file = StateFile::new(&dir.join("sub"), me.peer_id());
        assert!(file.load(1_000).expect("no file is fine").is_none());
        let cards = [card(&a, 3_600, &mut rng), card(&b, 60, &mut rng), card(&me, 3_600, &mut rng)];
        file.save(&cards, &cards[2..], 1_010).expect("saves");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(file.path()).expect("file").permissions().mode() & 0o777, 0o600);
            assert_eq!(fs::metadata(dir.join("sub")).expect("dir").permissions().mode() & 0o777, 0o700);
        }
        // At 1,100 s b's card (60 s) has expired, and our own is never used.
        let loaded = file.load(1_100).expect("loads").expect("saved");
        assert_eq!(loaded.cards.iter().map(Invitation::inviter).collect::<Vec<_>>(), vec![a.peer_id()]);
        assert_eq!((loaded.dropped, loaded.saved_at), (2, 1_010));
        // Our own card comes back as ours, to be answered again.
        assert_eq!(loaded.own.iter().map(Invitation::inviter).collect::<Vec<_>>(), vec![me.peer_id()]);
        // Saving again replaces the file and leaves no temporary behind.
        file.save(&cards[..1], &[], 1_020).expect("saves");
        assert_eq!(fs::read_dir(dir.join("sub")).expect("dir").count(), 1);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn corrupt_foreign_and_oversized_files_are_refused_with_the_reason() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (me, other) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
        let dir = temp_dir("bad");
        let file = StateFile::new(&dir, me.peer_id());
        fs::create_dir_all(&dir).expect("dir");
        fs::write(file.path(), "{ not json").expect("write");
        assert!(matches!(file.load(1_000), Err(StateError::Corrupt { .. })));
        // Another identity's file copied over ours.
        StateFile::new(&dir, other.peer_id()).save(&[], &[], 1_000).expect("saves");
        fs::rename(dir.join(format!("{}.json", other.peer_id())), file.path()).expect("rename");
        let e = file.load(1_000).expect_err("foreign").to_string();
        assert!(e.contains("belongs to"), "{e}");
        // A huge file is refused after MAX_BYTES, not read into memory.
        fs::write(file.path(), vec![b' '; MAX_BYTES + 10]).expect("write");
        let e = file.load(1_000).expect_err("too large").to_string();
        assert!(e.contains("larger than"), "{e}");
        fs::remove_dir_all(dir).expect("cleanup");
    }
}
