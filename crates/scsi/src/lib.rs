//! SCSI logical unit over a [`volume::Volume`]: parses CDBs (SPC-4, SBC-3),
//! executes them against the volume and builds status, data-in and sense.
//! No sockets here: the iSCSI target hands in a CDB plus data-out and gets a
//! [`Response`] back.
#![forbid(unsafe_code)]

mod block;
mod cdb;
mod inquiry;
mod limits;
mod mode;
mod opcodes;
mod owner;
pub mod reservations;
mod sense;
pub mod stats;
mod unit_attention;
pub mod xcopy;

use std::sync::Arc;

use bytes::Bytes;
use volume::Volume;

pub use cdb::{cdb_len, op};
pub use limits::Limits;
pub use owner::{Owner, Place};
pub use sense::{key as sense_key, Sense};

use crate::block::Outcome;
use crate::cdb::{be16, be32};
use crate::reservations::{ModeSettings, PersistentState, Reservations, StateStore, CONFLICT};
use crate::unit_attention::UnitAttentions;

/// SAM-5 status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    TaskAborted = 0x40,
}

impl Status {
    /// The status with code `code`, if SAM-5 defines it here.
    pub fn from_code(code: u8) -> Option<Status> {
        [
            Status::Good,
            Status::CheckCondition,
            Status::ConditionMet,
            Status::Busy,
            Status::ReservationConflict,
            Status::TaskSetFull,
            Status::TaskAborted,
        ]
        .into_iter()
        .find(|s| *s as u8 == code)
    }
}

/// Who a LUN presents itself as (INQUIRY, VPD 0x80/0x83). Built by the node from
/// the installation UUID and the volume id, so identities never collide.
#[derive(Debug, Clone)]
pub struct LunIdentity {
    /// T10 vendor identification, at most 8 ASCII characters.
    pub vendor: String,
    /// Product identification, at most 16 ASCII characters.
    pub product: String,
    /// Product revision level, at most 4 ASCII characters.
    pub revision: String,
    /// Unit serial number (VPD 0x80), printable ASCII.
    pub serial: String,
    /// NAA designator bytes for VPD 0x83 (8 bytes NAA 3 locally assigned, or 16 bytes NAA 6).
    pub naa: Vec<u8>,
    /// Name of the target this LUN is reached through (iSCSI IQN), for the
    /// SCSI name string designators.
    pub target_name: String,
    /// Relative target port identifier (VPD 0x83 designator type 4).
    pub relative_port: u16,
    /// Target port group (VPD 0x83 designator type 5, ALUA).
    pub port_group: u16,
}

/// One SCSI command as the transport delivers it.
#[derive(Debug)]
pub struct Request<'a> {
    /// The command descriptor block as received (up to 16 bytes, may carry padding).
    pub cdb: &'a [u8],
    /// Every data-out byte the initiator sent for the command (empty for reads).
    pub data_out: Bytes,
    /// Expected data transfer length the initiator announced (bytes).
    pub expected_len: u32,
    /// The I_T nexus: initiator port name (for iSCSI "iqn...,i,0x<ISID>").
    pub initiator: &'a str,
}

/// The outcome of one command.
#[derive(Debug, Clone)]
pub struct Response {
    /// SCSI status.
    pub status: Status,
    /// Data-in the command produced, already cut to the CDB's allocation length.
    /// The transport cuts it further to the expected transfer length and
    /// reports the residual.
    pub data: Vec<u8>,
    /// Encoded sense data (fixed or descriptor format) for CHECK CONDITION.
    pub sense: Option<Vec<u8>>,
    /// For commands with data-out: how many bytes the CDB asked the initiator
    /// to send, so the transport can report over/underflow residuals.
    pub data_out_wanted: Option<u32>,
}

/// A logical unit backed by one volume. Shared by every session that sees it.
pub struct LogicalUnit {
    volume: Arc<dyn Volume>,
    identity: LunIdentity,
    attentions: UnitAttentions,
    reservations: Reservations,
    copies: xcopy::CopyManager,
    mode: std::sync::Mutex<mode::Settings>,
    groups: std::sync::Mutex<Vec<PortGroup>>,
    fence: tokio::sync::RwLock<()>,
    space_warned: std::sync::atomic::AtomicBool,
    /// For a unit several nodes present: the node that runs its commands.
    owner: Option<Arc<dyn Owner>>,
    /// What initiators' commands here came to.
    stats: stats::UnitStats,
}

