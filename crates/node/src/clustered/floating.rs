//! The floating service address on this node: added to its interface while
//! the applied cluster state names this node its holder and this node's
//! lease runs, removed otherwise (the leader's side is `cluster::floating`).
//!
//! - Holding: `ip addr replace <address> dev <interface> valid_lft 1
//!   preferred_lft 0`, renewed every [`RENEW`]. The lifetime makes the
//!   kernel remove the address 1-2 s after the last renewal (it rounds its
//!   timer to whole seconds), as long as the lease a stalled process
//!   would lose: a process killed while holding it, with no chance to
//!   remove it, leaves it behind only that long. `preferred_lft 0` keeps
//!   it from being picked as the source of this node's own connections.
//!   Once added, an IPv4 address is announced with `arping -U` (three
//!   gratuitous ARPs a second apart), so initiators and switches move to
//!   this node's MAC at once instead of when their ARP entries age out;
//!   without `arping` that is logged and skipped. An IPv6 address is
//!   announced by the kernel only where `ndisc_notify` is set; it skips
//!   duplicate address detection (`nodad`), which would hold it back while
//!   the old holder's lifetime runs out.
//! - The portal takes connections on it: from the first time this node
//!   holds it, a portal listens on the floating address and this node's
//!   iSCSI port (where `--iscsi-listen` is a wildcard address, that
//!   listener takes them instead). The listener stays while the address
//!   comes and goes (a socket stays bound to an address the interface no
//!   longer has; it just gets no connections), so taking the address again
//!   never waits for an earlier listener to let go of the port.
//! - Dropping: `ip addr del`, when the state names another holder or none,
//!   and [`DROP_MARGIN`] before the lease ends, so the address is gone
//!   before the lease is; the leader gives it to another node no earlier
//!   than `DEAD_AFTER` after it last heard from this one, which is after
//!   the lease ended (see `cluster::lease`).
//! - Stopping: [`Node::release_floating`] removes it at once and hands the
//!   role back through the log.
//!
//! Adding and removing an address takes CAP_NET_ADMIN.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cluster::FloatingAddress;
use tokio::process::Command;
use tokio::sync::watch;

use super::{cluster_err, Clustered};
use crate::{Node, NodeError};

/// How often the holder looks at its role and lease.
const POLL: Duration = Duration::from_millis(100);
/// How often the holder renews the address's lifetime: four times within
/// it, so a renewal late by a loaded machine does not lose it.
const RENEW: Duration = Duration::from_millis(250);
/// How long before its lease ends the holder removes the address: a poll
/// and the time `ip` takes, with room to spare.
const DROP_MARGIN: Duration = Duration::from_millis(250);
/// The address's lifetime in the kernel, in seconds (renewed every `RENEW`).
const LIFETIME_SECS: u32 = 1;
/// Time a stopping holder waits for its hand-back to commit.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// What this node holds of the floating address.
#[derive(Default)]
pub(crate) struct FloatingHolder {
    held: tokio::sync::Mutex<Option<Held>>,
    /// The portal listening on the floating address, and what stops it.
    portal: std::sync::Mutex<Option<(SocketAddr, watch::Sender<bool>)>>,
    /// Set when the node stops: it takes the address no more.
    stopped: AtomicBool,
}

/// The address as added to the interface.
struct Held {
    address: FloatingAddress,
    renewed: Instant,
}

/// Runs `ip` with `args`; the error says what `ip` said.
async fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Adds the address, or renews its lifetime where it is there already.
/// An IPv6 address skips duplicate address detection, which would keep it
/// unusable for a second and fail it while the previous holder's lifetime
/// runs out.
async fn add(a: &FloatingAddress) -> Result<(), String> {
    let lft = LIFETIME_SECS.to_string();
    let mut args = vec![
        "addr",
        "replace",
        &a.address,
        "dev",
        &a.interface,
        "valid_lft",
        &lft,
        "preferred_lft",
        "0",
    ];
    if matches!(a.ip(), Some(std::net::IpAddr::V6(_))) {
        args.push("nodad");
    }
    ip(&args).await
}

/// Removes the address; one that is gone already is no error.
async fn remove(a: &FloatingAddress) {
    match ip(&["addr", "del", &a.address, "dev", &a.interface]).await {
        Ok(()) => {
            tracing::info!(address = %a.address, interface = %a.interface, "floating address removed")
        }
        Err(e) => tracing::debug!(address = %a.address, "floating address not removed: {e}"),
    }
}

