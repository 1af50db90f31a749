//! PDU framing (RFC 7143 §11.2): the 48-byte Basic Header Segment, additional
//! header segments, optional CRC32C header and data digests, and the padded
//! data segment. The raw field accessors here take offsets; the
//! typed ones in [`crate::views`] name the RFC's fields.

use bytes::Bytes;
use thiserror::Error;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Operation codes (RFC 7143 §11.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3F,
}

impl Opcode {
    /// Decodes the low six bits of byte 0.
    #[inline]
    pub fn from_u8(b: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match b & 0x3F {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => SnackRequest,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => R2t,
            0x32 => AsyncMessage,
            0x3F => Reject,
            _ => return None,
        })
    }
}

/// Which digests a connection negotiated (RFC 7143 §13.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    /// CRC32C over BHS + AHS.
    pub header: bool,
    /// CRC32C over the padded data segment.
    pub data: bool,
}

/// Why bytes are not a valid PDU.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PduError {
    /// The header digest does not match.
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The data digest does not match.
    #[error("data digest mismatch")]
    DataDigest,
    /// The data segment is longer than the receiver declared it accepts.
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    DataTooLong { len: usize, max: usize },
    /// The buffer is shorter than the PDU it starts.
    #[error("PDU truncated: {have} of {need} bytes")]
    Truncated { have: usize, need: usize },
}

/// One PDU: header, additional header segments and data segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    /// The Basic Header Segment.
    pub bhs: [u8; BHS_LEN],
    /// Additional header segments, as received (a multiple of 4 bytes).
    pub ahs: Vec<u8>,
    /// Data segment without padding.
    pub data: Bytes,
}

/// What follows a data segment on the wire: up to 3 bytes of padding to a
/// 4-byte boundary, then the data digest if one was negotiated.
#[derive(Debug, Clone, Copy)]
pub struct Trailer {
    bytes: [u8; 7],
    len: usize,
}

impl Trailer {
    /// The trailer of data segment `data`.
    pub fn of(data: &[u8], digests: Digests) -> Trailer {
        let mut bytes = [0u8; 7];
        let pad = pad4(data.len()) - data.len();
        let mut len = pad;
        if digests.data && !data.is_empty() {
            let crc = crc32c::crc32c_append(crc32c::crc32c(data), &bytes[..pad]);
            bytes[pad..pad + 4].copy_from_slice(&crc.to_le_bytes());
            len += 4;
        }
        Trailer { bytes, len }
    }
}

impl AsRef<[u8]> for Trailer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

