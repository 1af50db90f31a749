//! SCSI commands and their data (RFC 7143 §11.3, §11.4, §11.7, §11.8): the
//! command, the solicited and unsolicited data it sends, the data and
//! status that answer it, and the R2T that asks for its data.

use bytes::Bytes;

use super::{code_enum, pdu_kind};
use crate::ahs::{self, AhsError};
use crate::pdu::Pdu;

pdu_kind! {
    /// SCSI Command (RFC 7143 §11.3), initiator to target.
    ScsiCommand = ScsiCommand, new(flags: 0, itt: 0);
    fields {
        /// Logical Unit Number (§11.3: bytes 8..16).
        lun / set_lun: [u8; 8] = 8;
        /// Initiator Task Tag.
        itt / set_itt: u32 = 16;
        /// Expected Data Transfer Length (§11.3.4): bytes the initiator
        /// expects to send (write) or receive (read).
        expected_data_transfer_length / set_expected_data_transfer_length: u32 = 20;
        /// CmdSN.
        cmd_sn / set_cmd_sn: u32 = 24;
        /// ExpStatSN.
        exp_stat_sn / set_exp_stat_sn: u32 = 28;
    }
    bits {
        /// The I bit: delivered for immediate delivery, outside the CmdSN order.
        immediate / set_immediate = (0, 0x40);
        /// The F bit: no unsolicited Data-Out follows (§11.3.1).
        is_final / set_final = (1, 0x80);
        /// The R bit: the command reads data from the target.
        read / set_read = (1, 0x40);
        /// The W bit: the command writes data to the target.
        write / set_write = (1, 0x20);
    }
}

impl<P: AsRef<Pdu>> ScsiCommand<P> {
    /// ATTR (§11.3.1): the task attribute, 0 (untagged) to 4 (ACA).
    #[inline]
    pub fn task_attribute(&self) -> u8 {
        self.pdu().bhs[1] & 0x07
    }

    /// The first 16 bytes of the CDB, as the BHS holds them (§11.3.5).
    #[inline]
    pub fn cdb(&self) -> &[u8; 16] {
        self.pdu().bhs[32..48].try_into().expect("16 bytes")
    }

    /// The CDB bytes past the 16th, from an Extended CDB AHS
    /// (§11.2.2.3); empty for a CDB of 16 bytes or fewer. A malformed
    /// AHS is an error the target answers with a Reject.
    #[inline]
    pub fn extended_cdb(&self) -> Result<&[u8], AhsError> {
        if self.pdu().ahs.is_empty() {
            return Ok(&[]);
        }
        ahs::extended_cdb(&self.pdu().ahs)
    }
}

impl<P: AsMut<Pdu>> ScsiCommand<P> {
    /// Sets the task attribute (ATTR, §11.3.1).
    #[inline]
    pub fn set_task_attribute(&mut self, attr: u8) {
        let b = &mut self.pdu_mut().bhs[1];
        *b = (*b & !0x07) | (attr & 0x07);
    }

    /// Sets the CDB: its first 16 bytes (zero-padded) in the BHS, the rest in
    /// an Extended CDB AHS, which replaces any AHS the PDU held.
    pub fn set_cdb(&mut self, cdb: &[u8]) {
        let p = self.pdu_mut();
        let head = cdb.len().min(16);
        p.bhs[32..48].fill(0);
        p.bhs[32..32 + head].copy_from_slice(&cdb[..head]);
        p.ahs.clear();
        if cdb.len() > 16 {
            ahs::push_extended_cdb(&mut p.ahs, &cdb[16..]);
        }
    }
}

code_enum! {
    /// The Response field of a SCSI Response (RFC 7143 §11.4.3).
    CommandResponse {
        /// Command Completed at Target: the Status field is valid.
        CompletedAtTarget = 0x00,
        /// Target Failure.
        TargetFailure = 0x01,
    }
}

