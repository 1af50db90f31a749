//! The targets this portal exports, and the sessions logged in to each.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use scsi::LogicalUnit;
use tokio::sync::watch;

/// One exported target: its logical units and its live sessions.
pub(crate) struct Target {
    /// LUN 0.
    pub lun0: Arc<LogicalUnit>,
    /// Logged-in normal sessions.
    pub sessions: AtomicUsize,
    /// Flips to true when the target is removed: its sessions close.
    pub removed: watch::Sender<bool>,
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

    /// Exports `lun0` as LUN 0 of target `iqn` (replacing any previous one).
    pub fn insert(&self, iqn: String, lun0: Arc<LogicalUnit>) {
        let t = Arc::new(Target {
            lun0,
            sessions: AtomicUsize::new(0),
            removed: watch::channel(false).0,
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

    /// Number of normal sessions logged in to `iqn`.
    pub fn session_count(&self, iqn: &str) -> usize {
        self.map
            .read()
            .unwrap()
            .get(iqn)
            .map(|t| t.sessions.load(Ordering::SeqCst))
            .unwrap_or(0)
    }

    /// Every exported IQN, sorted.
    pub fn names(&self) -> Vec<String> {
        self.map.read().unwrap().keys().cloned().collect()
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
