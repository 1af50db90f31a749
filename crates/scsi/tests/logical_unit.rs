//! Commands against a LogicalUnit over an in-memory volume: data paths,
//! identity pages, error paths and unit attentions.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use scsi::{LogicalUnit, LunIdentity, Request, Response, Status};
use volume::MemVolume;

const NEXUS: &str = "iqn.test:init,i,0x000000000001";

fn lu(blocks: u64) -> LogicalUnit {
    let id = LunIdentity {
        vendor: "TANDEM".into(),
        product: "VOLUME".into(),
        revision: "0.1".into(),
        serial: "0123456789abcdef".into(),
        naa: vec![0x31, 2, 3, 4, 5, 6, 7, 8],
        target_name: "iqn.2026-11.io.tandem:t".into(),
        relative_port: 1,
        port_group: 1,
    };
    let lu = LogicalUnit::new(Arc::new(MemVolume::new(512, blocks)), id);
    lu.nexus_added(NEXUS);
    lu
}

async fn run(lu: &LogicalUnit, cdb: &[u8], data: &[u8]) -> Response {
    let mut c = cdb.to_vec();
    c.resize(16.max(cdb.len()), 0);
    lu.execute(Request {
        cdb: &c,
        data_out: Bytes::copy_from_slice(data),
        expected_len: 1 << 20,
        initiator: NEXUS,
    })
    .await
}

/// Clears the login's POWER ON unit attention.
async fn ready(lu: &LogicalUnit) {
    let r = run(lu, &[0x00], &[]).await;
    assert_eq!(r.status, Status::CheckCondition);
    assert_eq!(run(lu, &[0x00], &[]).await.status, Status::Good);
}

fn sense_of(r: &Response) -> (u8, u8, u8) {
    let s = r.sense.as_ref().expect("sense data");
    (s[2] & 0x0f, s[12], s[13])
}