/// A command past [`LogicalUnit::admit`], with what its answer depends on.
struct Admitted {
    /// Data-out bytes the CDB asks for, for the residual.
    data_out_wanted: Option<u32>,
    /// The mode settings the command runs under.
    settings: mode::Settings,
}

impl Admitted {
    /// CHECK CONDITION with `sense`, in the format the initiator chose.
    fn fail(&self, sense: Sense) -> Response {
        check_condition(sense, self.data_out_wanted, self.settings.d_sense)
    }

    /// The answer to a command that ran: its data-in cut to the allocation
    /// length, or its failure.
    fn respond(&self, outcome: Outcome, alloc: Option<usize>) -> Response {
        match outcome {
            Ok(mut data) => {
                if let Some(a) = alloc {
                    data.truncate(a);
                }
                Response {
                    status: Status::Good,
                    data,
                    sense: None,
                    data_out_wanted: self.data_out_wanted,
                }
            }
            Err(CONFLICT) => reservation_conflict(self.data_out_wanted),
            Err(sense) => self.fail(sense),
        }
    }
}

/// Held while a command runs; see [`LogicalUnit::execute`].
enum Fence<'a> {
    Shared(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'a, ()>),
}

/// Asymmetric access states (SPC-4 5.15.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AccessState {
    /// Active/optimized: the preferred path.
    ActiveOptimized = 0x0,
    /// Active/non-optimized: works, at a cost (I/O is forwarded).
    ActiveNonOptimized = 0x1,
    /// Standby: only management commands.
    Standby = 0x2,
    /// Unavailable: only management commands.
    Unavailable = 0x3,
    /// Transitioning between states.
    Transitioning = 0xF,
}

/// One target port group as REPORT TARGET PORT GROUPS shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroup {
    /// Target port group identifier (VPD 0x83 designator type 5).
    pub id: u16,
    /// Access state of every port in the group.
    pub state: AccessState,
    /// Whether this is the preferred group (PREF bit).
    pub preferred: bool,
    /// Relative target port identifiers in the group.
    pub ports: Vec<u16>,
    /// Status code: 0x02 after an implicit state change.
    pub status: u8,
}

impl LogicalUnit {
    /// Creates the logical unit for `volume`, presented as `identity`.
    pub fn new(volume: Arc<dyn Volume>, identity: LunIdentity) -> Self {
        LogicalUnit {
            identity: identity.clone(),
            attentions: UnitAttentions::default(),
            reservations: Reservations::new(PersistentState::default(), None),
            copies: xcopy::CopyManager::default(),
            mode: std::sync::Mutex::new(mode::Settings {
                write_cache: volume.write_cache(),
                d_sense: false,
                swp: false,
            }),
            groups: std::sync::Mutex::new(vec![PortGroup {
                id: identity.port_group,
                state: AccessState::ActiveOptimized,
                preferred: true,
                ports: vec![identity.relative_port],
                status: 0,
            }]),
            fence: tokio::sync::RwLock::new(()),
            space_warned: std::sync::atomic::AtomicBool::new(false),
            owner: None,
            stats: stats::UnitStats::default(),
            volume,
        }
    }

    /// What the commands initiators sent to this unit came to (those
    /// another node's port passed on are counted there).
    pub fn stats(&self) -> &stats::UnitStats {
        &self.stats
    }

    fn mode_state(&self) -> mode::ModeState {
        mode::ModeState {
            num_blocks: self.volume.num_blocks(),
            block_size: self.volume.block_size(),
            volatile_cache: self.volume.write_cache(),
            settings: *self.mode.lock().unwrap(),
        }
    }

    /// Lets EXTENDED COPY reach the other logical units of the node.
    pub fn with_directory(self, directory: std::sync::Weak<dyn xcopy::UnitDirectory>) -> Self {
        self.copies.set_directory(directory);
        self
    }

    /// Whether `d` (a VPD 0x83 designation descriptor: code set, type, length,
    /// value) names this logical unit.
    pub fn has_designator(&self, d: &[u8]) -> bool {
        if d.len() < 4 || (d[1] >> 4) & 0x03 != 0 {
            return false;
        }
        let len = d[3] as usize;
        let Some(value) = d.get(4..4 + len) else {
            return false;
        };
        match d[1] & 0x0F {
            0x03 => value == self.identity.naa.as_slice(),
            0x01 => value == inquiry::t10_designator(&self.identity).as_slice(),
            _ => false,
        }
    }

