//! The node's TOML configuration file (`--config`). Every field is
//! optional; command-line flags win over the file.
//!
//! ```toml
//! listen = ["0.0.0.0:4433", "[::]:4433"]
//! stun = ["198.18.0.1:3478"]
//! key = "/var/lib/convoke/identity.key"
//! control = "/run/convoke/node.sock"
//! metrics = "127.0.0.1:9464"
//! no_probing = false
//! no_port_mapping = false
//! state = "/var/lib/convoke/state"
//! topology = "hierarchical"
//! super_peer = "auto"   # or "always", "never" (true means always)
//! max_leaves = 16       # this member's own capacity as a super-peer
//! relay = "limited"     # `convoke up` relays for others: "off", "limited", "unlimited"
//!
//! [invite]
//! expires = "1d"
//! rsvp_timeout = "30s"
//! ```

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use convoke_node::member::SuperPeer;

/// The file's contents.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Addresses to bind (default: `0.0.0.0:0` and `[::]:0`).
    pub listen: Vec<SocketAddr>,
    /// STUN servers as `host:port` (none by default).
    pub stun: Vec<String>,
    /// Identity key file.
    pub key: Option<PathBuf>,
    /// Control socket path.
    pub control: Option<PathBuf>,
    /// Serve Prometheus metrics here (e.g. `"127.0.0.1:9464"`; off by default).
    pub metrics: Option<SocketAddr>,
    /// Never predict or probe for ports (`--no-probing`).
    pub no_probing: bool,
    /// Never ask the router for a port mapping (`--no-port-mapping`).
    pub no_port_mapping: bool,
    /// Where `convoke up` saves the cards it rejoins through (`--state`).
    pub state: Option<PathBuf>,
    /// The network's topology policy for `convoke up` (`--topology`):
    /// mesh, spanning-tree, hierarchical or star.
    pub topology: Option<String>,
    /// Whether this member serves as a super-peer or hub (`--super-peer`):
    /// `"auto"`, `"always"` or `"never"`; `true` means always, `false` auto.
    #[serde(deserialize_with = "super_peer")]
    pub super_peer: Option<SuperPeer>,
    /// Most leaves this member carries as a super-peer or hub, below the
    /// policy's bound (`--max-leaves`).
    pub max_leaves: Option<usize>,
    /// Whether `convoke up` relays for other peers on its port (`--relay`):
    /// `"off"`, `"limited"` or `"unlimited"`.
    pub relay: Option<String>,
    /// Defaults for `convoke invite`.
    pub invite: InviteDefaults,
}

/// Defaults for new invitations.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct InviteDefaults {
    /// Lifetime, e.g. `1d`.
    pub expires: Option<String>,
    /// How long the invitee tries before asking for an RSVP, e.g. `30s`.
    pub rsvp_timeout: Option<String>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a field is wrong (the message names it).
    #[error("configuration file {path}: {message}")]
    Parse {
        /// Its path.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A STUN server name did not resolve.
    #[error("STUN server `{0}` is not an address or a name that resolves: {1}")]
    Stun(String, String),
}

/// The largest configuration file read (a real one is a few hundred bytes).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl FileConfig {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = convoke_node::runtime::read_capped(path, MAX_CONFIG_BYTES)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }
}

/// `super_peer` as written: a word, or a boolean (the file's first form).
fn super_peer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SuperPeer>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Flag(bool),
        Word(String),
    }
    match Form::deserialize(d)? {
        Form::Flag(true) => Ok(Some(SuperPeer::Always)),
        Form::Flag(false) => Ok(Some(SuperPeer::Auto)),
        Form::Word(w) => w.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// Resolves `host:port` STUN server names (the first address of each).
pub fn resolve_stun(servers: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    servers
        .iter()
        .map(|s| {
            let mut it = s.to_socket_addrs().map_err(|e| ConfigError::Stun(s.clone(), e.to_string()))?;
            it.next().ok_or_else(|| ConfigError::Stun(s.clone(), "no address".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let c = FileConfig::parse(
            r#"
            listen = ["0.0.0.0:4433", "[::]:4433"]
            stun = ["198.18.0.1:3478"]
            state = "/var/lib/convoke/state"
            topology = "hierarchical"
            super_peer = true
            max_leaves = 16
            [invite]
            expires = "1d"
            "#,
        )
        .expect("valid");
        assert_eq!(c.topology.as_deref(), Some("hierarchical"));
        assert_eq!(c.super_peer, Some(SuperPeer::Always));
        assert_eq!(c.max_leaves, Some(16));
        let word = FileConfig::parse("super_peer = \"never\"").expect("a word");
        assert_eq!(word.super_peer, Some(SuperPeer::Never));
        let e = FileConfig::parse("super_peer = \"sometimes\"").expect_err("bad word");
        assert!(e.contains("super_peer") && e.contains("auto, always, never"), "{e}");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.invite.expires.as_deref(), Some("1d"));
        assert_eq!(c.state.as_deref(), Some(Path::new("/var/lib/convoke/state")));
        assert_eq!(resolve_stun(&c.stun).expect("ip")[0], "198.18.0.1:3478".parse().expect("addr"));
    }

    #[cfg(unix)]
    #[test]
    fn an_endless_config_file_is_refused() {
        let e = FileConfig::load(Path::new("/dev/zero")).expect_err("refused");
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = FileConfig::parse("listen = [\"not an address\"]").expect_err("bad");
        assert!(e.contains("listen"), "{e}");
        let e = FileConfig::parse("lisen = []").expect_err("unknown");
        assert!(e.contains("lisen"), "{e}");
        assert!(resolve_stun(&["no-port".into()]).is_err());
    }
}
