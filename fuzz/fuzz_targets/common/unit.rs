//! The logical unit every SCSI fuzz target drives: an in-memory volume of
//! 256 blocks behind a runtime that lives as long as the fuzzer.

use std::sync::{Arc, OnceLock};

use scsi::{LogicalUnit, LunIdentity};
use volume::MemVolume;

pub fn unit() -> &'static (tokio::runtime::Runtime, LogicalUnit) {
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