    /// Starts from persistent reservations loaded from `store` (see
    /// [`PersistentState::decode`]) and saves every change back to it.
    pub fn with_reservations(mut self, state: PersistentState, store: Arc<dyn StateStore>) -> Self {
        self.reservations = Reservations::new(state, Some(store));
        self
    }

    /// Presents a unit that other nodes present too: commands that do not
    /// belong to this node's target port run where `owner` says.
    pub fn with_owner(mut self, owner: Arc<dyn Owner>) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Puts the persistent reservations another node kept in force here
    /// (this node now runs the unit's commands) and ends any SPC-2
    /// reservation, as a change of the node in charge resets it.
    pub fn load_reservations(&self, state: PersistentState) {
        let mut m = self.mode.lock().unwrap();
        *m = match state.mode {
            Some(s) => mode::Settings {
                write_cache: s.write_cache,
                d_sense: s.d_sense,
                swp: s.swp,
            },
            None => mode::Settings {
                write_cache: self.volume.write_cache(),
                d_sense: false,
                swp: false,
            },
        };
        drop(m);
        self.reservations.replace(state);
    }

    /// Puts new mode settings in force; those of a unit other nodes present
    /// are kept with its state first, so the next node in charge has them
    /// (a cleared WCE must stay cleared: initiators then send no
    /// SYNCHRONIZE CACHE).
    async fn set_mode(&self, next: mode::Settings, initiator: &str) -> Result<(), Sense> {
        let apply = || {
            let mut m = self.mode.lock().unwrap();
            if *m != next {
                *m = next;
                self.attentions
                    .raise_others(initiator, mode::PARAMETERS_CHANGED);
            }
        };
        if self.owner.is_none() || *self.mode.lock().unwrap() == next {
            apply();
            return Ok(());
        }
        let kept = ModeSettings {
            write_cache: next.write_cache,
            d_sense: next.d_sense,
            swp: next.swp,
        };
        self.reservations.save_mode(kept, apply).await
    }

    /// The volume behind this unit.
    pub fn volume(&self) -> &Arc<dyn Volume> {
        &self.volume
    }

    /// The identity this unit presents.
    pub fn identity(&self) -> &LunIdentity {
        &self.identity
    }

    /// The limits this unit advertises and enforces.
    pub fn limits(&self) -> Limits {
        Limits::for_block_size(self.volume.block_size())
    }

    /// Executes one command. Never panics on any input.
    pub async fn execute(&self, req: Request<'_>) -> Response {
        let counting = self
            .stats
            .begin(req.cdb.first().copied().unwrap_or(u8::MAX));
        let data_out = req.data_out.len();
        let resp = self.run(req, false).await;
        self.stats.end(counting, data_out, &resp);
        resp
    }

    /// Executes a command another node's port passed on (see [`Owner`]):
    /// it checked the command against its own port and its own unit
    /// attentions already; here it meets this unit's state. Answers an
    /// access state transition when this node does not run the unit's
    /// commands (any more).
    pub async fn execute_forwarded(&self, req: Request<'_>) -> Response {
        self.run(req, true).await
    }

    async fn run(&self, req: Request<'_>, forwarded: bool) -> Response {
        let admitted = match self.admit(&req, forwarded) {
            Ok(a) => a,
            Err(refused) => return refused,
        };
        let opcode = req.cdb[0];
        if let Some(owner) = self.owner.as_ref().filter(|_| !port_command(opcode)) {
            match owner.place() {
                Place::Here => {}
                Place::Elsewhere if !forwarded => {
                    return owner.run(&req).await.unwrap_or_else(|s| admitted.fail(s));
                }
                _ => return admitted.fail(Sense::ALUA_TRANSITION),
            }
        }
        // Reservation changes wait for every command in flight, and commands
        // wait for a change in progress: once PERSISTENT RESERVE OUT (e.g.
        // PREEMPT AND ABORT fencing a failed cluster node) or RESERVE returns,
        // no command admitted under the old reservation is still running.
        let changes_reservations = matches!(
            opcode,
            op::PERSISTENT_RESERVE_OUT | op::RESERVE_6 | op::RESERVE_10
        );
        let _fence = if changes_reservations {
            Fence::Exclusive(self.fence.write().await)
        } else {
            Fence::Shared(self.fence.read().await)
        };
        if !self.reservations.allows(req.initiator, req.cdb) {
            return reservation_conflict(admitted.data_out_wanted);
        }
        let (mut outcome, alloc) = self.dispatch(&req).await;
        if changes_medium(opcode) {
            if let Err(e) = self.medium_changed(outcome.is_ok()).await {
                outcome = Err(e);
            }
        }
        admitted.respond(outcome, alloc)
    }

