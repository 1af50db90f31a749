//! Additional Header Segments (RFC 7143 §11.2.2): the typed extensions that
//! follow the Basic Header Segment, each an AHSLength (2 bytes), an AHSType
//! (1 byte) and AHSLength bytes of type-specific data, padded to 4 bytes.
//! The target reads one kind: the Extended CDB AHS of a SCSI Command whose
//! CDB is longer than the 16 bytes the BHS holds.

use thiserror::Error;

/// AHSType of the Extended CDB AHS (RFC 7143 §11.2.2.3).
pub const EXTENDED_CDB: u8 = 0x01;
/// AHSType of the Bidirectional Read Expected Data Transfer Length AHS
/// (RFC 7143 §11.2.2.4).
pub const BIDI_READ_EXPECTED_LENGTH: u8 = 0x02;

/// Why the additional header segments of a PDU cannot be read.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum AhsError {
    /// Fewer than the 4 bytes of a segment header are left.
    #[error(
        "additional header segment at byte {at} is cut short: {left} bytes left of a 4-byte header"
    )]
    HeaderCut { at: usize, left: usize },
    /// AHSLength runs past the end of the additional header segments.
    #[error("additional header segment at byte {at} declares {declared} bytes after its header; {left} are left")]
    LengthPastEnd {
        at: usize,
        declared: usize,
        left: usize,
    },
    /// An Extended CDB AHS too short to carry any CDB byte past the 16th.
    #[error("extended CDB AHS declares AHSLength {declared}; it needs at least 2 (a reserved byte and one CDB byte)")]
    ExtendedCdbTooShort { declared: u16 },
    /// A second Extended CDB AHS in one command.
    #[error("a SCSI command carries more than one extended CDB AHS")]
    ExtendedCdbTwice,
}

/// One additional header segment as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ahs<'a> {
    /// AHSType (RFC 7143 §11.2.2.1).
    pub ahs_type: u8,
    /// The AHSLength bytes after AHSType, without padding: for the types
    /// RFC 7143 defines, a reserved byte followed by the segment's data.
    pub specific: &'a [u8],
}

/// The segments of an AHS area (`Pdu::ahs`), in order; a malformed segment
/// ends the iteration with its error.
pub fn segments(ahs: &[u8]) -> Segments<'_> {
    Segments { ahs, at: 0 }
}

/// Iterator returned by [`segments`].
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    ahs: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Segments<'a> {
    type Item = Result<Ahs<'a>, AhsError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.ahs[self.at..];
        if rest.is_empty() {
            return None;
        }
        let at = self.at;
        // Whatever happens next, this is the last item when it is an error.
        self.at = self.ahs.len();
        if rest.len() < 4 {
            return Some(Err(AhsError::HeaderCut {
                at,
                left: rest.len(),
            }));
        }
        let declared = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        // AHSLength counts from the byte after AHSType (byte 3).
        if 3 + declared > rest.len() {
            return Some(Err(AhsError::LengthPastEnd {
                at,
                declared,
                left: rest.len() - 3,
            }));
        }
        let padded = (3 + declared + 3) & !3;
        self.at = at + padded.min(rest.len());
        Some(Ok(Ahs {
            ahs_type: rest[2],
            specific: &rest[3..3 + declared],
        }))
    }
}

/// The CDB bytes past the 16th that an Extended CDB AHS carries
/// (RFC 7143 §11.2.2.3: AHSLength is the CDB length minus 15, counting the
/// reserved byte); empty when `ahs` holds none. Other segment types are
/// skipped.
pub fn extended_cdb(ahs: &[u8]) -> Result<&[u8], AhsError> {
    let mut found: Option<&[u8]> = None;
    for seg in segments(ahs) {
        let seg = seg?;
        if seg.ahs_type != EXTENDED_CDB {
            continue;
        }
        if found.is_some() {
            return Err(AhsError::ExtendedCdbTwice);
        }
        if seg.specific.len() < 2 {
            return Err(AhsError::ExtendedCdbTooShort {
                declared: seg.specific.len() as u16,
            });
        }
        found = Some(&seg.specific[1..]);
    }
    Ok(found.unwrap_or(&[]))
}

