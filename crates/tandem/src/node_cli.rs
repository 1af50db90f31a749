//! `tandem node maintenance enter|exit` (planned work on a member, built
//! on `volume move-primary`) and `tandem node upgrade-check` (whether a
//! member can be stopped now).

use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum NodeCommand {
    /// Planned work on a member.
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// Say whether a member can be stopped now without loss of
    /// availability (the others keep a quorum, every volume it leads has
    /// an in-sync copy on another running node), and why; exits with
    /// status 1 when it cannot.
    UpgradeCheck {
        /// Member (name or id) [default: the node asked].
        node: Option<String>,
        /// Answer in JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum MaintenanceCommand {
    /// Move every volume the node leads to an in-sync copy on another
    /// running node (a planned switchover each: no I/O error), then record
    /// it in maintenance: it leads nothing, its port group is standby, and
    /// its copies miss writes on purpose (the primaries track which), so
    /// that it can be stopped without a failover. Refused where a volume
    /// has no such copy, or the others would have no quorum without it.
    /// The witness may be put in maintenance too.
    Enter {
        /// Member (name or id) [default: the node asked].
        node: Option<String>,
        /// Enter anyway: volumes that cannot move stay, and stop (or fail
        /// over, where they can) when the node does.
        #[arg(long)]
        force: bool,
    },
    /// Take the node out of maintenance: its copies get the regions they
    /// missed; with --rebalance, wait for them (up to a minute) and move
    /// primaries back to it.
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
    let cmd = match cmd {
        NodeCommand::Maintenance(cmd) => cmd,
        NodeCommand::UpgradeCheck { node, json } => return upgrade_check(c, node, json).await,
    };
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
    for note in &m.notes {
        println!("{note}");
    }
    match (enter, m.recorded) {
        (true, true) => println!("node {} is in maintenance", m.node),
        (false, _) => println!(
            "node {} is out of maintenance; tandem cluster status shows its copies catch up",
            m.node
        ),
        _ => {}
    }
    if enter && m.left.is_empty() {
        println!("node {} leads no volume now; it can be stopped", m.node);
    } else if enter {
        println!("node {} still leads {} volume(s)", m.node, m.left.len());
    }
    Ok(())
}

async fn upgrade_check(c: &api::ApiClient, node: Option<String>, json: bool) -> anyhow::Result<()> {
    let u = c.upgrade_check(node).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&u)?);
    } else {
        let maintained = if u.in_maintenance {
            " (in maintenance)"
        } else {
            ""
        };
        for note in &u.notes {
            println!("{note}");
        }
        if u.can_stop {
            println!(
                "node {} ({}){maintained} can be stopped now without loss of availability",
                u.node, u.name
            );
        }
    }
    if !u.can_stop {
        anyhow::bail!(
            "node {} ({}) cannot be stopped now without loss of availability: {}",
            u.node,
            u.name,
            u.blockers.join("; ")
        );
    }
    Ok(())
}
