//! REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) and REPORT SUPPORTED TASK
//! MANAGEMENT FUNCTIONS (SPC-4 6.39): what this logical unit implements, with
//! the CDB usage masks (bits the device server looks at).

use crate::cdb::{be16, be32, op};
use crate::sense::Sense;

const F: u8 = 0xFF;

/// (opcode, service action, CDB usage data). The usage data's length is the CDB length.
const COMMANDS: &[(u8, Option<u16>, &[u8])] = &[
    (op::TEST_UNIT_READY, None, &[0x00, 0, 0, 0, 0, 0]),
    (op::REQUEST_SENSE, None, &[0x03, 0x01, 0, 0, F, 0]),
    (op::READ_6, None, &[0x08, 0x1F, F, F, F, 0]),
    (op::WRITE_6, None, &[0x0A, 0x1F, F, F, F, 0]),
    (op::INQUIRY, None, &[0x12, 0x01, F, F, F, 0]),
    (op::MODE_SELECT_6, None, &[0x15, 0x11, 0, 0, F, 0]),
    (op::RESERVE_6, None, &[0x16, 0, 0, 0, 0, 0]),
    (op::RELEASE_6, None, &[0x17, 0, 0, 0, 0, 0]),
    (op::MODE_SENSE_6, None, &[0x1A, 0x08, F, F, F, 0]),
    (op::START_STOP_UNIT, None, &[0x1B, 0x01, 0, 0x0F, 0xF7, 0]),
    (
        op::READ_CAPACITY_10,
        None,
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ),
    (op::READ_10, None, &[0x28, 0x18, F, F, F, F, 0, F, F, 0]),
    (op::WRITE_10, None, &[0x2A, 0x18, F, F, F, F, 0, F, F, 0]),
    (
        op::WRITE_AND_VERIFY_10,
        None,
        &[0x2E, 0x12, F, F, F, F, 0, F, F, 0],
    ),
    (op::VERIFY_10, None, &[0x2F, 0x16, F, F, F, F, 0, F, F, 0]),
    (
        op::PRE_FETCH_10,
        None,
        &[0x34, 0x02, F, F, F, F, 0, F, F, 0],
    ),
    (
        op::SYNCHRONIZE_CACHE_10,
        None,
        &[0x35, 0x02, F, F, F, F, 0, F, F, 0],
    ),
    (
        op::READ_DEFECT_DATA_10,
        None,
        &[0x37, 0, 0x1F, 0, 0, 0, 0, F, F, 0],
    ),
    (
        op::WRITE_SAME_10,
        None,
        &[0x41, 0x08, F, F, F, F, 0, F, F, 0],
    ),
    (op::UNMAP, None, &[0x42, 0, 0, 0, 0, 0, 0, F, F, 0]),
    (
        op::MODE_SELECT_10,
        None,
        &[0x55, 0x11, 0, 0, 0, 0, 0, F, F, 0],
    ),
    (op::RESERVE_10, None, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    (op::RELEASE_10, None, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    (
        op::MODE_SENSE_10,
        None,
        &[0x5A, 0x18, F, F, 0, 0, 0, F, F, 0],
    ),
    (
        op::PERSISTENT_RESERVE_IN,
        Some(0),
        &[0x5E, 0, 0, 0, 0, 0, 0, F, F, 0],
    ),
    (
        op::PERSISTENT_RESERVE_IN,
        Some(1),
        &[0x5E, 1, 0, 0, 0, 0, 0, F, F, 0],
    ),
    (
        op::PERSISTENT_RESERVE_IN,
        Some(2),
        &[0x5E, 2, 0, 0, 0, 0, 0, F, F, 0],
    ),
    (
        op::PERSISTENT_RESERVE_IN,
        Some(3),
        &[0x5E, 3, 0, 0, 0, 0, 0, F, F, 0],
    ),
    (
        op::PERSISTENT_RESERVE_OUT,
        Some(0),
        &[0x5F, 0, F, 0, 0, F, F, F, F, 0],
    ),
    (
        op::PERSISTENT_RESERVE_OUT,
        Some(1),
        &[0x5F, 1, F, 0, 0, F, F, F, F, 0],
    ),
    (
        op::PERSISTENT_RESERVE_OUT,
        Some(2),
        &[0x5F, 2, F, 0, 0, F, F, F, F, 0],
    ),
    (
        op::PERSISTENT_RESERVE_OUT,
        Some(3),
        &[0x5F, 3, F, 0, 0, F, F, F, F, 0],
    ),
    (
        op::PERSISTENT_RESERVE_OUT,
        Some(4),
        &[0x5F, 4, F, 0, 0, F, F, F, F, 0],
    ),
    (
        op::PERSISTENT_RESERVE_OUT,
        Some(5),
        &[0x5F, 5, F, 0, 0, F, F, F, F, 0],
    ),
    (
        op::PERSISTENT_RESERVE_OUT,
        Some(6),
        &[0x5F, 6, F, 0, 0, F, F, F, F, 0],
    ),
    (
        op::PERSISTENT_RESERVE_OUT,
        Some(7),
        &[0x5F, 7, F, 0, 0, F, F, F, F, 0],
    ),
    (
        op::EXTENDED_COPY,
        Some(0),
        &[0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    (
        op::RECEIVE_COPY_RESULTS,
        Some(0),
        &[0x84, 0, F, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    (
        op::RECEIVE_COPY_RESULTS,
        Some(3),
        &[0x84, 3, F, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    (
        op::READ_16,
        None,
        &[0x88, 0x18, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::COMPARE_AND_WRITE,
        None,
        &[0x89, 0x18, F, F, F, F, F, F, F, F, 0, 0, 0, F, 0, 0],
    ),
    (
        op::WRITE_16,
        None,
        &[0x8A, 0x18, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::ORWRITE_16,
        None,
        &[0x8B, 0x18, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::WRITE_AND_VERIFY_16,
        None,
        &[0x8E, 0x12, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::VERIFY_16,
        None,
        &[0x8F, 0x16, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::PRE_FETCH_16,
        None,
        &[0x90, 0x02, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::SYNCHRONIZE_CACHE_16,
        None,
        &[0x91, 0x02, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::WRITE_SAME_16,
        None,
        &[0x93, 0x09, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::SERVICE_ACTION_IN_16,
        Some(0x10),
        &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    (
        op::SERVICE_ACTION_IN_16,
        Some(0x12),
        &[0x9E, 0x12, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::REPORT_LUNS,
        None,
        &[0xA0, 0, F, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    (
        op::MAINTENANCE_IN,
        Some(0x0A),
        &[0xA3, 0xEA, 0, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    (
        op::MAINTENANCE_IN,
        Some(0x0C),
        &[0xA3, 0x0C, 0x87, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::MAINTENANCE_IN,
        Some(0x0D),
        &[0xA3, 0x0D, 0x80, 0, 0, 0, F, F, F, F, 0, 0],
    ),
    (
        op::READ_12,
        None,
        &[0xA8, 0x18, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::WRITE_12,
        None,
        &[0xAA, 0x18, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::WRITE_AND_VERIFY_12,
        None,
        &[0xAE, 0x12, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::VERIFY_12,
        None,
        &[0xAF, 0x16, F, F, F, F, F, F, F, F, 0, 0],
    ),
    (
        op::READ_DEFECT_DATA_12,
        None,
        &[0xB7, 0x1F, 0, 0, 0, 0, F, F, F, F, 0, 0],
    ),
];

/// Opcodes that are only defined with a service action.
fn has_service_actions(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|(o, sa, _)| *o == opcode && sa.is_some())
}

// Command timeouts descriptor (SPC-4 6.35.4): no recommended timeouts.
fn timeouts() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0A;
    t
}

/// REPORT SUPPORTED OPERATION CODES.
pub fn report_supported_operation_codes(cdb: &[u8]) -> Result<Vec<u8>, Sense> {
    let rctd = cdb[2] & 0x80 != 0;
    let options = cdb[2] & 0x07;
    let opcode = cdb[3];
    let sa = be16(cdb, 4);
    if be32(cdb, 6) < 4 {
        return Err(Sense::invalid_cdb(6, None));
    }
    if options == 0 {
        let mut d = vec![0u8; 4];
        for (o, s, usage) in COMMANDS {
            d.push(*o);
            d.push(0);
            d.extend_from_slice(&s.unwrap_or(0).to_be_bytes());
            d.push(0);
            d.push(u8::from(s.is_some()) | if rctd { 0x02 } else { 0 });
            d.extend_from_slice(&(usage.len() as u16).to_be_bytes());
            if rctd {
                d.extend_from_slice(&timeouts());
            }
        }
        let len = (d.len() - 4) as u32;
        d[0..4].copy_from_slice(&len.to_be_bytes());
        return Ok(d);
    }
    let found = match options {
        // One command without a service action: invalid for commands that have them.
        1 => {
            if has_service_actions(opcode) {
                return Err(Sense::invalid_cdb(2, Some(2)));
            }
            COMMANDS
                .iter()
                .find(|(o, s, _)| *o == opcode && s.is_none())
        }
        // One command with a service action: invalid for commands without.
        2 => {
            if COMMANDS.iter().any(|(o, s, _)| *o == opcode && s.is_none()) {
                return Err(Sense::invalid_cdb(2, Some(2)));
            }
            COMMANDS
                .iter()
                .find(|(o, s, _)| *o == opcode && *s == Some(sa))
        }
        // SPC-5: either form.
        3 => COMMANDS
            .iter()
            .find(|(o, s, _)| *o == opcode && (s.is_none() || *s == Some(sa))),
        _ => return Err(Sense::invalid_cdb(2, Some(2))),
    };
    let mut d = vec![0u8; 4];
    match found {
        Some((_, _, usage)) => {
            d[1] = 0x03 | if rctd { 0x80 } else { 0 }; // supported per standard
            d[2..4].copy_from_slice(&(usage.len() as u16).to_be_bytes());
            d.extend_from_slice(usage);
            if rctd {
                d.extend_from_slice(&timeouts());
            }
        }
        None => d[1] = 0x01, // not supported
    }
    Ok(d)
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS: ABORT TASK, ABORT TASK SET,
/// CLEAR TASK SET, LOGICAL UNIT RESET and (I_T nexus) target reset.
pub fn report_supported_tmfs(cdb: &[u8]) -> Result<Vec<u8>, Sense> {
    if be32(cdb, 6) < 4 {
        return Err(Sense::invalid_cdb(6, None));
    }
    let repd = cdb[2] & 0x80 != 0;
    let mut d = vec![0x80 | 0x40 | 0x10 | 0x08 | 0x02, 0x00, 0x00, 0x00];
    if repd {
        d[3] = 0x0C;
        d.resize(16, 0);
    }
    Ok(d)
}

/// The allocation length of a MAINTENANCE IN command.
pub fn allocation_length(cdb: &[u8]) -> usize {
    be32(cdb, 6) as usize
}