/// Appends to `out` an Extended CDB AHS carrying `rest`, the CDB bytes past
/// the 16th, padded to 4 bytes.
pub fn push_extended_cdb(out: &mut Vec<u8>, rest: &[u8]) {
    debug_assert!(!rest.is_empty() && rest.len() < u16::MAX as usize);
    let declared = rest.len() + 1;
    out.extend_from_slice(&(declared as u16).to_be_bytes());
    out.push(EXTENDED_CDB);
    out.push(0); // reserved
    out.extend_from_slice(rest);
    let padded = (3 + declared + 3) & !3;
    out.resize(out.len() + padded - 3 - declared, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_32_byte_cdb_takes_one_20_byte_segment() {
        let rest: Vec<u8> = (16..32).collect();
        let mut ahs = Vec::new();
        push_extended_cdb(&mut ahs, &rest);
        // AHSLength = 32 - 15 = 17; 3 + 17 = 20 bytes, already a multiple of 4.
        assert_eq!(ahs.len(), 20);
        assert_eq!(&ahs[..4], &[0x00, 0x11, EXTENDED_CDB, 0x00]);
        assert_eq!(&ahs[4..], &rest[..]);
        assert_eq!(extended_cdb(&ahs), Ok(&rest[..]));
    }

    #[test]
    fn odd_lengths_are_padded_and_the_padding_is_not_cdb() {
        for extra in 1..=8usize {
            let rest = vec![0xAB; extra];
            let mut ahs = Vec::new();
            push_extended_cdb(&mut ahs, &rest);
            assert_eq!(ahs.len() % 4, 0, "{extra} extra bytes");
            assert_eq!(ahs.len(), (4 + extra + 3) & !3);
            assert_eq!(extended_cdb(&ahs).unwrap(), &rest[..]);
        }
    }

    #[test]
    fn other_segment_types_are_skipped() {
        // A Bidirectional Read EDTL AHS (AHSLength 5: reserved + 4 bytes, 8
        // in all), then the CDB.
        let mut ahs = vec![0x00, 0x05, BIDI_READ_EXPECTED_LENGTH, 0, 0, 0, 0x10, 0];
        push_extended_cdb(&mut ahs, &[1, 2, 3, 4]);
        let kinds: Vec<u8> = segments(&ahs).map(|s| s.unwrap().ahs_type).collect();
        assert_eq!(kinds, vec![BIDI_READ_EXPECTED_LENGTH, EXTENDED_CDB]);
        assert_eq!(extended_cdb(&ahs), Ok(&[1u8, 2, 3, 4][..]));
        assert_eq!(extended_cdb(&ahs[..8]), Ok(&[][..]));
        assert_eq!(extended_cdb(&[]), Ok(&[][..]));
    }

    #[test]
    fn malformed_segments_are_errors() {
        // AHSLength 33 in a 20-byte area.
        let ahs = [
            0x00,
            0x21,
            EXTENDED_CDB,
            0,
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
            9,
            10,
            11,
            12,
            13,
            14,
            15,
            16,
        ];
        assert_eq!(
            extended_cdb(&ahs),
            Err(AhsError::LengthPastEnd {
                at: 0,
                declared: 33,
                left: 17
            })
        );
        // A reserved byte and no CDB byte.
        assert_eq!(
            extended_cdb(&[0x00, 0x01, EXTENDED_CDB, 0]),
            Err(AhsError::ExtendedCdbTooShort { declared: 1 })
        );
        assert_eq!(
            extended_cdb(&[0x00, 0x00, EXTENDED_CDB, 0]),
            Err(AhsError::ExtendedCdbTooShort { declared: 0 })
        );
        // Two of them.
        let mut two = Vec::new();
        push_extended_cdb(&mut two, &[1]);
        push_extended_cdb(&mut two, &[2]);
        assert_eq!(extended_cdb(&two), Err(AhsError::ExtendedCdbTwice));
        // A segment header cut short after a good segment.
        let mut cut = Vec::new();
        push_extended_cdb(&mut cut, &[1, 2, 3]);
        cut.extend_from_slice(&[0, 1]);
        assert_eq!(
            extended_cdb(&cut),
            Err(AhsError::HeaderCut { at: 8, left: 2 })
        );
        let msg = AhsError::LengthPastEnd {
            at: 0,
            declared: 33,
            left: 17,
        }
        .to_string();
        assert!(msg.contains("33") && msg.contains("17"), "{msg}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(ahs in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = extended_cdb(&ahs);
            prop_assert!(segments(&ahs).count() <= ahs.len() / 4 + 1);
        }

        #[test]
        fn any_cdb_tail_round_trips(rest in proptest::collection::vec(any::<u8>(), 1..244)) {
            let mut ahs = Vec::new();
            push_extended_cdb(&mut ahs, &rest);
            prop_assert_eq!(ahs.len() % 4, 0);
            prop_assert_eq!(extended_cdb(&ahs), Ok(&rest[..]));
        }
    }
}
