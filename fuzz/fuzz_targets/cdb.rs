//! Any CDB with any data-out against a logical unit over an in-memory volume:
//! never a panic, always a status.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use scsi::{LogicalUnit, LunIdentity, Request};
use volume::MemVolume;

fn unit() -> &'static (tokio::runtime::Runtime, LogicalUnit) {
    static UNIT: OnceLock<(tokio::runtime::Runtime, LogicalUnit)> = OnceLock::new();
    UNIT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let id = LunIdentity {
            vendor: "TANDEM".into(),
            product: "VOLUME".into(),
            revision: "0.1".into(),
            serial: "fuzz".into(),
            naa: vec![0x30, 1, 2, 3, 4, 5, 6, 7],
            target_name: "iqn.2026-11.io.tandem:fuzz".into(),
            relative_port: 1,
            port_group: 1,
        };
        (rt, LogicalUnit::new(Arc::new(MemVolume::new(512, 256)), id))
    })
}

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
