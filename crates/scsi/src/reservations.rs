//! Reservations: PERSISTENT RESERVE IN/OUT (SPC-4 5.13, 6.15, 6.16) and the
//! legacy RESERVE/RELEASE (6)/(10) of SPC-2, with the access rules every other
//! command is checked against.
//!
//! The persistent state (registrations, the reservation, the generation and
//! APTPL) is saved through a [`StateStore`] after every change that must
//! survive a restart; the legacy reservation lives only as long as the holder's
//! I_T nexus, as SPC-2 wants.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::cdb::{be16, be32, be64, op};
use crate::sense::{key, Sense};
use crate::unit_attention::UnitAttentions;

/// RESERVATIONS PREEMPTED.
pub const RESERVATIONS_PREEMPTED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2A, 0x03);
/// RESERVATIONS RELEASED.
pub const RESERVATIONS_RELEASED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2A, 0x04);
/// REGISTRATIONS PREEMPTED.
pub const REGISTRATIONS_PREEMPTED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2A, 0x05);
/// Not sense data: the command ends with RESERVATION CONFLICT status and no sense.
pub const CONFLICT: Sense = Sense::new(0xFF, 0, 0);
/// INVALID RELEASE OF PERSISTENT RESERVATION.
const INVALID_RELEASE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x04);
/// INSUFFICIENT REGISTRATION RESOURCES.
const NO_REGISTRATION_RESOURCES: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x55, 0x04);

/// Most registrations one logical unit keeps (initiator ports of a small cluster, with room).
pub const MAX_REGISTRATIONS: usize = 256;

/// Persistent reservation types (SPC-4 table 170).
pub mod kind {
    pub const WRITE_EXCLUSIVE: u8 = 0x1;
    pub const EXCLUSIVE_ACCESS: u8 = 0x3;
    pub const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 0x5;
    pub const EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: u8 = 0x6;
    pub const WRITE_EXCLUSIVE_ALL_REGISTRANTS: u8 = 0x7;
    pub const EXCLUSIVE_ACCESS_ALL_REGISTRANTS: u8 = 0x8;
}

fn valid_kind(t: u8) -> bool {
    matches!(t, 1 | 3 | 5 | 6 | 7 | 8)
}

fn all_registrants(t: u8) -> bool {
    matches!(
        t,
        kind::WRITE_EXCLUSIVE_ALL_REGISTRANTS | kind::EXCLUSIVE_ACCESS_ALL_REGISTRANTS
    )
}

fn registrants_only(t: u8) -> bool {
    matches!(
        t,
        kind::WRITE_EXCLUSIVE_REGISTRANTS_ONLY | kind::EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
    )
}

/// Where a logical unit keeps its persistent reservation state.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Replaces the saved state with `bytes`, durably (and, for a volume
    /// several nodes present, on every copy that must have it), before
    /// returning. `Err` is the sense the PERSISTENT RESERVE OUT ends with;
    /// the change then does not take effect here.
    async fn save(&self, bytes: Vec<u8>) -> Result<(), Sense>;
}

/// One registration: an I_T nexus and its reservation key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Initiator port name of the nexus ("iqn...,i,0x<ISID>").
    pub nexus: String,
    /// Reservation key.
    pub key: u64,
}

/// The persistent reservation, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The nexus that holds it (for all-registrants types, the one that made it).
    pub holder: String,
    /// Reservation type.
    pub kind: u8,
}

/// Everything PERSISTENT RESERVE OUT changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentState {
    /// PRgeneration, bumped by every registration change.
    pub generation: u32,
    /// Registered nexuses in registration order.
    pub registrations: Vec<Registration>,
    /// The persistent reservation.
    pub reservation: Option<Reservation>,
    /// Activate Persist Through Power Loss, as last set by a registration.
    pub aptpl: bool,
    /// The mode settings MODE SELECT last made, for a unit that several
    /// nodes present: the node that runs its commands next starts from
    /// them (`None`: never changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ModeSettings>,
}

