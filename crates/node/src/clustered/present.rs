//! Presenting the cluster's volumes here: each one exported under its
//! cluster-wide identity, over this node's copy or forwarding to the
//! primary, in the role the cluster state gives this node.

use std::sync::Arc;
use std::time::Duration;

use cluster::{ClusterState, Command, NodeId, ReplicaState};
use replica::{ClusterVolume, Forwarder, LocalCopy, PeerSpec, Primary, PrimaryConfig, Route};
use scsi::{AccessState, PortGroup};

use super::access::{access_of, reseal_soon};
use super::unit::{reservations_of, FromOthers, OnEveryCopy, ToPrimary};
use super::{Clustered, COPY_BASE, FORWARD_TIMEOUT, RECORD_TIMEOUT, REPL_TIMEOUT, ROLE_SETTLE};
use crate::identity::{iqn_for, lun_identity};
use crate::registry::{Presented, Registry};
use crate::{Node, NodeError};

impl Node {
    /// Makes this node match the cluster state: every data node presents
    /// every volume, with a copy where the state places one.
    pub(crate) async fn reconcile(&self, state: &ClusterState) {
        let Some(c) = self.clustered() else { return };
        let Some(cluster_id) = state.cluster_id else {
            return;
        };
        let me = c.cluster.id();
        let mut vols = self.exported.lock().await;
        if c.cluster.removed() {
            // Removed as dead while it was away: whatever its own state
            // says, this node serves no cluster volume (its data stays).
            let held: Vec<String> = vols.presented().map(|(e, _)| e.name.clone()).collect();
            for name in held {
                self.withdraw(&c, &mut vols, &name);
            }
            return;
        }
        let presents = state.nodes.get(&me).is_some_and(|n| n.holds_data());
        if presents {
            for v in state.volumes.values() {
                if let Err(e) = self.hold(&c, &mut vols, cluster_id, v, state).await {
                    tracing::warn!(volume = %v.name, "cannot take up the cluster's volume here yet: {e}");
                }
            }
        }
        let gone: Vec<String> = vols
            .presented()
            .filter(|(e, _)| !presents || state.volumes.get(&e.name).is_none_or(|v| v.id != e.id))
            .map(|(e, _)| e.name.clone())
            .collect();
        for name in gone {
            self.release(&c, &mut vols, &name);
        }
    }

    /// Stops presenting `name` and serving its copy to a primary, and
    /// keeps the local copy's files.
    fn withdraw(&self, c: &Clustered, vols: &mut Registry, name: &str) {
        let Some(e) = vols.remove(name) else {
            return;
        };
        self.targets.remove(&e.iqn);
        if let Some(p) = e.cluster {
            p.volume.set_route(Route::Waiting);
            c.server.remove(name);
        }
        tracing::warn!(volume = %name, "withdrawn: this node was removed from the cluster");
    }

    /// Stops presenting `name` and removes the local copy, if any.
    pub(super) fn release(&self, c: &Clustered, vols: &mut Registry, name: &str) {
        let Some(e) = vols.remove(name) else {
            return;
        };
        self.targets.remove(&e.iqn);
        let Some(p) = e.cluster else {
            return;
        };
        p.volume.set_route(Route::Waiting);
        let Some(copy) = p.volume.copy() else {
            if let Err(e) = std::fs::remove_dir_all(&p.unit_dir) {
                tracing::warn!(volume = %name, "removing {}: {e}", p.unit_dir.display());
            }
            tracing::info!(volume = %name, "no longer presented here");
            return;
        };
        c.server.remove(name);
        let _ = copy.remove_files();
        if let Err(e) = self.store.delete(name) {
            tracing::warn!(volume = %name, "removing the local copy failed: {e}");
        } else {
            tracing::info!(volume = %name, "local copy removed (volume deleted or moved)");
        }
    }

    /// Where the logical unit of a volume without a copy here keeps its state.
    fn presented_dir(&self, id: uuid::Uuid) -> std::path::PathBuf {
        self.store.data_dir().join("presented").join(id.to_string())
    }

