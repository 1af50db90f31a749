//! Raft log, vote and state machine in one redb database (`raft.redb`).
//!
//! Every change commits a redb write transaction, which is durable when it
//! returns (redb's default immediate durability): a vote or log entry
//! reported saved survives a crash, as Raft requires. The state machine is
//! small (members and volumes), so it is saved whole after each applied
//! batch and doubles as the snapshot.

use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogState, RaftLogReader, RaftSnapshotBuilder, RaftStorage, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::{ClusterState, Outcome};
use crate::TypeConfig;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

type Error = StorageError<u64>;

/// The applied state machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    /// Last log entry applied.
    pub last_applied: Option<LogId<u64>>,
    /// Membership as of the last applied entry.
    pub membership: StoredMembership<u64, BasicNode>,
    /// The cluster state.
    pub state: ClusterState,
}

#[derive(Serialize, Deserialize)]
struct SavedSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// Raft storage of one node.
#[derive(Clone)]
pub struct RaftStore {
    db: Arc<Database>,
    applied: Arc<RwLock<Applied>>,
    publish: Arc<watch::Sender<Arc<ClusterState>>>,
}

fn io(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

impl RaftStore {
    /// How many handles of this store (clones of it) are alive: the
    /// database closes when the last goes.
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.db)
    }

    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<RaftStore, redb::Error> {
        let db = Database::create(dir.join("raft.redb"))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(LOG)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        let store = RaftStore {
            db: Arc::new(db),
            applied: Arc::default(),
            publish: Arc::new(watch::channel(Arc::new(ClusterState::default())).0),
        };
        if let Some(bytes) = store
            .get_meta("applied")
            .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?
        {
            let a: Applied = serde_json::from_slice(&bytes)
                .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
            store.publish.send_replace(Arc::new(a.state.clone()));
            *store.applied.write().unwrap() = a;
        }
        Ok(store)
    }

    /// Follows the applied cluster state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.publish.subscribe()
    }

    /// Index of the last log entry applied to the state.
    pub fn applied_index(&self) -> u64 {
        self.applied
            .read()
            .unwrap()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// The applied cluster state now.
    pub fn state(&self) -> Arc<ClusterState> {
        self.publish.borrow().clone()
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let read = |e: AnyError| -> Error { StorageIOError::<u64>::read(e).into() };
        let txn = self.db.begin_read().map_err(|e| read(io(e)))?;
        let t = txn.open_table(META).map_err(|e| read(io(e)))?;
        Ok(t.get(key)
            .map_err(|e| read(io(e)))?
            .map(|v| v.value().to_vec()))
    }

    /// Runs a write transaction off the runtime's threads. Its commit syncs
    /// the disk, which can take long while volumes' data is being written
    /// back, and a node runs few runtime threads (often one): its I/O and
    /// heartbeats must not wait for the sync meanwhile. Raft awaits each
    /// call of its storage before the next, so the order stays the same.
    async fn write_txn<F>(&self, f: F) -> Result<(), Error>
    where
        F: FnOnce(&Database) -> Result<(), Error> + Send + 'static,
    {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(r) => r,
            Err(e) => Err(StorageIOError::<u64>::write(io(e)).into()),
        }
    }

    async fn put_meta(&self, key: &'static str, value: Vec<u8>) -> Result<(), Error> {
        self.write_txn(move |db| {
            let write = |e: AnyError| -> Error { StorageIOError::<u64>::write(e).into() };
            let txn = db.begin_write().map_err(|e| write(io(e)))?;
            {
                let mut t = txn.open_table(META).map_err(|e| write(io(e)))?;
                t.insert(key, value.as_slice()).map_err(|e| write(io(e)))?;
            }
            // Durable on return: redb commits with immediate durability.
            txn.commit().map_err(|e| write(io(e)))
        })
        .await
    }

    async fn save_applied(&self) -> Result<(), Error> {
        let bytes = serde_json::to_vec(&*self.applied.read().unwrap())
            .map_err(|e| StorageIOError::<u64>::write_state_machine(io(e)))?;
        self.put_meta("applied", bytes).await
    }

    fn last_log_id(&self) -> Result<Option<LogId<u64>>, Error> {
        let read = |e: AnyError| -> Error { StorageIOError::<u64>::read_logs(e).into() };
        let txn = self.db.begin_read().map_err(|e| read(io(e)))?;
        let t = txn.open_table(LOG).map_err(|e| read(io(e)))?;
        let last = t.last().map_err(|e| read(io(e)))?;
        match last {
            None => Ok(None),
            Some((_, v)) => {
                let e: Entry<TypeConfig> =
                    serde_json::from_slice(v.value()).map_err(|e| read(io(e)))?;
                Ok(Some(e.log_id))
            }
        }
    }

    async fn remove_logs(
        &self,
        range: impl RangeBounds<u64> + Send + 'static,
    ) -> Result<(), Error> {
        self.write_txn(move |db| {
            let write = |e: AnyError| -> Error { StorageIOError::<u64>::write_logs(e).into() };
            let txn = db.begin_write().map_err(|e| write(io(e)))?;
            {
                let mut t = txn.open_table(LOG).map_err(|e| write(io(e)))?;
                t.retain_in(range, |_, _| false).map_err(|e| write(io(e)))?;
            }
            txn.commit().map_err(|e| write(io(e)))
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for RaftStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Error> {
        let read = |e: AnyError| -> Error { StorageIOError::<u64>::read_logs(e).into() };
        let txn = self.db.begin_read().map_err(|e| read(io(e)))?;
        let t = txn.open_table(LOG).map_err(|e| read(io(e)))?;
        let mut out = Vec::new();
        for item in t.range(range).map_err(|e| read(io(e)))? {
            let (_, v) = item.map_err(|e| read(io(e)))?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| read(io(e)))?);
        }
        Ok(out)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for RaftStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Error> {
        let applied = self.applied.read().unwrap().clone();
        let data = serde_json::to_vec(&applied)
            .map_err(|e| StorageIOError::<u64>::write_snapshot(None, io(e)))?;
        let id = match &applied.last_applied {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".into(),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id: id,
        };
        let saved = serde_json::to_vec(&SavedSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })
        .map_err(|e| StorageIOError::<u64>::write_snapshot(None, io(e)))?;
        self.put_meta("snapshot", saved).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStorage<TypeConfig> for RaftStore {
    type LogReader = RaftStore;
    type SnapshotBuilder = RaftStore;

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), Error> {
        let b = serde_json::to_vec(vote).map_err(|e| StorageIOError::<u64>::write_vote(io(e)))?;
        self.put_meta("vote", b).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, Error> {
        match self.get_meta("vote")? {
            None => Ok(None),
            Some(b) => Ok(Some(
                serde_json::from_slice(&b).map_err(|e| StorageIOError::<u64>::read_vote(io(e)))?,
            )),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), Error> {
        let b = serde_json::to_vec(&committed).map_err(|e| StorageIOError::<u64>::write(io(e)))?;
        self.put_meta("committed", b).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, Error> {
        match self.get_meta("committed")? {
            None => Ok(None),
            Some(b) => {
                serde_json::from_slice(&b).map_err(|e| StorageIOError::<u64>::read(io(e)).into())
            }
        }
    }

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, Error> {
        let purged: Option<LogId<u64>> = match self.get_meta("purged")? {
            None => None,
            Some(b) => {
                serde_json::from_slice(&b).map_err(|e| StorageIOError::<u64>::read_logs(io(e)))?
            }
        };
        let last = self.last_log_id()?.or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn append_to_log<I>(&mut self, entries: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
    {
        let write = |e: AnyError| -> Error { StorageIOError::<u64>::write_logs(e).into() };
        let encoded = entries
            .into_iter()
            .map(|e| {
                Ok((
                    e.log_id.index,
                    serde_json::to_vec(&e).map_err(|e| write(io(e)))?,
                ))
            })
            .collect::<Result<Vec<(u64, Vec<u8>)>, Error>>()?;
        self.write_txn(move |db| {
            let txn = db.begin_write().map_err(|e| write(io(e)))?;
            {
                let mut t = txn.open_table(LOG).map_err(|e| write(io(e)))?;
                for (index, b) in &encoded {
                    t.insert(*index, b.as_slice()).map_err(|e| write(io(e)))?;
                }
            }
            // The entries are durable before Raft counts them as appended.
            txn.commit().map_err(|e| write(io(e)))
        })
        .await
    }

    async fn delete_conflict_logs_since(&mut self, log_id: LogId<u64>) -> Result<(), Error> {
        self.remove_logs(log_id.index..).await
    }

    async fn purge_logs_upto(&mut self, log_id: LogId<u64>) -> Result<(), Error> {
        let b =
            serde_json::to_vec(&Some(log_id)).map_err(|e| StorageIOError::<u64>::write(io(e)))?;
        self.put_meta("purged", b).await?;
        self.remove_logs(..=log_id.index).await
    }

    async fn last_applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), Error> {
        let a = self.applied.read().unwrap();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply_to_state_machine(
        &mut self,
        entries: &[Entry<TypeConfig>],
    ) -> Result<Vec<Outcome>, Error> {
        let mut out = Vec::with_capacity(entries.len());
        {
            let mut a = self.applied.write().unwrap();
            for e in entries {
                a.last_applied = Some(e.log_id);
                out.push(match &e.payload {
                    EntryPayload::Blank => Outcome::Done,
                    EntryPayload::Normal(cmd) => {
                        let r = a.state.apply_entry(cmd);
                        if let Outcome::Refused(why) = &r {
                            tracing::debug!(?cmd, "command refused: {why}");
                        }
                        r
                    }
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(e.log_id), m.clone());
                        Outcome::Done
                    }
                });
            }
        }
        self.save_applied().await?;
        let state = self.applied.read().unwrap().state.clone();
        self.publish.send_replace(Arc::new(state));
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Error> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Error> {
        let data = snapshot.into_inner();
        let a: Applied = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::<u64>::read_snapshot(Some(meta.signature()), io(e)))?;
        let state = a.state.clone();
        *self.applied.write().unwrap() = a;
        self.save_applied().await?;
        let saved = serde_json::to_vec(&SavedSnapshot {
            meta: meta.clone(),
            data,
        })
        .map_err(|e| StorageIOError::<u64>::write_snapshot(Some(meta.signature()), io(e)))?;
        self.put_meta("snapshot", saved).await?;
        self.publish.send_replace(Arc::new(state));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        match self.get_meta("snapshot")? {
            None => Ok(None),
            Some(b) => {
                let s: SavedSnapshot = serde_json::from_slice(&b)
                    .map_err(|e| StorageIOError::<u64>::read_snapshot(None, io(e)))?;
                Ok(Some(Snapshot {
                    meta: s.meta,
                    snapshot: Box::new(Cursor::new(s.data)),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, NodeInfo, Role};
    use openraft::CommittedLeaderId;
    use uuid::Uuid;

    fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn commits_run_off_the_runtime_thread_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RaftStore::open(dir.path()).unwrap();
        let runtime = std::thread::current().id();
        let (tx, rx) = std::sync::mpsc::channel();
        store
            .write_txn(move |_| {
                tx.send(std::thread::current().id()).unwrap();
                Ok(())
            })
            .await
            .unwrap();
        assert_ne!(rx.recv().unwrap(), runtime, "the sync waits elsewhere");
        store.append_to_log(entries()).await.unwrap();
        let n = entries().len() as u64;
        assert_eq!(store.last_log_id().unwrap().map(|l| l.index), Some(n));
        store
            .delete_conflict_logs_since(entries()[1].log_id)
            .await
            .unwrap();
        assert_eq!(store.last_log_id().unwrap().map(|l| l.index), Some(1));
        store.put_meta("vote", b"first".to_vec()).await.unwrap();
        store.put_meta("vote", b"second".to_vec()).await.unwrap();
        assert_eq!(store.get_meta("vote").unwrap(), Some(b"second".to_vec()));
    }

    /// The log entries of [`commands`], numbered from 1.
    fn entries() -> Vec<Entry<TypeConfig>> {
        commands()
            .into_iter()
            .enumerate()
            .map(|(i, c)| entry(i as u64 + 1, c))
            .collect()
    }

    fn commands() -> Vec<Command> {
        vec![
            Command::Init {
                cluster_id: Uuid::from_u128(7),
            },
            Command::AddNode {
                info: NodeInfo {
                    id: 1,
                    name: "a".into(),
                    role: Some(Role::Data),
                    ..NodeInfo::default()
                },
            },
            Command::CreateVolume {
                id: Uuid::from_u128(8),
                name: "v".into(),
                size_bytes: 1 << 20,
                block_size: 512,
                replicas: 1,
            },
            // Refused (no such volume): answered, state unchanged.
            Command::DeleteVolume { name: "w".into() },
        ]
    }

    #[tokio::test]
    async fn applied_state_survives_reopen_and_travels_as_a_snapshot() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = RaftStore::open(d1.path()).unwrap();
        let entries = entries();
        a.append_to_log(entries.clone()).await.unwrap();
        let out = a.apply_to_state_machine(&entries).await.unwrap();
        assert_eq!(out[..3], [Outcome::Done, Outcome::Done, Outcome::Done]);
        assert!(matches!(out[3], Outcome::Refused(_)));
        let state = a.state();
        assert_eq!(state.volumes["v"].primary, 1);
        let mut watch = a.subscribe();
        assert_eq!(*watch.borrow_and_update(), state);

        let snap = a
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(4));
        a.purge_logs_upto(entries[2].log_id).await.unwrap();
        let log = a.get_log_state().await.unwrap();
        assert_eq!(log.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(log.last_log_id.map(|l| l.index), Some(4));
        drop(a);

        // Reopened from disk: the state machine, the log and the snapshot.
        let mut a = RaftStore::open(d1.path()).unwrap();
        assert_eq!(a.state(), state);
        assert_eq!(
            a.last_applied_state().await.unwrap().0.map(|l| l.index),
            Some(4)
        );
        let left = a
            .get_log_reader()
            .await
            .try_get_log_entries(0..10)
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        let snap = a.get_current_snapshot().await.unwrap().unwrap();

        // Installed on an empty member, the snapshot reproduces the state.
        let mut b = RaftStore::open(d2.path()).unwrap();
        let watch = b.subscribe();
        b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        assert_eq!(b.state(), state);
        assert!(watch.has_changed().unwrap());
        drop(b);
        let b = RaftStore::open(d2.path()).unwrap();
        assert_eq!(b.state(), state);
    }

    #[tokio::test]
    async fn vote_and_log_conflicts_are_durable() {
        let d = tempfile::tempdir().unwrap();
        let mut s = RaftStore::open(d.path()).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), None);
        let vote = Vote::new(3, 2);
        s.save_vote(&vote).await.unwrap();
        let entries = entries();
        s.append_to_log(entries.clone()).await.unwrap();
        s.delete_conflict_logs_since(entries[1].log_id)
            .await
            .unwrap();
        drop(s);
        let mut s = RaftStore::open(d.path()).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(vote));
        let log = s.get_log_state().await.unwrap();
        assert_eq!(log.last_log_id.map(|l| l.index), Some(1));
        assert_eq!(
            s.state(),
            Arc::new(ClusterState::default()),
            "nothing applied"
        );
    }
}
