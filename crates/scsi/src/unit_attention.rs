//! Unit attention conditions per I_T nexus (SAM-5 5.14, SPC-4 7.5.7).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::sense::{key, Sense};

/// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
pub const POWER_ON: Sense = Sense::new(key::UNIT_ATTENTION, 0x29, 0x00);
/// BUS DEVICE RESET FUNCTION OCCURRED (logical unit reset).
pub const LUN_RESET: Sense = Sense::new(key::UNIT_ATTENTION, 0x29, 0x03);
/// ASYMMETRIC ACCESS STATE CHANGED.
pub const ACCESS_STATE_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2A, 0x06);
/// THIN PROVISIONING SOFT THRESHOLD REACHED.
pub const SOFT_THRESHOLD: Sense = Sense::new(key::UNIT_ATTENTION, 0x38, 0x07);
/// CAPACITY DATA HAS CHANGED.
pub const CAPACITY_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2A, 0x09);

/// Pending unit attentions, oldest first, per initiator port.
#[derive(Default)]
pub struct UnitAttentions {
    pending: Mutex<HashMap<String, VecDeque<Sense>>>,
}

impl UnitAttentions {
    /// A nexus (re)appeared: it starts with POWER ON only.
    pub fn nexus_added(&self, nexus: &str) {
        let mut p = self.pending.lock().unwrap();
        p.insert(nexus.to_string(), VecDeque::from([POWER_ON]));
    }

    /// Queues `ua` for every known nexus (no duplicates).
    pub fn raise_all(&self, ua: Sense) {
        let mut p = self.pending.lock().unwrap();
        for q in p.values_mut() {
            if !q.contains(&ua) {
                q.push_back(ua);
            }
        }
    }

    /// Queues `ua` for every known nexus but `except` (no duplicates).
    pub fn raise_others(&self, except: &str, ua: Sense) {
        let mut p = self.pending.lock().unwrap();
        for (n, q) in p.iter_mut() {
            if n != except && !q.contains(&ua) {
                q.push_back(ua);
            }
        }
    }

    /// Queues `ua` for one nexus (no duplicates).
    pub fn raise(&self, nexus: &str, ua: Sense) {
        let mut p = self.pending.lock().unwrap();
        let q = p.entry(nexus.to_string()).or_default();
        if !q.contains(&ua) {
            q.push_back(ua);
        }
    }

    /// Takes the oldest pending unit attention of `nexus`.
    pub fn take(&self, nexus: &str) -> Option<Sense> {
        let mut p = self.pending.lock().unwrap();
        match p.get_mut(nexus) {
            Some(q) => q.pop_front(),
            None => {
                // First command of a nexus never announced: it is new to us.
                p.insert(nexus.to_string(), VecDeque::new());
                None
            }
        }
    }
}
