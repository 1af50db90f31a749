//! What clustered hypervisors rely on: persistent reservations between two
//! initiators, legacy RESERVE/RELEASE, EXTENDED COPY between volumes, MODE
//! SELECT, ALUA state changes, ORWRITE.

use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use scsi::reservations::{PersistentState, StateStore};
use scsi::xcopy::UnitDirectory;
use scsi::{AccessState, LogicalUnit, LunIdentity, PortGroup, Request, Response, Sense, Status};
use volume::{MemVolume, Volume};

const A: &str = "iqn.test:a,i,0x000000000001";
const B: &str = "iqn.test:b,i,0x000000000002";

fn identity(n: u8) -> LunIdentity {
    LunIdentity {
        vendor: "TANDEM".into(),
        product: "VOLUME".into(),
        revision: "0.1".into(),
        serial: format!("serial{n:02}"),
        naa: vec![0x31, n, 3, 4, 5, 6, 7, 8],
        target_name: format!("iqn.2026-11.io.tandem:t{n}"),
        relative_port: 1,
        port_group: 1,
    }
}

async fn ready(lu: &LogicalUnit, nexus: &str) {
    lu.nexus_added(nexus);
    while run(lu, nexus, &[0x00], &[]).await.status != Status::Good {}
}

async fn unit(n: u8) -> LogicalUnit {
    let lu = LogicalUnit::new(Arc::new(MemVolume::new(512, 4096)), identity(n));
    ready(&lu, A).await;
    ready(&lu, B).await;
    lu
}

async fn run(lu: &LogicalUnit, nexus: &str, cdb: &[u8], data: &[u8]) -> Response {
    let mut c = cdb.to_vec();
    c.resize(16.max(cdb.len()), 0);
    lu.execute(Request {
        cdb: &c,
        data_out: Bytes::copy_from_slice(data),
        expected_len: 1 << 24,
        initiator: nexus,
    })
    .await
}

fn sense_of(r: &Response) -> (u8, u8, u8) {
    let s = r.sense.as_ref().expect("sense data");
    if s[0] & 0x7F == 0x72 {
        (s[1] & 0x0f, s[2], s[3])
    } else {
        (s[2] & 0x0f, s[12], s[13])
    }
}

fn pr_out(action: u8, kind: u8, key: u64, sa_key: u64, aptpl: bool) -> (Vec<u8>, Vec<u8>) {
    let mut cdb = vec![0x5F, action, kind, 0, 0, 0, 0, 0, 24, 0];
    cdb.resize(10, 0);
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(aptpl);
    (cdb, p)
}

async fn prout(lu: &LogicalUnit, nexus: &str, action: u8, kind: u8, key: u64, sa: u64) -> Response {
    let (cdb, p) = pr_out(action, kind, key, sa, false);
    run(lu, nexus, &cdb, &p).await
}

async fn read_keys(lu: &LogicalUnit) -> (u32, Vec<u64>) {
    let r = run(lu, A, &[0x5E, 0x00, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]).await;
    assert_eq!(r.status, Status::Good);
    let gen = u32::from_be_bytes(r.data[0..4].try_into().unwrap());
    let n = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize / 8;
    let keys = (0..n)
        .map(|i| u64::from_be_bytes(r.data[8 + 8 * i..16 + 8 * i].try_into().unwrap()))
        .collect();
    (gen, keys)
}

