//! The sessions and portals of every data node: who is logged in to a
//! cluster volume anywhere (counted before a delete, listed by `volume
//! show`), which other nodes' portals discovery names for it, and which
//! portal a login is redirected to when the portal redirects logins.
//!
//! Sessions are asked of each data node when needed, over the member
//! endpoint (`cluster::sessions` says why they are not recorded in the
//! log). A node that cannot be asked is reported by name: `volume delete`
//! refuses then unless forced, because from here a node that is down and
//! one that is cut off look the same, and a cut-off node may well have
//! initiators logged in that will be back to a deleted volume once the
//! link heals. Only the administrator can know the node is really gone.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use cluster::{MemberSession, SessionSource};
use portal::{Portal, PortalDirectory, Serving, Targets};

use super::heard::Heard;
use super::Clustered;
use crate::identity::iqn_for;
use crate::service::SessionInfo;
use crate::Node;

/// This node as the cluster and discovery see it: the sessions it reports
/// to other members, and the other data nodes' portals it names.
pub(crate) struct NodeView {
    cluster: Weak<Clustered>,
    targets: Weak<Targets>,
    /// The IQN prefix of this node's targets.
    prefix: String,
    /// Whom the leader heard from lately (followed while this node
    /// redirects logins).
    pub(crate) heard: Arc<Heard>,
}

impl NodeView {
    pub(crate) fn new(cluster: &Arc<Clustered>, targets: &Arc<Targets>, prefix: &str) -> NodeView {
        NodeView {
            cluster: Arc::downgrade(cluster),
            targets: Arc::downgrade(targets),
            prefix: prefix.to_string(),
            heard: Arc::default(),
        }
    }

    /// The name of the cluster volume exported here as `target`.
    fn volume_of<'a>(&self, target: &'a str) -> Option<&'a str> {
        target
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
    }
}

impl SessionSource for NodeView {
    fn sessions(&self) -> Option<Vec<MemberSession>> {
        let c = self.cluster.upgrade()?;
        let targets = self.targets.upgrade()?;
        let state = c.cluster.state();
        let sessions = state
            .volumes
            .values()
            .flat_map(|v| {
                targets
                    .sessions(&iqn_for(&self.prefix, &v.name))
                    .into_iter()
                    .map(|s| MemberSession {
                        volume: v.id,
                        initiator: s.initiator,
                        address: s.address.to_string(),
                    })
            })
            .collect();
        Some(sessions)
    }

    fn log_out(&self, volume: uuid::Uuid) -> usize {
        let (Some(c), Some(targets)) = (self.cluster.upgrade(), self.targets.upgrade()) else {
            return 0;
        };
        let state = c.cluster.state();
        let Some(v) = state.volumes.values().find(|v| v.id == volume) else {
            return 0;
        };
        let n = targets.log_out(&iqn_for(&self.prefix, &v.name));
        if n > 0 {
            tracing::warn!(volume = %v.name, sessions = n, "initiators logged out for a forced rollback");
        }
        n
    }
}

impl PortalDirectory for NodeView {
    /// Every other data node exports every cluster volume, in its own
    /// target port group (its node id, as VPD 0x83 and REPORT TARGET PORT
    /// GROUPS give it): its portal, as it advertises it in its member record.
    fn elsewhere(&self, target: &str) -> Vec<Portal> {
        let Some(c) = self.cluster.upgrade() else {
            return Vec::new();
        };
        let state = c.cluster.state();
        let me = c.cluster.id();
        if !self
            .volume_of(target)
            .is_some_and(|name| state.volumes.contains_key(name))
        {
            return Vec::new();
        }
        state
            .nodes
            .values()
            .filter(|n| n.holds_data() && n.id != me && !n.iscsi_addr.is_empty())
            .map(|n| Portal {
                address: target_address(&n.iscsi_addr),
                tag: n.id as u16,
            })
            .collect()
    }