pdu_kind! {
    /// SCSI Response (RFC 7143 §11.4), target to initiator: a command's
    /// status, when it does not ride on the last Data-In.
    ScsiResponse = ScsiResponse, new(flags: 0x80, itt: 0);
    fields {
        /// Response (§11.4.3); see [`CommandResponse`].
        response / set_response: u8 = 2;
        /// Status (§11.4.2): the SCSI status byte.
        status / set_status: u8 = 3;
        /// Initiator Task Tag of the command.
        itt / set_itt: u32 = 16;
        /// SNACK Tag (§11.4.6).
        snack_tag / set_snack_tag: u32 = 20;
        /// StatSN.
        stat_sn / set_stat_sn: u32 = 24;
        /// ExpCmdSN.
        exp_cmd_sn / set_exp_cmd_sn: u32 = 28;
        /// MaxCmdSN.
        max_cmd_sn / set_max_cmd_sn: u32 = 32;
        /// ExpDataSN (§11.4.8): Data-In PDUs sent for the command.
        exp_data_sn / set_exp_data_sn: u32 = 36;
        /// Bidirectional Read Residual Count (§11.4.5).
        bidi_read_residual_count / set_bidi_read_residual_count: u32 = 40;
        /// Residual Count (§11.4.5).
        residual_count / set_residual_count: u32 = 44;
    }
    bits {
        /// The o bit: bidirectional read residual overflow.
        bidi_read_residual_overflow / set_bidi_read_residual_overflow = (1, 0x10);
        /// The u bit: bidirectional read residual underflow.
        bidi_read_residual_underflow / set_bidi_read_residual_underflow = (1, 0x08);
        /// The O bit: residual overflow, the command had more data than
        /// the expected length.
        residual_overflow / set_residual_overflow = (1, 0x04);
        /// The U bit: residual underflow, less data than expected.
        residual_underflow / set_residual_underflow = (1, 0x02);
    }
}

impl<P: AsRef<Pdu>> ScsiResponse<P> {
    /// The sense data of the data segment (§11.4.7.2: SenseLength, then
    /// the sense); `None` when the segment holds none or is shorter than
    /// its SenseLength.
    pub fn sense(&self) -> Option<&[u8]> {
        let d = &self.pdu().data;
        if d.len() < 2 {
            return None;
        }
        let len = u16::from_be_bytes([d[0], d[1]]) as usize;
        d.get(2..2 + len).filter(|s| !s.is_empty())
    }
}

impl<P: AsMut<Pdu>> ScsiResponse<P> {
    /// Sets the Response field.
    #[inline]
    pub fn set_command_response(&mut self, r: CommandResponse) {
        self.set_response(r as u8)
    }

    /// Makes `sense` the data segment, after its SenseLength (§11.4.7.2).
    pub fn set_sense(&mut self, sense: &[u8]) {
        let mut d = Vec::with_capacity(2 + sense.len());
        d.extend_from_slice(&(sense.len() as u16).to_be_bytes());
        d.extend_from_slice(sense);
        self.pdu_mut().data = Bytes::from(d);
    }
}

pdu_kind! {
    /// SCSI Data-Out (RFC 7143 §11.7), initiator to target: write data,
    /// unsolicited or answering an R2T.
    DataOut = DataOut, new(flags: 0, itt: 0);
    fields {
        /// Logical Unit Number.
        lun / set_lun: [u8; 8] = 8;
        /// Initiator Task Tag of the command.
        itt / set_itt: u32 = 16;
        /// Target Transfer Tag (§11.7.4): the R2T's, or the reserved tag
        /// for unsolicited data.
        target_transfer_tag / set_target_transfer_tag: u32 = 20;
        /// ExpStatSN.
        exp_stat_sn / set_exp_stat_sn: u32 = 28;
        /// DataSN (§11.7.5): counts up from 0 within each burst.
        data_sn / set_data_sn: u32 = 36;
        /// Buffer Offset (§11.7.6) of this PDU's data in the command's data.
        buffer_offset / set_buffer_offset: u32 = 40;
    }
    bits {
        /// The F bit: the last PDU of its burst.
        is_final / set_final = (1, 0x80);
    }
}