fn write16(lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0x8A, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

fn read16(lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = write16(lba, blocks);
    c[0] = 0x88;
    c
}

#[tokio::test]
async fn write_exclusive_blocks_other_writers_until_released() {
    let lu = unit(1).await;
    assert_eq!(prout(&lu, A, 0x00, 0, 0, 0xAAAA).await.status, Status::Good);
    assert_eq!(prout(&lu, B, 0x06, 0, 0, 0xBBBB).await.status, Status::Good);
    let (gen, keys) = read_keys(&lu).await;
    assert_eq!((gen, keys), (2, vec![0xAAAA, 0xBBBB]));
    // Wrong key: conflict.
    assert_eq!(
        prout(&lu, A, 0x01, 0x01, 0x1234, 0).await.status,
        Status::ReservationConflict
    );
    assert_eq!(
        prout(&lu, A, 0x01, 0x01, 0xAAAA, 0).await.status,
        Status::Good
    );
    let block = vec![7u8; 512];
    assert_eq!(
        run(&lu, A, &write16(0, 1), &block).await.status,
        Status::Good
    );
    assert_eq!(
        run(&lu, B, &write16(0, 1), &block).await.status,
        Status::ReservationConflict
    );
    assert_eq!(run(&lu, B, &read16(0, 1), &[]).await.status, Status::Good);
    // READ RESERVATION shows the holder's key and the type.
    let r = run(&lu, B, &[0x5E, 0x01, 0, 0, 0, 0, 0, 0, 64, 0], &[]).await;
    assert_eq!(&r.data[8..16], &0xAAAAu64.to_be_bytes());
    assert_eq!(r.data[21], 0x01);
    // Releasing with the wrong type is an error, with the right one it ends.
    let bad = prout(&lu, A, 0x02, 0x03, 0xAAAA, 0).await;
    assert_eq!(sense_of(&bad), (0x05, 0x26, 0x04));
    assert_eq!(
        prout(&lu, A, 0x02, 0x01, 0xAAAA, 0).await.status,
        Status::Good
    );
    assert_eq!(
        run(&lu, B, &write16(0, 1), &block).await.status,
        Status::Good
    );
}

#[tokio::test]
async fn preempt_removes_the_holder_and_tells_it() {
    let lu = unit(2).await;
    prout(&lu, A, 0x00, 0, 0, 1).await;
    prout(&lu, B, 0x00, 0, 0, 2).await;
    assert_eq!(prout(&lu, A, 0x01, 0x03, 1, 0).await.status, Status::Good);
    assert_eq!(
        run(&lu, B, &read16(0, 1), &[]).await.status,
        Status::ReservationConflict
    );
    // B preempts A's reservation and takes it over.
    assert_eq!(prout(&lu, B, 0x04, 0x03, 2, 1).await.status, Status::Good);
    let ua = run(&lu, A, &[0x00], &[]).await;
    assert_eq!(sense_of(&ua), (0x06, 0x2A, 0x05));
    let (_, keys) = read_keys(&lu).await;
    assert_eq!(keys, vec![2]);
    assert_eq!(
        run(&lu, A, &read16(0, 1), &[]).await.status,
        Status::ReservationConflict
    );
    // Preempting a key nobody holds is a conflict.
    assert_eq!(
        prout(&lu, B, 0x04, 0x03, 2, 99).await.status,
        Status::ReservationConflict
    );
    // CLEAR drops everything.
    assert_eq!(prout(&lu, B, 0x03, 0, 2, 0).await.status, Status::Good);
    assert_eq!(read_keys(&lu).await.1, Vec::<u64>::new());
}

#[tokio::test]
async fn all_registrants_reservation_outlives_its_creator() {
    let lu = unit(3).await;
    prout(&lu, A, 0x00, 0, 0, 1).await;
    prout(&lu, B, 0x00, 0, 0, 2).await;
    assert_eq!(prout(&lu, A, 0x01, 0x07, 1, 0).await.status, Status::Good);
    assert_eq!(
        run(&lu, B, &write16(1, 1), &[1u8; 512]).await.status,
        Status::Good
    );
    // A unregisters: B still holds the write-exclusive-all-registrants reservation.
    assert_eq!(prout(&lu, A, 0x00, 0, 1, 0).await.status, Status::Good);
    assert_eq!(
        run(&lu, A, &write16(1, 1), &[1u8; 512]).await.status,
        Status::ReservationConflict
    );
    let r = run(&lu, A, &[0x5E, 0x01, 0, 0, 0, 0, 0, 0, 64, 0], &[]).await;
    assert_eq!(r.data[21], 0x07);
    assert_eq!(&r.data[8..16], &[0u8; 8]);
}

#[derive(Default)]
struct Saved(Mutex<Vec<Vec<u8>>>);

#[async_trait]
impl StateStore for Saved {
    async fn save(&self, bytes: Vec<u8>) -> Result<(), Sense> {
        self.0.lock().unwrap().push(bytes);
        Ok(())
    }
}

#[tokio::test]
async fn aptpl_registrations_survive_a_restart() {
    let saved = Arc::new(Saved::default());
    let vol = Arc::new(MemVolume::new(512, 64));
    let lu = LogicalUnit::new(vol.clone(), identity(4))
        .with_reservations(PersistentState::default(), saved.clone());
    ready(&lu, A).await;
    let (cdb, p) = pr_out(0x00, 0, 0, 0x5EED, true);
    assert_eq!(run(&lu, A, &cdb, &p).await.status, Status::Good);
    assert_eq!(
        prout(&lu, A, 0x01, 0x01, 0x5EED, 0).await.status,
        Status::Good
    );
    let last = saved.0.lock().unwrap().last().cloned().unwrap();
    let state = PersistentState::decode(&last).unwrap();
    // "Restart": a new unit over the same volume from the saved state.
    let again = LogicalUnit::new(vol, identity(4)).with_reservations(state, saved.clone());
    ready(&again, A).await;
    ready(&again, B).await;
    assert_eq!(read_keys(&again).await.1, vec![0x5EED]);
    assert_eq!(
        run(&again, B, &write16(0, 1), &[0u8; 512]).await.status,
        Status::ReservationConflict
    );
    // REPORT CAPABILITIES shows PTPL_A.
    let caps = run(&again, A, &[0x5E, 0x02, 0, 0, 0, 0, 0, 0, 8, 0], &[]).await;
    assert_eq!(caps.data[3] & 0x01, 0x01);
}

#[tokio::test]
async fn legacy_reserve_ends_with_the_nexus() {
    let lu = unit(5).await;
    assert_eq!(
        run(&lu, A, &[0x16, 0, 0, 0, 0, 0], &[]).await.status,
        Status::Good
    );
    assert_eq!(
        run(&lu, B, &[0x16, 0, 0, 0, 0, 0], &[]).await.status,
        Status::ReservationConflict
    );
    assert_eq!(
        run(&lu, B, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).await.status,
        Status::ReservationConflict
    );
    // A release from the other nexus does nothing.
    assert_eq!(
        run(&lu, B, &[0x17, 0, 0, 0, 0, 0], &[]).await.status,
        Status::Good
    );
    assert_eq!(
        run(&lu, B, &read16(0, 1), &[]).await.status,
        Status::ReservationConflict
    );
    lu.nexus_removed(A);
    assert_eq!(
        run(&lu, B, &[0x16, 0, 0, 0, 0, 0], &[]).await.status,
        Status::Good
    );
    lu.reset().await;
    run(&lu, A, &[0x00], &[]).await; // the reset's unit attention
    assert_eq!(
        run(&lu, A, &[0x16, 0, 0, 0, 0, 0], &[]).await.status,
        Status::Good
    );
}

struct Units(Mutex<Vec<Arc<LogicalUnit>>>);

impl UnitDirectory for Units {
    fn logical_units(&self) -> Vec<Arc<LogicalUnit>> {
        self.0.lock().unwrap().clone()
    }
}

fn xcopy_list(targets: &[&LunIdentity], segs: &[(u16, u16, u16, u64, u64)]) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0] = 0x11;
    p[2..4].copy_from_slice(&((targets.len() * 32) as u16).to_be_bytes());
    p[8..12].copy_from_slice(&((segs.len() * 28) as u32).to_be_bytes());
    for id in targets {
        let mut t = [0u8; 32];
        t[0] = 0xE4;
        t[4] = 0x01;
        t[5] = 0x03;
        t[7] = 8;
        t[8..16].copy_from_slice(&id.naa);
        t[30] = 0x02;
        p.extend_from_slice(&t);
    }
    for &(src, dst, blocks, src_lba, dst_lba) in segs {
        let mut s = [0u8; 28];
        s[0] = 0x02;
        s[2..4].copy_from_slice(&0x18u16.to_be_bytes());
        s[4..6].copy_from_slice(&src.to_be_bytes());
        s[6..8].copy_from_slice(&dst.to_be_bytes());
        s[10..12].copy_from_slice(&blocks.to_be_bytes());
        s[12..20].copy_from_slice(&src_lba.to_be_bytes());
        s[20..28].copy_from_slice(&dst_lba.to_be_bytes());
        p.extend_from_slice(&s);
    }
    p
}