    /// Runs a READ or WRITE (without FUA) right away when nothing in it has
    /// to wait: the volume has the blocks at hand (page cache, memory) and
    /// no reservation change is under way. `None` means "not now", with
    /// nothing done: the caller runs the command through
    /// [`LogicalUnit::execute`]. A busy session's commands mostly finish
    /// here, without a task of their own and its wake-ups.
    pub fn execute_now(&self, req: &Request<'_>) -> Option<Response> {
        let counting = self.stats.begin(*req.cdb.first()?);
        let resp = self.run_now(req)?;
        self.stats.end(counting, req.data_out.len(), &resp);
        Some(resp)
    }

    /// [`LogicalUnit::execute_now`] without the counting.
    fn run_now(&self, req: &Request<'_>) -> Option<Response> {
        let opcode = *req.cdb.first()?;
        let write = match opcode {
            op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => false,
            op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => true,
            _ => return None,
        };
        if !self.volume.completes_now(write) {
            return None;
        }
        if self
            .owner
            .as_ref()
            .is_some_and(|o| o.place() != Place::Here)
        {
            return None;
        }
        let admitted = match self.admit(req, false) {
            Ok(a) => a,
            Err(refused) => return Some(refused),
        };
        // With the write cache turned off every write is flushed, which waits.
        if write && !admitted.settings.write_cache && self.volume.write_cache() {
            return None;
        }
        let _fence = self.fence.try_read().ok()?;
        if !self.reservations.allows(req.initiator, req.cdb) {
            return Some(reservation_conflict(admitted.data_out_wanted));
        }
        let v: &dyn Volume = &*self.volume;
        let limits = self.limits();
        let outcome = if write {
            let outcome = block::write_now(v, req.cdb, &req.data_out, &limits)?;
            self.watch_space();
            outcome
        } else {
            block::read_now(v, req.cdb, &limits)?
        };
        Some(admitted.respond(outcome, None))
    }

