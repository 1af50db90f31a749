//! Sense data (SPC-4 4.5): fixed (0x70) and descriptor (0x72) formats.

/// Sense keys used by this target (SPC-4 table 49).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xB;
    pub const MISCOMPARE: u8 = 0xE;
}

/// One sense condition: key, additional sense code and qualifier, plus the
/// optional information field and sense-key-specific field pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (e.g. the LBA of a medium error, the miscompare offset).
    pub info: Option<u64>,
    /// Field pointer: (in CDB rather than parameter list, byte, bit).
    pub field: Option<(bool, u16, Option<u8>)>,
}

impl Sense {
    /// A sense condition without information or field pointer.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00);
    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00);
    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_PARAM: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00);
    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR.
    pub const PARAM_LIST_LENGTH: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x1A, 0x00);
    /// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED.
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00);
    /// ILLEGAL REQUEST, SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00);
    /// DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT.
    pub const SPACE_ALLOC_FAILED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x07);
    /// MEDIUM ERROR, UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ: Sense = Sense::new(key::MEDIUM_ERROR, 0x11, 0x00);
    /// MEDIUM ERROR, WRITE ERROR.
    pub const WRITE_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x0C, 0x00);
    /// NOT READY, LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE (volume closed).
    pub const NOT_READY: Sense = Sense::new(key::NOT_READY, 0x04, 0x00);
    /// LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION
    /// (SPC-4 5.15.2.6): initiators retry the command.
    pub const ALUA_TRANSITION: Sense = Sense::new(key::NOT_READY, 0x04, 0x0A);
    /// MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE: Sense = Sense::new(key::MISCOMPARE, 0x1D, 0x00);

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB, pointing at `byte` (and `bit`).
    pub const fn invalid_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: key::ILLEGAL_REQUEST,
            asc: 0x24,
            ascq: 0x00,
            info: None,
            field: Some((true, byte, bit)),
        }
    }

    /// The same condition pointing at `byte` (and `bit`) of the parameter list.
    pub const fn with_field(mut self, byte: u16, bit: Option<u8>) -> Sense {
        self.field = Some((false, byte, bit));
        self
    }

    /// The same condition with the INFORMATION field set.
    pub const fn with_info(mut self, info: u64) -> Sense {
        self.info = Some(info);
        self
    }

    /// Encodes the sense data; descriptor format when `descriptor`.
    pub fn encode(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            // SPC-4 4.5.2: descriptor format.
            let mut s = vec![0x72, self.key & 0x0f, self.asc, self.ascq, 0, 0, 0, 0];
            if let Some(info) = self.info {
                s.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
                s.extend_from_slice(&info.to_be_bytes());
            }
            if let Some(field) = self.field {
                s.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
                s.extend_from_slice(&sks_bytes(field));
                s.push(0);
            }
            s[7] = (s.len() - 8) as u8;
            s
        } else {
            // SPC-4 4.5.3: fixed format, 18 bytes.
            let mut s = vec![0u8; 18];
            s[0] = 0x70;
            s[2] = self.key & 0x0f;
            if let Some(info) = self.info {
                if info <= u32::MAX as u64 {
                    s[0] |= 0x80;
                }
                s[3..7].copy_from_slice(&(info as u32).to_be_bytes());
            }
            s[7] = 10;
            s[12] = self.asc;
            s[13] = self.ascq;
            if let Some(field) = self.field {
                s[15..18].copy_from_slice(&sks_bytes(field));
            }
            s
        }
    }
}

fn sks_bytes((cdb, byte, bit): (bool, u16, Option<u8>)) -> [u8; 3] {
    let mut b0 = 0x80; // SKSV
    if cdb {
        b0 |= 0x40;
    }
    if let Some(bit) = bit {
        b0 |= 0x08 | (bit & 0x07);
    }
    let f = byte.to_be_bytes();
    [b0, f[0], f[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let s = Sense::invalid_cdb(2, Some(3)).encode(false);
        assert_eq!(s.len(), 18);
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], key::ILLEGAL_REQUEST);
        assert_eq!((s[12], s[13]), (0x24, 0x00));
        assert_eq!(&s[15..18], &[0x80 | 0x40 | 0x08 | 3, 0, 2]);
        let m = Sense::MISCOMPARE.with_info(17).encode(false);
        assert_eq!(m[0], 0xF0);
        assert_eq!(&m[3..7], &17u32.to_be_bytes());
    }

    #[test]
    fn descriptor_format_layout() {
        let s = Sense::MISCOMPARE.with_info(1 << 40).encode(true);
        assert_eq!(s[0], 0x72);
        assert_eq!((s[1], s[2], s[3]), (key::MISCOMPARE, 0x1D, 0x00));
        assert_eq!(s[7] as usize, s.len() - 8);
        assert_eq!(&s[8..12], &[0x00, 0x0A, 0x80, 0x00]);
        assert_eq!(&s[12..20], &(1u64 << 40).to_be_bytes());
    }
}
