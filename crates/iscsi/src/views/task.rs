//! Task management (RFC 7143 §11.5, §11.6): aborts and resets, and their
//! answers.

use super::{code_enum, pdu_kind};
use crate::pdu::Pdu;

code_enum! {
    /// The Function field of a Task Management Function Request (RFC 7143 §11.5.1).
    TaskFunction {
        /// ABORT TASK: the task named by Referenced Task Tag.
        AbortTask = 1,
        /// ABORT TASK SET: every task of the session on the LUN.
        AbortTaskSet = 2,
        /// CLEAR ACA.
        ClearAca = 3,
        /// CLEAR TASK SET: every task on the LUN.
        ClearTaskSet = 4,
        /// LOGICAL UNIT RESET.
        LogicalUnitReset = 5,
        /// TARGET WARM RESET.
        TargetWarmReset = 6,
        /// TARGET COLD RESET: also drops every connection.
        TargetColdReset = 7,
        /// TASK REASSIGN (needs ErrorRecoveryLevel 2).
        TaskReassign = 8,
    }
}

code_enum! {
    /// The Response field of a Task Management Function Response (RFC 7143 §11.6.1).
    TaskResponse {
        /// Function complete.
        Complete = 0,
        /// Task does not exist.
        TaskDoesNotExist = 1,
        /// LUN does not exist.
        LunDoesNotExist = 2,
        /// Task still allegiant.
        TaskStillAllegiant = 3,
        /// Task allegiance reassignment not supported.
        ReassignmentNotSupported = 4,
        /// Task management function not supported.
        NotSupported = 5,
        /// Function authorization failed.
        AuthorizationFailed = 6,
        /// Function rejected.
        Rejected = 255,
    }
}

pdu_kind! {
    /// Task Management Function Request (RFC 7143 §11.5), initiator to target.
    TaskMgmtRequest = TaskMgmtRequest, new(flags: 0x80, itt: 0);
    fields {
        /// Logical Unit Number the function applies to.
        lun / set_lun: [u8; 8] = 8;
        /// Initiator Task Tag of this request.
        itt / set_itt: u32 = 16;
        /// Referenced Task Tag (§11.5.2): the ITT of the task to abort.
        referenced_task_tag / set_referenced_task_tag: u32 = 20;
        /// CmdSN.
        cmd_sn / set_cmd_sn: u32 = 24;
        /// ExpStatSN.
        exp_stat_sn / set_exp_stat_sn: u32 = 28;
        /// RefCmdSN (§11.5.3): the CmdSN of the task to abort.
        ref_cmd_sn / set_ref_cmd_sn: u32 = 32;
        /// ExpDataSN (§11.5.4).
        exp_data_sn / set_exp_data_sn: u32 = 36;
    }
    bits {
        /// The I bit: for immediate delivery.
        immediate / set_immediate = (0, 0x40);
    }
}

impl<P: AsRef<Pdu>> TaskMgmtRequest<P> {
    /// The Function field as sent (the low 7 bits of byte 1).
    #[inline]
    pub fn function_raw(&self) -> u8 {
        self.pdu().bhs[1] & 0x7F
    }

    /// The function, `None` for a code RFC 7143 does not define.
    #[inline]
    pub fn function(&self) -> Option<TaskFunction> {
        TaskFunction::from_u8(self.function_raw())
    }
}

impl<P: AsMut<Pdu>> TaskMgmtRequest<P> {
    /// Sets the Function field; bit 7 of byte 1 stays 1.
    #[inline]
    pub fn set_function(&mut self, f: TaskFunction) {
        self.pdu_mut().bhs[1] = 0x80 | f as u8;
    }
}

pdu_kind! {
    /// Task Management Function Response (RFC 7143 §11.6), target to initiator.
    TaskMgmtResponse = TaskMgmtResponse, new(flags: 0x80, itt: 0);
    fields {
        /// Response (§11.6.1); see [`TaskResponse`].
        response / set_response: u8 = 2;
        /// Initiator Task Tag of the request.
        itt / set_itt: u32 = 16;
        /// StatSN.
        stat_sn / set_stat_sn: u32 = 24;
        /// ExpCmdSN.
        exp_cmd_sn / set_exp_cmd_sn: u32 = 28;
        /// MaxCmdSN.
        max_cmd_sn / set_max_cmd_sn: u32 = 32;
    }
    bits {}
}