fn xcopy_cdb(len: usize) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

#[tokio::test]
async fn extended_copy_within_and_between_volumes() {
    let dir = Arc::new(Units(Mutex::new(Vec::new())));
    let weak: Weak<dyn UnitDirectory> = {
        let d: Arc<dyn UnitDirectory> = dir.clone();
        Arc::downgrade(&d)
    };
    let src_vol = Arc::new(MemVolume::new(512, 4096));
    let dst_vol = Arc::new(MemVolume::new(512, 4096));
    let src = Arc::new(LogicalUnit::new(src_vol.clone(), identity(6)).with_directory(weak.clone()));
    let dst = Arc::new(LogicalUnit::new(dst_vol.clone(), identity(7)).with_directory(weak));
    dir.0.lock().unwrap().extend([src.clone(), dst.clone()]);
    ready(&src, A).await;
    ready(&dst, A).await;
    let pattern: Vec<u8> = (0..2048 * 512).map(|i| (i % 251) as u8).collect();
    src_vol
        .write(0, Bytes::from(pattern.clone()), false)
        .await
        .unwrap();

    // Within one volume: overlapping move upwards copies back to front.
    let list = xcopy_list(&[&identity(6)], &[(0, 0, 2048, 0, 100)]);
    let r = run(&src, A, &xcopy_cdb(list.len()), &list).await;
    assert_eq!(r.status, Status::Good, "{:?}", r.sense);
    assert_eq!(src_vol.read(100, 2048).await.unwrap(), pattern);

    // Between volumes: source descriptor 0, destination descriptor 1.
    let list = xcopy_list(&[&identity(6), &identity(7)], &[(0, 1, 2048, 100, 7)]);
    let r = run(&src, A, &xcopy_cdb(list.len()), &list).await;
    assert_eq!(r.status, Status::Good);
    assert_eq!(dst_vol.read(7, 2048).await.unwrap(), pattern);

    // COPY STATUS for list 0x11, OPERATING PARAMETERS.
    let mut rcr = vec![0u8; 16];
    rcr[0] = 0x84;
    rcr[2] = 0x11;
    rcr[13] = 64;
    let st = run(&src, A, &rcr, &[]).await;
    assert_eq!((st.status, st.data[4]), (Status::Good, 0x01));
    rcr[1] = 0x03;
    let op = run(&src, A, &rcr, &[]).await;
    assert_eq!(u16::from_be_bytes([op.data[8], op.data[9]]), 16);

    // Unknown target, index out of range, beyond the end: COPY ABORTED.
    let list = xcopy_list(&[&identity(9)], &[(0, 0, 1, 0, 1)]);
    let r = run(&src, A, &xcopy_cdb(list.len()), &list).await;
    assert_eq!(sense_of(&r), (0x0A, 0x0D, 0x02));
    let list = xcopy_list(&[&identity(6)], &[(0, 1, 1, 0, 1)]);
    let r = run(&src, A, &xcopy_cdb(list.len()), &list).await;
    assert_eq!(sense_of(&r), (0x0A, 0x08, 0x04));
    let list = xcopy_list(&[&identity(6)], &[(0, 0, 2, 0, 4095)]);
    let r = run(&src, A, &xcopy_cdb(list.len()), &list).await;
    assert_eq!(sense_of(&r).0, 0x0A);
    // A truncated list is a parameter list length error.
    let r = run(&src, A, &xcopy_cdb(list.len() - 1), &list).await;
    assert_eq!(sense_of(&r), (0x05, 0x1A, 0x00));
}