fn rw16(op: u8, lba: u64, blocks: u32, fua: bool) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[1] = if fua { 0x08 } else { 0 };
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn rw10(op: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[tokio::test]
async fn unit_attention_comes_first_then_clears() {
    let lu = lu(100);
    // INQUIRY passes a pending UA.
    assert_eq!(
        run(&lu, &[0x12, 0, 0, 0, 96], &[]).await.status,
        Status::Good
    );
    let r = run(&lu, &[0x00], &[]).await;
    assert_eq!(sense_of(&r), (6, 0x29, 0x00));
    assert_eq!(run(&lu, &[0x00], &[]).await.status, Status::Good);
    lu.capacity_changed();
    let r = run(&lu, &rw10(0x28, 0, 1), &[]).await;
    assert_eq!(sense_of(&r), (6, 0x2A, 0x09));
    lu.reset().await;
    // REQUEST SENSE reports and clears the UA.
    let r = run(&lu, &[0x03, 0, 0, 0, 18], &[]).await;
    assert_eq!(r.status, Status::Good);
    assert_eq!((r.data[2] & 0xf, r.data[12], r.data[13]), (6, 0x29, 0x03));
    assert_eq!(run(&lu, &[0x00], &[]).await.status, Status::Good);
}

#[tokio::test]
async fn write_then_read_every_size_of_cdb() {
    let lu = lu(1000);
    ready(&lu).await;
    let data: Vec<u8> = (0..1024u32).map(|i| (i % 253) as u8).collect();
    for (w, r) in [(0x2Au8, 0x28u8), (0xAA, 0xA8), (0x8A, 0x88)] {
        let (wc, rc) = match w {
            0x8A => (rw16(w, 10, 2, true), rw16(r, 10, 2, false)),
            0xAA => {
                let mut c = vec![0u8; 12];
                c[0] = w;
                c[2..6].copy_from_slice(&10u32.to_be_bytes());
                c[6..10].copy_from_slice(&2u32.to_be_bytes());
                let mut d = c.clone();
                d[0] = r;
                (c, d)
            }
            _ => (rw10(w, 10, 2), rw10(r, 10, 2)),
        };
        let wr = run(&lu, &wc, &data).await;
        assert_eq!(wr.status, Status::Good, "{w:#x}");
        assert_eq!(wr.data_out_wanted, Some(1024));
        let rd = run(&lu, &rc, &[]).await;
        assert_eq!(rd.status, Status::Good);
        assert_eq!(rd.data, data);
    }
    // READ(6)/WRITE(6): transfer length 0 means 256 blocks.
    let w6 = run(&lu, &[0x0A, 0, 0, 5, 1, 0], &data[..512]).await;
    assert_eq!(w6.status, Status::Good);
    let r6 = run(&lu, &[0x08, 0, 0, 0, 0, 0], &[]).await;
    assert_eq!(r6.data.len(), 256 * 512);
    assert_eq!(&r6.data[5 * 512..6 * 512], &data[..512]);
}

#[tokio::test]
async fn out_of_range_is_refused_and_short_data_writes_whole_blocks() {
    let lu = lu(100);
    ready(&lu).await;
    for cdb in [
        rw16(0x88, 100, 1, false),
        rw16(0x88, 99, 2, false),
        rw16(0x88, u64::MAX, 1, false),
        rw10(0x28, 100, 1),
    ] {
        assert_eq!(sense_of(&run(&lu, &cdb, &[]).await), (5, 0x21, 0x00));
    }
    // Less data-out than the CDB asks for: only the whole blocks that arrived are written.
    let r = run(&lu, &rw16(0x8A, 0, 2, false), &[1u8; 700]).await;
    assert_eq!(r.status, Status::Good);
    assert_eq!(r.data_out_wanted, Some(1024));
    let back = run(&lu, &rw16(0x88, 0, 2, false), &[]).await;
    assert!(back.data[..512].iter().all(|&b| b == 1));
    assert!(
        back.data[512..].iter().all(|&b| b == 0),
        "a partial block was written"
    );
    // Zero-length transfers are fine.
    assert_eq!(
        run(&lu, &rw16(0x88, 5, 0, false), &[]).await.status,
        Status::Good
    );
    // Unknown opcodes.
    assert_eq!(sense_of(&run(&lu, &[0xC5], &[]).await), (5, 0x20, 0x00));
}

#[tokio::test]
async fn inquiry_pages() {
    let lu = lu(100);
    let std = run(&lu, &[0x12, 0, 0, 0, 255], &[]).await;
    assert_eq!(std.data[0], 0);
    assert_eq!(&std.data[8..14], b"TANDEM");
    assert_eq!(std.data[4] as usize + 5, std.data.len());
    let short = run(&lu, &[0x12, 0, 0, 0, 5], &[]).await;
    assert_eq!(short.data.len(), 5);
    let pages = run(&lu, &[0x12, 1, 0x00, 0, 255], &[]).await;
    assert_eq!(
        &pages.data[4..],
        &[0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2]
    );
    let serial = run(&lu, &[0x12, 1, 0x80, 0, 255], &[]).await;
    assert_eq!(&serial.data[4..], b"0123456789abcdef");
    let id = run(&lu, &[0x12, 1, 0x83, 0, 255], &[]).await;
    let d = &id.data;
    assert_eq!(
        (d[4], d[5], d[7]),
        (0x01, 0x03, 8),
        "first designator is the NAA"
    );
    assert_eq!(&d[8..16], &[0x31, 2, 3, 4, 5, 6, 7, 8]);
    assert!(
        d.windows(24).any(|w| w == b"iqn.2026-11.io.tandem:t\0"),
        "SCSI name string missing"
    );
    let lbp = run(&lu, &[0x12, 1, 0xB2, 0, 255], &[]).await;
    assert_eq!(lbp.data[5] & 0xE4, 0xE4);
    assert_eq!(
        sense_of(&run(&lu, &[0x12, 1, 0x42, 0, 255], &[]).await),
        (5, 0x24, 0)
    );
    assert_eq!(
        sense_of(&run(&lu, &[0x12, 0, 0x80, 0, 255], &[]).await),
        (5, 0x24, 0)
    );
}

#[tokio::test]
async fn capacity_and_mode_pages() {
    let lu = lu(100);
    ready(&lu).await;
    let rc10 = run(&lu, &[0x25], &[]).await;
    assert_eq!(rc10.data, [0, 0, 0, 99, 0, 0, 2, 0]);
    let mut c = vec![0x9E, 0x10];
    c.resize(16, 0);
    c[13] = 32;
    let rc16 = run(&lu, &c, &[]).await;
    assert_eq!(&rc16.data[..12], &[0, 0, 0, 0, 0, 0, 0, 99, 0, 0, 2, 0]);
    assert_eq!(rc16.data[14] & 0xC0, 0xC0, "LBPME and LBPRZ");
    let ms = run(&lu, &[0x1A, 0, 0x08, 0, 255], &[]).await;
    assert_eq!(ms.status, Status::Good);
    assert_eq!(ms.data[0] as usize + 1, ms.data.len());
    assert_eq!(ms.data[2] & 0x10, 0x10, "DPOFUA");
    let page = &ms.data[4 + ms.data[3] as usize..];
    assert_eq!(page[0], 0x08);
    let all = run(&lu, &[0x5A, 0x08, 0x3F, 0, 0, 0, 0, 0x10, 0], &[]).await;
    assert_eq!(
        u16::from_be_bytes([all.data[0], all.data[1]]) as usize + 2,
        all.data.len()
    );
    assert_eq!(
        sense_of(&run(&lu, &[0x1A, 0, 0x19, 0, 255], &[]).await),
        (5, 0x24, 0)
    );
    assert_eq!(
        sense_of(&run(&lu, &[0x1A, 0, 0xC8, 0, 255], &[]).await),
        (5, 0x39, 0)
    );
    let luns = run(&lu, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[]).await;
    assert_eq!(luns.data, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        sense_of(&run(&lu, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], &[]).await),
        (5, 0x24, 0)
    );
}

