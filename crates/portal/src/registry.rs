//! The targets this portal exports, and the sessions logged in to each.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use iscsi::{Access, AuthPolicy, LoginPolicy};
use scsi::LogicalUnit;
use tokio::sync::watch;

/// Who may log in to a target, and how they authenticate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetAccess {
    /// Initiator names allowed to log in and to see the target in discovery;
    /// empty: every initiator.
    pub allowed_initiators: Vec<String>,
    /// CHAP secrets (one-way and mutual); none: no authentication.
    pub auth: AuthPolicy,
}

impl TargetAccess {
    /// Whether `initiator` is on the access list.
    pub fn admits(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty()
            || self
                .allowed_initiators
                .iter()
                .any(|a| a.eq_ignore_ascii_case(initiator))
    }
}

/// One exported target: its logical units and its live sessions.
pub(crate) struct Target {
    /// LUN 0.
    pub lun0: Arc<LogicalUnit>,
    /// Logged-in normal sessions.
    pub sessions: AtomicUsize,
    /// Flips to true when the target is removed: its sessions close.
    pub removed: watch::Sender<bool>,
    /// Access list and authentication.
    pub access: RwLock<TargetAccess>,
}

/// The set of targets, by IQN. Shared by the portal and the service layer.
#[derive(Default)]
pub struct Targets {
    map: RwLock<BTreeMap<String, Arc<Target>>>,
}

impl Targets {
    /// An empty set.
    pub fn new() -> Targets {
        Targets::default()
    }

    /// Exports `lun0` as LUN 0 of target `iqn` (replacing any previous one),
    /// open to every initiator without authentication.
    pub fn insert(&self, iqn: String, lun0: Arc<LogicalUnit>) {
        self.insert_with_access(iqn, lun0, TargetAccess::default());
    }

    /// Exports `lun0` as LUN 0 of target `iqn` with `access`.
    pub fn insert_with_access(&self, iqn: String, lun0: Arc<LogicalUnit>, access: TargetAccess) {
        let t = Arc::new(Target {
            lun0,
            sessions: AtomicUsize::new(0),
            removed: watch::channel(false).0,
            access: RwLock::new(access),
        });
        if let Some(old) = self.map.write().unwrap().insert(iqn, t) {
            let _ = old.removed.send(true);
        }
    }

    /// Stops exporting `iqn`; every session logged in to it is closed.
    /// Returns whether it existed.
    pub fn remove(&self, iqn: &str) -> bool {
        match self.map.write().unwrap().remove(iqn) {
            Some(t) => {
                let _ = t.removed.send(true);
                true
            }
            None => false,
        }
    }

    /// Replaces the access rules of `iqn`; sessions already logged in stay.
    /// Returns whether the target exists.
    pub fn set_access(&self, iqn: &str, access: TargetAccess) -> bool {
        match self.get(iqn) {
            Some(t) => {
                *t.access.write().unwrap() = access;
                true
            }
            None => false,
        }
    }

    /// The targets `initiator` may see in discovery, sorted.
    pub fn visible_to(&self, initiator: &str) -> Vec<String> {
        self.map
            .read()
            .unwrap()
            .iter()
            .filter(|(_, t)| t.access.read().unwrap().admits(initiator))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Number of normal sessions logged in to `iqn`.
    pub fn session_count(&self, iqn: &str) -> usize {
        self.map
            .read()
            .unwrap()
            .get(iqn)
            .map(|t| t.sessions.load(Ordering::SeqCst))
            .unwrap_or(0)
    }

    pub(crate) fn get(&self, iqn: &str) -> Option<Arc<Target>> {
        self.map.read().unwrap().get(iqn).cloned()
    }
}

impl scsi::xcopy::UnitDirectory for Targets {
    fn logical_units(&self) -> Vec<Arc<LogicalUnit>> {
        self.map
            .read()
            .unwrap()
            .values()
            .map(|t| t.lun0.clone())
            .collect()
    }
}

impl LoginPolicy for Targets {
    fn access(&self, initiator: &str, target: Option<&str>) -> Access {
        let Some(name) = target else {
            // Discovery is open; what it shows is filtered per initiator.
            return Access::Allowed(AuthPolicy::default());
        };
        let Some(t) = self.get(name) else {
            return Access::NotFound;
        };
        let access = t.access.read().unwrap();
        if access.admits(initiator) {
            Access::Allowed(access.auth.clone())
        } else {
            Access::Denied
        }
    }
}