    /// Opens (creating it if needed) this node's copy of `v`; a local
    /// volume of that name is its copy (checked by the caller).
    fn open_copy(
        &self,
        c: &Clustered,
        v: &cluster::VolumeRecord,
    ) -> Result<(Arc<LocalCopy>, Arc<store::LocalVolume>), NodeError> {
        if self.store.get(&v.name).is_none() {
            match v.origin {
                Some(o) => self.make_clone_copy(c, v, o)?,
                None => {
                    tracing::info!(volume = %v.name, "creating the local copy");
                    self.store
                        .create_with_id(&v.name, v.size_bytes, v.block_size, v.id)?;
                }
            }
        }
        let local = self.store.open_volume(&v.name)?;
        let base = self.local_unit_dir(&v.name)?.join(COPY_BASE);
        let copy = LocalCopy::open(&v.name, local.clone(), &base)
            .map_err(|e| NodeError::Cluster(format!("volume {}: opening the copy: {e}", v.name)))?;
        copy.set_snapshots(Arc::new(super::snapshots::StoreSnapshots {
            store: self.store.clone(),
            volume: local.clone(),
        }));
        Ok((copy, local))
    }

    /// Makes this node's copy of clone `v` from its own copy of the
    /// snapshot it comes from. Where this node does not hold that snapshot
    /// (its copy of the source was out of sync), the clone's copy here must
    /// be out of sync too, and starts empty for the primary to copy whole;
    /// a copy the state holds in sync is never made empty.
    fn make_clone_copy(
        &self,
        c: &Clustered,
        v: &cluster::VolumeRecord,
        o: cluster::CloneOrigin,
    ) -> Result<(), NodeError> {
        let source = self.store.list().into_iter().find(|m| m.id == o.volume);
        let held = source.as_ref().is_some_and(|m| {
            self.store
                .open_volume(&m.name)
                .is_ok_and(|s| s.snapshots().iter().any(|s| s.id == o.snapshot))
        });
        if let (Some(m), true) = (&source, held) {
            tracing::info!(volume = %v.name, source = %m.name, "making the local copy as a clone of this node's copy of the snapshot");
            self.store
                .clone_snapshot_as(&m.name, o.snapshot, &v.name, v.id)?;
            return Ok(());
        }
        let me = c.cluster.id();
        if v.replicas.get(&me) == Some(&cluster::ReplicaState::InSync) {
            return Err(NodeError::Cluster(format!(
                "volume {}: a clone whose copy here is recorded in sync, but this node does not hold the snapshot it comes from",
                v.name
            )));
        }
        tracing::info!(volume = %v.name, "this node does not hold the snapshot the clone comes from: an empty copy, copied whole by the primary");
        self.store
            .create_with_id(&v.name, v.size_bytes, v.block_size, v.id)?;
        Ok(())
    }

