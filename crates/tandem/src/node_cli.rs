//! `tandem node maintenance enter|exit`: planned work on a data node,
//! built on `volume move-primary`.

use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum NodeCommand {
    /// Planned work on a data node.
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
}

#[derive(Subcommand)]
pub(crate) enum MaintenanceCommand {
    /// Move every volume the node leads to an in-sync copy on another
    /// running node (a planned switchover each: no I/O error), so that it
    /// can be stopped without a failover. Refused where a volume has no
    /// such copy, or the others would have no quorum without it.
    Enter {
        /// Member (name or id) [default: the node asked].
        node: Option<String>,
        /// Enter anyway: volumes that cannot move stay, and stop (or fail
        /// over, where they can) when the node does.
        #[arg(long)]
        force: bool,
    },
    /// Show how far the node's copies have caught up; with --rebalance,
    /// move primaries back to it.
    Exit {
        /// Member (name or id) [default: the node asked].
        node: Option<String>,
        /// Move volumes whose copy there is in sync back to it, while
        /// their primary leads two volumes more than it.
        #[arg(long)]
        rebalance: bool,
    },
}

pub(crate) async fn node_command(c: &api::ApiClient, cmd: NodeCommand) -> anyhow::Result<()> {
    let NodeCommand::Maintenance(cmd) = cmd;
    let (enter, req) = match cmd {
        MaintenanceCommand::Enter { node, force } => (
            true,
            api::MaintenanceRequest {
                node,
                force,
                rebalance: false,
            },
        ),
        MaintenanceCommand::Exit { node, rebalance } => (
            false,
            api::MaintenanceRequest {
                node,
                force: false,
                rebalance,
            },
        ),
    };
    let m = c.maintenance(enter, &req).await?;
    for p in &m.moved {
        println!(
            "volume {}: primary moved from node {} to node {} (I/O paused {:.1} ms)",
            p.volume,
            p.from,
            p.to,
            p.paused_us as f64 / 1000.0
        );
    }
    for (volume, why) in &m.left {
        println!("volume {volume}: not moved: {why}");
    }
    for (volume, state) in &m.copies {
        println!("volume {volume}: the copy on node {} is {state}", m.node);
    }
    if enter && m.left.is_empty() {
        println!("node {} leads no volume now; it can be stopped", m.node);
    } else if enter {
        println!("node {} still leads {} volume(s)", m.node, m.left.len());
    }
    Ok(())
}