impl Pdu {
    /// A PDU with `opcode` and every other field zero.
    #[inline]
    pub fn new(opcode: Opcode) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode as u8;
        Pdu {
            bhs,
            ahs: Vec::new(),
            data: Bytes::new(),
        }
    }

    /// The opcode, if it is one RFC 7143 defines.
    #[inline]
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.bhs[0])
    }

    /// Raw opcode bits.
    #[inline]
    pub fn opcode_raw(&self) -> u8 {
        self.bhs[0] & 0x3F
    }

    /// The I (immediate delivery) bit.
    #[inline]
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }

    /// Sets the I bit.
    #[inline]
    pub fn set_immediate(&mut self, on: bool) {
        if on {
            self.bhs[0] |= 0x40;
        } else {
            self.bhs[0] &= !0x40;
        }
    }

    /// Byte 1: F bit plus opcode-specific flags.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }

    /// Sets byte 1.
    #[inline]
    pub fn set_flags(&mut self, f: u8) {
        self.bhs[1] = f;
    }

    /// The F (final) bit.
    #[inline]
    pub fn is_final(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }

    /// A byte of the BHS.
    #[inline]
    pub fn byte(&self, at: usize) -> u8 {
        self.bhs[at]
    }

    /// Sets a byte of the BHS.
    #[inline]
    pub fn set_byte(&mut self, at: usize, v: u8) {
        self.bhs[at] = v;
    }

    /// A big-endian u16 field of the BHS.
    #[inline]
    pub fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.bhs[at], self.bhs[at + 1]])
    }

    /// Sets a big-endian u16 field of the BHS.
    #[inline]
    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.bhs[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// A big-endian u32 field of the BHS.
    #[inline]
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.bhs[at..at + 4].try_into().expect("4 bytes"))
    }

    /// Sets a big-endian u32 field of the BHS.
    #[inline]
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.bhs[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// The LUN field (bytes 8..16).
    #[inline]
    pub fn lun(&self) -> [u8; 8] {
        self.bhs[8..16].try_into().expect("8 bytes")
    }

    /// Sets the LUN field.
    #[inline]
    pub fn set_lun(&mut self, lun: [u8; 8]) {
        self.bhs[8..16].copy_from_slice(&lun);
    }

    /// Initiator Task Tag (bytes 16..20).
    #[inline]
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    /// Sets the Initiator Task Tag.
    #[inline]
    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(16, v)
    }

    /// Sets StatSN: every PDU a target sends carries it at the same place
    /// (RFC 7143 §11.4.3, §11.7.4; in a Data-In without status it is
    /// reserved and left alone).
    #[inline]
    pub fn set_stat_sn(&mut self, v: u32) {
        self.set_u32(24, v)
    }

    /// Sets ExpCmdSN, at the same place in every PDU a target sends.
    #[inline]
    pub fn set_exp_cmd_sn(&mut self, v: u32) {
        self.set_u32(28, v)
    }

    /// Sets MaxCmdSN, at the same place in every PDU a target sends.
    #[inline]
    pub fn set_max_cmd_sn(&mut self, v: u32) {
        self.set_u32(32, v)
    }

    /// DataSegmentLength as declared in the BHS.
    #[inline]
    pub fn declared_data_len(&self) -> usize {
        ((self.bhs[5] as usize) << 16) | ((self.bhs[6] as usize) << 8) | self.bhs[7] as usize
    }

    /// TotalAHSLength in bytes.
    #[inline]
    pub fn declared_ahs_len(&self) -> usize {
        self.bhs[4] as usize * 4
    }

    /// Bytes that follow the BHS on the wire for this header: AHS, header
    /// digest, padded data and data digest. Fails when the data segment is
    /// longer than `max_data`.
    pub fn body_len(
        bhs: &[u8; BHS_LEN],
        digests: Digests,
        max_data: usize,
    ) -> Result<usize, PduError> {
        let ahs = bhs[4] as usize * 4;
        let data = ((bhs[5] as usize) << 16) | ((bhs[6] as usize) << 8) | bhs[7] as usize;
        if data > max_data {
            return Err(PduError::DataTooLong {
                len: data,
                max: max_data,
            });
        }
        let mut n = ahs + pad4(data);
        if digests.header {
            n += 4;
        }
        if digests.data && data > 0 {
            n += 4;
        }
        Ok(n)
    }

    /// Assembles a received PDU from its BHS and the `body_len` bytes after it,
    /// checking digests.
    pub fn from_parts(bhs: [u8; BHS_LEN], body: &[u8], digests: Digests) -> Result<Pdu, PduError> {
        Self::from_body(bhs, Bytes::copy_from_slice(body), digests)
    }

    /// As [`Pdu::from_parts`], taking the body as it was received: the data
    /// segment is a slice of `body`, not a copy.
    pub fn from_body(bhs: [u8; BHS_LEN], body: Bytes, digests: Digests) -> Result<Pdu, PduError> {
        let need = Self::body_len(&bhs, digests, usize::MAX)?;
        if body.len() < need {
            return Err(PduError::Truncated {
                have: body.len(),
                need,
            });
        }
        let ahs_len = bhs[4] as usize * 4;
        let ahs = &body[..ahs_len];
        let mut at = ahs_len;
        if digests.header {
            let want = u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
            let got = crc32c::crc32c_append(crc32c::crc32c(&bhs), ahs);
            if want != got {
                return Err(PduError::HeaderDigest);
            }
            at += 4;
        }
        let dlen = ((bhs[5] as usize) << 16) | ((bhs[6] as usize) << 8) | bhs[7] as usize;
        let padded = &body[at..at + pad4(dlen)];
        at += pad4(dlen);
        if digests.data && dlen > 0 {
            let want = u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
            if want != crc32c::crc32c(padded) {
                return Err(PduError::DataDigest);
            }
        }
        let data_at = at - pad4(dlen);
        Ok(Pdu {
            bhs,
            ahs: ahs.to_vec(),
            data: body.slice(data_at..data_at + dlen),
        })
    }

    /// Parses one whole PDU from the front of `buf`; returns it and its length.
    pub fn parse(buf: &[u8], digests: Digests, max_data: usize) -> Result<(Pdu, usize), PduError> {
        if buf.len() < BHS_LEN {
            return Err(PduError::Truncated {
                have: buf.len(),
                need: BHS_LEN,
            });
        }
        let bhs: [u8; BHS_LEN] = buf[..BHS_LEN].try_into().expect("48 bytes");
        let body = Self::body_len(&bhs, digests, max_data)?;
        if buf.len() < BHS_LEN + body {
            return Err(PduError::Truncated {
                have: buf.len(),
                need: BHS_LEN + body,
            });
        }
        let pdu = Self::from_parts(bhs, &buf[BHS_LEN..BHS_LEN + body], digests)?;
        Ok((pdu, BHS_LEN + body))
    }

    /// The header bytes to send (BHS with lengths filled in, AHS, header
    /// digest) and the trailer after the data (padding and data digest). The
    /// data segment itself goes between them, so it is never copied.
    pub fn encode_parts(&mut self, digests: Digests) -> (Vec<u8>, Vec<u8>) {
        let mut head = Vec::with_capacity(BHS_LEN + self.ahs.len() + 4);
        self.head_into(self.data.len(), digests, &mut head);
        let tail = Trailer::of(&self.data, digests).as_ref().to_vec();
        (head, tail)
    }

    /// Appends to `out` the header of this PDU carrying a data segment of
    /// `data_len` bytes (which need not be in `self.data`): the BHS with its
    /// lengths filled in, the AHS and the header digest.
    pub fn head_into(&mut self, data_len: usize, digests: Digests, out: &mut Vec<u8>) {
        debug_assert!(data_len < 1 << 24 && self.ahs.len().is_multiple_of(4));
        self.bhs[4] = (self.ahs.len() / 4) as u8;
        self.bhs[5] = (data_len >> 16) as u8;
        self.bhs[6] = (data_len >> 8) as u8;
        self.bhs[7] = data_len as u8;
        let start = out.len();
        out.extend_from_slice(&self.bhs);
        out.extend_from_slice(&self.ahs);
        if digests.header {
            let crc = crc32c::crc32c(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
    }

    /// The whole PDU as bytes.
    pub fn encode(&mut self, digests: Digests) -> Vec<u8> {
        let (mut head, tail) = self.encode_parts(digests);
        head.extend_from_slice(&self.data);
        head.extend_from_slice(&tail);
        head
    }
}

impl AsRef<Pdu> for Pdu {
    #[inline]
    fn as_ref(&self) -> &Pdu {
        self
    }
}

impl AsMut<Pdu> for Pdu {
    #[inline]
    fn as_mut(&mut self) -> &mut Pdu {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digests() -> impl Strategy<Value = Digests> {
        (any::<bool>(), any::<bool>()).prop_map(|(header, data)| Digests { header, data })
    }

    proptest! {
        #[test]
        fn encode_then_parse_is_identity(bhs in proptest::collection::vec(any::<u8>(), 48),
                                         ahs_words in 0usize..4,
                                         data in proptest::collection::vec(any::<u8>(), 0..600),
                                         d in digests()) {
            let mut p = Pdu { bhs: bhs.try_into().unwrap(), ahs: vec![7u8; ahs_words * 4], data: Bytes::from(data) };
            let wire = p.encode(d);
            let (back, used) = Pdu::parse(&wire, d, 1 << 24).unwrap();
            prop_assert_eq!(used, wire.len());
            prop_assert_eq!(back, p);
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..400), d in digests()) {
            let _ = Pdu::parse(&buf, d, 256);
        }

        #[test]
        fn corrupted_digests_are_caught(data in proptest::collection::vec(any::<u8>(), 1..100), flip in 0usize..48) {
            let d = Digests { header: true, data: true };
            let mut p = Pdu::new(Opcode::ScsiCommand);
            p.data = Bytes::from(data);
            let mut wire = p.encode(d);
            // Bytes 4..8 are lengths: flipping them changes framing, not content.
            let flip = if (4..8).contains(&flip) { 0 } else { flip };
            wire[flip] ^= 0x01;
            prop_assert_eq!(Pdu::parse(&wire, d, 1 << 24).unwrap_err(), PduError::HeaderDigest);
            let mut wire = p.encode(d);
            wire[BHS_LEN + 4] ^= 0x80;
            prop_assert_eq!(Pdu::parse(&wire, d, 1 << 24).unwrap_err(), PduError::DataDigest);
        }
    }

    #[test]
    fn limits_and_truncation() {
        let mut p = Pdu::new(Opcode::DataOut);
        p.data = Bytes::from(vec![1u8; 1000]);
        let wire = p.encode(Digests::default());
        assert!(matches!(
            Pdu::parse(&wire, Digests::default(), 512),
            Err(PduError::DataTooLong { .. })
        ));
        assert!(matches!(
            Pdu::parse(&wire[..100], Digests::default(), 4096),
            Err(PduError::Truncated { .. })
        ));
        assert_eq!(wire.len(), 48 + 1000);
    }

    #[test]
    fn known_crc32c_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8A9136AA);
    }
}