    /// Exports `v` here: over this node's copy when the state places one
    /// here, else forwarding everything to the primary.
    fn present(
        &self,
        c: &Clustered,
        cluster_id: uuid::Uuid,
        v: &cluster::VolumeRecord,
        exported: &mut Registry,
    ) -> Result<(), NodeError> {
        let me = c.cluster.id();
        let here = self.store.get(&v.name);
        if here.as_ref().is_some_and(|m| m.id != v.id)
            && exported.get(&v.name).is_none_or(|e| e.cluster.is_none())
        {
            return Err(NodeError::Invalid(format!(
                "a local volume named {} exists on this node; rename or delete it",
                v.name
            )));
        }
        // An earlier cluster volume of that name (deleted, and made again
        // while this node was away) goes first, with its copy and files.
        if exported
            .get(&v.name)
            .is_some_and(|e| e.cluster.is_some() && e.id != v.id)
        {
            self.release(c, exported, &v.name);
        }
        // Before anything is opened or served: without the data key the
        // rules cannot be opened, and the volume is not presented yet.
        let access = access_of(c, v)?;
        let here = self.store.get(&v.name);
        let (role, local, unit_dir) = if v.replicas.contains_key(&me) {
            let (copy, local) = self.open_copy(c, v)?;
            let role = ClusterVolume::over_copy(copy);
            c.server.add(role.clone());
            (role, Some(local), self.local_unit_dir(&v.name)?)
        } else {
            if here.is_some() {
                // A copy the cluster dropped while this node was away.
                if let Some(old) = exported.remove(&v.name) {
                    self.targets.remove(&old.iqn);
                }
                self.store.delete(&v.name)?;
                tracing::info!(volume = %v.name, "stale local copy removed");
            }
            let dir = self.presented_dir(v.id);
            std::fs::create_dir_all(&dir).map_err(|e| {
                NodeError::Cluster(format!(
                    "volume {}: creating {}: {e}",
                    v.name,
                    dir.display()
                ))
            })?;
            let blocks = v.size_bytes / v.block_size as u64;
            let role = ClusterVolume::recorded(&v.name, v.block_size, blocks);
            (role, None, dir)
        };
        let iqn = iqn_for(&self.config.iqn_prefix, &v.name);
        let mut identity = lun_identity(cluster_id, v.id, &iqn);
        // One target port group per node: ALUA tells initiators which node leads.
        identity.port_group = me as u16;
        identity.relative_port = me as u16;
        if let Some(old) = exported.remove(&v.name) {
            self.targets.remove(&old.iqn);
        }
        let mut e = self.export_as(crate::service::ExportSpec {
            name: v.name.clone(),
            id: v.id,
            local,
            served: role.clone(),
            identity,
            unit_dir: unit_dir.clone(),
            access,
            shared: Some(crate::service::SharedUnit {
                owner: Arc::new(ToPrimary(role.clone())),
                store: Arc::new(OnEveryCopy(role.clone())),
            }),
        })?;
        role.set_unit(Arc::new(FromOthers(Arc::downgrade(&e.lun))));
        // Until the cluster state gives this node its role (`hold`), every
        // command that touches the medium fails as an access state
        // transition, and REPORT TARGET PORT GROUPS says so.
        e.lun.set_port_groups(vec![PortGroup {
            id: me as u16,
            state: AccessState::Transitioning,
            preferred: false,
            ports: vec![me as u16],
            status: 0,
        }]);
        e.cluster = Some(Presented {
            volume: role,
            unit_dir,
            access: v.access.clone(),
            current: None,
            led_by: None,
            groups: Vec::new(),
        });
        exported.insert(e);
        Ok(())
    }