    /// The primary's portal for a cluster volume: its writes are ordered
    /// there and its SCSI state lives there, so a session there needs no
    /// forwarding. This node serves its own volumes, local ones and those
    /// it is primary of. No portal is known, rather than one that may be
    /// gone, while this node's lease has run out (it may follow an old
    /// state: it is cut off, or a leader is being elected), while the
    /// leader has not heard from the primary lately (it may have died and
    /// not been replaced yet) and for a primary without an iSCSI address.
    fn serving(&self, target: &str) -> Serving {
        let Some(c) = self.cluster.upgrade() else {
            return Serving::Here;
        };
        let state = c.cluster.state();
        let Some(v) = self
            .volume_of(target)
            .and_then(|name| state.volumes.get(name))
        else {
            return Serving::Here;
        };
        if !c.cluster.lease_valid() {
            return Serving::Unknown;
        }
        let me = c.cluster.me();
        if v.primary == c.cluster.id() {
            return Serving::Here;
        }
        match state.nodes.get(&v.primary) {
            Some(n) if !n.holds_data() || n.iscsi_addr.is_empty() => Serving::Unknown,
            // Never to this node's own portal, even under another id: the
            // initiator would come back here.
            Some(n) if n.iscsi_addr == me.iscsi_addr => Serving::Here,
            Some(n) if !self.heard.lately(n.id) => Serving::Unknown,
            Some(n) => Serving::At(target_address(&n.iscsi_addr)),
            None => Serving::Unknown,
        }
    }
}

/// A member's advertised iSCSI address (`host:port`) as a TargetAddress
/// writes it: an IPv6 address in brackets (RFC 7143 §13.8), whether or not
/// it was advertised with them.
fn target_address(advertised: &str) -> String {
    if let Ok(a) = advertised.parse::<std::net::SocketAddr>() {
        return a.to_string();
    }
    match advertised.rsplit_once(':') {
        Some((host, port)) if host.parse::<std::net::Ipv6Addr>().is_ok() => {
            format!("[{host}]:{port}")
        }
        _ => advertised.to_string(),
    }
}

/// A data node that could not be asked for its sessions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unasked {
    /// The node's name.
    pub node: String,
    /// Why it did not answer.
    pub reason: String,
}

impl std::fmt::Display for Unasked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.node, self.reason)
    }
}

/// The sessions of cluster volumes on every data node, as asked just now.
#[derive(Debug, Default)]
pub(crate) struct Census {
    /// Sessions by volume id.
    pub(crate) by_volume: BTreeMap<uuid::Uuid, Vec<SessionInfo>>,
    /// Data nodes that did not answer: their sessions are not counted.
    pub(crate) unasked: Vec<Unasked>,
}

impl Census {
    /// The sessions of volume `id` found.
    pub(crate) fn of(&self, id: uuid::Uuid) -> Vec<SessionInfo> {
        self.by_volume.get(&id).cloned().unwrap_or_default()
    }
}

impl Node {
    /// Asks every data node (this one included) for its sessions, all at
    /// once; a node that does not answer within the member call timeout
    /// (1 s) is listed as unasked.
    pub(crate) async fn census(&self, c: &Arc<Clustered>) -> Census {
        let state = c.cluster.state();
        let mut pending: BTreeMap<cluster::NodeId, String> = state
            .nodes
            .values()
            .filter(|n| n.holds_data())
            .map(|n| (n.id, n.name.clone()))
            .collect();
        let mut asks = tokio::task::JoinSet::new();
        for &id in pending.keys() {
            let c = c.clone();
            asks.spawn(async move { (id, c.cluster.sessions_of(id).await) });
        }
        let mut census = Census::default();
        while let Some(joined) = asks.join_next().await {
            let Ok((id, answer)) = joined else { continue };
            let Some(name) = pending.remove(&id) else {
                continue;
            };
            match answer {
                Ok(sessions) => {
                    for s in sessions {
                        census
                            .by_volume
                            .entry(s.volume)
                            .or_default()
                            .push(SessionInfo {
                                initiator: s.initiator,
                                address: s.address,
                                node: Some(name.clone()),
                            });
                    }
                }
                Err(e) => census.unasked.push(Unasked {
                    node: name,
                    reason: e.to_string(),
                }),
            }
        }
        // A node whose request failed without an answer is not counted as
        // having no sessions either.
        census
            .unasked
            .extend(pending.into_values().map(|node| Unasked {
                node,
                reason: "the request failed".to_string(),
            }));
        for sessions in census.by_volume.values_mut() {
            sessions.sort_by(|a, b| {
                (&a.node, &a.initiator, &a.address).cmp(&(&b.node, &b.initiator, &b.address))
            });
        }
        census.unasked.sort_by(|a, b| a.node.cmp(&b.node));
        census
    }
}

#[cfg(test)]
mod tests {
    use super::target_address;

    #[test]
    fn target_addresses_put_ipv6_in_brackets() {
        assert_eq!(target_address("10.0.0.2:3260"), "10.0.0.2:3260");
        assert_eq!(target_address("[fd00::2]:3260"), "[fd00::2]:3260");
        assert_eq!(target_address("fd00::2:3260"), "[fd00::2]:3260");
        assert_eq!(target_address("node-b.lan:3260"), "node-b.lan:3260");
    }
}
