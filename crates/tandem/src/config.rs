//! `tandem serve` settings: built-in defaults, overridden by a TOML file
//! (`--config`), overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer};

/// Settings of a serving node after defaults, file and flags are merged.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where volumes and the installation identity live.
    pub data_dir: PathBuf,
    /// iSCSI portal address.
    pub iscsi_listen: SocketAddr,
    /// Management API address.
    pub api_listen: SocketAddr,
    /// Address serving `GET /metrics` alone, without the API token (`None`:
    /// metrics only on the API listener, with the token).
    pub metrics_listen: Option<SocketAddr>,
    /// Prefix of every exported IQN.
    pub iqn_prefix: String,
    /// Whether a normal-session login for a cluster volume is redirected to
    /// the portal of the volume's primary (off: every node serves it).
    pub redirect_to_primary: bool,
    /// Control-plane endpoint (cluster members).
    pub cluster_listen: SocketAddr,
    /// Replication endpoint (cluster members).
    pub repl_listen: SocketAddr,
    /// Host or address other nodes reach this one at.
    pub advertise: String,
    /// Name in the cluster (`None`: the host name).
    pub node_name: Option<String>,
    /// How long replication connections poll before they sleep, in µs
    /// (0: never; see [`replica::set_busy_poll`]).
    pub busy_poll_us: u32,
    /// How the log is written.
    pub log_format: LogFormat,
}

/// How a server writes its log (to stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people (coloured only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`
    /// (with `message`), for a log collector.
    Json,
}

/// Where `tandem serve` keeps its data unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "./tandem-data";

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            iscsi_listen: "127.0.0.1:3260".parse().expect("valid default"),
            api_listen: api::DEFAULT_API_ADDR.parse().expect("valid default"),
            metrics_listen: None,
            iqn_prefix: node::DEFAULT_IQN_PREFIX.to_string(),
            redirect_to_primary: false,
            cluster_listen: "127.0.0.1:7400".parse().expect("valid default"),
            repl_listen: "127.0.0.1:7401".parse().expect("valid default"),
            advertise: "127.0.0.1".into(),
            node_name: None,
            busy_poll_us: 0,
            log_format: LogFormat::Text,
        }
    }
}

/// Parses a listen address, `IP:PORT`; a port alone or a host name is
/// refused with an example of what to write.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.trim().parse() {
        return Ok(addr);
    }
    let port = match s.trim().parse::<u16>() {
        Ok(port) => port,
        Err(_) => s
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(3260),
    };
    let example = format!("0.0.0.0:{port} (every interface), 127.0.0.1:{port} or [::1]:{port}");
    if s.trim().parse::<u16>().is_ok() {
        Err(format!(
            "{s:?} is a port alone: give an address and the port, e.g. {example}"
        ))
    } else if s.contains(':') {
        Err(format!("{s:?} is not an IP address and port (host names are not looked up): write e.g. {example}"))
    } else {
        Err(format!(
            "{s:?} is not an address and port: write e.g. {example}"
        ))
    }
}

/// A listen address in the config file, read like the flag's.
fn listen_setting<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_listen(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// The TOML file's shape: a key for each of `tandem serve`'s flags (the
/// flag's name with `_` for `-`), every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "listen_setting")]
    pub iscsi_listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "listen_setting")]
    pub api_listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "listen_setting")]
    pub metrics_listen: Option<SocketAddr>,
    pub iqn_prefix: Option<String>,
    pub redirect_to_primary: Option<bool>,
    #[serde(default, deserialize_with = "listen_setting")]
    pub cluster_listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "listen_setting")]
    pub repl_listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub node_name: Option<String>,
    /// Runtime threads (`--threads`), read before the runtime starts.
    pub threads: Option<u16>,
    pub busy_poll_us: Option<u32>,
    pub log_format: Option<LogFormat>,
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
    pub metrics_listen: Option<SocketAddr>,
    pub iqn_prefix: Option<String>,
    pub log_format: Option<LogFormat>,
    pub redirect_to_primary: bool,
    pub cluster_listen: Option<SocketAddr>,
    pub repl_listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub node_name: Option<String>,
    pub busy_poll_us: Option<u32>,
}

