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
///
/// A unit that runs commands other nodes pass on (see [`crate::Owner`])
/// keeps the nexuses of those nodes apart: they hear what happens to the
/// unit as a whole (a reset, a reservation change, new mode parameters)
/// from here, and what happens to their port from their own node.
#[derive(Default)]
pub struct UnitAttentions {
    pending: Mutex<HashMap<String, VecDeque<Sense>>>,
    /// Nexuses logged in through other nodes, as their commands arrive.
    forwarded: Mutex<HashMap<String, VecDeque<Sense>>>,
}

fn push(q: &mut VecDeque<Sense>, ua: Sense) {
    if !q.contains(&ua) {
        q.push_back(ua);
    }
}

impl UnitAttentions {
    /// A nexus (re)appeared: it starts with POWER ON only.
    pub fn nexus_added(&self, nexus: &str) {
        let mut p = self.pending.lock().unwrap();
        p.insert(nexus.to_string(), VecDeque::from([POWER_ON]));
    }

    /// Queues `ua` for every nexus logged in here (no duplicates): an
    /// event of this node's port.
    pub fn raise_all(&self, ua: Sense) {
        for q in self.pending.lock().unwrap().values_mut() {
            push(q, ua);
        }
    }

    /// Queues `ua` for every nexus known here, those of other nodes too:
    /// an event of the unit as a whole.
    pub fn raise_unit(&self, ua: Sense) {
        self.raise_all(ua);
        for q in self.forwarded.lock().unwrap().values_mut() {
            push(q, ua);
        }
    }

    /// Queues `ua` for every nexus known here, those of other nodes too,
    /// but `except` (no duplicates).
    pub fn raise_others(&self, except: &str, ua: Sense) {
        for map in [&self.pending, &self.forwarded] {
            for (n, q) in map.lock().unwrap().iter_mut() {
                if n != except {
                    push(q, ua);
                }
            }
        }
    }

    /// Queues `ua` for one nexus (no duplicates), wherever it is logged in.
    pub fn raise(&self, nexus: &str, ua: Sense) {
        let mut p = self.pending.lock().unwrap();
        if let Some(q) = p.get_mut(nexus) {
            return push(q, ua);
        }
        drop(p);
        push(
            self.forwarded
                .lock()
                .unwrap()
                .entry(nexus.to_string())
                .or_default(),
            ua,
        );
    }

    /// Takes the oldest pending unit attention of a nexus logged in
    /// through another node, which is known here from now on.
    pub fn take_forwarded(&self, nexus: &str) -> Option<Sense> {
        self.forwarded
            .lock()
            .unwrap()
            .entry(nexus.to_string())
            .or_default()
            .pop_front()
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