    /// The checks every command passes before it runs, in SAM-5's order: a
    /// pending unit attention, the CDB's length, the port's access state,
    /// write protection. `Err` is the answer of a command refused here.
    /// A `forwarded` command meets the unit attentions of the unit as a
    /// whole raised here (a reset, a reservation change); those of the port
    /// it came through (a new login, an access state change) are that
    /// port's to report.
    fn admit(&self, req: &Request<'_>, forwarded: bool) -> Result<Admitted, Response> {
        let cdb = req.cdb;
        let Some(&opcode) = cdb.first() else {
            return Err(check_condition(Sense::INVALID_OPCODE, None, false));
        };
        let admitted = Admitted {
            data_out_wanted: data_out_len(cdb, self.volume.block_size()),
            settings: *self.mode.lock().unwrap(),
        };
        let fail = |sense: Sense| Err(admitted.fail(sense));
        // SAM-5 5.14: a pending unit attention preempts every command but these.
        if !matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE) {
            let ua = if forwarded {
                self.attentions.take_forwarded(req.initiator)
            } else {
                self.attentions.take(req.initiator)
            };
            if let Some(ua) = ua {
                return fail(ua);
            }
        }
        match cdb_len(opcode) {
            Some(n) if cdb.len() >= n => {}
            // Short CDBs cannot be parsed; unknown groups are unknown commands.
            Some(_) => return fail(Sense::invalid_cdb(0, None)),
            None => return fail(Sense::INVALID_OPCODE),
        }
        // SPC-4 5.15.2.4: ports in standby, unavailable or transitioning
        // state answer only the commands that find a better path.
        let state = self.my_access_state();
        if !matches!(
            state,
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized
        ) && !matches!(
            opcode,
            op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE | op::MAINTENANCE_IN
        ) {
            let ascq = match state {
                AccessState::Standby => 0x0B,
                AccessState::Unavailable => 0x0C,
                _ => 0x0A,
            };
            return fail(Sense::new(sense_key::NOT_READY, 0x04, ascq));
        }
        if changes_medium(opcode) && admitted.settings.swp {
            return fail(mode::WRITE_PROTECTED);
        }
        Ok(admitted)
    }

    /// Runs the command; returns its outcome and the allocation length that cuts its data-in.
    async fn dispatch(&self, req: &Request<'_>) -> (Outcome, Option<usize>) {
        let cdb = req.cdb;
        let v: &dyn Volume = &*self.volume;
        let limits = self.limits();
        let data = &req.data_out;
        match cdb[0] {
            op::TEST_UNIT_READY | op::START_STOP_UNIT => (Ok(Vec::new()), None),
            op::INQUIRY => (
                inquiry::inquiry(cdb, &self.identity, &limits, v.provisioning()),
                Some(inquiry::allocation_length(cdb)),
            ),
            op::REQUEST_SENSE => {
                let desc = cdb[1] & 0x01 != 0;
                let sense = self.attentions.take(req.initiator).unwrap_or(Sense::new(
                    sense_key::NO_SENSE,
                    0,
                    0,
                ));
                (Ok(sense.encode(desc)), Some(cdb[4] as usize))
            }
            op::REPORT_LUNS => report_luns(cdb, &[0]),
            op::READ_CAPACITY_10 => (block::read_capacity_10(v), None),
            op::SERVICE_ACTION_IN_16 => match cdb[1] & 0x1F {
                0x10 => (block::read_capacity_16(v), Some(be32(cdb, 10) as usize)),
                0x12 => (
                    block::get_lba_status(v, cdb).await,
                    Some(be32(cdb, 10) as usize),
                ),
                _ => (Err(Sense::invalid_cdb(1, Some(4))), None),
            },
            op::MAINTENANCE_IN => match cdb[1] & 0x1F {
                0x0A => (
                    Ok(self.report_target_port_groups(cdb)),
                    Some(be32(cdb, 6) as usize),
                ),
                0x0C => (
                    opcodes::report_supported_operation_codes(cdb),
                    Some(opcodes::allocation_length(cdb)),
                ),
                0x0D => (
                    opcodes::report_supported_tmfs(cdb),
                    Some(opcodes::allocation_length(cdb)),
                ),
                _ => (Err(Sense::invalid_cdb(1, Some(4))), None),
            },
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
                let ten = cdb[0] == op::MODE_SENSE_10;
                let state = self.mode_state();
                (
                    mode::mode_sense(cdb, ten, &state),
                    Some(mode::allocation_length(cdb, ten)),
                )
            }
            op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => {
                (block::read(v, cdb, &limits).await, None)
            }
            op::WRITE_6
            | op::WRITE_10
            | op::WRITE_12
            | op::WRITE_16
            | op::WRITE_AND_VERIFY_10
            | op::WRITE_AND_VERIFY_12
            | op::WRITE_AND_VERIFY_16 => (block::write(v, cdb, data, &limits).await, None),
            op::PRE_FETCH_10 | op::PRE_FETCH_16 => (block::pre_fetch(v, cdb), None),
            op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => {
                (block::verify(v, cdb, data, &limits).await, None)
            }
            op::PERSISTENT_RESERVE_IN => (
                self.reservations.persistent_reserve_in(cdb),
                Some(be16(cdb, 7) as usize),
            ),
            op::PERSISTENT_RESERVE_OUT => (
                self.reservations
                    .persistent_reserve_out(req.initiator, cdb, data, &self.attentions)
                    .await
                    .map(|()| Vec::new()),
                None,
            ),
            op::RESERVE_6 | op::RESERVE_10 => (
                self.reservations
                    .reserve_legacy(req.initiator, cdb)
                    .map(|()| Vec::new()),
                None,
            ),
            op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
                let ten = cdb[0] == op::MODE_SELECT_10;
                let outcome = match mode::mode_select(cdb, ten, data, &self.mode_state()) {
                    Ok(next) => self
                        .set_mode(next, req.initiator)
                        .await
                        .map(|()| Vec::new()),
                    Err(e) => Err(e),
                };
                (outcome, None)
            }
            op::ORWRITE_16 => (block::orwrite(v, cdb, data, &limits).await, None),
            op::READ_DEFECT_DATA_10 => (block::read_defect_data(cdb), Some(be16(cdb, 7) as usize)),
            op::READ_DEFECT_DATA_12 => (block::read_defect_data(cdb), Some(be32(cdb, 6) as usize)),
            op::EXTENDED_COPY => (
                self.copies
                    .extended_copy(self, req.initiator, cdb, data)
                    .await,
                None,
            ),
            op::RECEIVE_COPY_RESULTS => (
                self.copies.receive_copy_results(req.initiator, cdb),
                Some(be32(cdb, 10) as usize),
            ),
            op::RELEASE_6 | op::RELEASE_10 => {
                self.reservations.end_legacy(Some(req.initiator));
                (Ok(Vec::new()), None)
            }
            op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
                (block::synchronize_cache(v, cdb).await, None)
            }
            op::UNMAP => (block::unmap(v, cdb, data, &limits).await, None),
            op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
                (block::write_same(v, cdb, data, &limits).await, None)
            }
            op::COMPARE_AND_WRITE => (
                block::compare_and_write(v, req.initiator, cdb, data, &limits).await,
                None,
            ),
            _ => (Err(Sense::INVALID_OPCODE), None),
        }
    }

    // SPC-4 6.36: REPORT TARGET PORT GROUPS.
    fn report_target_port_groups(&self, cdb: &[u8]) -> Vec<u8> {
        let extended = (cdb[1] >> 5) == 1;
        let mut d = vec![0u8; 4];
        if extended {
            d.extend_from_slice(&[0x10, 0, 0, 0]);
        }
        for g in self.groups.lock().unwrap().iter() {
            d.push(if g.preferred { 0x80 } else { 0 } | g.state as u8);
            // T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP.
            d.push(0x80 | 0x08 | 0x04 | 0x02 | 0x01);
            d.extend_from_slice(&g.id.to_be_bytes());
            d.push(0);
            d.push(g.status);
            d.push(0);
            d.push(g.ports.len().min(255) as u8);
            for p in g.ports.iter().take(255) {
                d.extend_from_slice(&[0, 0]);
                d.extend_from_slice(&p.to_be_bytes());
            }
        }
        let len = (d.len() - 4) as u32;
        d[0..4].copy_from_slice(&len.to_be_bytes());
        d
    }

    /// The target port groups this unit reports, and their access states.
    pub fn port_groups(&self) -> Vec<PortGroup> {
        self.groups.lock().unwrap().clone()
    }

    /// Replaces the target port groups (ALUA, SPC-4 5.15). When an access
    /// state changes, every nexus gets ASYMMETRIC ACCESS STATE CHANGED and the
    /// changed groups report "altered by implicit transition".
    pub fn set_port_groups(&self, mut groups: Vec<PortGroup>) {
        let mut cur = self.groups.lock().unwrap();
        let mut changed = false;
        for g in groups.iter_mut() {
            let before = cur.iter().find(|c| c.id == g.id).map(|c| c.state);
            if before != Some(g.state) {
                g.status = 0x02;
                changed = true;
            }
        }
        changed |= groups.len() != cur.len();
        *cur = groups;
        drop(cur);
        if changed {
            self.attentions
                .raise_all(unit_attention::ACCESS_STATE_CHANGED);
        }
    }

    /// The access state of the port this unit is reached through.
    fn my_access_state(&self) -> AccessState {
        self.groups
            .lock()
            .unwrap()
            .iter()
            .find(|g| g.id == self.identity.port_group)
            .map(|g| g.state)
            .unwrap_or(AccessState::ActiveOptimized)
    }

    /// After a command changed the medium (also as the destination of an
    /// EXTENDED COPY): the free-space watch and, when it succeeded and WCE
    /// was cleared by MODE SELECT, the flush that makes it durable before GOOD.
    async fn medium_changed(&self, succeeded: bool) -> Result<(), Sense> {
        self.watch_space();
        let write_cache = self.mode.lock().unwrap().write_cache;
        if succeeded && !write_cache && self.volume.write_cache() {
            self.volume
                .flush()
                .await
                .map_err(|e| block::volume_sense(&e, 0))?;
        }
        Ok(())
    }

    /// SBC-3 4.7.3.7: when the space behind a thin volume falls below its
    /// soft threshold, every nexus hears THIN PROVISIONING SOFT THRESHOLD
    /// REACHED once; it is raised again after space came back and ran low anew.
    fn watch_space(&self) {
        let low = self.volume.low_on_space();
        if low
            && !self
                .space_warned
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                target_name = %self.identity.target_name,
                "free space below the thin provisioning soft threshold"
            );
            self.attentions.raise_all(unit_attention::SOFT_THRESHOLD);
        } else if !low {
            self.space_warned
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A new I_T nexus logged in: it will see POWER ON, RESET, OR BUS DEVICE
    /// RESET OCCURRED on its first command other than INQUIRY/REPORT LUNS/REQUEST SENSE.
    pub fn nexus_added(&self, initiator: &str) {
        self.attentions.nexus_added(initiator);
    }

    /// LUN RESET / TARGET WARM RESET happened (the transport has already
    /// aborted the task set): every nexus gets a reset unit attention, on
    /// every node that presents the unit, before this returns.
    pub async fn reset(&self) {
        self.reservations.end_legacy(None);
        self.attentions.raise_unit(unit_attention::LUN_RESET);
        if let Some(o) = self
            .owner
            .as_ref()
            .filter(|o| o.place() == Place::Elsewhere)
        {
            o.reset().await;
        }
    }

    /// The I_T nexus ended (logout or lost connection): a RESERVE (6)/(10)
    /// it held is released; persistent reservations stay.
    pub fn nexus_removed(&self, initiator: &str) {
        self.reservations.end_legacy(Some(initiator));
        if let Some(o) = self
            .owner
            .as_ref()
            .filter(|o| o.place() == Place::Elsewhere)
        {
            o.nexus_ended(initiator);
        }
    }

    /// Another node, or another role of the same node, runs this unit's
    /// commands from now on (a failover or a switchover): what the old one
    /// held only in memory, an SPC-2 reservation, is gone as after a reset,
    /// and every nexus logged in here hears POWER ON, RESET, OR BUS DEVICE
    /// RESET OCCURRED. Persistent reservations and mode settings go on.
    pub fn owner_changed(&self) {
        self.attentions.raise_all(unit_attention::POWER_ON);
    }

    /// The volume was resized: every nexus gets CAPACITY DATA HAS CHANGED.
    pub fn capacity_changed(&self) {
        self.attentions.raise_all(unit_attention::CAPACITY_CHANGED);
    }
}