    async fn hold(
        &self,
        c: &Arc<Clustered>,
        vols: &mut Registry,
        cluster_id: uuid::Uuid,
        v: &cluster::VolumeRecord,
        state: &ClusterState,
    ) -> Result<(), NodeError> {
        let me = c.cluster.id();
        let copy_here = v.replicas.contains_key(&me);
        let has_copy = |vols: &Registry| {
            vols.by_id(v.id)
                .and_then(|e| e.cluster.as_ref())
                .map(|p| p.volume.copy().is_some())
        };
        if has_copy(vols).is_some_and(|copy| copy != copy_here) {
            // A copy was placed here or taken away: present it anew.
            self.release(c, vols, &v.name);
        }
        if has_copy(vols).is_none() {
            self.present(c, cluster_id, v, vols)?;
        }
        let e = vols.by_id_mut(v.id).expect("presented above");
        let recorded = e.cluster.as_ref().expect("presented above").access.clone();
        let mut followed = recorded.clone();
        if recorded != v.access {
            // Rules this node cannot open yet (it waits for the data key)
            // keep the ones in force and are tried again; the volume's
            // route does not wait for them.
            match access_of(c, v) {
                Ok(access) => {
                    self.apply_access(&v.name, e, access);
                    followed = v.access.clone();
                }
                Err(err) => {
                    tracing::warn!(volume = %v.name, "new access rules not applied yet: {err}")
                }
            }
        }
        let lun = e.lun.clone();
        let slot = e.cluster.as_mut().expect("presented above");
        slot.access = followed;
        let grew = slot
            .volume
            .grow_to(v.size_bytes / v.block_size as u64)
            .await
            .map_err(|source| NodeError::Volume {
                name: v.name.clone(),
                source,
            })?;
        if grew {
            lun.capacity_changed();
        }
        if v.primary == me {
            reseal_soon(c, v);
        }
        let holders: Vec<NodeId> = v.replicas.keys().copied().collect();
        let desired = (v.primary, v.epoch, holders.clone());
        if slot.current.as_ref() != Some(&desired) {
            if v.primary == me
                && copy_here
                && c.taken_up.lock().unwrap().get(&v.name) != Some(&Some(v.epoch))
            {
                // Every primary role runs at an epoch of its own, taken up
                // through the control plane first: reports an earlier role
                // (before a restart, or before a change of the copies) gave
                // up waiting for can then never land in this role's time,
                // and the role starts from a state that holds every change
                // committed before it. Until then the volume waits.
                slot.volume.set_route(Route::Waiting);
                slot.current = None;
                // This copy's disk failed a write or a sync since a primary
                // was last told of the regions it may have lost writes in
                // (a hand-over after that failure did not commit): a copy
                // in sync elsewhere takes the volume instead, as the
                // hand-over would have (`Primary::start` refuses here).
                let to = slot
                    .volume
                    .copy()
                    .filter(|copy| copy.disk_failed_since_hello())
                    .and_then(|_| {
                        v.replicas
                            .iter()
                            .find(|(&n, st)| {
                                n != me && **st == ReplicaState::InSync && !state.in_maintenance(n)
                            })
                            .map(|(&n, _)| n)
                    });
                self.take_up(c, v, to.unwrap_or(me));
                return Ok(());
            }
            self.take_role(c, &lun, &slot.volume, v, state)
                .await
                .map_err(|source| NodeError::Volume {
                    name: v.name.clone(),
                    source,
                })?;
            slot.current = Some(desired);
            let led_by = Some((v.primary, v.epoch));
            if let Some((old, _)) = slot.led_by.filter(|&(p, _)| p != v.primary) {
                self.primary_changed(c, v, old);
            }
            if slot.led_by.is_some() && slot.led_by != led_by {
                // Another primary, or another role of it: what the old one
                // held in memory only (an SPC-2 reservation) is gone.
                lun.owner_changed();
            }
            slot.led_by = led_by;
            tracing::info!(volume = %v.name, primary = v.primary, epoch = v.epoch, me, copy = copy_here, "volume role set");
        }
        if v.primary == me {
            // Copies on nodes in maintenance stay out of the write path
            // (their writes go to the dirty maps) until the node leaves it.
            if let Some(p) = slot.volume.primary() {
                for &n in v.replicas.keys().filter(|&&n| n != me) {
                    p.hold_away(n, state.in_maintenance(n));
                }
            }
        }
        // Every data node presents the volume: the primary's port group is
        // active/optimized, every other node's active/non-optimized, and a
        // node in maintenance's standby, so multipath moves away from it
        // before it stops.
        let groups: Vec<PortGroup> = state
            .nodes
            .values()
            .filter(|n| n.holds_data())
            .map(|n| PortGroup {
                id: n.id as u16,
                state: if n.id == v.primary {
                    AccessState::ActiveOptimized
                } else if state.in_maintenance(n.id) {
                    AccessState::Standby
                } else {
                    AccessState::ActiveNonOptimized
                },
                preferred: n.id == v.primary,
                ports: vec![n.id as u16],
                status: 0,
            })
            .collect();
        if slot.groups != groups {
            lun.set_port_groups(groups.clone());
            slot.groups = groups;
        }
        Ok(())
    }

