//! The session's own traffic (RFC 7143 §11.9-§11.11, §11.14, §11.15,
//! §11.17-§11.19): pings, text exchanges, logout, rejects and asynchronous
//! messages.

use bytes::Bytes;

use super::{code_enum, pdu_kind, RESERVED_TAG};
use crate::pdu::{Pdu, BHS_LEN};

pdu_kind! {
    /// NOP-Out (RFC 7143 §11.18), initiator to target: a ping, or the
    /// answer to a target's ping.
    NopOut = NopOut, new(flags: 0x80, itt: 0);
    fields {
        /// Logical Unit Number.
        lun / set_lun: [u8; 8] = 8;
        /// Initiator Task Tag: the reserved tag when no answer is wanted.
        itt / set_itt: u32 = 16;
        /// Target Transfer Tag: the target ping's, or the reserved tag.
        target_transfer_tag / set_target_transfer_tag: u32 = 20;
        /// CmdSN.
        cmd_sn / set_cmd_sn: u32 = 24;
        /// ExpStatSN.
        exp_stat_sn / set_exp_stat_sn: u32 = 28;
    }
    bits {
        /// The I bit: for immediate delivery.
        immediate / set_immediate = (0, 0x40);
    }
}

pdu_kind! {
    /// NOP-In (RFC 7143 §11.19), target to initiator: the answer to a ping,
    /// or a ping of the target's.
    NopIn = NopIn, new(flags: 0x80, itt: 0);
    fields {
        /// Logical Unit Number.
        lun / set_lun: [u8; 8] = 8;
        /// Initiator Task Tag: the NOP-Out's, or the reserved tag for a
        /// target's ping.
        itt / set_itt: u32 = 16;
        /// Target Transfer Tag: the reserved tag unless this is a ping
        /// the initiator must answer.
        target_transfer_tag / set_target_transfer_tag: u32 = 20;
        /// StatSN.
        stat_sn / set_stat_sn: u32 = 24;
        /// ExpCmdSN.
        exp_cmd_sn / set_exp_cmd_sn: u32 = 28;
        /// MaxCmdSN.
        max_cmd_sn / set_max_cmd_sn: u32 = 32;
    }
    bits {}
}

pdu_kind! {
    /// Text Request (RFC 7143 §11.10), initiator to target.
    TextRequest = TextRequest, new(flags: 0x80, itt: 0);
    fields {
        /// Logical Unit Number.
        lun / set_lun: [u8; 8] = 8;
        /// Initiator Task Tag.
        itt / set_itt: u32 = 16;
        /// Target Transfer Tag: the one of the response this continues,
        /// or the reserved tag for a new exchange.
        target_transfer_tag / set_target_transfer_tag: u32 = 20;
        /// CmdSN.
        cmd_sn / set_cmd_sn: u32 = 24;
        /// ExpStatSN.
        exp_stat_sn / set_exp_stat_sn: u32 = 28;
    }
    bits {
        /// The I bit: for immediate delivery.
        immediate / set_immediate = (0, 0x40);
        /// The F bit: the initiator's last text of this exchange.
        is_final / set_final = (1, 0x80);
        /// The C bit: the text continues in the next request.
        continues / set_continues = (1, 0x40);
    }
}

pdu_kind! {
    /// Text Response (RFC 7143 §11.11), target to initiator.
    TextResponse = TextResponse, new(flags: 0x80, itt: 0);
    fields {
        /// Logical Unit Number.
        lun / set_lun: [u8; 8] = 8;
        /// Initiator Task Tag of the request.
        itt / set_itt: u32 = 16;
        /// Target Transfer Tag: names the rest of a long answer, or the
        /// reserved tag on the last response.
        target_transfer_tag / set_target_transfer_tag: u32 = 20;
        /// StatSN.
        stat_sn / set_stat_sn: u32 = 24;
        /// ExpCmdSN.
        exp_cmd_sn / set_exp_cmd_sn: u32 = 28;
        /// MaxCmdSN.
        max_cmd_sn / set_max_cmd_sn: u32 = 32;
    }
    bits {
        /// The F bit: the target's last text of this exchange.
        is_final / set_final = (1, 0x80);
        /// The C bit: the text continues in the next response.
        continues / set_continues = (1, 0x40);
    }
}