/// The mode parameters an initiator can change, as kept with the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeSettings {
    /// Caching page WCE.
    pub write_cache: bool,
    /// Control page D_SENSE.
    pub d_sense: bool,
    /// Control page SWP.
    pub swp: bool,
}

impl PersistentState {
    /// Decodes what [`PersistentState::encode`] produced. Without APTPL
    /// nothing persists across a restart, so such a state comes back empty.
    pub fn decode(bytes: &[u8]) -> Result<PersistentState, serde_json::Error> {
        let s: PersistentState = serde_json::from_slice(bytes)?;
        Ok(if s.aptpl {
            s
        } else {
            PersistentState::default()
        })
    }

    /// Decodes what [`PersistentState::encode`] produced, whatever its
    /// APTPL: for state that never went through a loss of power, such as
    /// the copy another node of the cluster handed over while it served.
    pub fn decode_current(bytes: &[u8]) -> Result<PersistentState, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The saved form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("plain data encodes")
    }

    fn key_of(&self, nexus: &str) -> Option<u64> {
        self.registrations
            .iter()
            .find(|r| r.nexus == nexus)
            .map(|r| r.key)
    }

    fn holds(&self, nexus: &str) -> bool {
        match &self.reservation {
            Some(r) if all_registrants(r.kind) => self.key_of(nexus).is_some(),
            Some(r) => r.holder == nexus,
            None => false,
        }
    }

    /// Removes `nexus`'s registration, releasing the reservation when it was the
    /// last holder (SPC-4 5.13.11.2.3). Returns the nexuses to tell RESERVATIONS RELEASED.
    fn unregister(&mut self, nexus: &str) -> Vec<String> {
        self.registrations.retain(|r| r.nexus != nexus);
        let mut notify = Vec::new();
        let release = match &self.reservation {
            Some(r) if all_registrants(r.kind) => self.registrations.is_empty(),
            Some(r) => r.holder == nexus,
            None => false,
        };
        if release {
            let kind = self.reservation.take().map(|r| r.kind).unwrap_or(0);
            if registrants_only(kind) {
                notify = self.registrations.iter().map(|r| r.nexus.clone()).collect();
            }
        }
        notify
    }
}

/// What a command does to the medium, for the reservation checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Never conflicts (INQUIRY, REPORT LUNS, PERSISTENT RESERVE IN, ...).
    Free,
    /// Reads data or metadata of the medium.
    Read,
    /// Changes the medium or the unit's state.
    Write,
}

/// Classifies a CDB (SPC-4 table 63, SBC-3 table 13).
pub fn access_of(cdb: &[u8]) -> Access {
    match cdb[0] {
        op::INQUIRY
        | op::REPORT_LUNS
        | op::REQUEST_SENSE
        | op::TEST_UNIT_READY
        | op::PERSISTENT_RESERVE_IN
        | op::PERSISTENT_RESERVE_OUT
        | op::MAINTENANCE_IN
        | op::READ_CAPACITY_10
        | op::RESERVE_6
        | op::RESERVE_10
        | op::RELEASE_6
        | op::RELEASE_10 => Access::Free,
        op::SERVICE_ACTION_IN_16 if cdb.len() > 1 && cdb[1] & 0x1F == 0x10 => Access::Free,
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::PRE_FETCH_10
        | op::PRE_FETCH_16
        | op::SERVICE_ACTION_IN_16
        | op::MODE_SENSE_6
        | op::MODE_SENSE_10
        | op::READ_DEFECT_DATA_10
        | op::READ_DEFECT_DATA_12
        | op::RECEIVE_COPY_RESULTS => Access::Read,
        _ => Access::Write,
    }
}

/// The reservation state of one logical unit.
pub struct Reservations {
    state: Mutex<PersistentState>,
    /// Holder of the SPC-2 reservation.
    legacy: Mutex<Option<String>>,
    /// Fast path: false when there is no reservation of either kind.
    any: AtomicBool,
    /// Serializes PERSISTENT RESERVE OUT so saves land in the order of changes.
    out_lock: tokio::sync::Mutex<()>,
    store: Option<Arc<dyn StateStore>>,
}