fn mode_select6(page: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut p = vec![0u8; 4];
    p.extend_from_slice(page);
    (vec![0x15, 0x10, 0, 0, p.len() as u8, 0], p)
}

async fn control_page(lu: &LogicalUnit) -> Vec<u8> {
    let r = run(lu, A, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]).await;
    r.data[4..].to_vec()
}

#[tokio::test]
async fn mode_select_write_protect_and_descriptor_sense() {
    let lu = unit(8).await;
    let mut page = control_page(&lu).await;
    page[4] |= 0x08; // SWP
    page[2] |= 0x04; // D_SENSE
    let (cdb, p) = mode_select6(&page);
    assert_eq!(run(&lu, A, &cdb, &p).await.status, Status::Good);
    // The other nexus learns that mode parameters changed.
    let ua = run(&lu, B, &[0x00], &[]).await;
    assert_eq!(sense_of(&ua), (0x06, 0x2A, 0x01));
    let w = run(&lu, A, &write16(0, 1), &[0u8; 512]).await;
    assert_eq!(w.sense.as_ref().unwrap()[0], 0x72, "descriptor format");
    assert_eq!(sense_of(&w), (0x07, 0x27, 0x00));
    assert_eq!(run(&lu, A, &read16(0, 1), &[]).await.status, Status::Good);
    let ms = run(&lu, A, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]).await;
    assert_eq!(
        ms.data[2] & 0x80,
        0x80,
        "WP in the device-specific parameter"
    );
    // A bit that cannot change (QAM) is refused and nothing changes.
    let mut bad = control_page(&lu).await;
    bad[3] = 0x00;
    bad[4] &= !0x08;
    let (cdb, p) = mode_select6(&bad);
    let r = run(&lu, A, &cdb, &p).await;
    assert_eq!(sense_of(&r), (0x05, 0x26, 0x00));
    assert_eq!(control_page(&lu).await[4] & 0x08, 0x08);
}