pdu_kind! {
    /// Logout Request (RFC 7143 §11.14), initiator to target.
    LogoutRequest = LogoutRequest, new(flags: 0x80, itt: 0);
    fields {
        /// Initiator Task Tag.
        itt / set_itt: u32 = 16;
        /// CID (§11.14.2): the connection to close, for reason code 1 and 2.
        cid / set_cid: u16 = 20;
        /// CmdSN.
        cmd_sn / set_cmd_sn: u32 = 24;
        /// ExpStatSN.
        exp_stat_sn / set_exp_stat_sn: u32 = 28;
    }
    bits {
        /// The I bit: for immediate delivery.
        immediate / set_immediate = (0, 0x40);
    }
}

impl<P: AsRef<Pdu>> LogoutRequest<P> {
    /// Reason Code (§11.14.1): 0 close the session, 1 the connection,
    /// 2 the connection for recovery.
    #[inline]
    pub fn reason_code(&self) -> u8 {
        self.pdu().bhs[1] & 0x7F
    }
}

impl<P: AsMut<Pdu>> LogoutRequest<P> {
    /// Sets the Reason Code; bit 7 of byte 1 stays 1.
    #[inline]
    pub fn set_reason_code(&mut self, code: u8) {
        self.pdu_mut().bhs[1] = 0x80 | (code & 0x7F);
    }
}

code_enum! {
    /// The Response field of a Logout Response (RFC 7143 §11.15.1).
    LogoutResponseCode {
        /// Connection or session closed successfully.
        Closed = 0,
        /// CID not found.
        CidNotFound = 1,
        /// Connection recovery is not supported.
        RecoveryNotSupported = 2,
        /// Cleanup failed for various reasons.
        CleanupFailed = 3,
    }
}

pdu_kind! {
    /// Logout Response (RFC 7143 §11.15), target to initiator.
    LogoutResponse = LogoutResponse, new(flags: 0x80, itt: 0);
    fields {
        /// Response (§11.15.1); see [`LogoutResponseCode`].
        response / set_response: u8 = 2;
        /// Initiator Task Tag of the request.
        itt / set_itt: u32 = 16;
        /// StatSN.
        stat_sn / set_stat_sn: u32 = 24;
        /// ExpCmdSN.
        exp_cmd_sn / set_exp_cmd_sn: u32 = 28;
        /// MaxCmdSN.
        max_cmd_sn / set_max_cmd_sn: u32 = 32;
        /// Time2Wait (§11.15.2), seconds.
        time2wait / set_time2wait: u16 = 40;
        /// Time2Retain (§11.15.3), seconds.
        time2retain / set_time2retain: u16 = 42;
    }
    bits {}
}

impl<P: AsMut<Pdu>> LogoutResponse<P> {
    /// Sets the Response field.
    #[inline]
    pub fn set_logout_response(&mut self, r: LogoutResponseCode) {
        self.set_response(r as u8)
    }
}

code_enum! {
    /// The Reason field of a Reject (RFC 7143 §11.17.1).
    RejectReason {
        /// Data (payload) digest error.
        DataDigestError = 0x02,
        /// SNACK Reject.
        SnackReject = 0x03,
        /// Protocol Error (e.g., a SNACK for a status already acknowledged).
        ProtocolError = 0x04,
        /// Command not supported.
        CommandNotSupported = 0x05,
        /// Immediate command reject: too many immediate commands.
        TooManyImmediateCommands = 0x06,
        /// Task in progress.
        TaskInProgress = 0x07,
        /// Invalid data ACK.
        InvalidDataAck = 0x08,
        /// Invalid PDU field.
        InvalidPduField = 0x09,
        /// Long op reject: cannot generate a Target Transfer Tag, out of resources.
        OutOfResources = 0x0A,
        /// Waiting for Logout.
        WaitingForLogout = 0x0C,
    }
}