/// Sends gratuitous ARPs for an IPv4 address, in the background.
fn announce(a: &FloatingAddress) {
    let Some(std::net::IpAddr::V4(v4)) = a.ip() else {
        return;
    };
    let child = Command::new("arping")
        .args(["-q", "-U", "-c", "3", "-I", &a.interface, &v4.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    match child {
        Ok(mut c) => {
            tokio::spawn(async move {
                let _ = c.wait().await;
            });
        }
        Err(e) => {
            tracing::warn!(address = %a.address, "floating address not announced (arping: {e}); neighbours learn it when their ARP entries age out")
        }
    }
}

impl Node {
    /// Sets or removes the cluster's floating service address (through the
    /// log, so every data node follows the same one).
    pub async fn set_floating(&self, floating: Option<FloatingAddress>) -> Result<(), NodeError> {
        if let Some(f) = &floating {
            f.check().map_err(|e| NodeError::Refused(e.to_string()))?;
        }
        let c = self.member()?;
        c.cluster
            .propose(cluster::Command::SetFloating { floating })
            .await
            .map_err(cluster_err)
    }

    /// Follows the floating address's holder in the cluster state: spawned
    /// when the node enters the cluster.
    pub(super) fn follow_floating(self: &Arc<Self>, c: &Arc<Clustered>) {
        let node = Arc::downgrade(self);
        let member = Arc::downgrade(c);
        tokio::spawn(async move {
            // An address left behind by an earlier run of this node (killed
            // while holding it) goes before anything else.
            if let Some(c) = member.upgrade() {
                if let Some(a) = c.cluster.state().floating.clone() {
                    if c.cluster.state().floating_holder != Some(c.cluster.id()) {
                        remove(&a).await;
                    }
                }
            }
            let mut failed: Option<String> = None;
            loop {
                tokio::time::sleep(POLL).await;
                if !Node::floating_round(&node, &member, &mut failed).await {
                    return;
                }
            }
        });
    }

    /// One look at the role and lease; `false` once the node is gone.
    async fn floating_round(
        node: &Weak<Node>,
        member: &Weak<Clustered>,
        failed: &mut Option<String>,
    ) -> bool {
        let (Some(n), Some(c)) = (node.upgrade(), member.upgrade()) else {
            return false;
        };
        let f = &c.floating;
        let state = c.cluster.state();
        let lease_left = c
            .cluster
            .lease_valid_until()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        let mine = !f.stopped.load(Ordering::SeqCst)
            && state.floating_holder == Some(c.cluster.id())
            && lease_left > DROP_MARGIN;
        let want = state.floating.clone().filter(|_| mine);
        let mut held = f.held.lock().await;
        if held.as_ref().map(|h| &h.address) != want.as_ref() {
            if let Some(old) = held.take() {
                remove(&old.address).await;
            }
        }
        let Some(want) = want else { return true };
        match held.as_mut() {
            Some(h) if h.renewed.elapsed() < RENEW => {}
            Some(h) => match add(&h.address).await {
                Ok(()) => h.renewed = Instant::now(),
                Err(e) => {
                    tracing::warn!(address = %h.address.address, "floating address not renewed: {e}")
                }
            },
            None => match add(&want).await {
                Ok(()) => {
                    *failed = None;
                    tracing::info!(address = %want.address, interface = %want.interface, lease_ms = lease_left.as_millis() as u64, "floating address added: this node holds it");
                    announce(&want);
                    n.listen_floating(&c, &want).await;
                    *held = Some(Held {
                        address: want,
                        renewed: Instant::now(),
                    });
                }
                Err(e) => {
                    // Said once per distinct failure, not ten times a second.
                    if failed.as_deref() != Some(e.as_str()) {
                        tracing::error!(address = %want.address, interface = %want.interface, "cannot add the floating address (it takes CAP_NET_ADMIN): {e}");
                        *failed = Some(e);
                    }
                }
            },
        }
        true
    }

    /// Has a portal take connections on the floating address (once per
    /// address), unless a wildcard listener takes them already.
    async fn listen_floating(&self, c: &Clustered, a: &FloatingAddress) {
        let Some(ip) = a.ip() else { return };
        let at = SocketAddr::new(ip, c.iscsi_port);
        if let Some((old, _)) = &*c.floating.portal.lock().unwrap() {
            if *old == at {
                return;
            }
        }
        let listener = match tokio::net::TcpListener::bind(at).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(%at, "no listener of its own on the floating address ({e}); the portal's takes it");
                return;
            }
        };
        let (tx, mut rx) = watch::channel(false);
        tokio::spawn(portal::serve(
            listener,
            self.targets.clone(),
            portal::TargetConfig::default(),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
        tracing::info!(%at, "iSCSI portal listening on the floating address");
        // One for another address (the cluster's was changed) stops.
        if let Some((_, old)) = c.floating.portal.lock().unwrap().replace((at, tx)) {
            let _ = old.send(true);
        }
    }

    /// Removes the floating address at once if this node holds it and
    /// takes it no more, then hands it back through the cluster so that
    /// another data node takes it without waiting for this one to be
    /// declared dead. For a node that stops.
    pub async fn release_floating(&self) {
        let Some(c) = self.clustered() else { return };
        c.floating.stopped.store(true, Ordering::SeqCst);
        let held = c.floating.held.lock().await.take();
        if let Some(h) = held {
            remove(&h.address).await;
        }
        if let Some((_, portal)) = c.floating.portal.lock().unwrap().take() {
            let _ = portal.send(true);
        }
        match tokio::time::timeout(RELEASE_TIMEOUT, c.cluster.release_floating()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("floating address not handed back: {e}"),
            Err(_) => tracing::warn!("floating address not handed back in time; the leader moves it once this node is silent"),
        }
    }
}