impl Reservations {
    /// Starts from `state` (as loaded from the store), saving changes to `store`.
    pub fn new(state: PersistentState, store: Option<Arc<dyn StateStore>>) -> Reservations {
        Reservations {
            any: AtomicBool::new(state.reservation.is_some()),
            state: Mutex::new(state),
            legacy: Mutex::new(None),
            out_lock: tokio::sync::Mutex::new(()),
            store,
        }
    }

    fn refresh(&self) {
        let any = self.state.lock().unwrap().reservation.is_some()
            || self.legacy.lock().unwrap().is_some();
        self.any.store(any, Ordering::SeqCst);
    }

    /// Whether `nexus` may run `cdb` now; false means RESERVATION CONFLICT.
    pub fn allows(&self, nexus: &str, cdb: &[u8]) -> bool {
        if !self.any.load(Ordering::SeqCst) {
            return true;
        }
        let opcode = cdb[0];
        if let Some(holder) = self.legacy.lock().unwrap().as_deref() {
            if holder != nexus {
                // SPC-2 7.21: every command of another nexus conflicts, but these.
                return matches!(
                    opcode,
                    op::INQUIRY
                        | op::REPORT_LUNS
                        | op::REQUEST_SENSE
                        | op::RELEASE_6
                        | op::RELEASE_10
                        | op::MAINTENANCE_IN
                        | op::PERSISTENT_RESERVE_IN
                );
            }
            return true;
        }
        let access = access_of(cdb);
        let s = self.state.lock().unwrap();
        let Some(res) = &s.reservation else {
            return true;
        };
        if access == Access::Free || s.holds(nexus) {
            return true;
        }
        let registered = s.key_of(nexus).is_some();
        match res.kind {
            kind::WRITE_EXCLUSIVE => access == Access::Read,
            kind::EXCLUSIVE_ACCESS => false,
            kind::WRITE_EXCLUSIVE_REGISTRANTS_ONLY | kind::WRITE_EXCLUSIVE_ALL_REGISTRANTS => {
                registered || access == Access::Read
            }
            _ => registered,
        }
    }

    /// RESERVE (6)/(10) (SPC-2 7.21). [`CONFLICT`] is RESERVATION CONFLICT.
    pub fn reserve_legacy(&self, nexus: &str, cdb: &[u8]) -> Result<(), Sense> {
        let (third_party, extent) = if cdb[0] == op::RESERVE_6 {
            (cdb[1] & 0x10 != 0, cdb[1] & 0x01 != 0)
        } else {
            (cdb[1] & 0x12 != 0, cdb[1] & 0x01 != 0)
        };
        if third_party || extent {
            return Err(Sense::invalid_cdb(1, None));
        }
        let s = self.state.lock().unwrap();
        if s.reservation.is_some() {
            return Err(CONFLICT);
        }
        let mut legacy = self.legacy.lock().unwrap();
        match legacy.as_deref() {
            Some(h) if h != nexus => return Err(CONFLICT),
            _ => *legacy = Some(nexus.to_string()),
        }
        drop((legacy, s));
        self.refresh();
        Ok(())
    }

    /// Ends the SPC-2 reservation if `nexus` holds it, whoever holds it for
    /// `None`: RELEASE (6)/(10) by the holder (anyone else's does nothing),
    /// the holder's nexus gone, a reset. Persistent reservations stay.
    pub fn end_legacy(&self, nexus: Option<&str>) {
        let mut legacy = self.legacy.lock().unwrap();
        if nexus.is_none() || legacy.as_deref() == nexus {
            *legacy = None;
        }
        drop(legacy);
        self.refresh();
    }

