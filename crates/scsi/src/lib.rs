//! SCSI logical unit over a [`volume::Volume`]: parses CDBs (SPC-4, SBC-3),
//! executes them against the volume and builds status, data-in and sense.
//! No sockets here: the iSCSI target hands in a CDB plus data-out and gets a
//! [`Response`] back.
#![forbid(unsafe_code)]

use std::sync::Arc;

use bytes::Bytes;
use volume::Volume;

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
}

impl LogicalUnit {
    /// Creates the logical unit for `volume`, presented as `identity`.
    pub fn new(volume: Arc<dyn Volume>, identity: LunIdentity) -> Self {
        LogicalUnit { volume, identity }
    }

    /// The volume behind this unit.
    pub fn volume(&self) -> &Arc<dyn Volume> {
        &self.volume
    }

    /// The identity this unit presents.
    pub fn identity(&self) -> &LunIdentity {
        &self.identity
    }

    /// Executes one command. Never panics on any input.
    pub async fn execute(&self, req: Request<'_>) -> Response {
        let _ = req;
        unimplemented!("command execution")
    }

    /// A new I_T nexus logged in: it will see POWER ON, RESET, OR BUS DEVICE
    /// RESET OCCURRED on its first command other than INQUIRY/REPORT LUNS/REQUEST SENSE.
    pub fn nexus_added(&self, initiator: &str) {
        let _ = initiator;
    }

    /// LUN RESET / TARGET WARM RESET happened (the transport has already
    /// aborted the task set): every nexus gets a reset unit attention.
    pub fn reset(&self) {}

    /// The volume was resized: every nexus gets CAPACITY DATA HAS CHANGED.
    pub fn capacity_changed(&self) {}
}

/// The answer for a command addressed to a LUN that does not exist (SPC-4
/// 4.5.4 / 6.6.1): INQUIRY reports peripheral qualifier 011b, REPORT LUNS and
/// REQUEST SENSE still work, anything else is CHECK CONDITION, ILLEGAL REQUEST,
/// LOGICAL UNIT NOT SUPPORTED. `luns` lists the LUNs that do exist.
pub fn respond_no_such_lun(req: &Request<'_>, luns: &[u64]) -> Response {
    let _ = (req, luns);
    unimplemented!("no-such-LUN responses")
}