pdu_kind! {
    /// SCSI Data-In (RFC 7143 §11.7), target to initiator: read data, and
    /// the status on the last one when the command succeeded.
    DataIn = DataIn, new(flags: 0, itt: 0);
    fields {
        /// Status (§11.7.2), valid when the S bit is set.
        status / set_status: u8 = 3;
        /// Logical Unit Number.
        lun / set_lun: [u8; 8] = 8;
        /// Initiator Task Tag of the command.
        itt / set_itt: u32 = 16;
        /// Target Transfer Tag (§11.7.4): the reserved tag unless the A bit
        /// asks for an acknowledgement.
        target_transfer_tag / set_target_transfer_tag: u32 = 20;
        /// StatSN, valid when the S bit is set.
        stat_sn / set_stat_sn: u32 = 24;
        /// ExpCmdSN.
        exp_cmd_sn / set_exp_cmd_sn: u32 = 28;
        /// MaxCmdSN.
        max_cmd_sn / set_max_cmd_sn: u32 = 32;
        /// DataSN (§11.7.5): counts the command's Data-In PDUs from 0.
        data_sn / set_data_sn: u32 = 36;
        /// Buffer Offset (§11.7.6) of this PDU's data in the command's data.
        buffer_offset / set_buffer_offset: u32 = 40;
        /// Residual Count, valid when the S bit is set.
        residual_count / set_residual_count: u32 = 44;
    }
    bits {
        /// The F bit: the last Data-In of the command (or of its burst).
        is_final / set_final = (1, 0x80);
        /// The A bit: the target asks for a DataACK SNACK.
        acknowledge / set_acknowledge = (1, 0x40);
        /// The O bit: residual overflow, valid with the S bit.
        residual_overflow / set_residual_overflow = (1, 0x04);
        /// The U bit: residual underflow, valid with the S bit.
        residual_underflow / set_residual_underflow = (1, 0x02);
        /// The S bit: the command's status rides on this PDU (phase collapse, §11.7.3).
        status_present / set_status_present = (1, 0x01);
    }
}