#[tokio::test]
async fn access_state_changes_raise_unit_attentions() {
    let lu = unit(10).await;
    let mut groups = lu.port_groups();
    groups[0].state = AccessState::Standby;
    groups.push(PortGroup {
        id: 2,
        state: AccessState::ActiveOptimized,
        preferred: true,
        ports: vec![2],
        status: 0,
    });
    groups[0].preferred = false;
    lu.set_port_groups(groups);
    let ua = run(&lu, A, &[0x00], &[]).await;
    assert_eq!(sense_of(&ua), (0x06, 0x2A, 0x06));
    let r = run(&lu, A, &read16(0, 1), &[]).await;
    assert_eq!(sense_of(&r), (0x02, 0x04, 0x0B));
    let rtpg = run(&lu, A, &[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]).await;
    assert_eq!(rtpg.status, Status::Good);
    assert_eq!(rtpg.data[4] & 0x0F, AccessState::Standby as u8);
    assert_eq!(rtpg.data[9], 0x02, "altered by implicit transition");
    assert_eq!(rtpg.data[16], 0x80 | AccessState::ActiveOptimized as u8);
}

#[tokio::test]
async fn orwrite_ors_into_the_blocks() {
    let lu = unit(11).await;
    assert_eq!(
        run(&lu, A, &write16(3, 1), &[0x0Fu8; 512]).await.status,
        Status::Good
    );
    let mut c = write16(3, 1);
    c[0] = 0x8B;
    assert_eq!(run(&lu, A, &c, &[0xF0u8; 512]).await.status, Status::Good);
    let r = run(&lu, A, &read16(3, 1), &[]).await;
    assert!(r.data.iter().all(|&b| b == 0xFF));
    let beyond = {
        let mut c = write16(4096, 1);
        c[0] = 0x8B;
        c
    };
    let r = run(&lu, A, &beyond, &[0u8; 512]).await;
    assert_eq!(sense_of(&r), (0x05, 0x21, 0x00));
}
