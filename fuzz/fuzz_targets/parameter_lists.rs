//! The parameter lists initiators send with PERSISTENT RESERVE OUT, EXTENDED
//! COPY, UNMAP and MODE SELECT, each behind a valid CDB.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use scsi::Request;

#[path = "common/unit.rs"]
mod unit;
use unit::unit;

fuzz_target!(|data: &[u8]| {
    let Some((&which, params)) = data.split_first() else {
        return;
    };
    let len = params.len() as u32;
    let mut cdb = [0u8; 16];
    let cdb: &[u8] = match which % 5 {
        0 | 1 => {
            cdb[0] = 0x5F; // PERSISTENT RESERVE OUT
            cdb[1] = which >> 3 & 0x07;
            cdb[2] = which >> 4;
            cdb[5..9].copy_from_slice(&len.to_be_bytes());
            &cdb[..10]
        }
        2 => {
            cdb[0] = 0x83; // EXTENDED COPY (LID1)
            cdb[10..14].copy_from_slice(&len.to_be_bytes());
            &cdb[..16]
        }
        3 => {
            cdb[0] = 0x42; // UNMAP
            cdb[7..9].copy_from_slice(&(len.min(0xFFFF) as u16).to_be_bytes());
            &cdb[..10]
        }
        _ => {
            cdb[0] = 0x55; // MODE SELECT (10)
            cdb[1] = 0x10;
            cdb[7..9].copy_from_slice(&(len.min(0xFFFF) as u16).to_be_bytes());
            &cdb[..10]
        }
    };
    let (rt, lu) = unit();
    let _ = rt.block_on(lu.execute(Request {
        cdb,
        data_out: Bytes::copy_from_slice(params),
        expected_len: len,
        initiator: "iqn.fuzz,i,0x1",
    }));
});