#[tokio::test]
async fn unmap_write_same_verify_compare_and_write() {
    let lu = lu(100);
    ready(&lu).await;
    run(&lu, &rw16(0x8A, 0, 8, false), &[0xAA; 4096]).await;
    // UNMAP blocks 2..4.
    let mut p = vec![0u8; 24];
    p[0..2].copy_from_slice(&22u16.to_be_bytes());
    p[2..4].copy_from_slice(&16u16.to_be_bytes());
    p[8..16].copy_from_slice(&2u64.to_be_bytes());
    p[16..20].copy_from_slice(&2u32.to_be_bytes());
    let r = run(&lu, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p).await;
    assert_eq!(r.status, Status::Good);
    let back = run(&lu, &rw16(0x88, 0, 8, false), &[]).await.data;
    assert!(back[1024..2048].iter().all(|&b| b == 0));
    assert!(back[2048..].iter().all(|&b| b == 0xAA));
    // A descriptor past the end is refused and nothing is unmapped.
    p[8..16].copy_from_slice(&99u64.to_be_bytes());
    assert_eq!(
        sense_of(&run(&lu, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p).await),
        (5, 0x21, 0)
    );
    assert_eq!(
        sense_of(&run(&lu, &[0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0], &p).await),
        (5, 0x1A, 0)
    );
    // WRITE SAME(10) with a pattern, then WRITE SAME(16) UNMAP with NDOB.
    let mut ws = rw10(0x41, 10, 5);
    assert_eq!(run(&lu, &ws, &[0x5A; 512]).await.status, Status::Good);
    assert!(run(&lu, &rw16(0x88, 10, 5, false), &[])
        .await
        .data
        .iter()
        .all(|&b| b == 0x5A));
    let mut ws16 = rw16(0x93, 10, 5, false);
    ws16[1] = 0x08 | 0x01;
    assert_eq!(run(&lu, &ws16, &[]).await.status, Status::Good);
    assert!(run(&lu, &rw16(0x88, 10, 5, false), &[])
        .await
        .data
        .iter()
        .all(|&b| b == 0));
    ws[7..9].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(sense_of(&run(&lu, &ws, &[0x5A; 512]).await), (5, 0x24, 0));
    // VERIFY with BYTCHK=1.
    let mut v = rw16(0x8F, 4, 1, false);
    v[1] = 0x02;
    assert_eq!(run(&lu, &v, &[0xAA; 512]).await.status, Status::Good);
    let mut wrong = vec![0xAA; 512];
    wrong[100] = 0;
    let r = run(&lu, &v, &wrong).await;
    assert_eq!(sense_of(&r), (0xE, 0x1D, 0));
    // COMPARE AND WRITE: match writes, mismatch reports the offset.
    let mut caw = vec![0u8; 16];
    caw[0] = 0x89;
    caw[2..10].copy_from_slice(&4u64.to_be_bytes());
    caw[13] = 1;
    let mut d = vec![0xAA; 512];
    d.extend_from_slice(&[0x11; 512]);
    assert_eq!(run(&lu, &caw, &d).await.status, Status::Good);
    let r = run(&lu, &caw, &d).await;
    let s = r.sense.unwrap();
    assert_eq!((s[2] & 0xf, s[12]), (0xE, 0x1D));
    assert_eq!(u32::from_be_bytes(s[3..7].try_into().unwrap()), 0);
    // SYNCHRONIZE CACHE range checks.
    assert_eq!(
        run(&lu, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[])
            .await
            .status,
        Status::Good
    );
    assert_eq!(
        sense_of(&run(&lu, &rw16(0x91, 100, 1, false), &[]).await),
        (5, 0x21, 0)
    );
}

