//! The `tandem` binary: `tandem serve` runs a node; the other commands manage
//! a running node through its management API.

mod config;
mod events_cli;
mod node_cli;
mod removal_cli;
mod serve;
mod size;
mod snapshot_cli;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{parse_listen, FileConfig, FlagConfig, LogFormat, ServeConfig};
use crate::size::{format_size, parse_size};

/// The CLI could not write its output (a closed pipe, a full disk).
#[derive(Debug)]
struct OutputError(std::io::Error);

impl std::fmt::Display for OutputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write the output: {}", self.0)
    }
}

impl std::error::Error for OutputError {}

/// Prints a line of the CLI's output like std's `println!` (which it
/// shadows in this file), but a closed pipe or a full disk is returned from
/// the calling function as an [`OutputError`] instead of a panic.
macro_rules! println {
    () => {
        writeln!(std::io::stdout()).map_err(crate::OutputError)?
    };
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*).map_err(crate::OutputError)?
    };
}

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Shared, mirrored storage for small virtualization clusters, served over iSCSI"
)]
struct Cli {
    /// Management API of the server to talk to (host:port).
    #[arg(long, global = true, env = "TANDEM_API", default_value = api::DEFAULT_API_ADDR)]
    api: String,
    /// File holding the server's API token [default: $TANDEM_DATA_DIR/api.token,
    /// else ./tandem-data/api.token]; TANDEM_API_TOKEN gives the token itself.
    #[arg(long, global = true, env = "TANDEM_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Threads a server (serve, witness) runs its protocol and I/O work on
    /// [default: half the CPUs, at least 1]. Blocking disk calls have
    /// worker threads of their own.
    #[arg(long, global = true, env = "TANDEM_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: serve every volume of the data directory over iSCSI.
    Serve {
        /// TOML file with any of the settings below, by the flag's name with
        /// `_` for `-` (data_dir, iscsi_listen, cluster_listen, node_name,
        /// threads...); a flag given overrides the file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory [default: ./tandem-data].
        #[arg(long, env = "TANDEM_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// iSCSI portal address [default: 127.0.0.1:3260].
        #[arg(long, value_parser = parse_listen)]
        iscsi_listen: Option<SocketAddr>,
        /// Management API address [default: 127.0.0.1:7260].
        #[arg(long, value_parser = parse_listen)]
        api_listen: Option<SocketAddr>,
        /// Also serve GET /metrics alone on this address, without the API
        /// token, for a Prometheus scraper [default: off; metrics are on the
        /// API listener, with the token].
        #[arg(long, value_parser = parse_listen)]
        metrics_listen: Option<SocketAddr>,
        /// Prefix of exported IQNs [default: iqn.2026-11.io.tandem].
        #[arg(long)]
        iqn_prefix: Option<String>,
        /// Log as text for people, or as one JSON object per line
        /// [default: text].
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// On a cluster member, redirect each login to a cluster volume
        /// (RFC 7143 "target moved temporarily") to the portal of its
        /// primary, for initiators without multipath that reach the
        /// cluster through one address. Leave off for multipath
        /// initiators, which should log in to every node.
        #[arg(long)]
        redirect_to_primary: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Manage the cluster this node belongs to.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run a witness: a cluster member that votes but holds no data (the
    /// third voter of a two-node cluster). Joins on first start, rejoins after.
    Witness {
        /// Directory for the witness's state.
        #[arg(long, default_value = "./tandem-witness")]
        data_dir: PathBuf,
        /// Cluster endpoint of the witness (loopback unless told: give the
        /// address the members reach, e.g. 0.0.0.0:7400).
        #[arg(long, default_value = "127.0.0.1:7400", value_parser = parse_listen)]
        listen: SocketAddr,
        /// Host or address the members reach the witness at.
        #[arg(long, default_value = "127.0.0.1")]
        advertise: String,
        /// Name of the witness [default: host name].
        #[arg(long)]
        name: Option<String>,
        /// Cluster endpoint of a member (first start only).
        #[arg(long)]
        join: Option<String>,
        /// Join token from `tandem cluster init` (first start only).
        #[arg(long, env = "TANDEM_JOIN_TOKEN")]
        token: Option<String>,
        /// Log as text for people, or as one JSON object per line.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Serve GET /metrics on this address, without a token, for a
        /// Prometheus scraper: the cluster as the witness sees it
        /// [default: off].
        #[arg(long, value_parser = parse_listen)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Manage volumes of a running node.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Planned work on a data node (maintenance).
    #[command(subcommand)]
    Node(node_cli::NodeCommand),
    /// Take, list and delete snapshots of volumes (docs/snapshots.md).
    #[command(subcommand)]
    Snapshot(snapshot_cli::SnapshotCommand),
    /// Show the node's identity, space, listen addresses and cluster.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the node's event history: failovers, resyncs, volume changes,
    /// refused logins, ... (docs/events.md).
    Events(events_cli::EventsArgs),
    /// Show what the storage saved and how well it served: efficiency,
    /// agility and quality of service, from the node's own figures.
    Report {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the version of this `tandem` program.
    Version {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script, e.g.
    /// `tandem completions bash > /etc/bash_completion.d/tandem`.
    Completions {
        /// Shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g.
    /// `tandem man > /usr/local/share/man/man1/tandem.1`.
    Man,
}

/// Where a node's cluster endpoints listen and how others reach it.
#[derive(clap::Args, Clone)]
struct ClusterArgs {
    /// Control-plane endpoint, cluster members only [default: 127.0.0.1:7400].
    #[arg(long, value_parser = parse_listen)]
    cluster_listen: Option<SocketAddr>,
    /// Replication endpoint, cluster members only [default: 127.0.0.1:7401].
    #[arg(long, value_parser = parse_listen)]
    repl_listen: Option<SocketAddr>,
    /// Host or address other nodes reach this one at [default: 127.0.0.1].
    #[arg(long)]
    advertise: Option<String>,
    /// Name of this node in the cluster [default: host name].
    #[arg(long)]
    node_name: Option<String>,
    /// Microseconds a replication connection polls before it sleeps: a
    /// copy for the next write, a primary for its copy's answer. Cuts the
    /// latency of writes one at a time by the CPU wake-ups it saves, for a
    /// busy runtime thread per such connection while they come
    /// [default: 0, never].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=config::MAX_BUSY_POLL_US as i64))]
    busy_poll_us: Option<u32>,
}

#[derive(Subcommand)]
enum ClusterSetting {
    /// A service address one healthy data node holds at a time, for
    /// initiators without multipath: moved to another data node when its
    /// holder fails (the holder needs CAP_NET_ADMIN to add it).
    FloatingAddress {
        /// Address and prefix length (`10.0.0.50/24`), or `none` to remove it.
        address: String,
        /// Interface the holder adds it to, the same name on every data node.
        #[arg(long)]
        interface: Option<String>,
    },
    /// How long a copy on a data node that stopped answering waits before
    /// the leader places a new copy on another data node (default 60m;
    /// copies of a member removed as dead are replaced at once).
    ReplaceDelay {
        /// A delay such as 10m, 1h, 90s or 2d (a bare number is minutes);
        /// 0 or off turns re-placement off.
        #[arg(value_parser = removal_cli::parse_delay)]
        delay: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Make the running node the first member of a new cluster; prints the
    /// join token (it holds the cluster secret: pass it privately).
    Init {
        /// Print JSON (`token`, `endpoint`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Join the running node to a cluster through any member.
    Join {
        /// Cluster endpoint of a member (host:port).
        seed: String,
        /// Join token printed by `tandem cluster init`.
        #[arg(long, env = "TANDEM_JOIN_TOKEN")]
        token: String,
    },
    /// Remove the running node from its cluster (its copies are dropped; refused
    /// while it holds the only in-sync copy of a volume).
    Leave,
    /// Remove a member that cannot leave by itself (its disk died, it is
    /// gone): its copies are dropped, the volumes it led fail over, and
    /// the leader places new copies. Refused without quorum, while it is
    /// still heard from (unless --force), or where a volume has no in-sync
    /// copy elsewhere.
    Remove {
        /// Member name or id.
        node: String,
        /// The member is dead (required: a running member leaves by itself).
        #[arg(long)]
        dead: bool,
        /// Remove it even though it is still heard from: the volumes it
        /// leads move first, and it serves no cluster volume from then on.
        #[arg(long)]
        force: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a setting of the whole cluster.
    #[command(subcommand)]
    Set(ClusterSetting),
    /// Members, leader, volumes, primaries and replica states.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Create a thin volume; it is exported as LUN 0 of iqn...:NAME at once.
    Create {
        name: String,
        /// Size, e.g. 10G, 512M, 1T (binary units).
        #[arg(long, value_parser = parse_size, allow_hyphen_values = true)]
        size: u64,
        /// Logical block size: 512 or 4096.
        #[arg(long, default_value_t = 512)]
        block_size: u32,
        /// Copies on distinct nodes (cluster members; default 2, or 1 with one data node).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=3))]
        replicas: Option<u8>,
        /// Print the new volume as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List volumes.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one volume.
    Show {
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Grow a volume (initiators see CAPACITY DATA HAS CHANGED).
    Resize {
        name: String,
        /// New size, e.g. 20G (grow only).
        #[arg(long, value_parser = parse_size, allow_hyphen_values = true)]
        size: u64,
        /// Print the volume as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Set who may log in to a volume and how they authenticate. Replaces
    /// the volume's rules: with no options, every initiator may log in
    /// without authentication.
    Access {
        name: String,
        /// Initiator allowed to log in and see the volume in discovery
        /// (repeat for more); none: every initiator.
        #[arg(long = "allow", value_name = "INITIATOR")]
        allow: Vec<String>,
        /// CHAP user initiators must authenticate as (one-way CHAP).
        #[arg(long, requires = "chap_secret_file")]
        chap_user: Option<String>,
        /// File holding the CHAP secret (12-255 bytes; "-" reads stdin).
        #[arg(long, requires = "chap_user")]
        chap_secret_file: Option<PathBuf>,
        /// CHAP user the target answers as when initiators ask (mutual CHAP).
        #[arg(long, requires_all = ["mutual_secret_file", "chap_user"])]
        mutual_user: Option<String>,
        /// File holding the mutual CHAP secret (must differ from the CHAP secret).
        #[arg(long, requires = "mutual_user")]
        mutual_secret_file: Option<PathBuf>,
        /// Print the volume as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show where a cluster volume's copies are and whether they are in
    /// sync (with resync progress).
    Status {
        name: String,
        /// Print JSON instead of text.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw every second, with a progress bar, rate and ETA during a
        /// resync, until Ctrl-C; when stdout is not a terminal, print one
        /// line per change instead.
        #[arg(long)]
        watch: bool,
    },
    /// Add a copy of a cluster volume on another data node; it is filled by
    /// a full sync while I/O goes on.
    AddReplica {
        name: String,
        /// Member (name or id) to hold the copy [default: the data node
        /// without a copy that holds the fewest copies].
        #[arg(long)]
        node: Option<String>,
    },
    /// Drop the copy of a cluster volume on a member (not the primary's:
    /// move the primary first).
    RemoveReplica {
        name: String,
        /// Member (name or id) whose copy goes.
        #[arg(long)]
        node: String,
        /// Drop it even if only one copy is left: the volume loses its
        /// redundancy, and a failure of that copy's node stops it.
        #[arg(long)]
        force: bool,
    },
    /// Planned switchover: make the in-sync copy on another running node
    /// the primary. The old primary stops taking new commands and finishes
    /// those in flight first; initiators see at most a short ALUA
    /// transition (which they retry), never an I/O error.
    MovePrimary {
        name: String,
        /// Member (name or id) whose copy becomes the primary.
        #[arg(long)]
        to: String,
    },
    /// Delete a volume and its data. Refused while initiators are logged in
    /// through any node, and while a node of the cluster cannot be asked
    /// whether they are.
    Delete {
        name: String,
        /// Log out initiators that are still connected, and delete even if
        /// a node that cannot be asked may have some (say, it is down).
        #[arg(long)]
        force: bool,
        /// Print JSON (`deleted`: the name) instead of text.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Snapshots(snapshot_cli::VolumeSnapshotCommand),
}

/// The runtime threads of a server on a machine with `cpus` CPUs: half of
/// them. A node shares its host with the virtual machines it serves (and
/// here with their initiators); most of its work is short (a page-cache
/// copy, a checksum, a socket call), and a runtime with a thread per CPU
/// spends more on waking idle threads to steal that work than they gain:
/// on two CPUs, one thread served 4 KiB writes at qd32 at 72 k IOPS and
/// reads at 124 k, two threads at 51 k and 100 k, and a mirrored write cost
/// both nodes a third less CPU.
fn default_threads(cpus: usize) -> usize {
    (cpus / 2).max(1)
}

/// The command line: [`Cli`], with each global option listed only where it
/// does something: the client's `--api` and `--token-file` not on the
/// servers, the servers' `--threads` not on the client's commands. (A
/// subcommand that has an option of a global's name keeps its own, here a
/// hidden copy; its value still reaches [`Cli`].)
fn cli_command() -> clap::Command {
    const SERVERS: [&str; 2] = ["serve", "witness"];
    let cmd = Cli::command();
    let hidden = |id: &str| {
        cmd.get_arguments()
            .find(|a| a.get_id() == id)
            .map(|a| a.clone().hide(true))
    };
    let (client_only, server_only): (Vec<clap::Arg>, Vec<clap::Arg>) = (
        ["api", "token_file"]
            .into_iter()
            .filter_map(hidden)
            .collect(),
        ["threads"].into_iter().filter_map(hidden).collect(),
    );
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut cmd = cmd.clone();
    for name in names {
        let hide = if SERVERS.contains(&name.as_str()) {
            client_only.clone()
        } else {
            server_only.clone()
        };
        cmd = cmd.mut_subcommand(name, |sub| sub.args(hide));
    }
    cmd
}

fn main() -> ExitCode {
    let cli = Cli::from_arg_matches(&cli_command().get_matches()).unwrap_or_else(|e| e.exit());
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = match server_threads(&cli) {
        Ok(t) => t.map_or_else(|| default_threads(cpus), usize::from),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tandem: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tandem: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A reader that closed the pipe (`| head`) has what it wanted:
            // stop quietly, as Unix tools do.
            if let Some(OutputError(io)) = e.downcast_ref::<OutputError>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            let _ = writeln!(std::io::stderr(), "tandem: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runtime threads asked for by `--threads`, else by `serve`'s config file.
fn server_threads(cli: &Cli) -> anyhow::Result<Option<u16>> {
    if cli.threads.is_some() {
        return Ok(cli.threads);
    }
    match &cli.command {
        Command::Serve {
            config: Some(path), ..
        } => Ok(FileConfig::load(path)?.threads),
        _ => Ok(None),
    }
}

/// The API token: TANDEM_API_TOKEN, else the token file.
fn api_token(token_file: Option<&PathBuf>) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("TANDEM_API_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let path = match token_file {
        Some(p) => p.clone(),
        None => std::env::var_os("TANDEM_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA_DIR))
            .join("api.token"),
    };
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read the API token from {} ({e}); point --token-file or TANDEM_DATA_DIR at the server's data directory",
                path.display()
            )
        })
}

/// Reads a secret from a file, or stdin for "-", without its line ending.
fn read_secret(path: &PathBuf) -> anyhow::Result<String> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
    };
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = || -> anyhow::Result<api::ApiClient> {
        Ok(api::ApiClient::new(
            &cli.api,
            &api_token(cli.token_file.as_ref())?,
        ))
    };
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            iscsi_listen,
            api_listen,
            metrics_listen,
            iqn_prefix,
            log_format,
            redirect_to_primary,
            cluster,
        } => {
            let file = match config {
                Some(p) => FileConfig::load(&p)?,
                None => FileConfig::default(),
            };
            let flags = FlagConfig {
                data_dir,
                iscsi_listen,
                api_listen,
                metrics_listen,
                iqn_prefix,
                log_format,
                redirect_to_primary,
                cluster_listen: cluster.cluster_listen,
                repl_listen: cluster.repl_listen,
                advertise: cluster.advertise,
                node_name: cluster.node_name,
                busy_poll_us: cluster.busy_poll_us,
            };
            let cfg = ServeConfig::merge(file, flags)?;
            replica::set_busy_poll(std::time::Duration::from_micros(cfg.busy_poll_us.into()));
            let cluster = node::ClusterConfig {
                name: cfg.node_name.clone().unwrap_or_else(host_name),
                cluster_listen: cfg.cluster_listen,
                repl_listen: cfg.repl_listen,
                advertise: cfg.advertise.clone(),
                iscsi_port: cfg.iscsi_listen.port(),
            };
            serve::run(cfg, cluster).await
        }
        Command::Witness {
            data_dir,
            listen,
            advertise,
            name,
            join,
            token,
            log_format,
            metrics_listen,
        } => {
            let me = cluster::NodeInfo {
                id: 0,
                name: name.unwrap_or_else(host_name),
                role: Some(cluster::Role::Witness),
                cluster_addr: format!("{advertise}:{}", listen.port()),
                iscsi_addr: String::new(),
                repl_addr: String::new(),
            };
            serve::witness(
                &data_dir,
                listen,
                me,
                join,
                token,
                log_format,
                metrics_listen,
            )
            .await
        }
        Command::Cluster(cmd) => cluster_command(&client()?, cmd).await,
        Command::Status { json } => {
            let view = client()?.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_status(&view)?;
            }
            Ok(())
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli_command(), "tandem", &mut script);
            std::io::stdout().write_all(&script).map_err(OutputError)?;
            Ok(())
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cli_command()).render(&mut page)?;
            std::io::stdout().write_all(&page).map_err(OutputError)?;
            Ok(())
        }
        Command::Version { json } => {
            let version = env!("CARGO_PKG_VERSION");
            if json {
                println!("{}", serde_json::json!({ "version": version }));
            } else {
                println!("tandem {version}");
            }
            Ok(())
        }
        Command::Events(args) => events_cli::events(&client()?, args).await,
        Command::Report { json } => events_cli::report(&client()?, json).await,
        Command::Volume(cmd) => volume_command(&client()?, cmd).await,
        Command::Node(cmd) => node_cli::node_command(&client()?, cmd).await,
        Command::Snapshot(cmd) => snapshot_cli::snapshot_command(&client()?, cmd).await,
    }
}

/// `tandem status` as text.
fn print_status(view: &api::StatusView) -> anyhow::Result<()> {
    let s = &view.node;
    println!("installation  {}", s.installation_id);
    println!("version       {}", s.version);
    println!("data dir      {}", s.data_dir);
    if let (Some(free), Some(total)) = (s.filesystem_free_bytes, s.filesystem_total_bytes) {
        println!(
            "filesystem    {} free of {}",
            format_size(free),
            format_size(total)
        );
    }
    println!("volumes       {}", s.volumes);
    println!("provisioned   {}", format_size(s.provisioned_bytes));
    println!("allocated     {}", format_size(s.allocated_bytes));
    if s.overcommitted_bytes() > 0 {
        println!(
            "overcommit    the thin volumes can still write {} more than the filesystem has free",
            format_size(s.overcommitted_bytes())
        );
    }
    if let Some(l) = &view.listen {
        println!("iscsi         {}", l.iscsi);
        println!("api           {}", l.api);
    }
    match &view.cluster {
        None => println!("cluster       none (a single node; `tandem cluster init` starts one)"),
        Some(c) => {
            println!(
                "cluster       {}   leader {}",
                c.cluster_id.as_deref().unwrap_or("-"),
                c.leader.as_deref().unwrap_or("none")
            );
            if let Some(l) = &view.listen {
                println!(
                    "cluster at    {}   replication at {}",
                    l.cluster, l.replication
                );
            }
            for m in &c.members {
                println!(
                    "  {}{}  {}  {}  {}",
                    m.name,
                    if m.id == c.me { " (this node)" } else { "" },
                    if m.data { "data" } else { "witness" },
                    m.endpoint,
                    m.liveness
                );
            }
        }
    }
    Ok(())
}

/// Warns on stderr when the node's thin volumes can now write more than its
/// data filesystem has free.
async fn warn_overcommit(c: &api::ApiClient) {
    let Ok(view) = c.status().await else { return };
    let s = &view.node;
    if let (true, Some(free)) = (s.overcommitted_bytes() > 0, s.filesystem_free_bytes) {
        let _ = writeln!(
            std::io::stderr(),
            "tandem: note: this node's volumes are {} in all, with {} written, on a filesystem \
             with {} free: writes will fail once it is full",
            format_size(s.provisioned_bytes),
            format_size(s.allocated_bytes),
            format_size(free)
        );
    }
}

/// The name of cluster member `id` in `state`, else `node ID`.
fn member_name(state: &cluster::ClusterState, id: u64) -> String {
    state
        .nodes
        .get(&id)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| format!("node {id}"))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tandem".into())
}

async fn cluster_command(c: &api::ApiClient, cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Init { json } => {
            let t = c.cluster_init().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
                return Ok(());
            }
            let endpoint = if t.endpoint.is_empty() {
                "<this node's cluster endpoint>"
            } else {
                &t.endpoint
            };
            println!("cluster created; other nodes join with:");
            println!("  tandem cluster join {endpoint} --token {}", t.token);
        }
        ClusterCommand::Join { seed, token } => {
            c.cluster_join(&api::JoinCluster {
                seed: seed.clone(),
                token,
            })
            .await?;
            println!("joined the cluster through {seed}");
        }
        ClusterCommand::Leave => {
            c.cluster_leave().await?;
            println!("left the cluster");
        }
        ClusterCommand::Remove {
            node,
            dead,
            force,
            json,
        } => removal_cli::remove(c, node, dead, force, json).await?,
        ClusterCommand::Set(ClusterSetting::ReplaceDelay { delay }) => {
            removal_cli::set_delay(c, delay).await?
        }
        ClusterCommand::Set(ClusterSetting::FloatingAddress { address, interface }) => {
            if address == "none" {
                c.set_floating(None).await?;
                println!("the cluster has no floating address now");
                return Ok(());
            }
            let Some(interface) = interface else {
                anyhow::bail!("give the interface the address goes on: --interface <name>");
            };
            c.set_floating(Some(node::FloatingAddress {
                address: address.clone(),
                interface: interface.clone(),
            }))
            .await?;
            println!(
                "floating address {address} on {interface}: a data node takes it within seconds"
            );
        }
        ClusterCommand::Status { json } => {
            let v = c.cluster().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let s = &v.status;
            let name = |id: u64| member_name(&s.state, id);
            let id = s
                .state
                .cluster_id
                .map(|u| u.to_string())
                .unwrap_or_default();
            println!("cluster   {id}");
            println!(
                "this node {}   leader {}   term {}",
                name(s.me),
                s.leader.map(name).unwrap_or("none".into()),
                s.term
            );
            if let Some(f) = &s.state.floating {
                let holder = match s.state.floating_holder {
                    Some(h) => format!("held by {}", name(h)),
                    None => "held by nobody".into(),
                };
                println!("floating  {} on {}, {holder}", f.address, f.interface);
            }
            if s.removed {
                println!(
                    "REMOVED   this node was removed from the cluster as dead: it serves no \
                     cluster volume (wipe its data directory to join it again)"
                );
            }
            println!("{}", removal_cli::policy_line(&s.state));
            if s.state.required_log_version > 0 {
                println!(
                    "log       entries of version {} in use: a build that reads less cannot run as a \
                     member (no downgrade below it)",
                    s.state.required_log_version
                );
            }
            println!();
            let w = column_width("NAME", s.state.nodes.values().map(|n| n.name.as_str()));
            println!(
                "{:<4} {:<w$} {:<8} {:<22} {:<14} STATE",
                "ID", "NAME", "ROLE", "ENDPOINT", "VERSION"
            );
            for n in s.state.nodes.values() {
                let state = match api::Liveness::of(s, n.id) {
                    api::Liveness::Up if s.leader == Some(n.id) => "up (leader)".to_string(),
                    api::Liveness::Up => match s.last_seen_ms.get(&n.id) {
                        Some(ms) => format!("up (seen {ms} ms ago)"),
                        None => "up".into(),
                    },
                    api::Liveness::Down => match s.last_seen_ms.get(&n.id) {
                        Some(ms) => format!("DOWN (seen {} s ago)", ms / 1000),
                        None => "DOWN".into(),
                    },
                    api::Liveness::Unknown => "unknown (no leader to ask)".into(),
                };
                let role = if n.holds_data() { "data" } else { "witness" };
                // The release, and the newest log entries it reads.
                let version = match v.versions.get(&n.id) {
                    Some(m) if m.version.is_empty() => format!("? (log {})", m.log_version),
                    Some(m) => format!("{} (log {})", m.version, m.log_version),
                    None => "?".into(),
                };
                let state = if s.state.in_maintenance(n.id) {
                    format!("{state}, in maintenance")
                } else {
                    state
                };
                println!(
                    "{:<4} {:<w$} {:<8} {:<22} {:<14} {}",
                    n.id, n.name, role, n.cluster_addr, version, state
                );
            }
            println!();
            let w = column_width("VOLUME", s.state.volumes.keys().map(String::as_str));
            let pw = column_width("PRIMARY", s.state.nodes.values().map(|n| n.name.as_str()));
            println!(
                "{:<w$} {:<10} {:<pw$} {:<6} REPLICAS",
                "VOLUME", "SIZE", "PRIMARY", "EPOCH"
            );
            for vol in s.state.volumes.values() {
                let reps: Vec<String> = vol
                    .replicas
                    .iter()
                    .map(|(id, st)| {
                        let n = name(*id);
                        match st {
                            cluster::ReplicaState::InSync => format!("{n}:in-sync"),
                            cluster::ReplicaState::OutOfSync => {
                                match detached(&v, &vol.name, *id) {
                                    Some(why) => format!("{n}:out-of-sync ({why})"),
                                    None => format!("{n}:out-of-sync"),
                                }
                            }
                            cluster::ReplicaState::Syncing => {
                                match resync_progress(&v, &vol.name, *id) {
                                    Some(p) => format!(
                                        "{n}:syncing {}%",
                                        percent(p.resync_done, p.resync_total)
                                    ),
                                    None => format!("{n}:syncing"),
                                }
                            }
                        }
                    })
                    .collect();
                println!(
                    "{:<w$} {:<10} {:<pw$} {:<6} {}",
                    vol.name,
                    format_size(vol.size_bytes),
                    name(vol.primary),
                    vol.epoch,
                    reps.join(" ")
                );
            }
            for line in removal_cli::replacement_lines(&v, None) {
                println!("{line}");
            }
            for (vol, peers) in &v.replication {
                for p in peers {
                    if !p.in_sync() {
                        println!(
                            "resync {vol} -> {}: {} ({} of {} copied, {} dirty{})",
                            name(p.node),
                            p.state,
                            format_size(p.resync_done),
                            format_size(p.resync_total),
                            format_size(p.dirty_bytes),
                            resync_pace(p)
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

async fn volume_command(c: &api::ApiClient, cmd: VolumeCommand) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Create {
            name,
            size,
            block_size,
            replicas,
            json,
        } => {
            let v = c
                .create_volume(&api::CreateVolume {
                    name,
                    size_bytes: size,
                    block_size,
                    replicas: replicas.map(usize::from),
                })
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "created volume {} ({}), exported as {} LUN {}",
                    v.name,
                    format_size(v.size_bytes),
                    v.iqn,
                    v.lun
                );
            }
            warn_overcommit(c).await;
        }
        VolumeCommand::List { json } => {
            let vols = c.list_volumes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vols)?);
            } else {
                let w = column_width("NAME", vols.iter().map(|v| v.name.as_str()));
                println!(
                    "{:<w$} {:>12} {:>12} {:>6} {:>8}  IQN",
                    "NAME", "SIZE", "ALLOCATED", "BLOCK", "SESSIONS"
                );
                for v in vols {
                    // A count that leaves out nodes that did not answer is
                    // a lower bound.
                    let sessions = if v.sessions_unknown.is_empty() {
                        v.sessions.to_string()
                    } else {
                        format!("{}+?", v.sessions)
                    };
                    println!(
                        "{:<w$} {:>12} {:>12} {:>6} {:>8}  {}",
                        v.name,
                        format_size(v.size_bytes),
                        format_size(v.allocated_bytes),
                        v.block_size,
                        sessions,
                        v.iqn
                    );
                }
            }
        }
        VolumeCommand::Show { name, json } => {
            let v = c.volume(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("name        {}", v.name);
                println!("id          {}", v.id);
                println!(
                    "size        {} ({} bytes)",
                    format_size(v.size_bytes),
                    v.size_bytes
                );
                println!("allocated   {}", format_size(v.allocated_bytes));
                if v.snapshots > 0 || v.snapshot_bytes > 0 {
                    println!(
                        "snapshots   {} ({} on disk)",
                        v.snapshots,
                        format_size(v.snapshot_bytes)
                    );
                }
                if let Some(o) = &v.clone_of {
                    println!("clone of    {o}");
                }
                println!("block size  {}", v.block_size);
                println!("target      {} LUN {}", v.iqn, v.lun);
                println!("naa         {}", v.naa);
                println!("serial      {}", v.serial);
                println!("sessions    {}", v.sessions);
                for s in &v.logged_in {
                    match &s.node {
                        Some(n) => println!("  {}  from {}  through {n}", s.initiator, s.address),
                        None => println!("  {}  from {}", s.initiator, s.address),
                    }
                }
                for u in &v.sessions_unknown {
                    println!("  not known on {} ({})", u.node, u.reason);
                }
                if v.allowed_initiators.is_empty() {
                    println!("initiators  any");
                } else {
                    println!("initiators  {}", v.allowed_initiators.join(", "));
                }
                match (&v.chap_user, &v.mutual_chap_user) {
                    (None, _) => println!("chap        off"),
                    (Some(u), None) => println!("chap        one-way, user {u}"),
                    (Some(u), Some(m)) => println!("chap        mutual, user {u}, target user {m}"),
                }
            }
        }
        VolumeCommand::Resize { name, size, json } => {
            let v = c.resize_volume(&name, size).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("volume {} is now {}", v.name, format_size(v.size_bytes));
            }
            warn_overcommit(c).await;
        }
        VolumeCommand::Access {
            name,
            allow,
            chap_user,
            chap_secret_file,
            mutual_user,
            mutual_secret_file,
            json,
        } => {
            let secret = |user: Option<String>, file: Option<PathBuf>| -> anyhow::Result<_> {
                Ok(match (user, file) {
                    (Some(user), Some(f)) => Some(node::ChapSecret {
                        user,
                        secret: read_secret(&f)?,
                    }),
                    _ => None,
                })
            };
            let access = node::AccessConfig {
                allowed_initiators: allow,
                chap: secret(chap_user, chap_secret_file)?,
                mutual_chap: secret(mutual_user, mutual_secret_file)?,
            };
            let v = c.set_access(&name, &access).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let who = if v.allowed_initiators.is_empty() {
                "every initiator".to_string()
            } else {
                v.allowed_initiators.join(", ")
            };
            let how = match (&v.chap_user, &v.mutual_chap_user) {
                (None, _) => "without authentication",
                (Some(_), None) => "with CHAP",
                (Some(_), Some(_)) => "with mutual CHAP",
            };
            println!("volume {}: {who} may log in {how}", v.name);
        }
        VolumeCommand::Status { name, json, watch } => {
            if watch {
                return events_cli::watch_volume(c, &name).await;
            }
            let view = c.cluster().await?;
            let vol = cluster_volume(c, &view, &name).await?;
            if json {
                let out = serde_json::json!({
                    "volume": vol,
                    "replication": view.replication.get(&name),
                    "copies_wanted": vol.copies_wanted(),
                    "pending_replacements": view.status.pending_replacements().into_iter()
                        .filter(|p| p.volume == name).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            std::io::stdout()
                .write_all(volume_status_text(&view, vol).as_bytes())
                .map_err(OutputError)?;
        }
        VolumeCommand::AddReplica { name, node } => {
            let placed = c.add_replica(&name, node.as_deref()).await?;
            let holder = match c.cluster().await {
                Ok(view) => member_name(&view.status.state, placed),
                Err(_) => format!("node {placed}"),
            };
            println!("volume {name}: new copy on {holder}; it is filled by a full sync (see `tandem volume status {name}`)");
        }
        VolumeCommand::RemoveReplica { name, node, force } => {
            c.remove_replica(&name, &node, force).await?;
            println!("volume {name}: the copy on {node} is dropped");
        }
        VolumeCommand::MovePrimary { name, to } => {
            let m = c.move_primary(&name, &to).await?;
            println!(
                "volume {name}: primary moved from node {} to node {} (epoch {}); I/O paused {:.1} ms, of which {:.1} ms for commands in flight",
                m.from,
                m.to,
                m.epoch,
                m.paused_us as f64 / 1000.0,
                m.drain_us as f64 / 1000.0
            );
            if !m.kept_in_sync {
                println!("volume {name}: a member runs an older version, so the change was made as a failover: the old primary's copy resyncs what it may miss");
            }
        }
        VolumeCommand::Delete { name, force, json } => {
            c.delete_volume(&name, force).await?;
            if json {
                println!("{}", serde_json::json!({ "deleted": name }));
            } else {
                println!("deleted volume {name}");
            }
        }
        VolumeCommand::Snapshots(cmd) => {
            snapshot_cli::volume_snapshot_command(c, cmd).await?;
        }
    }
    Ok(())
}

/// The cluster's record of volume `name`, or why there is none.
pub(crate) async fn cluster_volume<'a>(
    c: &api::ApiClient,
    view: &'a api::ClusterView,
    name: &str,
) -> anyhow::Result<&'a cluster::VolumeRecord> {
    if let Some(vol) = view.status.state.volumes.get(name) {
        return Ok(vol);
    }
    if c.volume(name).await.is_ok() {
        anyhow::bail!("volume {name} is local to this node: it has no replicas");
    }
    anyhow::bail!("no volume named {name}");
}

/// `tandem volume status NAME` as text.
pub(crate) fn volume_status_text(view: &api::ClusterView, vol: &cluster::VolumeRecord) -> String {
    use std::fmt::Write;
    let state = &view.status.state;
    let node_name = |id: &u64| {
        state
            .nodes
            .get(id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| format!("node {id}"))
    };
    let mut out = String::new();
    let _ = writeln!(out, "volume    {}", vol.name);
    let _ = writeln!(out, "size      {}", format_size(vol.size_bytes));
    let _ = writeln!(
        out,
        "primary   {} (node {})",
        node_name(&vol.primary),
        vol.primary
    );
    let _ = writeln!(out, "epoch     {}", vol.epoch);
    let _ = writeln!(
        out,
        "copies    {} of {}",
        vol.replicas.len().min(vol.copies_wanted()),
        vol.copies_wanted()
    );
    for line in removal_cli::replacement_lines(view, Some(&vol.name)) {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<4} {:<16} {:<12} PROGRESS", "ID", "NODE", "STATE");
    for (n, st) in &vol.replicas {
        let (state_text, progress) = match st {
            cluster::ReplicaState::InSync => ("in-sync", String::new()),
            cluster::ReplicaState::OutOfSync => (
                "out-of-sync",
                detached(view, &vol.name, *n)
                    .map(str::to_string)
                    .unwrap_or_default(),
            ),
            cluster::ReplicaState::Syncing => (
                "syncing",
                resync_progress(view, &vol.name, *n)
                    .map(|p| {
                        format!(
                            "{}% ({} of {}{})",
                            percent(p.resync_done, p.resync_total),
                            format_size(p.resync_done),
                            format_size(p.resync_total),
                            resync_pace(p)
                        )
                    })
                    .unwrap_or_default(),
            ),
        };
        let _ = writeln!(
            out,
            "{:<4} {:<16} {:<12} {}",
            n,
            node_name(n),
            state_text,
            progress
        );
    }
    out
}

/// The resync of `volume`'s copy on `node` (bytes copied, bytes to copy,
/// its pace), as the volume's primary reports it; `None` unless the node
/// asked is that primary (the cluster state records only that a resync
/// runs, not how far it is).
pub(crate) fn resync_progress<'a>(
    view: &'a api::ClusterView,
    volume: &str,
    node: u64,
) -> Option<&'a api::PeerStatus> {
    view.replication
        .get(volume)?
        .iter()
        .find(|p| p.node == node)
}

/// Why `volume`'s copy on `node` is detached ("disk failed: ...", "too
/// slow: ..."), as the volume's primary reports it; `None` unless the node
/// asked is that primary and the copy is detached.
pub(crate) fn detached<'a>(view: &'a api::ClusterView, volume: &str, node: u64) -> Option<&'a str> {
    resync_progress(view, volume, node)?.detached.as_deref()
}