/// The most `busy_poll_us` may be: 10 ms.
pub const MAX_BUSY_POLL_US: u32 = 10_000;

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
            metrics_listen: flags.metrics_listen.or(file.metrics_listen),
            iqn_prefix: flags.iqn_prefix.or(file.iqn_prefix).unwrap_or(d.iqn_prefix),
            redirect_to_primary: flags.redirect_to_primary
                || file.redirect_to_primary.unwrap_or(d.redirect_to_primary),
            cluster_listen: flags
                .cluster_listen
                .or(file.cluster_listen)
                .unwrap_or(d.cluster_listen),
            repl_listen: flags
                .repl_listen
                .or(file.repl_listen)
                .unwrap_or(d.repl_listen),
            advertise: flags.advertise.or(file.advertise).unwrap_or(d.advertise),
            node_name: flags.node_name.or(file.node_name),
            busy_poll_us: flags
                .busy_poll_us
                .or(file.busy_poll_us)
                .unwrap_or(d.busy_poll_us),
            log_format: flags.log_format.or(file.log_format).unwrap_or(d.log_format),
        };
        if let Err(why) = node::validate_iqn_prefix(&c.iqn_prefix) {
            bail!(why);
        }
        if file.threads.is_some_and(|t| !(1..=1024).contains(&t)) {
            bail!("threads must be 1 to 1024");
        }
        if c.busy_poll_us > MAX_BUSY_POLL_US {
            bail!("busy_poll_us must be 0 to {MAX_BUSY_POLL_US} (µs)");
        }
        let mut listeners = vec![
            ("the iSCSI portal", c.iscsi_listen),
            ("the management API", c.api_listen),
            ("the control-plane endpoint", c.cluster_listen),
            ("the replication endpoint", c.repl_listen),
        ];
        if let Some(addr) = c.metrics_listen {
            listeners.push(("the metrics endpoint", addr));
        }
        for (i, (a, addr_a)) in listeners.iter().enumerate() {
            for (b, addr_b) in &listeners[i + 1..] {
                if addr_a == addr_b {
                    bail!("{a} and {b} cannot both listen on {addr_a}");
                }
            }
        }
        if c.advertise.trim().is_empty()
            || c.node_name.as_ref().is_some_and(|n| n.trim().is_empty())
        {
            bail!("advertise and node_name cannot be empty");
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
    fn every_flag_has_a_key_in_the_file() {
        let file: FileConfig = toml::from_str(
            "cluster_listen = \"10.0.0.1:7400\"\nrepl_listen = \"10.0.0.1:7401\"\n\
             advertise = \"node-a.example\"\nnode_name = \"node-a\"\nthreads = 2",
        )
        .unwrap();
        assert_eq!(file.threads, Some(2));
        let c = ServeConfig::merge(file, FlagConfig::default()).unwrap();
        assert_eq!(c.cluster_listen.to_string(), "10.0.0.1:7400");
        assert_eq!(c.repl_listen.to_string(), "10.0.0.1:7401");
        assert_eq!(c.advertise, "node-a.example");
        assert_eq!(c.node_name.as_deref(), Some("node-a"));
        // A flag given wins over the file.
        let file: FileConfig = toml::from_str("node_name = \"node-a\"").unwrap();
        let flags = FlagConfig {
            node_name: Some("node-b".into()),
            advertise: Some("10.0.0.2".into()),
            ..Default::default()
        };
        let c = ServeConfig::merge(file, flags).unwrap();
        assert_eq!(c.node_name.as_deref(), Some("node-b"));
        assert_eq!(c.advertise, "10.0.0.2");
        assert_eq!(c.cluster_listen.to_string(), "127.0.0.1:7400");
    }

    #[test]
    fn a_listen_address_that_is_not_one_gets_an_example() {
        assert_eq!(parse_listen("0.0.0.0:3260").unwrap().port(), 3260);
        assert_eq!(parse_listen("[::1]:3260").unwrap().port(), 3260);
        let port = parse_listen("3260").unwrap_err();
        assert!(
            port.contains("port alone") && port.contains("0.0.0.0:3260"),
            "{port}"
        );
        let host = parse_listen("localhost:3261").unwrap_err();
        assert!(host.contains("127.0.0.1:3261"), "{host}");
        let junk = parse_listen("nonsense").unwrap_err();
        assert!(junk.contains("e.g."), "{junk}");
        let err = toml::from_str::<FileConfig>("iscsi_listen = \"3260\"").unwrap_err();
        assert!(err.to_string().contains("0.0.0.0:3260"), "{err}");
    }

    #[test]
    fn busy_polling_is_off_unless_asked_for_and_at_most_10_ms() {
        let c = ServeConfig::merge(FileConfig::default(), FlagConfig::default()).unwrap();
        assert_eq!(c.busy_poll_us, 0);
        let file: FileConfig = toml::from_str("busy_poll_us = 300").unwrap();
        let c = ServeConfig::merge(file, FlagConfig::default()).unwrap();
        assert_eq!(c.busy_poll_us, 300);
        let file: FileConfig = toml::from_str("busy_poll_us = 300").unwrap();
        let flags = FlagConfig {
            busy_poll_us: Some(0),
            ..Default::default()
        };
        assert_eq!(ServeConfig::merge(file, flags).unwrap().busy_poll_us, 0);
        let file: FileConfig = toml::from_str("busy_poll_us = 10001").unwrap();
        let err = ServeConfig::merge(file, FlagConfig::default()).unwrap_err();
        assert!(err.to_string().contains("busy_poll_us"), "{err}");
    }

    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let file: FileConfig = toml::from_str("cluster_listen = \"127.0.0.1:7401\"").unwrap();
        let err = ServeConfig::merge(file, FlagConfig::default()).unwrap_err();
        assert!(err.to_string().contains("127.0.0.1:7401"), "{err}");
    }

    /// The shipped `deploy/tandem.toml`.
    const SHIPPED: &str = include_str!("../../../deploy/tandem.toml");

    #[test]
    fn the_shipped_config_file_parses_and_names_every_setting() {
        let file: FileConfig = toml::from_str(SHIPPED).unwrap();
        let c = ServeConfig::merge(file, FlagConfig::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/tandem"));
        // Each commented key, taken in: every setting is there, and the
        // defaults it shows are the defaults.
        let all: String = SHIPPED
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(kv)
                    if kv.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')
                    }) =>
                {
                    format!("{kv}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let file: FileConfig = toml::from_str(&all).unwrap();
        // No `..`: a setting added to FileConfig must be added here, and so
        // to the shipped file.
        let FileConfig {
            data_dir,
            iscsi_listen,
            api_listen,
            metrics_listen,
            iqn_prefix,
            redirect_to_primary,
            cluster_listen,
            repl_listen,
            advertise,
            node_name,
            threads,
            busy_poll_us,
            log_format,
        } = file;
        let d = ServeConfig::default();
        assert_eq!(data_dir, Some(PathBuf::from("/var/lib/tandem")));
        assert_eq!(iscsi_listen, Some(d.iscsi_listen));
        assert_eq!(api_listen, Some(d.api_listen));
        // Off by default: the file shows an address to give it.
        assert_eq!(d.metrics_listen, None);
        assert!(metrics_listen.is_some_and(|a| a.ip().is_loopback()));
        assert_eq!(iqn_prefix, Some(d.iqn_prefix));
        assert_eq!(redirect_to_primary, Some(d.redirect_to_primary));
        assert_eq!(cluster_listen, Some(d.cluster_listen));
        assert_eq!(repl_listen, Some(d.repl_listen));
        assert_eq!(advertise, Some(d.advertise));
        assert_eq!(log_format, Some(d.log_format));
        assert!(node_name.is_some());
        assert!(threads.is_some());
        assert_eq!(busy_poll_us, Some(d.busy_poll_us));
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(toml::from_str::<FileConfig>("datadir = \"x\"").is_err());
        assert!(toml::from_str::<FileConfig>("iscsi_listen = \"nonsense\"").is_err());
        let file: FileConfig = toml::from_str("iqn_prefix = \"bogus\"").unwrap();
        assert!(ServeConfig::merge(file, FlagConfig::default()).is_err());
    }
}
