//! MODE SENSE (6)/(10) (SPC-4 6.11, 6.12) with the caching, control and
//! informational exceptions pages. No page is changeable.

use crate::cdb::be16;
use crate::sense::Sense;

/// What the mode pages report about the device.
pub struct ModeState {
    /// Number of logical blocks (block descriptor).
    pub num_blocks: u64,
    /// Logical block size (block descriptor).
    pub block_size: u32,
    /// Whether writes sit in a volatile cache until flushed (caching page WCE).
    pub write_cache: bool,
}

fn page(code: u8, pc: u8, s: &ModeState) -> Option<Vec<u8>> {
    let changeable = pc == 1;
    match code {
        // SBC-3 6.5.5: caching page. WCE is honest: 1 when writes need a flush.
        0x08 => {
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            if s.write_cache && !changeable {
                p[2] = 0x04;
            }
            Some(p)
        }
        // SPC-4 7.5.8: control page. QAM 1: unrestricted reordering of SIMPLE tasks.
        0x0A => {
            let mut p = vec![0u8; 12];
            p[0] = 0x0A;
            p[1] = 0x0A;
            if !changeable {
                p[3] = 0x10;
                p[8..10].copy_from_slice(&0xFFFFu16.to_be_bytes()); // busy timeout period: unlimited
            }
            Some(p)
        }
        // SPC-4 7.5.11: informational exceptions control page (nothing reported).
        0x1C => {
            let mut p = vec![0u8; 12];
            p[0] = 0x1C;
            p[1] = 0x0A;
            Some(p)
        }
        _ => None,
    }
}

/// Builds the MODE SENSE answer; `ten` selects the (10) header.
pub fn mode_sense(cdb: &[u8], ten: bool, s: &ModeState) -> Result<Vec<u8>, Sense> {
    let dbd = cdb[1] & 0x08 != 0;
    let pc = cdb[2] >> 6;
    let code = cdb[2] & 0x3F;
    let subpage = cdb[3];
    if pc == 3 {
        return Err(Sense::SAVING_NOT_SUPPORTED);
    }
    if subpage != 0 && !(code == 0x3F && subpage == 0xFF) {
        return Err(Sense::invalid_cdb(3, None));
    }
    let mut pages = Vec::new();
    if code == 0x3F {
        for c in [0x08, 0x0A, 0x1C] {
            pages.extend(page(c, pc, s).expect("known page"));
        }
    } else {
        pages = page(code, pc, s).ok_or(Sense::invalid_cdb(2, Some(5)))?;
    }
    let mut desc = Vec::new();
    if !dbd {
        // SBC-3 6.4.2: short LBA mode parameter block descriptor.
        let blocks = s.num_blocks.min(0xFFFF_FFFF) as u32;
        desc.extend_from_slice(&blocks.to_be_bytes());
        desc.push(0);
        desc.extend_from_slice(&s.block_size.to_be_bytes()[1..]);
    }
    // Device-specific parameter: DPOFUA (SBC-3 6.4.1).
    let device_specific = 0x10;
    let mut d = Vec::new();
    if ten {
        d.extend_from_slice(&[0, 0, 0, device_specific, 0, 0]);
        d.extend_from_slice(&(desc.len() as u16).to_be_bytes());
        d.extend(desc);
        d.extend(pages);
        let len = (d.len() - 2) as u16;
        d[0..2].copy_from_slice(&len.to_be_bytes());
    } else {
        d.extend_from_slice(&[0, 0, device_specific, desc.len() as u8]);
        d.extend(desc);
        d.extend(pages);
        d[0] = (d.len() - 1).min(255) as u8;
    }
    Ok(d)
}

/// The allocation length of a MODE SENSE CDB.
pub fn allocation_length(cdb: &[u8], ten: bool) -> usize {
    if ten {
        be16(cdb, 7) as usize
    } else {
        cdb[4] as usize
    }
}