#[tokio::test]
async fn get_lba_status_reports_runs() {
    let lu = lu(100);
    ready(&lu).await;
    run(&lu, &rw16(0x8A, 10, 2, false), &[1u8; 1024]).await;
    let mut c = rw16(0x9E, 0, 0, false);
    c[1] = 0x12;
    c[10..14].copy_from_slice(&1024u32.to_be_bytes());
    let r = run(&lu, &c, &[]).await;
    assert_eq!(r.status, Status::Good);
    let d = &r.data[8..];
    assert_eq!(
        (
            u64::from_be_bytes(d[0..8].try_into().unwrap()),
            u32::from_be_bytes(d[8..12].try_into().unwrap()),
            d[12]
        ),
        (0, 10, 1)
    );
    assert_eq!(
        (u64::from_be_bytes(d[16..24].try_into().unwrap()), d[28]),
        (10, 0)
    );
}

#[tokio::test]
async fn missing_luns_answer_per_spc() {
    let req = |cdb: &'static [u8]| Request {
        cdb,
        data_out: Bytes::new(),
        expected_len: 255,
        initiator: NEXUS,
    };
    let inq = scsi::respond_no_such_lun(&req(&[0x12, 0, 0, 0, 36, 0]), &[0]);
    assert_eq!(inq.data[0], 0x7F);
    let rd = scsi::respond_no_such_lun(&req(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]), &[0]);
    assert_eq!(rd.status, Status::CheckCondition);
    assert_eq!(rd.sense.unwrap()[12], 0x25);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    /// No CDB, however malformed, panics the unit; sense comes exactly with CHECK CONDITION.
    #[test]
    fn arbitrary_cdbs_never_panic(cdb in proptest::collection::vec(any::<u8>(), 0..=32),
                                  data in proptest::collection::vec(any::<u8>(), 0..2048),
                                  op in prop::sample::select(vec![0x00u8, 0x03, 0x08, 0x0A, 0x12, 0x1A, 0x25, 0x28, 0x2A, 0x2F, 0x35, 0x41, 0x42, 0x5A, 0x88, 0x89, 0x8A, 0x8F, 0x91, 0x93, 0x9E, 0xA0, 0xA3, 0xA8, 0xAA])) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let lu = lu(64);
        let mut cdb = cdb;
        if let Some(b) = cdb.first_mut() { *b = op; }
        let r = rt.block_on(lu.execute(Request { cdb: &cdb, data_out: Bytes::from(data), expected_len: 4096, initiator: NEXUS }));
        prop_assert_eq!(r.sense.is_some(), r.status == Status::CheckCondition);
        prop_assert!(r.data.len() <= 64 * 512 + 4096);
    }
}