/// Commands a node answers for its own target port, whichever node runs
/// the unit's other commands: identification and the port's access state,
/// and REQUEST SENSE (the port's unit attentions).
fn port_command(opcode: u8) -> bool {
    matches!(
        opcode,
        op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE | op::MAINTENANCE_IN
    )
}

/// The sense a failed volume operation ends a command with.
pub fn sense_of(e: &volume::VolumeError) -> Sense {
    block::volume_sense(e, 0)
}

/// Bytes of data-out the CDB asks for, for commands that carry data-out.
fn data_out_len(cdb: &[u8], block_size: u32) -> Option<u32> {
    let opcode = *cdb.first()?;
    if cdb.len() < cdb_len(opcode)? {
        return None;
    }
    let bs = block_size as u64;
    let bytes: u64 = match opcode {
        op::WRITE_6
        | op::WRITE_10
        | op::WRITE_12
        | op::WRITE_16
        | op::WRITE_AND_VERIFY_10
        | op::WRITE_AND_VERIFY_12
        | op::WRITE_AND_VERIFY_16 => block::decode_rw(cdb).ok()?.blocks as u64 * bs,
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => match (cdb[1] >> 1) & 0x03 {
            1 => block::decode_rw(cdb).ok()?.blocks as u64 * bs,
            3 => bs,
            _ => 0,
        },
        op::ORWRITE_16 => be32(cdb, 10) as u64 * bs,
        op::WRITE_SAME_10 => bs,
        op::WRITE_SAME_16 => {
            if cdb[1] & 0x01 != 0 {
                0
            } else {
                bs
            }
        }
        op::UNMAP => be16(cdb, 7) as u64,
        op::PERSISTENT_RESERVE_OUT => be32(cdb, 5) as u64,
        op::EXTENDED_COPY => be32(cdb, 10) as u64,
        op::MODE_SELECT_6 => cdb[4] as u64,
        op::MODE_SELECT_10 => be16(cdb, 7) as u64,
        op::COMPARE_AND_WRITE => 2 * cdb[13] as u64 * bs,
        _ => return None,
    };
    Some(bytes.min(u32::MAX as u64) as u32)
}

