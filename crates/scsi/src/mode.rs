//! MODE SENSE (6)/(10) and MODE SELECT (6)/(10) (SPC-4 6.9-6.12) with the
//! caching, control and informational exceptions pages.
//!
//! Changeable: WCE of the caching page (when the volume has a volatile write
//! cache; clearing it makes every write durable before GOOD), and D_SENSE
//! (descriptor-format sense) and SWP (software write protect) of the control
//! page. Saving pages is not supported: settings last until the server restarts.

use crate::cdb::be16;
use crate::sense::{key, Sense};

/// The mode parameters an initiator can change, shared by every I_T nexus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Caching page WCE: writes may sit in a volatile cache until flushed.
    pub write_cache: bool,
    /// Control page D_SENSE: sense data in descriptor format.
    pub d_sense: bool,
    /// Control page SWP: the medium is write protected.
    pub swp: bool,
}

/// What the mode pages report about the device.
pub struct ModeState {
    /// Number of logical blocks (block descriptor).
    pub num_blocks: u64,
    /// Logical block size (block descriptor).
    pub block_size: u32,
    /// Whether the volume has a volatile write cache at all (WCE changeable).
    pub volatile_cache: bool,
    /// Current settings.
    pub settings: Settings,
}

/// Pages in the order MODE SENSE returns them for "all pages".
const PAGES: [u8; 3] = [0x08, 0x0A, 0x1C];

/// DATA PROTECT, WRITE PROTECTED.
pub const WRITE_PROTECTED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x00);
/// UNIT ATTENTION, MODE PARAMETERS CHANGED.
pub const PARAMETERS_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2A, 0x01);