pdu_kind! {
    /// Ready To Transfer (RFC 7143 §11.8), target to initiator: asks for
    /// one burst of a write's data.
    R2t = R2t, new(flags: 0x80, itt: 0);
    fields {
        /// Logical Unit Number.
        lun / set_lun: [u8; 8] = 8;
        /// Initiator Task Tag of the command.
        itt / set_itt: u32 = 16;
        /// Target Transfer Tag the Data-Outs of this burst carry back.
        target_transfer_tag / set_target_transfer_tag: u32 = 20;
        /// StatSN (not advanced by an R2T).
        stat_sn / set_stat_sn: u32 = 24;
        /// ExpCmdSN.
        exp_cmd_sn / set_exp_cmd_sn: u32 = 28;
        /// MaxCmdSN.
        max_cmd_sn / set_max_cmd_sn: u32 = 32;
        /// R2TSN (§11.8.2): counts the command's R2Ts from 0.
        r2t_sn / set_r2t_sn: u32 = 36;
        /// Buffer Offset (§11.8.3) where the burst starts.
        buffer_offset / set_buffer_offset: u32 = 40;
        /// Desired Data Transfer Length (§11.8.4): bytes in the burst.
        desired_data_transfer_length / set_desired_data_transfer_length: u32 = 44;
    }
    bits {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::Opcode;
    use crate::views::testing::{set_bytes, wire};
    use crate::views::RESERVED_TAG;

    #[test]
    fn scsi_command_fields_sit_where_rfc7143_puts_them() {
        let mut c = ScsiCommand::new();
        c.set_immediate(true);
        c.set_final(true);
        c.set_write(true);
        c.set_task_attribute(1);
        c.set_lun([0, 1, 0, 0, 0, 0, 0, 0]);
        c.set_itt(0x0102_0304);
        c.set_expected_data_transfer_length(0x0506_0708);
        c.set_cmd_sn(0x090A_0B0C);
        c.set_exp_stat_sn(0x0D0E_0F10);
        c.set_cdb(&[0x2A, 0, 0, 0, 0, 0x10, 0, 0, 8, 0]);
        let b = &c.pdu().bhs;
        assert_eq!(b[0], 0x41, "I bit and opcode 0x01");
        assert_eq!(b[1], 0x80 | 0x20 | 1, "F, W, ATTR");
        assert_eq!(&b[8..16], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[16..20], &[1, 2, 3, 4]);
        assert_eq!(&b[20..24], &[5, 6, 7, 8]);
        assert_eq!(&b[24..28], &[9, 10, 11, 12]);
        assert_eq!(&b[28..32], &[13, 14, 15, 16]);
        assert_eq!(&b[32..42], &[0x2A, 0, 0, 0, 0, 0x10, 0, 0, 8, 0]);
        assert_eq!(&b[42..48], &[0; 6]);
        assert!(c.pdu().ahs.is_empty());

        let back = wire(c);
        let v = ScsiCommand::view(&back);
        assert!(v.immediate() && v.is_final() && v.write() && !v.read());
        assert_eq!(v.task_attribute(), 1);
        assert_eq!(v.lun(), [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(v.itt(), 0x0102_0304);
        assert_eq!(v.expected_data_transfer_length(), 0x0506_0708);
        assert_eq!(v.cmd_sn(), 0x090A_0B0C);
        assert_eq!(v.exp_stat_sn(), 0x0D0E_0F10);
        assert_eq!(&v.cdb()[..10], &[0x2A, 0, 0, 0, 0, 0x10, 0, 0, 8, 0]);
        assert_eq!(v.extended_cdb(), Ok(&[][..]));
    }

    #[test]
    fn a_long_cdb_travels_in_an_extended_cdb_ahs() {
        let cdb: Vec<u8> = (0..33).collect();
        let mut c = ScsiCommand::new();
        c.set_read(true);
        c.set_cdb(&cdb);
        // 33 - 15 = 18 = AHSLength; 3 + 18 = 21, padded to 24.
        assert_eq!(c.pdu().ahs.len(), 24);
        assert_eq!(&c.pdu().ahs[..4], &[0, 18, ahs::EXTENDED_CDB, 0]);
        let back = wire(c);
        assert_eq!(back.bhs[4], 6, "TotalAHSLength in 4-byte words");
        let v = ScsiCommand::view(&back);
        assert_eq!(&v.cdb()[..], &cdb[..16]);
        assert_eq!(v.extended_cdb(), Ok(&cdb[16..]));

        // Setting a short CDB again drops the AHS and the old bytes.
        let mut c = ScsiCommand::new();
        c.set_cdb(&cdb);
        c.set_cdb(&[0x12, 0, 0, 0, 36, 0]);
        assert!(c.pdu().ahs.is_empty());
        assert_eq!(&c.cdb()[6..], &[0; 10]);
    }

    #[test]
    fn a_malformed_extended_cdb_is_an_error() {
        let mut p = Pdu::new(Opcode::ScsiCommand);
        p.ahs = vec![0x00, 0x40, ahs::EXTENDED_CDB, 0, 1, 2, 3, 4];
        let back = wire(p);
        assert_eq!(
            ScsiCommand::view(&back).extended_cdb(),
            Err(AhsError::LengthPastEnd {
                at: 0,
                declared: 64,
                left: 5
            })
        );
    }

    #[test]
    fn scsi_response_fields_and_sense() {
        let mut r = ScsiResponse::new();
        assert_eq!(r.pdu().bhs[1], 0x80, "bit 7 of byte 1 is always 1");
        r.set_residual_underflow(true);
        r.set_command_response(CommandResponse::CompletedAtTarget);
        r.set_status(0x02);
        r.set_itt(7);
        r.set_snack_tag(0x11);
        r.set_stat_sn(0x21);
        r.set_exp_cmd_sn(0x22);
        r.set_max_cmd_sn(0x23);
        r.set_exp_data_sn(3);
        r.set_bidi_read_residual_count(0x31);
        r.set_residual_count(412);
        r.set_sense(&[0x70, 0, 5, 0, 0, 0, 0, 10]);
        let b = r.pdu().bhs;
        assert_eq!(b[0], 0x21);
        assert_eq!((b[1], b[2], b[3]), (0x82, 0, 2));
        assert_eq!(u32::from_be_bytes(b[16..20].try_into().unwrap()), 7);
        assert_eq!(u32::from_be_bytes(b[20..24].try_into().unwrap()), 0x11);
        assert_eq!(u32::from_be_bytes(b[24..28].try_into().unwrap()), 0x21);
        assert_eq!(u32::from_be_bytes(b[28..32].try_into().unwrap()), 0x22);
        assert_eq!(u32::from_be_bytes(b[32..36].try_into().unwrap()), 0x23);
        assert_eq!(u32::from_be_bytes(b[36..40].try_into().unwrap()), 3);
        assert_eq!(u32::from_be_bytes(b[40..44].try_into().unwrap()), 0x31);
        assert_eq!(u32::from_be_bytes(b[44..48].try_into().unwrap()), 412);
        assert_eq!(&r.pdu().data[..2], &[0, 8]);

        let back = wire(r);
        let v = ScsiResponse::view(&back);
        assert!(v.residual_underflow() && !v.residual_overflow());
        assert!(!v.bidi_read_residual_overflow() && !v.bidi_read_residual_underflow());
        assert_eq!(
            CommandResponse::from_u8(v.response()),
            Some(CommandResponse::CompletedAtTarget)
        );
        assert_eq!(CommandResponse::from_u8(9), None);
        assert_eq!((v.status(), v.itt(), v.snack_tag()), (2, 7, 0x11));
        assert_eq!(
            (v.stat_sn(), v.exp_cmd_sn(), v.max_cmd_sn()),
            (0x21, 0x22, 0x23)
        );
        assert_eq!((v.exp_data_sn(), v.bidi_read_residual_count()), (3, 0x31));
        assert_eq!(v.residual_count(), 412);
        assert_eq!(v.sense(), Some(&[0x70, 0, 5, 0, 0, 0, 0, 10][..]));

        let mut short = ScsiResponse::new();
        short.pdu_mut().data = Bytes::from_static(&[0, 9, 1, 2]);
        assert_eq!(short.sense(), None, "SenseLength past the segment");
        assert_eq!(ScsiResponse::new().sense(), None);
    }

    #[test]
    fn data_out_round_trips() {
        let mut d = DataOut::new();
        d.set_final(true);
        d.set_lun([1; 8]);
        d.set_itt(5);
        d.set_target_transfer_tag(RESERVED_TAG);
        d.set_exp_stat_sn(6);
        d.set_data_sn(2);
        d.set_buffer_offset(8192);
        d.pdu_mut().data = Bytes::from_static(&[9; 100]);
        let b = d.pdu().bhs;
        assert_eq!((b[0], b[1]), (0x05, 0x80));
        assert_eq!(&b[8..16], &[1; 8]);
        assert_eq!(&b[20..24], &[0xFF; 4]);
        assert_eq!(&b[28..32], &[0, 0, 0, 6]);
        assert_eq!(&b[36..40], &[0, 0, 0, 2]);
        assert_eq!(&b[40..44], &[0, 0, 0x20, 0]);
        assert_eq!(
            set_bytes(d.pdu()),
            vec![0, 1, 8, 9, 10, 11, 12, 13, 14, 15, 19, 20, 21, 22, 23, 31, 39, 42]
        );
        let back = wire(d);
        let v = DataOut::view(&back);
        assert!(v.is_final());
        assert_eq!(
            (v.lun(), v.itt(), v.target_transfer_tag()),
            ([1; 8], 5, RESERVED_TAG)
        );
        assert_eq!(
            (v.exp_stat_sn(), v.data_sn(), v.buffer_offset()),
            (6, 2, 8192)
        );
        assert_eq!(v.pdu().data.len(), 100);
    }

    #[test]
    fn data_in_fields_sit_where_rfc7143_puts_them() {
        let mut d = DataIn::new();
        d.set_final(true);
        d.set_status_present(true);
        d.set_residual_overflow(true);
        d.set_status(0);
        d.set_lun([2; 8]);
        d.set_itt(0xA0B0_C0D0);
        d.set_target_transfer_tag(RESERVED_TAG);
        d.set_stat_sn(11);
        d.set_exp_cmd_sn(12);
        d.set_max_cmd_sn(13);
        d.set_data_sn(14);
        d.set_buffer_offset(15);
        d.set_residual_count(88);
        let b = d.pdu().bhs;
        assert_eq!((b[0], b[1], b[3]), (0x25, 0x85, 0));
        assert_eq!(&b[16..20], &[0xA0, 0xB0, 0xC0, 0xD0]);
        for (at, v) in [(27, 11u8), (31, 12), (35, 13), (39, 14), (43, 15), (47, 88)] {
            assert_eq!(b[at], v, "byte {at}");
        }
        let back = wire(d);
        let v = DataIn::view(&back);
        assert!(v.is_final() && v.status_present() && v.residual_overflow());
        assert!(!v.residual_underflow() && !v.acknowledge());
        assert_eq!((v.status(), v.lun(), v.itt()), (0, [2; 8], 0xA0B0_C0D0));
        assert_eq!(v.target_transfer_tag(), RESERVED_TAG);
        assert_eq!((v.stat_sn(), v.exp_cmd_sn(), v.max_cmd_sn()), (11, 12, 13));
        assert_eq!(
            (v.data_sn(), v.buffer_offset(), v.residual_count()),
            (14, 15, 88)
        );

        // Flags clear as they set.
        let mut d = DataIn::view(back);
        d.set_status_present(false);
        d.set_final(false);
        assert_eq!(d.pdu().bhs[1], 0x04);
    }

    #[test]
    fn r2t_fields_sit_where_rfc7143_puts_them() {
        let mut r = R2t::new();
        r.set_lun([3; 8]);
        r.set_itt(21);
        r.set_target_transfer_tag(22);
        r.set_stat_sn(23);
        r.set_exp_cmd_sn(24);
        r.set_max_cmd_sn(25);
        r.set_r2t_sn(26);
        r.set_buffer_offset(27);
        r.set_desired_data_transfer_length(28);
        let b = r.pdu().bhs;
        assert_eq!((b[0], b[1]), (0x31, 0x80));
        for (at, v) in [
            (19, 21u8),
            (23, 22),
            (27, 23),
            (31, 24),
            (35, 25),
            (39, 26),
            (43, 27),
            (47, 28),
        ] {
            assert_eq!(b[at], v, "byte {at}");
        }
        let back = wire(r);
        let v = R2t::view(&back);
        assert_eq!(
            (v.lun(), v.itt(), v.target_transfer_tag()),
            ([3; 8], 21, 22)
        );
        assert_eq!((v.stat_sn(), v.exp_cmd_sn(), v.max_cmd_sn()), (23, 24, 25));
        assert_eq!(
            (
                v.r2t_sn(),
                v.buffer_offset(),
                v.desired_data_transfer_length()
            ),
            (26, 27, 28)
        );
    }
}