/// Commands that change the medium: refused under SWP, flushed when WCE is off.
fn changes_medium(opcode: u8) -> bool {
    matches!(
        opcode,
        op::WRITE_6
            | op::WRITE_10
            | op::WRITE_12
            | op::WRITE_16
            | op::WRITE_AND_VERIFY_10
            | op::WRITE_AND_VERIFY_12
            | op::WRITE_AND_VERIFY_16
            | op::WRITE_SAME_10
            | op::WRITE_SAME_16
            | op::UNMAP
            | op::COMPARE_AND_WRITE
            | op::ORWRITE_16
            | op::EXTENDED_COPY
    )
}

fn reservation_conflict(data_out_wanted: Option<u32>) -> Response {
    Response {
        status: Status::ReservationConflict,
        data: Vec::new(),
        sense: None,
        data_out_wanted,
    }
}

fn check_condition(sense: Sense, data_out_wanted: Option<u32>, descriptor: bool) -> Response {
    Response {
        status: Status::CheckCondition,
        data: Vec::new(),
        sense: Some(sense.encode(descriptor)),
        data_out_wanted,
    }
}

// SPC-4 6.33: REPORT LUNS.
fn report_luns(cdb: &[u8], luns: &[u64]) -> (Outcome, Option<usize>) {
    let alloc = be32(cdb, 6) as usize;
    if !matches!(cdb[2], 0x00..=0x02 | 0x10..=0x12) {
        return (Err(Sense::invalid_cdb(2, None)), None);
    }
    if alloc < 16 {
        return (Err(Sense::invalid_cdb(6, None)), None);
    }
    let mut d = Vec::with_capacity(8 + 8 * luns.len());
    d.extend_from_slice(&((8 * luns.len()) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for &lun in luns {
        d.extend_from_slice(&encode_lun(lun));
    }
    (Ok(d), Some(alloc))
}

/// SAM-5 4.7: single-level LUN encoding (peripheral or flat addressing).
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else {
        let l = (lun as u16 & 0x3FFF) | 0x4000;
        b[0..2].copy_from_slice(&l.to_be_bytes());
    }
    b
}

/// The LUN number in an 8-byte SAM LUN field (peripheral or flat addressing).
pub fn decode_lun(b: [u8; 8]) -> u64 {
    match b[0] >> 6 {
        0 => b[1] as u64 | (((b[0] & 0x3F) as u64) << 8),
        1 => (u16::from_be_bytes([b[0] & 0x3F, b[1]])) as u64,
        _ => u64::MAX,
    }
}

/// The answer for a command addressed to a LUN that does not exist (SPC-4
/// 4.5.4 / 6.6.1): INQUIRY reports peripheral qualifier 011b, REPORT LUNS and
/// REQUEST SENSE still work, anything else is CHECK CONDITION, ILLEGAL REQUEST,
/// LOGICAL UNIT NOT SUPPORTED. `luns` lists the LUNs that do exist.
pub fn respond_no_such_lun(req: &Request<'_>, luns: &[u64]) -> Response {
    let cdb = req.cdb;
    let good = |mut data: Vec<u8>, alloc: usize| {
        data.truncate(alloc);
        Response {
            status: Status::Good,
            data,
            sense: None,
            data_out_wanted: None,
        }
    };
    match cdb.first() {
        Some(&op::INQUIRY) if cdb.len() >= 6 => {
            let mut d = vec![0u8; 36];
            d[0] = 0x7F; // qualifier 011b, type 1Fh: no logical unit here
            d[2] = 0x06;
            d[3] = 0x12;
            d[4] = 31;
            good(d, inquiry::allocation_length(cdb))
        }
        Some(&op::REPORT_LUNS) if cdb.len() >= 12 => match report_luns(cdb, luns) {
            (Ok(d), alloc) => good(d, alloc.unwrap_or(usize::MAX)),
            (Err(s), _) => check_condition(s, None, false),
        },
        Some(&op::REQUEST_SENSE) if cdb.len() >= 6 => good(
            Sense::LUN_NOT_SUPPORTED.encode(cdb[1] & 1 != 0),
            cdb[4] as usize,
        ),
        _ => check_condition(Sense::LUN_NOT_SUPPORTED, None, false),
    }
}
