//! `tandem snapshot ...`, `tandem volume clone` and `tandem volume rollback`.

use clap::Subcommand;

use crate::size::format_size;

#[derive(Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Take a snapshot of one volume, or of several at one point of their
    /// write orders (a consistency group): a write acknowledged before it
    /// is in every one, a write acknowledged after it in none.
    Create {
        /// The volumes (several: one consistency group).
        #[arg(required = true)]
        volumes: Vec<String>,
        /// The snapshot's name on each volume [default: snap-<UTC time>].
        #[arg(long)]
        name: Option<String>,
        /// Name of the consistency group [default: the snapshot's name].
        #[arg(long)]
        group: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List snapshots (of one volume, or of all) with the space they take.
    List {
        volume: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one snapshot.
    Show {
        volume: String,
        snapshot: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot. One that clones were made from is kept, hidden,
    /// until the last of them is deleted.
    Delete {
        volume: String,
        snapshot: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The volume commands about snapshots, flattened into `tandem volume`.
#[derive(Subcommand)]
pub(crate) enum VolumeSnapshotCommand {
    /// Make a new writable volume from a snapshot, at once, sharing the
    /// blocks it does not write (a new SCSI identity: hosts see a new
    /// device). Without --snapshot, from the volume as it is now.
    Clone {
        /// The source volume.
        source: String,
        /// The new volume's name.
        new: String,
        /// The snapshot of SOURCE to clone [default: take one now, kept as
        /// long as the clone lives].
        #[arg(long)]
        snapshot: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Give a volume back the content of one of its snapshots. Refused
    /// while initiators are logged in, unless --force.
    Rollback {
        name: String,
        /// The snapshot of NAME whose content it gets.
        snapshot: String,
        /// Log out initiators that are logged in first.
        #[arg(long)]
        force: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn print_table(snaps: &[node::SnapshotView]) {
    let width = snaps
        .iter()
        .map(|s| s.name.len())
        .chain(snaps.iter().map(|s| s.volume.len()))
        .max()
        .unwrap_or(0)
        .max(8);
    println!(
        "{:<width$} {:<width$} {:>10} {:>10} {:>10}  CREATED (UTC)        NOTES",
        "VOLUME", "SNAPSHOT", "SIZE", "KEPT", "EXCLUSIVE"
    );
    for s in snaps {
        let mut notes = Vec::new();
        if s.hidden {
            notes.push("deleted, kept for its clones".to_string());
        }
        if let Some(g) = &s.group {
            notes.push(format!("group {g}"));
        }
        if !s.clones.is_empty() {
            notes.push(format!("clones: {}", s.clones.join(", ")));
        }
        println!(
            "{:<width$} {:<width$} {:>10} {:>10} {:>10}  {:<20} {}",
            s.volume,
            s.name,
            format_size(s.size_bytes),
            format_size(s.kept_bytes),
            format_size(s.exclusive_bytes),
            utc(s.created),
            notes.join("; ")
        );
    }
}

/// `YYYY-MM-DD HH:MM:SS` of seconds since the Unix epoch.
fn utc(secs: u64) -> String {
    let [y, m, d, h, mi, s] = node::utc_time(secs);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

pub(crate) async fn snapshot_command(
    c: &api::ApiClient,
    cmd: SnapshotCommand,
) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Create {
            volumes,
            name,
            group,
            json,
        } => {
            let taken = c
                .create_snapshots(&api::CreateSnapshots {
                    volumes,
                    name,
                    group,
                })
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&taken)?);
            } else {
                for s in &taken {
                    match &s.group {
                        Some(g) => println!(
                            "snapshot {} of volume {} taken (group {g})",
                            s.name, s.volume
                        ),
                        None => println!("snapshot {} of volume {} taken", s.name, s.volume),
                    }
                }
            }
        }
        SnapshotCommand::List { volume, json } => {
            let snaps = c.list_snapshots(volume.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snaps)?);
            } else {
                print_table(&snaps);
            }
        }
        SnapshotCommand::Show {
            volume,
            snapshot,
            json,
        } => {
            let s = c.snapshot(&volume, &snapshot).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("volume      {}", s.volume);
                println!("snapshot    {}", s.name);
                println!("id          {}", s.id);
                println!("created     {} UTC", utc(s.created));
                println!("size        {}", format_size(s.size_bytes));
                println!(
                    "kept        {} (data it holds itself)",
                    format_size(s.kept_bytes)
                );
                println!(
                    "exclusive   {} (what deleting it frees)",
                    format_size(s.exclusive_bytes)
                );
                if let Some(g) = &s.group {
                    println!("group       {g}");
                }
                if s.clones.is_empty() {
                    println!("clones      none");
                } else {
                    println!("clones      {}", s.clones.join(", "));
                }
            }
        }
        SnapshotCommand::Delete {
            volume,
            snapshot,
            json,
        } => {
            let d = c.delete_snapshot(&volume, &snapshot).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else if d.kept_for_clones.is_empty() {
                println!("snapshot {snapshot} of volume {volume} deleted");
            } else {
                println!(
                    "snapshot {snapshot} of volume {volume} deleted; its data is kept until its clones are deleted: {}",
                    d.kept_for_clones.join(", ")
                );
            }
        }
    }
    Ok(())
}

pub(crate) async fn volume_snapshot_command(
    c: &api::ApiClient,
    cmd: VolumeSnapshotCommand,
) -> anyhow::Result<()> {
    match cmd {
        VolumeSnapshotCommand::Clone {
            source,
            new,
            snapshot,
            json,
        } => {
            let v = c
                .clone_volume(&source, &api::CloneVolume { new, snapshot })
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "created volume {} ({}) as a clone of {source}, exported as {} LUN {}",
                v.name,
                format_size(v.size_bytes),
                v.iqn,
                v.lun
            );
        }
        VolumeSnapshotCommand::Rollback {
            name,
            snapshot,
            force,
            json,
        } => {
            c.rollback(
                &name,
                &api::Rollback {
                    snapshot: snapshot.clone(),
                    force,
                },
            )
            .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "rolled_back": name, "snapshot": snapshot })
                );
            } else {
                println!("volume {name} rolled back to snapshot {snapshot}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_796_000_059), "2026-11-30 00:54:19");
    }
}
