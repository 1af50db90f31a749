//! Login (RFC 7143 §11.12, §11.13): the request and response of each login
//! step. What the steps negotiate lives in [`crate::login`].

use super::pdu_kind;
use crate::pdu::Pdu;

pdu_kind! {
    /// Login Request (RFC 7143 §11.12), initiator to target.
    LoginRequest = LoginRequest, new(flags: 0, itt: 0);
    fields {
        /// Version-max (§11.12.4).
        version_max / set_version_max: u8 = 2;
        /// Version-min (§11.12.5).
        version_min / set_version_min: u8 = 3;
        /// ISID (§11.12.6): the initiator part of the session identifier.
        isid / set_isid: [u8; 6] = 8;
        /// TSIH (§11.12.7): 0 for a new session.
        tsih / set_tsih: u16 = 14;
        /// Initiator Task Tag.
        itt / set_itt: u32 = 16;
        /// CID (§11.12.8).
        cid / set_cid: u16 = 20;
        /// CmdSN (§11.12.9).
        cmd_sn / set_cmd_sn: u32 = 24;
        /// ExpStatSN (§11.12.10).
        exp_stat_sn / set_exp_stat_sn: u32 = 28;
    }
    bits {
        /// The I bit, always 1 in a Login Request.
        immediate / set_immediate = (0, 0x40);
        /// The T bit (§11.12.1): the initiator is ready to go to the next stage.
        transit / set_transit = (1, 0x80);
        /// The C bit (§11.12.2): the text continues in the next request.
        continues / set_continues = (1, 0x40);
    }
}

pdu_kind! {
    /// Login Response (RFC 7143 §11.13), target to initiator.
    LoginResponse = LoginResponse, new(flags: 0, itt: 0);
    fields {
        /// Version-max (§11.13.1).
        version_max / set_version_max: u8 = 2;
        /// Version-active (§11.13.2).
        version_active / set_version_active: u8 = 3;
        /// ISID, as the request carried it.
        isid / set_isid: [u8; 6] = 8;
        /// TSIH (§11.13.3): the session's handle, set on the final response.
        tsih / set_tsih: u16 = 14;
        /// Initiator Task Tag of the request.
        itt / set_itt: u32 = 16;
        /// StatSN (§11.13.4).
        stat_sn / set_stat_sn: u32 = 24;
        /// ExpCmdSN.
        exp_cmd_sn / set_exp_cmd_sn: u32 = 28;
        /// MaxCmdSN.
        max_cmd_sn / set_max_cmd_sn: u32 = 32;
        /// Status-Class (§11.13.5): 0 success, 1 redirection, 2 initiator
        /// error, 3 target error.
        status_class / set_status_class: u8 = 36;
        /// Status-Detail (§11.13.5).
        status_detail / set_status_detail: u8 = 37;
    }
    bits {
        /// The T bit: the target goes to the next stage.
        transit / set_transit = (1, 0x80);
        /// The C bit: the text continues in the next response.
        continues / set_continues = (1, 0x40);
    }
}

/// Stage fields of byte 1 (§11.12.3, §11.12.4): CSG in bits 2-3, NSG in bits
/// 0-1, the same in request and response.
macro_rules! stages {
    ($name:ident) => {
        impl<P: AsRef<Pdu>> $name<P> {
            /// CSG: the current stage (0 security, 1 operational).
            #[inline]
            pub fn csg(&self) -> u8 {
                (self.pdu().bhs[1] >> 2) & 0x03
            }

            /// NSG: the next stage, meaningful with the T bit (3 full feature phase).
            #[inline]
            pub fn nsg(&self) -> u8 {
                self.pdu().bhs[1] & 0x03
            }
        }

        impl<P: AsMut<Pdu>> $name<P> {
            /// Sets CSG.
            #[inline]
            pub fn set_csg(&mut self, stage: u8) {
                let b = &mut self.pdu_mut().bhs[1];
                *b = (*b & !0x0C) | ((stage & 0x03) << 2);
            }

            /// Sets NSG.
            #[inline]
            pub fn set_nsg(&mut self, stage: u8) {
                let b = &mut self.pdu_mut().bhs[1];
                *b = (*b & !0x03) | (stage & 0x03);
            }
        }
    };
}

stages!(LoginRequest);
stages!(LoginResponse);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::testing::wire;

    #[test]
    fn request_fields_sit_where_rfc7143_puts_them() {
        let mut q = LoginRequest::new();
        q.set_immediate(true);
        q.set_transit(true);
        q.set_csg(1);
        q.set_nsg(3);
        q.set_version_max(0);
        q.set_version_min(0);
        q.set_isid([0x40, 0, 0x12, 0x34, 0, 1]);
        q.set_tsih(0x0506);
        q.set_itt(7);
        q.set_cid(0x0809);
        q.set_cmd_sn(10);
        q.set_exp_stat_sn(11);
        let b = q.pdu().bhs;
        assert_eq!((b[0], b[1]), (0x43, 0x87));
        assert_eq!(&b[8..16], &[0x40, 0, 0x12, 0x34, 0, 1, 5, 6]);
        assert_eq!((b[19], b[20], b[21], b[27], b[31]), (7, 8, 9, 10, 11));
        let back = wire(q);
        let v = LoginRequest::view(&back);
        assert!(v.immediate() && v.transit() && !v.continues());
        assert_eq!(
            (v.csg(), v.nsg(), v.version_max(), v.version_min()),
            (1, 3, 0, 0)
        );
        assert_eq!((v.isid(), v.tsih()), ([0x40, 0, 0x12, 0x34, 0, 1], 0x0506));
        assert_eq!(
            (v.itt(), v.cid(), v.cmd_sn(), v.exp_stat_sn()),
            (7, 0x0809, 10, 11)
        );
    }

    #[test]
    fn response_fields_sit_where_rfc7143_puts_them() {
        let mut r = LoginResponse::new();
        r.set_continues(true);
        r.set_csg(0);
        r.set_nsg(1);
        r.set_isid([1, 2, 3, 4, 5, 6]);
        r.set_tsih(0x0708);
        r.set_itt(9);
        r.set_stat_sn(10);
        r.set_exp_cmd_sn(11);
        r.set_max_cmd_sn(12);
        r.set_status_class(2);
        r.set_status_detail(3);
        let b = r.pdu().bhs;
        assert_eq!((b[0], b[1], b[2], b[3]), (0x23, 0x41, 0, 0));
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            (b[19], b[27], b[31], b[35], b[36], b[37]),
            (9, 10, 11, 12, 2, 3)
        );
        let back = wire(r);
        let v = LoginResponse::view(&back);
        assert!(!v.transit() && v.continues());
        assert_eq!(
            (v.csg(), v.nsg(), v.version_max(), v.version_active()),
            (0, 1, 0, 0)
        );
        assert_eq!(
            (v.isid(), v.tsih(), v.itt()),
            ([1, 2, 3, 4, 5, 6], 0x0708, 9)
        );
        assert_eq!((v.stat_sn(), v.exp_cmd_sn(), v.max_cmd_sn()), (10, 11, 12));
        assert_eq!((v.status_class(), v.status_detail()), (2, 3));

        // Stages overwrite, they do not accumulate.
        let mut r = LoginResponse::view(back);
        r.set_csg(1);
        r.set_nsg(3);
        r.set_transit(true);
        assert_eq!(r.pdu().bhs[1], 0x80 | 0x40 | 0x04 | 0x03);
    }
}
