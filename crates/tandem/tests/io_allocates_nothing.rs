//! The steady-state I/O path allocates nothing: 4 KiB and 64 KiB reads and
//! 4 KiB writes (with immediate data, as initiators send small writes) of a
//! volume whose blocks are in the page cache, through the iSCSI target,
//! from a test initiator. Every allocation made on the
//! target's threads while they run is counted; the initiator runs on a
//! thread of its own, which is not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use portal::{TargetConfig, Targets};
use scsi::LogicalUnit;
use testkit::{rw10, Initiator};

const IQN: &str = "iqn.2026-11.io.tandem:alloc";

thread_local! {
    /// Whether this thread is one of the target's.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting what the target's threads ask of it.
struct Counting;

fn count() {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call goes straight to the system allocator with the same
// arguments; counting touches only an atomic and a const thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as the caller promised for `layout`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as the caller promised for `layout`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from this allocator with `layout`, as promised.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout`, as promised.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// WRITE (10) of `data` at `lba`, sent as immediate data; its status.
async fn write(i: &mut Initiator, lba: u32, data: &[u8]) -> u8 {
    let cmd = i.command(
        &rw10(0x2A, lba, (data.len() / 512) as u16),
        data.len() as u32,
        true,
        data,
    );
    i.send(cmd).await;
    let r = i.recv_reply().await.expect("SCSI Response");
    assert_eq!(r.opcode(), Some(iscsi::Opcode::ScsiResponse));
    r.byte(3)
}

/// 4 KiB at 8-block steps over the first 4 MiB: 1024 places, four regions.
fn lba(i: u32) -> u32 {
    (i * 8) % 8192
}

#[test]
fn reads_and_writes_in_the_page_cache_allocate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::Store::open(dir.path()).unwrap();
    let meta = store.create("v", 64 << 20, 512).unwrap();
    let volume = store.open_volume("v").unwrap();
    let id = node::lun_identity(store.installation_id(), meta.id, IQN);
    let targets = Arc::new(Targets::new());
    targets.insert(IQN.into(), Arc::new(LogicalUnit::new(volume.clone(), id)));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| COUNTED.set(true))
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(portal::serve(
        listener,
        targets,
        TargetConfig::default(),
        async {
            let _ = stop_rx.await;
        },
    ));

    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client.block_on(async {
        let mut i = Initiator::normal(addr, IQN, &[]).await;
        // The login's unit attention, then every place written once (which
        // marks its region dirty and brings its pages into the cache) and
        // read once (which fills the buffer pool).
        i.simple(&[0u8; 6]).await;
        let block = vec![0x5Au8; 4096];
        for n in 0..1024 {
            assert_eq!(write(&mut i, lba(n), &block).await, 0, "warm-up write {n}");
            let o = i.run(&rw10(0x28, lba(n), 8), &[], 4096).await.unwrap();
            assert_eq!(o.status, 0, "warm-up read {n}");
        }
        let o = i.run(&rw10(0x28, 0, 128), &[], 65536).await.unwrap();
        assert_eq!(o.status, 0);

        // An inline write that the kernel held up (writeback, the journal)
        // sends writes to the worker threads for a second; a round during
        // which that happened says nothing and is run again.
        for attempt in 1..=3 {
            let ready = std::time::Instant::now();
            loop {
                let inline_before = volume.inline_writes();
                for n in 0..100 {
                    assert_eq!(write(&mut i, lba(n), &block).await, 0);
                }
                if volume.inline_writes() - inline_before == 100 {
                    break;
                }
                assert!(
                    ready.elapsed() < std::time::Duration::from_secs(10),
                    "writes never went inline again"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            let inline_before = volume.inline_writes();
            let rounds = 2000;
            for n in 0..rounds {
                assert_eq!(write(&mut i, lba(n), &block).await, 0, "write {n}");
                let o = i.run(&rw10(0x28, lba(n * 7), 8), &[], 4096).await.unwrap();
                assert_eq!((o.status, &o.data[..]), (0, &block[..]), "read {n}");
                if n % 10 == 0 {
                    let o = i.run(&rw10(0x28, lba(n), 128), &[], 65536).await.unwrap();
                    assert_eq!(o.status, 0, "64 KiB read {n}");
                }
            }
            let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
            let ios = u64::from(rounds) * 2 + u64::from(rounds) / 10;
            let inline = volume.inline_writes() - inline_before;
            println!(
                "round {attempt}: {allocations} allocations on the target's threads for {ios} commands; {inline} of {rounds} writes inline"
            );
            if inline < u64::from(rounds) {
                continue;
            }
            // A chance allocation (a channel block not recycled) is allowed;
            // one per command is what a per-I/O allocation would cost.
            assert!(
                allocations * 50 < ios,
                "{allocations} allocations for {ios} commands: the I/O path allocates"
            );
            return;
        }
        panic!("in three rounds, some writes always waited for the kernel: nothing measured");
    });
    let _ = stop_tx.send(());
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
}