    /// PERSISTENT RESERVE IN (SPC-4 6.15).
    pub fn persistent_reserve_in(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        let s = self.state.lock().unwrap();
        let mut d = Vec::new();
        d.extend_from_slice(&s.generation.to_be_bytes());
        match cdb[1] & 0x1F {
            // READ KEYS
            0x00 => {
                d.extend_from_slice(&((8 * s.registrations.len()) as u32).to_be_bytes());
                for r in &s.registrations {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            // READ RESERVATION
            0x01 => match &s.reservation {
                None => d.extend_from_slice(&0u32.to_be_bytes()),
                Some(r) => {
                    d.extend_from_slice(&16u32.to_be_bytes());
                    let key = if all_registrants(r.kind) {
                        0
                    } else {
                        s.key_of(&r.holder).unwrap_or(0)
                    };
                    d.extend_from_slice(&key.to_be_bytes());
                    d.extend_from_slice(&[0, 0, 0, 0, 0, r.kind & 0x0F, 0, 0]);
                }
            },
            // REPORT CAPABILITIES
            0x02 => {
                d.clear();
                d.extend_from_slice(&8u16.to_be_bytes());
                // CRH, ATP_C (one target port: all ports are this port), PTPL_C.
                d.push(0x10 | 0x04 | 0x01);
                // TMV, ALLOW COMMANDS 001b, PTPL_A.
                d.push(0x80 | 0x10 | u8::from(s.aptpl));
                // Type mask: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; EX_AC_AR.
                d.push(0x80 | 0x40 | 0x20 | 0x08 | 0x02);
                d.push(0x01);
                d.extend_from_slice(&[0, 0]);
            }
            // READ FULL STATUS
            0x03 => {
                let mut body = Vec::new();
                for r in &s.registrations {
                    let holder = s.holds(&r.nexus);
                    let mut desc = Vec::with_capacity(24 + 64);
                    desc.extend_from_slice(&r.key.to_be_bytes());
                    desc.extend_from_slice(&[0, 0, 0, 0]);
                    desc.push(0x02 | u8::from(holder)); // ALL_TG_PT, R_HOLDER
                    desc.push(match (&s.reservation, holder) {
                        (Some(res), true) => res.kind & 0x0F,
                        _ => 0,
                    });
                    desc.extend_from_slice(&[0, 0, 0, 0]);
                    desc.extend_from_slice(&1u16.to_be_bytes()); // relative target port
                    let tid = transport_id(&r.nexus);
                    desc.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    desc.extend(tid);
                    body.extend(desc);
                }
                d.extend_from_slice(&(body.len() as u32).to_be_bytes());
                d.extend(body);
            }
            _ => return Err(Sense::invalid_cdb(1, Some(4))),
        }
        Ok(d)
    }

    /// PERSISTENT RESERVE OUT (SPC-4 6.16). `Err(CONFLICT)` is RESERVATION CONFLICT.
    ///
    /// A change is worked out on a copy of the state, saved, and only then
    /// put in force and announced: a change that cannot be saved (a full
    /// disk, a cluster that cannot reach its other copies) is not in force
    /// anywhere it answered.
    pub async fn persistent_reserve_out(
        &self,
        nexus: &str,
        cdb: &[u8],
        params: &[u8],
        attentions: &UnitAttentions,
    ) -> Result<(), Sense> {
        let _serial = self.out_lock.lock().await;
        let current = self.state.lock().unwrap().clone();
        let mut next = current.clone();
        let legacy = self.legacy.lock().unwrap().clone();
        let mut notify = Vec::new();
        let outcome = change(
            &mut next,
            legacy.as_deref(),
            nexus,
            cdb,
            params,
            &mut notify,
        );
        if next != current {
            self.save(&next).await?;
            *self.state.lock().unwrap() = next;
            self.refresh();
        }
        for (n, ua) in notify {
            attentions.raise(&n, ua);
        }
        outcome
    }

    /// Keeps `mode` with the state (saved like a reservation change), then
    /// runs `apply` to put it in force, in the order of every other change.
    pub async fn save_mode(&self, mode: ModeSettings, apply: impl FnOnce()) -> Result<(), Sense> {
        let _serial = self.out_lock.lock().await;
        let mut next = self.state.lock().unwrap().clone();
        if next.mode != Some(mode) {
            next.mode = Some(mode);
            self.save(&next).await?;
            *self.state.lock().unwrap() = next;
        }
        apply();
        Ok(())
    }

    /// Puts `state` in force in place of the current one, and ends the
    /// SPC-2 reservation: the unit takes over the state another node kept
    /// (a cluster volume's new primary).
    pub fn replace(&self, state: PersistentState) {
        *self.state.lock().unwrap() = state;
        *self.legacy.lock().unwrap() = None;
        self.refresh();
    }

    async fn save(&self, s: &PersistentState) -> Result<(), Sense> {
        match &self.store {
            Some(store) => store.save(s.encode()).await,
            None => Ok(()),
        }
    }
}

/// Applies one PERSISTENT RESERVE OUT to `s`; `legacy` is the holder of an
/// SPC-2 reservation. Fills in whom to notify.
fn change(
    s: &mut PersistentState,
    legacy: Option<&str>,
    nexus: &str,
    cdb: &[u8],
    params: &[u8],
    notify: &mut Vec<(String, Sense)>,
) -> Result<(), Sense> {
    if legacy.is_some_and(|holder| holder != nexus) {
        return Err(CONFLICT);
    }
    let action = cdb[1] & 0x1F;
    let scope = cdb[2] >> 4;
    let kind = cdb[2] & 0x0F;
    let list_len = be32(cdb, 5) as usize;
    if action > 0x07 {
        return Err(Sense::invalid_cdb(1, Some(4)));
    }
    if action == 0x07 {
        return register_and_move(s, nexus, list_len, params);
    }
    if list_len != 24 {
        // SPEC_I_PT is not supported, so the list is always the basic 24 bytes.
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    if params.len() < 24 {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let res_key = be64(params, 0);
    let sa_key = be64(params, 8);
    let flags = params[20];
    if flags & 0x08 != 0 {
        // SPEC_I_PT
        return Err(Sense::INVALID_PARAM.with_field(20, Some(3)));
    }
    let aptpl = flags & 0x01 != 0;
    let mine = s.key_of(nexus);
    // Every action but registering needs the nexus registered under the
    // reservation key it gives.
    if !matches!(action, 0x00 | 0x06) && mine != Some(res_key) {
        return Err(CONFLICT);
    }
    match action {
        // REGISTER, REGISTER AND IGNORE EXISTING KEY
        0x00 | 0x06 => {
            let ignore = action == 0x06;
            match mine {
                None if !ignore && res_key != 0 => Err(CONFLICT),
                None if sa_key == 0 => Ok(()),
                None => {
                    if s.registrations.len() >= MAX_REGISTRATIONS {
                        return Err(NO_REGISTRATION_RESOURCES);
                    }
                    s.registrations.push(Registration {
                        nexus: nexus.to_string(),
                        key: sa_key,
                    });
                    s.aptpl = aptpl;
                    s.generation = s.generation.wrapping_add(1);
                    Ok(())
                }
                Some(k) if !ignore && k != res_key => Err(CONFLICT),
                Some(_) if sa_key == 0 => {
                    for n in s.unregister(nexus) {
                        notify.push((n, RESERVATIONS_RELEASED));
                    }
                    s.generation = s.generation.wrapping_add(1);
                    Ok(())
                }
                Some(_) => {
                    for r in s.registrations.iter_mut().filter(|r| r.nexus == nexus) {
                        r.key = sa_key;
                    }
                    s.aptpl = aptpl;
                    s.generation = s.generation.wrapping_add(1);
                    Ok(())
                }
            }
        }
        // RESERVE
        0x01 => {
            check_type(scope, kind)?;
            match &s.reservation {
                None => {
                    s.reservation = Some(Reservation {
                        holder: nexus.to_string(),
                        kind,
                    });
                    Ok(())
                }
                Some(r) if s.holds(nexus) && r.kind == kind => Ok(()),
                Some(_) => Err(CONFLICT),
            }
        }
        // RELEASE
        0x02 => match s.reservation.clone() {
            Some(r) if s.holds(nexus) => {
                if r.kind != kind || scope != 0 {
                    return Err(INVALID_RELEASE);
                }
                s.reservation = None;
                if registrants_only(r.kind) || all_registrants(r.kind) {
                    for reg in s.registrations.iter().filter(|x| x.nexus != nexus) {
                        notify.push((reg.nexus.clone(), RESERVATIONS_RELEASED));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        },
        // CLEAR
        0x03 => {
            for reg in s.registrations.iter().filter(|x| x.nexus != nexus) {
                notify.push((reg.nexus.clone(), RESERVATIONS_PREEMPTED));
            }
            s.registrations.clear();
            s.reservation = None;
            s.generation = s.generation.wrapping_add(1);
            Ok(())
        }
        // PREEMPT, PREEMPT AND ABORT
        _ => preempt(s, nexus, sa_key, scope, kind, notify),
    }
}

// SPC-4 5.13.8: REGISTER AND MOVE hands the reservation to another nexus.
fn register_and_move(
    s: &mut PersistentState,
    nexus: &str,
    list_len: usize,
    params: &[u8],
) -> Result<(), Sense> {
    if list_len < 24 || params.len() < list_len {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let res_key = be64(params, 0);
    let sa_key = be64(params, 8);
    let unreg = params[17] & 0x02 != 0;
    let aptpl = params[17] & 0x01 != 0;
    let tid_len = be32(params, 20) as usize;
    if 24 + tid_len > list_len {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let Some(dest) = parse_transport_id(&params[24..24 + tid_len]) else {
        return Err(Sense::INVALID_PARAM.with_field(24, None));
    };
    let Some(mine) = s.key_of(nexus) else {
        return Err(CONFLICT);
    };
    if mine != res_key {
        return Err(CONFLICT);
    }
    let Some(res) = s.reservation.clone() else {
        return Err(CONFLICT);
    };
    if all_registrants(res.kind) || res.holder != nexus {
        return Err(CONFLICT);
    }
    if sa_key == 0 {
        return Err(Sense::INVALID_PARAM.with_field(8, None));
    }
    if dest == nexus {
        return Err(Sense::INVALID_PARAM.with_field(24, None));
    }
    match s.registrations.iter_mut().find(|r| r.nexus == dest) {
        Some(r) => r.key = sa_key,
        None => {
            if s.registrations.len() >= MAX_REGISTRATIONS {
                return Err(NO_REGISTRATION_RESOURCES);
            }
            s.registrations.push(Registration {
                nexus: dest.clone(),
                key: sa_key,
            });
        }
    }
    s.reservation = Some(Reservation {
        holder: dest,
        kind: res.kind,
    });
    if unreg {
        s.registrations.retain(|r| r.nexus != nexus);
    }
    s.aptpl = aptpl;
    s.generation = s.generation.wrapping_add(1);
    Ok(())
}

// SPC-4 5.13.11.4: PREEMPT.
fn preempt(
    s: &mut PersistentState,
    nexus: &str,
    sa_key: u64,
    scope: u8,
    kind: u8,
    notify: &mut Vec<(String, Sense)>,
) -> Result<(), Sense> {
    let remove_matching = |s: &mut PersistentState, notify: &mut Vec<(String, Sense)>| {
        let before = s.registrations.len();
        let (gone, kept): (Vec<_>, Vec<_>) = s
            .registrations
            .drain(..)
            .partition(|r| r.key == sa_key && r.nexus != nexus);
        s.registrations = kept;
        for r in gone {
            notify.push((r.nexus, REGISTRATIONS_PREEMPTED));
        }
        before != s.registrations.len()
    };
    match s.reservation.clone() {
        Some(res) if all_registrants(res.kind) && sa_key == 0 => {
            check_type(scope, kind)?;
            let others: Vec<_> = s
                .registrations
                .iter()
                .filter(|r| r.nexus != nexus)
                .map(|r| r.nexus.clone())
                .collect();
            s.registrations.retain(|r| r.nexus == nexus);
            for n in others {
                notify.push((n, REGISTRATIONS_PREEMPTED));
            }
            s.reservation = Some(Reservation {
                holder: nexus.to_string(),
                kind,
            });
        }
        Some(res) if !all_registrants(res.kind) && s.key_of(&res.holder) == Some(sa_key) => {
            check_type(scope, kind)?;
            remove_matching(s, notify);
            s.reservation = Some(Reservation {
                holder: nexus.to_string(),
                kind,
            });
            if res.kind != kind {
                for r in s.registrations.iter().filter(|r| r.nexus != nexus) {
                    if !notify.iter().any(|(n, _)| *n == r.nexus) {
                        notify.push((r.nexus.clone(), RESERVATIONS_RELEASED));
                    }
                }
            }
        }
        _ => {
            if sa_key == 0 {
                return Err(Sense::INVALID_PARAM.with_field(8, None));
            }
            if !remove_matching(s, notify) {
                return Err(CONFLICT);
            }
        }
    }
    s.generation = s.generation.wrapping_add(1);
    Ok(())
}

fn check_type(scope: u8, kind: u8) -> Result<(), Sense> {
    if scope != 0 {
        return Err(Sense::invalid_cdb(2, Some(7)));
    }
    if !valid_kind(kind) {
        return Err(Sense::invalid_cdb(2, Some(3)));
    }
    Ok(())
}

/// iSCSI TransportID of an initiator port, format 01b (SPC-4 7.6.4.6):
/// "<name>,i,0x<ISID>", NUL-terminated, padded to a multiple of four.
pub fn transport_id(nexus: &str) -> Vec<u8> {
    let mut name: Vec<u8> = nexus.as_bytes().to_vec();
    name.push(0);
    while !name.len().is_multiple_of(4) || name.len() < 20 {
        name.push(0);
    }
    let mut t = vec![0x40 | 0x05, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend(name);
    t
}

/// The initiator port named by an iSCSI TransportID (format 01b; format 00b
/// names a device, which is taken with ISID 0 as no port is known).
pub fn parse_transport_id(t: &[u8]) -> Option<String> {
    if t.len() < 4 || t[0] & 0x0F != 0x05 {
        return None;
    }
    let len = be16(t, 2) as usize;
    let body = t.get(4..4 + len)?;
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    let text = std::str::from_utf8(&body[..end]).ok()?;
    match t[0] >> 6 {
        1 => {
            let (name, isid) = text
                .split_once(",i,0x")
                .or_else(|| text.split_once(",I,0x"))?;
            Some(format!("{name},i,0x{}", isid.to_ascii_lowercase()))
        }
        0 => Some(format!("{text},i,0x000000000000")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_id_round_trip() {
        let n = "iqn.2026-11.org.example:host1,i,0x23d000000001";
        let t = transport_id(n);
        assert_eq!(t.len() % 4, 0);
        assert_eq!(parse_transport_id(&t).as_deref(), Some(n));
        assert_eq!(parse_transport_id(&[0x45, 0, 0, 2, b'x']), None);
    }

    #[test]
    fn state_without_aptpl_does_not_survive() {
        let mut s = PersistentState::default();
        s.registrations.push(Registration {
            nexus: "a".into(),
            key: 7,
        });
        assert_eq!(
            PersistentState::decode(&s.encode()).unwrap(),
            PersistentState::default()
        );
        s.aptpl = true;
        assert_eq!(PersistentState::decode(&s.encode()).unwrap(), s);
        assert!(PersistentState::decode(b"not json").is_err());
    }
}
