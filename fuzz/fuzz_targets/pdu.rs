//! iSCSI framing: BHS, AHS, data segment, padding and digests, from raw bytes;
//! then every field of the typed view of what parsed, the extended CDB AHS
//! included.
#![no_main]

use iscsi::{
    DataOut, Digests, LoginRequest, LogoutRequest, NopOut, Opcode, Pdu, ScsiCommand,
    TaskMgmtRequest, TextRequest,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let digests = Digests {
        header: flags & 1 != 0,
        data: flags & 2 != 0,
    };
    if let Ok((mut pdu, used)) = Pdu::parse(rest, digests, 1 << 20) {
        assert!(used <= rest.len());
        views(&pdu);
        // Whatever parses re-encodes to something that parses to the same PDU.
        let again = pdu.encode(digests);
        let (back, n) = Pdu::parse(&again, digests, 1 << 20).expect("re-encoded PDU parses");
        assert_eq!(n, again.len());
        assert_eq!(back.bhs, pdu.bhs);
        assert_eq!(back.data, pdu.data);
    }
});

/// Reads a PDU the way the target does, through the view of its opcode: no
/// field and no AHS may panic, and a well-formed extended CDB comes back
/// from a command rebuilt with it.
fn views(pdu: &Pdu) {
    match pdu.opcode() {
        Some(Opcode::ScsiCommand) => {
            let c = ScsiCommand::view(pdu);
            let _ = (c.immediate(), c.is_final(), c.read(), c.write(), c.task_attribute());
            let _ = (c.lun(), c.itt(), c.expected_data_transfer_length());
            let _ = (c.cmd_sn(), c.exp_stat_sn());
            if let Ok(rest) = c.extended_cdb() {
                let mut cdb = c.cdb().to_vec();
                cdb.extend_from_slice(rest);
                let mut again = ScsiCommand::new();
                again.set_cdb(&cdb);
                assert_eq!(again.cdb(), c.cdb());
                assert_eq!(again.extended_cdb(), Ok(rest));
            }
        }
        Some(Opcode::DataOut) => {
            let d = DataOut::view(pdu);
            let _ = (d.is_final(), d.lun(), d.itt(), d.target_transfer_tag());
            let _ = (d.exp_stat_sn(), d.data_sn(), d.buffer_offset());
        }
        Some(Opcode::TaskMgmtRequest) => {
            let t = TaskMgmtRequest::view(pdu);
            let _ = (t.function(), t.function_raw(), t.lun(), t.itt());
            let _ = (t.referenced_task_tag(), t.cmd_sn(), t.ref_cmd_sn(), t.exp_data_sn());
        }
        Some(Opcode::NopOut) => {
            let n = NopOut::view(pdu);
            let _ = (n.immediate(), n.lun(), n.itt(), n.target_transfer_tag(), n.cmd_sn());
        }
        Some(Opcode::TextRequest) => {
            let t = TextRequest::view(pdu);
            let _ = (t.is_final(), t.continues(), t.itt(), t.target_transfer_tag(), t.cmd_sn());
        }
        Some(Opcode::LogoutRequest) => {
            let l = LogoutRequest::view(pdu);
            let _ = (l.reason_code(), l.itt(), l.cid(), l.cmd_sn(), l.exp_stat_sn());
        }
        Some(Opcode::LoginRequest) => {
            let l = LoginRequest::view(pdu);
            let _ = (l.transit(), l.continues(), l.csg(), l.nsg(), l.version_min());
            let _ = (l.isid(), l.tsih(), l.itt(), l.cid(), l.cmd_sn());
        }
        _ => {}
    }
}