/// How fast a running resync copies and whether it yields to client
/// writes, to follow its progress (", 1.20 GiB/s", ", 60 MiB/s, yielding
/// to client writes (limit 64 MiB/s)"); empty when it shows neither.
fn resync_pace(p: &api::PeerStatus) -> String {
    let mut s = String::new();
    if p.resync_rate > 0 {
        s += &format!(", {}/s", format_size(p.resync_rate));
    }
    if p.resync_yielding {
        s += ", yielding to client writes";
        if let Some(limit) = p.resync_limit {
            s += &format!(" (limit {}/s)", format_size(limit));
        }
    }
    s
}

/// Width of a text column headed `head` that holds `cells`: the widest.
fn column_width<'a>(head: &str, cells: impl Iterator<Item = &'a str>) -> usize {
    cells
        .map(|c| c.chars().count())
        .fold(head.len(), usize::max)
}

/// `done` of `total` in percent (100 when there is nothing to do).
pub(crate) fn percent(done: u64, total: u64) -> u64 {
    (done * 100).checked_div(total).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_runs_on_half_the_cpus_and_at_least_one_thread() {
        assert_eq!(default_threads(1), 1);
        assert_eq!(default_threads(2), 1);
        assert_eq!(default_threads(3), 1);
        assert_eq!(default_threads(4), 2);
        assert_eq!(default_threads(64), 32);
    }

    #[test]
    fn threads_are_counted_from_one() {
        let cli = Cli::try_parse_from(["tandem", "--threads", "3", "volume", "list"]).unwrap();
        assert_eq!(cli.threads, Some(3));
        assert!(Cli::try_parse_from(["tandem", "--threads", "0", "volume", "list"]).is_err());
        assert!(Cli::try_parse_from(["tandem", "--threads", "many", "volume", "list"]).is_err());
        let cli = Cli::try_parse_from(["tandem", "volume", "list"]).unwrap();
        assert_eq!(cli.threads, None);
    }
}
