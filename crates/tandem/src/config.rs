//! `tandem serve` settings: built-in defaults, overridden by a TOML file
//! (`--config`), overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// Settings of a serving node after defaults, file and flags are merged.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where volumes and the installation identity live.
    pub data_dir: PathBuf,
    /// iSCSI portal address.
    pub iscsi_listen: SocketAddr,
    /// Management API address.
    pub api_listen: SocketAddr,
    /// Prefix of every exported IQN.
    pub iqn_prefix: String,
    /// Whether a normal-session login for a cluster volume is redirected to
    /// the portal of the volume's primary (off: every node serves it).
    pub redirect_to_primary: bool,
}

/// Where `tandem serve` keeps its data unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "./tandem-data";

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            iscsi_listen: "127.0.0.1:3260".parse().expect("valid default"),
            api_listen: api::DEFAULT_API_ADDR.parse().expect("valid default"),
            iqn_prefix: node::DEFAULT_IQN_PREFIX.to_string(),
            redirect_to_primary: false,
        }
    }
}

/// The TOML file's shape; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub iscsi_listen: Option<SocketAddr>,
    pub api_listen: Option<SocketAddr>,
    pub iqn_prefix: Option<String>,
    pub redirect_to_primary: Option<bool>,
}

impl FileConfig {
    /// Reads and parses a TOML config file.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {} is invalid", path.display()))
    }
}

/// Flags given on the command line; `None` (or `false` for a switch)
/// means "not given".
#[derive(Debug, Default)]
pub struct FlagConfig {
    pub data_dir: Option<PathBuf>,
    pub iscsi_listen: Option<SocketAddr>,
    pub api_listen: Option<SocketAddr>,
    pub iqn_prefix: Option<String>,
    pub redirect_to_primary: bool,
}

impl ServeConfig {
    /// Merges defaults ← file ← flags and checks the result.
    pub fn merge(file: FileConfig, flags: FlagConfig) -> anyhow::Result<ServeConfig> {
        let d = ServeConfig::default();
        let c = ServeConfig {
            data_dir: flags.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            iscsi_listen: flags
                .iscsi_listen
                .or(file.iscsi_listen)
                .unwrap_or(d.iscsi_listen),
            api_listen: flags.api_listen.or(file.api_listen).unwrap_or(d.api_listen),
            iqn_prefix: flags.iqn_prefix.or(file.iqn_prefix).unwrap_or(d.iqn_prefix),
            redirect_to_primary: flags.redirect_to_primary
                || file.redirect_to_primary.unwrap_or(d.redirect_to_primary),
        };
        if let Err(why) = node::validate_iqn_prefix(&c.iqn_prefix) {
            bail!(why);
        }
        if c.iscsi_listen == c.api_listen {
            bail!(
                "the iSCSI portal and the management API cannot both listen on {}",
                c.iscsi_listen
            );
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let file: FileConfig = toml::from_str(
            "data_dir = \"/srv/t\"\niscsi_listen = \"0.0.0.0:3260\"\napi_listen = \"127.0.0.1:9000\"",
        )
        .unwrap();
        let flags = FlagConfig {
            api_listen: Some("127.0.0.1:9100".parse().unwrap()),
            ..Default::default()
        };
        let c = ServeConfig::merge(file, flags).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/t"));
        assert_eq!(c.iscsi_listen.to_string(), "0.0.0.0:3260");
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:9100");
        assert_eq!(c.iqn_prefix, node::DEFAULT_IQN_PREFIX);
        assert!(!c.redirect_to_primary, "off unless asked for");
        let file: FileConfig = toml::from_str("redirect_to_primary = true").unwrap();
        let c = ServeConfig::merge(file, FlagConfig::default()).unwrap();
        assert!(c.redirect_to_primary);
        let flags = FlagConfig {
            redirect_to_primary: true,
            ..Default::default()
        };
        let c = ServeConfig::merge(FileConfig::default(), flags).unwrap();
        assert!(c.redirect_to_primary);
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(toml::from_str::<FileConfig>("datadir = \"x\"").is_err());
        assert!(toml::from_str::<FileConfig>("iscsi_listen = \"nonsense\"").is_err());
        let file: FileConfig = toml::from_str("iqn_prefix = \"bogus\"").unwrap();
        assert!(ServeConfig::merge(file, FlagConfig::default()).is_err());
    }
}