pdu_kind! {
    /// Reject (RFC 7143 §11.17), target to initiator: carries the header
    /// of the PDU it refuses.
    Reject = Reject, new(flags: 0x80, itt: RESERVED_TAG);
    fields {
        /// Reason (§11.17.1); see [`RejectReason`].
        reason / set_reason: u8 = 2;
        /// StatSN.
        stat_sn / set_stat_sn: u32 = 24;
        /// ExpCmdSN.
        exp_cmd_sn / set_exp_cmd_sn: u32 = 28;
        /// MaxCmdSN.
        max_cmd_sn / set_max_cmd_sn: u32 = 32;
        /// DataSN/R2TSN (§11.17.2): for a rejected SNACK, where to resume.
        data_sn / set_data_sn: u32 = 36;
    }
    bits {}
}

impl Reject<Pdu> {
    /// A Reject for `reason` carrying the rejected PDU's header `bhs`.
    pub fn of(reason: RejectReason, bhs: &[u8; BHS_LEN]) -> Self {
        let mut r = Reject::new();
        r.set_reason(reason as u8);
        r.pdu_mut().data = Bytes::copy_from_slice(bhs);
        r
    }
}

impl<P: AsRef<Pdu>> Reject<P> {
    /// The header of the rejected PDU, when the data segment holds one.
    pub fn rejected_header(&self) -> Option<&[u8; BHS_LEN]> {
        self.pdu().data.get(..BHS_LEN)?.try_into().ok()
    }
}

