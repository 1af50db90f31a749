//! The `tandem` binary: `tandem serve` runs a node; the other commands manage
//! a running node through its management API.

mod config;
mod serve;
mod size;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{FileConfig, FlagConfig, ServeConfig};
use crate::size::{format_size, parse_size};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: serve every volume of the data directory over iSCSI.
    Serve {
        /// TOML file with data_dir, iscsi_listen, api_listen, iqn_prefix.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory [default: ./tandem-data].
        #[arg(long, env = "TANDEM_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// iSCSI portal address [default: 127.0.0.1:3260].
        #[arg(long)]
        iscsi_listen: Option<SocketAddr>,
        /// Management API address [default: 127.0.0.1:7260].
        #[arg(long)]
        api_listen: Option<SocketAddr>,
        /// Prefix of exported IQNs [default: iqn.2026-11.io.tandem].
        #[arg(long)]
        iqn_prefix: Option<String>,
    },
    /// Manage volumes of a running node.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Show the node's identity and totals.
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
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Logical block size: 512 or 4096.
        #[arg(long, default_value_t = 512)]
        block_size: u32,
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
        #[arg(long, value_parser = parse_size)]
        size: u64,
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
    },
    /// Delete a volume and its data.
    Delete {
        name: String,
        /// Log out initiators that are still connected.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem: {e:#}");
            ExitCode::FAILURE
        }
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
            iqn_prefix,
        } => {
            let file = match config {
                Some(p) => FileConfig::load(&p)?,
                None => FileConfig::default(),
            };
            let flags = FlagConfig {
                data_dir,
                iscsi_listen,
                api_listen,
                iqn_prefix,
            };
            serve::run(ServeConfig::merge(file, flags)?).await
        }
        Command::Status { json } => {
            let s = client()?.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("installation  {}", s.installation_id);
                println!("version       {}", s.version);
                println!("data dir      {}", s.data_dir);
                println!("volumes       {}", s.volumes);
                println!("provisioned   {}", format_size(s.provisioned_bytes));
                println!("allocated     {}", format_size(s.allocated_bytes));
            }
            Ok(())
        }
        Command::Volume(cmd) => volume_command(&client()?, cmd).await,
    }
}

async fn volume_command(c: &api::ApiClient, cmd: VolumeCommand) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Create {
            name,
            size,
            block_size,
        } => {
            let v = c
                .create_volume(&api::CreateVolume {
                    name,
                    size_bytes: size,
                    block_size,
                })
                .await?;
            println!(
                "created volume {} ({}), exported as {} LUN {}",
                v.name,
                format_size(v.size_bytes),
                v.iqn,
                v.lun
            );
        }
        VolumeCommand::List { json } => {
            let vols = c.list_volumes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vols)?);
            } else {
                println!(
                    "{:<24} {:>12} {:>12} {:>6} {:>8}  IQN",
                    "NAME", "SIZE", "ALLOCATED", "BLOCK", "SESSIONS"
                );
                for v in vols {
                    println!(
                        "{:<24} {:>12} {:>12} {:>6} {:>8}  {}",
                        v.name,
                        format_size(v.size_bytes),
                        format_size(v.allocated_bytes),
                        v.block_size,
                        v.sessions,
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
                println!("block size  {}", v.block_size);
                println!("target      {} LUN {}", v.iqn, v.lun);
                println!("naa         {}", v.naa);
                println!("serial      {}", v.serial);
                println!("sessions    {}", v.sessions);
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
        VolumeCommand::Resize { name, size } => {
            let v = c.resize_volume(&name, size).await?;
            println!("volume {} is now {}", v.name, format_size(v.size_bytes));
        }
        VolumeCommand::Access {
            name,
            allow,
            chap_user,
            chap_secret_file,
            mutual_user,
            mutual_secret_file,
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
        VolumeCommand::Delete { name, force } => {
            c.delete_volume(&name, force).await?;
            println!("deleted volume {name}");
        }
    }
    Ok(())
}