/// Page `code` for page control `pc` (0 current, 1 changeable, 2 default).
fn page(code: u8, pc: u8, s: &ModeState) -> Option<Vec<u8>> {
    let current = match pc {
        0 => s.settings,
        // Defaults: cache as the volume has it, fixed sense, writable.
        _ => Settings {
            write_cache: s.volatile_cache,
            d_sense: false,
            swp: false,
        },
    };
    let changeable = pc == 1;
    match code {
        // SBC-3 6.5.5: caching page. WCE is honest: 1 when writes need a flush.
        0x08 => {
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            let wce = if changeable {
                s.volatile_cache
            } else {
                current.write_cache
            };
            if wce {
                p[2] = 0x04;
            }
            Some(p)
        }
        // SPC-4 7.5.8: control page. QAM 1: unrestricted reordering of SIMPLE tasks.
        0x0A => {
            let mut p = vec![0u8; 12];
            p[0] = 0x0A;
            p[1] = 0x0A;
            if changeable {
                p[2] = 0x04; // D_SENSE
                p[4] = 0x08; // SWP
            } else {
                if current.d_sense {
                    p[2] |= 0x04;
                }
                p[3] = 0x10;
                if current.swp {
                    p[4] |= 0x08;
                }
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
        for c in PAGES {
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
    // Device-specific parameter (SBC-3 6.4.1): WP, DPOFUA.
    let device_specific = 0x10 | if s.settings.swp { 0x80 } else { 0 };
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

/// The parameter list length of a MODE SELECT CDB.
pub fn parameter_list_length(cdb: &[u8], ten: bool) -> usize {
    allocation_length(cdb, ten)
}

/// MODE SELECT: checks the parameter list against what may change and
/// returns the new settings. Nothing changes unless the whole list is valid.
pub fn mode_select(cdb: &[u8], ten: bool, params: &[u8], s: &ModeState) -> Result<Settings, Sense> {
    if cdb[1] & 0x01 != 0 {
        // SP: pages cannot be saved.
        return Err(Sense::invalid_cdb(1, Some(0)));
    }
    if cdb[1] & 0x10 == 0 {
        // PF 0 would mean vendor-specific page formats.
        return Err(Sense::invalid_cdb(1, Some(4)));
    }
    let len = parameter_list_length(cdb, ten);
    if params.len() < len {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let p = &params[..len];
    if len == 0 {
        return Ok(s.settings);
    }
    let header = if ten { 8 } else { 4 };
    if len < header {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let desc_len = if ten {
        be16(p, 6) as usize
    } else {
        p[3] as usize
    };
    if header + desc_len > len {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    if desc_len != 0 {
        if desc_len != 8 {
            return Err(Sense::INVALID_PARAM.with_field((header - 1) as u16, None));
        }
        let d = &p[header..header + 8];
        let blocks = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as u64;
        let block_len = u32::from_be_bytes([0, d[5], d[6], d[7]]);
        if block_len != s.block_size {
            return Err(Sense::INVALID_PARAM.with_field((header + 5) as u16, None));
        }
        if blocks != 0 && blocks != s.num_blocks.min(0xFFFF_FFFF) {
            return Err(Sense::INVALID_PARAM.with_field(header as u16, None));
        }
    }
    let mut next = s.settings;
    let mut at = header + desc_len;
    while at < len {
        if len - at < 2 {
            return Err(Sense::PARAM_LIST_LENGTH);
        }
        let code = p[at] & 0x3F;
        if p[at] & 0x40 != 0 {
            // SPF: no subpages are implemented.
            return Err(Sense::INVALID_PARAM.with_field(at as u16, Some(6)));
        }
        let plen = p[at + 1] as usize + 2;
        if at + plen > len {
            return Err(Sense::PARAM_LIST_LENGTH);
        }
        let (Some(cur), Some(mask)) = (
            page(
                code,
                0,
                &ModeState {
                    settings: next,
                    ..*s
                },
            ),
            page(code, 1, s),
        ) else {
            return Err(Sense::INVALID_PARAM.with_field(at as u16, Some(5)));
        };
        if plen != cur.len() {
            return Err(Sense::INVALID_PARAM.with_field(at as u16 + 1, None));
        }
        let given = &p[at..at + plen];
        // Byte 0 carries PS, which MODE SELECT ignores; from byte 2 on, every
        // bit outside the changeable mask must keep its current value.
        for i in 2..plen {
            let differs = (given[i] ^ cur[i]) & !mask[i];
            if differs != 0 {
                let bit = 7 - differs.leading_zeros() as u8;
                return Err(Sense::INVALID_PARAM.with_field((at + i) as u16, Some(bit)));
            }
        }
        match code {
            0x08 => next.write_cache = given[2] & 0x04 != 0,
            0x0A => {
                next.d_sense = given[2] & 0x04 != 0;
                next.swp = given[4] & 0x08 != 0;
            }
            _ => {}
        }
        at += plen;
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ModeState {
        ModeState {
            num_blocks: 2048,
            block_size: 512,
            volatile_cache: true,
            settings: Settings {
                write_cache: true,
                d_sense: false,
                swp: false,
            },
        }
    }

    fn select(page: &[u8]) -> Result<Settings, Sense> {
        let mut params = vec![0u8; 4];
        params.extend_from_slice(page);
        let cdb = [0x15, 0x10, 0, 0, params.len() as u8, 0];
        mode_select(&cdb, false, &params, &state())
    }

    #[test]
    fn changeable_bits_change_and_others_are_refused() {
        let s = state();
        let mut control = page(0x0A, 0, &s).unwrap();
        control[2] |= 0x04;
        control[4] |= 0x08;
        let next = select(&control).unwrap();
        assert!(next.d_sense && next.swp && next.write_cache);
        let mut caching = page(0x08, 0, &s).unwrap();
        caching[2] &= !0x04;
        assert!(!select(&caching).unwrap().write_cache);
        // QAM is not changeable.
        let mut bad = page(0x0A, 0, &s).unwrap();
        bad[3] = 0;
        let e = select(&bad).unwrap_err();
        assert_eq!((e.asc, e.field), (0x26, Some((false, 7, Some(4)))));
        // Unknown page, wrong length.
        assert!(select(&[0x02, 0x0E, 0, 0]).is_err());
        let mut short = page(0x08, 0, &s).unwrap();
        short.truncate(10);
        short[1] = 8;
        assert!(select(&short).is_err());
    }

    #[test]
    fn saving_and_vendor_formats_are_refused() {
        let s = state();
        assert!(mode_select(&[0x15, 0x11, 0, 0, 0, 0], false, &[], &s).is_err());
        assert!(mode_select(&[0x15, 0x00, 0, 0, 0, 0], false, &[], &s).is_err());
        assert_eq!(
            mode_select(&[0x15, 0x10, 0, 0, 0, 0], false, &[], &s).unwrap(),
            s.settings
        );
    }
}
