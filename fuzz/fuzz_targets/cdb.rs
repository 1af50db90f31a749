//! Any CDB with any data-out against a logical unit over an in-memory volume:
//! never a panic, always a status.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use scsi::Request;

#[path = "common/unit.rs"]
mod unit;
use unit::unit;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cdb_len = (data[0] as usize % 32).min(data.len() - 1);
    let cdb = &data[1..1 + cdb_len];
    let out = Bytes::copy_from_slice(&data[1 + cdb_len..]);
    let (rt, lu) = unit();
    let nexus = if data[0] & 0x80 != 0 { "iqn.a,i,0x1" } else { "iqn.b,i,0x2" };
    let r = rt.block_on(lu.execute(Request {
        cdb,
        data_out: out,
        expected_len: 1 << 20,
        initiator: nexus,
    }));
    if r.status == scsi::Status::CheckCondition {
        assert!(r.sense.is_some(), "CHECK CONDITION without sense");
    }
});