impl<P: AsMut<Pdu>> TaskMgmtResponse<P> {
    /// Sets the Response field.
    #[inline]
    pub fn set_task_response(&mut self, r: TaskResponse) {
        self.set_response(r as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::testing::{set_bytes, wire};

    #[test]
    fn request_fields_sit_where_rfc7143_puts_them() {
        let mut t = TaskMgmtRequest::new();
        t.set_immediate(true);
        t.set_function(TaskFunction::AbortTask);
        t.set_lun([0, 2, 0, 0, 0, 0, 0, 0]);
        t.set_itt(1);
        t.set_referenced_task_tag(2);
        t.set_cmd_sn(3);
        t.set_exp_stat_sn(4);
        t.set_ref_cmd_sn(5);
        t.set_exp_data_sn(6);
        let b = t.pdu().bhs;
        assert_eq!((b[0], b[1]), (0x42, 0x81));
        assert_eq!(set_bytes(t.pdu()), vec![0, 1, 9, 19, 23, 27, 31, 35, 39]);
        assert_eq!(
            (b[19], b[23], b[27], b[31], b[35], b[39]),
            (1, 2, 3, 4, 5, 6)
        );
        let back = wire(t);
        let v = TaskMgmtRequest::view(&back);
        assert!(v.immediate());
        assert_eq!(v.function(), Some(TaskFunction::AbortTask));
        assert_eq!(v.lun(), [0, 2, 0, 0, 0, 0, 0, 0]);
        assert_eq!((v.itt(), v.referenced_task_tag(), v.cmd_sn()), (1, 2, 3));
        assert_eq!(
            (v.exp_stat_sn(), v.ref_cmd_sn(), v.exp_data_sn()),
            (4, 5, 6)
        );
    }

    #[test]
    fn every_function_code_decodes_and_unknown_ones_do_not() {
        for f in [
            TaskFunction::AbortTask,
            TaskFunction::AbortTaskSet,
            TaskFunction::ClearAca,
            TaskFunction::ClearTaskSet,
            TaskFunction::LogicalUnitReset,
            TaskFunction::TargetWarmReset,
            TaskFunction::TargetColdReset,
            TaskFunction::TaskReassign,
        ] {
            let mut t = TaskMgmtRequest::new();
            t.set_function(f);
            assert_eq!(t.function(), Some(f));
        }
        let mut t = TaskMgmtRequest::new();
        t.pdu_mut().bhs[1] = 0x80 | 0x7F;
        assert_eq!((t.function(), t.function_raw()), (None, 0x7F));
    }

    #[test]
    fn response_fields_sit_where_rfc7143_puts_them() {
        let mut r = TaskMgmtResponse::new();
        r.set_task_response(TaskResponse::TaskDoesNotExist);
        r.set_itt(9);
        r.set_stat_sn(10);
        r.set_exp_cmd_sn(11);
        r.set_max_cmd_sn(12);
        let b = r.pdu().bhs;
        assert_eq!((b[0], b[1], b[2]), (0x22, 0x80, 1));
        assert_eq!((b[19], b[27], b[31], b[35]), (9, 10, 11, 12));
        let back = wire(r);
        let v = TaskMgmtResponse::view(&back);
        assert_eq!(
            TaskResponse::from_u8(v.response()),
            Some(TaskResponse::TaskDoesNotExist)
        );
        assert_eq!(TaskResponse::from_u8(255), Some(TaskResponse::Rejected));
        assert_eq!(TaskResponse::from_u8(7), None);
        assert_eq!(
            (v.itt(), v.stat_sn(), v.exp_cmd_sn(), v.max_cmd_sn()),
            (9, 10, 11, 12)
        );
    }
}