    /// Promotes this node to the next epoch of `v`, in the background (the
    /// control plane may have no quorum, and other volumes must not wait):
    /// the applied promotion wakes the reconcile that builds the role.
    /// Where `to` is another node (its copy in sync), promotes that node
    /// instead, with this node's copy recorded out of sync.
    fn take_up(&self, c: &Arc<Clustered>, v: &cluster::VolumeRecord, to: NodeId) {
        {
            let mut taken = c.taken_up.lock().unwrap();
            if taken.get(&v.name) == Some(&None) {
                return; // being proposed
            }
            taken.insert(v.name.clone(), None);
        }
        let (c, name, epoch) = (c.clone(), v.name.clone(), v.epoch);
        tokio::spawn(async move {
            let me = c.cluster.id();
            let promote = c.cluster.propose(Command::Promote {
                volume: name.clone(),
                node: to,
                expected_epoch: epoch,
            });
            let outcome = match tokio::time::timeout(RECORD_TIMEOUT, promote).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("the control plane did not answer".to_string()),
            };
            let mut taken = c.taken_up.lock().unwrap();
            match outcome {
                Ok(()) if to != me => {
                    tracing::warn!(volume = %name, epoch = epoch + 1, to, "this node's disk failed: the copy on node {to} takes the volume");
                    taken.remove(&name);
                    c.wake.notify_one();
                }
                Ok(()) => {
                    tracing::info!(volume = %name, epoch = epoch + 1, "taking up the primary role");
                    taken.insert(name, Some(epoch + 1));
                    c.wake.notify_one();
                }
                Err(why) => {
                    tracing::warn!(volume = %name, "cannot take up the primary role yet: {why}");
                    taken.remove(&name);
                }
            }
        });
    }

    /// Sets this node's role for `v`: primary (mirroring to the other
    /// copies) or forwarding to the primary.
    async fn take_role(
        &self,
        c: &Arc<Clustered>,
        lun: &scsi::LogicalUnit,
        volume: &ClusterVolume,
        v: &cluster::VolumeRecord,
        state: &ClusterState,
    ) -> Result<(), volume::VolumeError> {
        let me = c.cluster.id();
        let copy = volume.copy().filter(|_| v.primary == me);
        let Some(copy) = copy else {
            let addr = state
                .nodes
                .get(&v.primary)
                .map(|i| i.repl_addr.clone())
                .unwrap_or_default();
            let f = Forwarder::new(
                &v.name,
                volume.copy().cloned(),
                me,
                addr,
                c.key.clone(),
                FORWARD_TIMEOUT,
            );
            volume.set_route(Route::Forward(Arc::new(f)));
            return Ok(());
        };
        let peers = v
            .replicas
            .iter()
            .filter(|(&n, _)| n != me)
            .map(|(&n, st)| PeerSpec {
                node: n,
                addr: state
                    .nodes
                    .get(&n)
                    .map(|i| i.repl_addr.clone())
                    .unwrap_or_default(),
                in_sync: *st == ReplicaState::InSync,
            })
            .collect();
        let cfg = PrimaryConfig {
            node: me,
            epoch: v.epoch,
            key: c.key.clone(),
            timeout: REPL_TIMEOUT,
        };
        // Stop the old role before the new primary takes the copy.
        volume.set_route(Route::Waiting);
        // The volume's SCSI state is this node's from now on: it starts
        // from the reservations the copies were given (after a start, only
        // what APTPL kept), and hands those on to the peers it connects to.
        let reservations = reservations_of(copy);
        copy.hold_reservations(reservations.encode().into());
        let control: Arc<dyn replica::Control> = c.control.clone();
        let p = Primary::start(copy.clone(), cfg, peers, control).await?;
        if let Err(why) = ready_to_serve(c, &p, &v.name, v.epoch).await {
            tracing::info!(volume = %v.name, epoch = v.epoch, "serving as primary before {why}");
        }
        lun.load_reservations(reservations);
        volume.set_route(Route::Primary(p));
        // Used: the next primary role of this volume takes up its own epoch.
        c.taken_up.lock().unwrap().remove(&v.name);
        Ok(())
    }
}

/// Waits up to [`ROLE_SETTLE`] until a new primary role can acknowledge
/// writes as they come: the control plane lets it (its lease runs, the
/// applied state names it primary at its epoch) and every peer that takes
/// writes is connected. A write sent before that would be refused, or
/// would cost an in-sync peer whose connection is still being made its
/// place. `Err` says what was still missing; the role serves anyway (a
/// peer that is really gone is recorded out of sync by the first write).
async fn ready_to_serve(
    c: &Clustered,
    p: &Primary,
    volume: &str,
    epoch: u64,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + ROLE_SETTLE;
    loop {
        let missing = if !replica::Control::may_acknowledge(&*c.control, volume, epoch) {
            "the control plane lets it acknowledge".to_string()
        } else {
            match p
                .peer_status()
                .into_iter()
                .find(|s| !s.connected && s.state != replica::PeerState::OutOfSync)
            {
                Some(s) => format!("the copy on node {} is connected", s.node),
                None => return Ok(()),
            }
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(missing);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