pdu_kind! {
    /// Asynchronous Message (RFC 7143 §11.9), target to initiator: an event
    /// the initiator did not ask about.
    AsyncMessage = AsyncMessage, new(flags: 0x80, itt: RESERVED_TAG);
    fields {
        /// Logical Unit Number, for a SCSI asynchronous event.
        lun / set_lun: [u8; 8] = 8;
        /// StatSN.
        stat_sn / set_stat_sn: u32 = 24;
        /// ExpCmdSN.
        exp_cmd_sn / set_exp_cmd_sn: u32 = 28;
        /// MaxCmdSN.
        max_cmd_sn / set_max_cmd_sn: u32 = 32;
        /// AsyncEvent (§11.9.1): 0 SCSI event, 1 logout requested, 2 to 4
        /// connection or session dropped, 5 renegotiation requested.
        async_event / set_async_event: u8 = 36;
        /// AsyncVCode (§11.9.2): vendor-specific detail.
        async_vcode / set_async_vcode: u8 = 37;
        /// Parameter1 (§11.9.1): a CID, or the time to log out in.
        parameter1 / set_parameter1: u16 = 38;
        /// Parameter2: Time2Wait for a dropped connection or session.
        parameter2 / set_parameter2: u16 = 40;
        /// Parameter3: Time2Retain for a dropped connection or session.
        parameter3 / set_parameter3: u16 = 42;
    }
    bits {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::Opcode;
    use crate::views::testing::{set_bytes, wire};

    #[test]
    fn nop_out_and_nop_in_round_trip() {
        let mut o = NopOut::new();
        o.set_immediate(true);
        o.set_lun([4; 8]);
        o.set_itt(1);
        o.set_target_transfer_tag(RESERVED_TAG);
        o.set_cmd_sn(2);
        o.set_exp_stat_sn(3);
        o.pdu_mut().data = Bytes::from_static(b"ping");
        let b = o.pdu().bhs;
        assert_eq!((b[0], b[1]), (0x40, 0x80));
        assert_eq!((&b[20..24], b[27], b[31]), (&[0xFF; 4][..], 2, 3));
        let back = wire(o);
        let v = NopOut::view(&back);
        assert!(v.immediate());
        assert_eq!(
            (v.lun(), v.itt(), v.target_transfer_tag()),
            ([4; 8], 1, RESERVED_TAG)
        );
        assert_eq!((v.cmd_sn(), v.exp_stat_sn()), (2, 3));
        assert_eq!(&v.pdu().data[..], b"ping");

        let mut i = NopIn::new();
        i.set_lun([5; 8]);
        i.set_itt(RESERVED_TAG);
        i.set_target_transfer_tag(77);
        i.set_stat_sn(6);
        i.set_exp_cmd_sn(7);
        i.set_max_cmd_sn(8);
        let b = i.pdu().bhs;
        assert_eq!((b[0], b[1]), (0x20, 0x80));
        assert_eq!(
            (&b[16..20], b[23], b[27], b[31], b[35]),
            (&[0xFF; 4][..], 77, 6, 7, 8)
        );
        let back = wire(i);
        let v = NopIn::view(&back);
        assert_eq!(
            (v.lun(), v.itt(), v.target_transfer_tag()),
            ([5; 8], RESERVED_TAG, 77)
        );
        assert_eq!((v.stat_sn(), v.exp_cmd_sn(), v.max_cmd_sn()), (6, 7, 8));
    }

    #[test]
    fn text_request_and_response_round_trip() {
        let mut q = TextRequest::new();
        q.set_immediate(true);
        q.set_final(false);
        q.set_continues(true);
        q.set_lun([6; 8]);
        q.set_itt(9);
        q.set_target_transfer_tag(10);
        q.set_cmd_sn(11);
        q.set_exp_stat_sn(12);
        let b = q.pdu().bhs;
        assert_eq!((b[0], b[1]), (0x44, 0x40));
        assert_eq!((b[19], b[23], b[27], b[31]), (9, 10, 11, 12));
        let back = wire(q);
        let v = TextRequest::view(&back);
        assert!(v.immediate() && !v.is_final() && v.continues());
        assert_eq!((v.lun(), v.itt(), v.target_transfer_tag()), ([6; 8], 9, 10));
        assert_eq!((v.cmd_sn(), v.exp_stat_sn()), (11, 12));

        let mut r = TextResponse::new();
        r.set_final(false);
        r.set_continues(true);
        r.set_lun([7; 8]);
        r.set_itt(13);
        r.set_target_transfer_tag(14);
        r.set_stat_sn(15);
        r.set_exp_cmd_sn(16);
        r.set_max_cmd_sn(17);
        let b = r.pdu().bhs;
        assert_eq!((b[0], b[1]), (0x24, 0x40));
        assert_eq!((b[19], b[23], b[27], b[31], b[35]), (13, 14, 15, 16, 17));
        let back = wire(r);
        let v = TextResponse::view(&back);
        assert!(!v.is_final() && v.continues());
        assert_eq!(
            (v.lun(), v.itt(), v.target_transfer_tag()),
            ([7; 8], 13, 14)
        );
        assert_eq!((v.stat_sn(), v.exp_cmd_sn(), v.max_cmd_sn()), (15, 16, 17));
    }

    #[test]
    fn logout_request_and_response_round_trip() {
        let mut q = LogoutRequest::new();
        q.set_reason_code(1);
        q.set_itt(18);
        q.set_cid(0x0102);
        q.set_cmd_sn(19);
        q.set_exp_stat_sn(20);
        let b = q.pdu().bhs;
        assert_eq!((b[0], b[1]), (0x06, 0x81));
        assert_eq!((b[19], b[20], b[21], b[27], b[31]), (18, 1, 2, 19, 20));
        let back = wire(q);
        let v = LogoutRequest::view(&back);
        assert!(!v.immediate());
        assert_eq!((v.reason_code(), v.itt(), v.cid()), (1, 18, 0x0102));
        assert_eq!((v.cmd_sn(), v.exp_stat_sn()), (19, 20));

        let mut r = LogoutResponse::new();
        r.set_logout_response(LogoutResponseCode::CidNotFound);
        r.set_itt(21);
        r.set_stat_sn(22);
        r.set_exp_cmd_sn(23);
        r.set_max_cmd_sn(24);
        r.set_time2wait(0x0203);
        r.set_time2retain(0x0405);
        let b = r.pdu().bhs;
        assert_eq!((b[0], b[1], b[2]), (0x26, 0x80, 1));
        assert_eq!((b[19], b[27], b[31], b[35]), (21, 22, 23, 24));
        assert_eq!(&b[40..44], &[2, 3, 4, 5]);
        let back = wire(r);
        let v = LogoutResponse::view(&back);
        assert_eq!(
            LogoutResponseCode::from_u8(v.response()),
            Some(LogoutResponseCode::CidNotFound)
        );
        assert_eq!(
            (v.itt(), v.stat_sn(), v.exp_cmd_sn(), v.max_cmd_sn()),
            (21, 22, 23, 24)
        );
        assert_eq!((v.time2wait(), v.time2retain()), (0x0203, 0x0405));
    }

    #[test]
    fn a_reject_carries_the_refused_header() {
        let mut refused = Pdu::new(Opcode::DataOut);
        refused.set_itt(42);
        let r = Reject::of(RejectReason::InvalidPduField, &refused.bhs);
        let b = r.pdu().bhs;
        assert_eq!((b[0], b[1], b[2]), (0x3F, 0x80, 0x09));
        assert_eq!(&b[16..20], &[0xFF; 4], "ITT is reserved");
        assert_eq!(set_bytes(r.pdu()), vec![0, 1, 2, 16, 17, 18, 19]);
        let mut r = r;
        r.set_stat_sn(1);
        r.set_exp_cmd_sn(2);
        r.set_max_cmd_sn(3);
        r.set_data_sn(4);
        let back = wire(r);
        let v = Reject::view(&back);
        assert_eq!(
            RejectReason::from_u8(v.reason()),
            Some(RejectReason::InvalidPduField)
        );
        assert_eq!(RejectReason::from_u8(0x0B), None, "0x0b is deprecated");
        assert_eq!(
            (v.stat_sn(), v.exp_cmd_sn(), v.max_cmd_sn(), v.data_sn()),
            (1, 2, 3, 4)
        );
        assert_eq!(v.rejected_header(), Some(&refused.bhs));
        assert_eq!(Reject::new().rejected_header(), None);
    }

    #[test]
    fn async_message_fields_sit_where_rfc7143_puts_them() {
        let mut a = AsyncMessage::new();
        a.set_lun([8; 8]);
        a.set_stat_sn(1);
        a.set_exp_cmd_sn(2);
        a.set_max_cmd_sn(3);
        a.set_async_event(1);
        a.set_async_vcode(0x55);
        a.set_parameter1(0x0A0B);
        a.set_parameter2(0x0C0D);
        a.set_parameter3(0x0E0F);
        let b = a.pdu().bhs;
        assert_eq!((b[0], b[1]), (0x32, 0x80));
        assert_eq!(&b[16..20], &[0xFF; 4]);
        assert_eq!((b[27], b[31], b[35], b[36], b[37]), (1, 2, 3, 1, 0x55));
        assert_eq!(&b[38..44], &[0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F]);
        let back = wire(a);
        let v = AsyncMessage::view(&back);
        assert_eq!(
            (v.lun(), v.stat_sn(), v.exp_cmd_sn(), v.max_cmd_sn()),
            ([8; 8], 1, 2, 3)
        );
        assert_eq!((v.async_event(), v.async_vcode()), (1, 0x55));
        assert_eq!(
            (v.parameter1(), v.parameter2(), v.parameter3()),
            (0x0A0B, 0x0C0D, 0x0E0F)
        );
    }
}
