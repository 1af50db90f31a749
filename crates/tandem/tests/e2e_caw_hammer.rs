//! COMPARE AND WRITE as VMFS uses it for its on-disk locks (ATS): a counter
//! in one block, hammered by initiators on both nodes of a mirrored volume,
//! each reading it and swapping in the next value, while the primary is
//! killed under them. Two data nodes and a witness as processes on loopback.
//!
//! Every swap that lands is accounted for: the block keeps, beside the
//! counter, the writers of its last increments, so an initiator whose
//! command's status was lost (the connection or the primary died) can tell
//! whether it landed after all. The counter must equal the swaps answered
//! GOOD plus those found landed that way. And a command sent again after a
//! lost status must never be answered MISCOMPARE while the block holds its
//! own write: that is the false "ATS miscompare" which makes VMFS take its
//! lock for lost.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{primary_index, wait_converged, BLOCK};
use common::node_prefix;
use common::scsi::mirrored;
use testkit::{rw16, Initiator};

const VOLUME: &str = "ats";
/// Initiators per node.
const PER_NODE: usize = 2;
/// Primaries killed under the hammer, one after the other.
const FAILOVERS: usize = 3;
/// Increments the block remembers the writers of.
const HISTORY: usize = 31;

/// The counter block: the count, then the (writer, sequence) of the last
/// [`HISTORY`] increments, each at the slot of the count it made.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Counter {
    count: u64,
    history: [(u32, u32); HISTORY],
}

impl Counter {
    fn decode(b: &[u8]) -> Counter {
        let mut history = [(0, 0); HISTORY];
        for (i, h) in history.iter_mut().enumerate() {
            let at = 8 + i * 8;
            *h = (
                u32::from_be_bytes(b[at..at + 4].try_into().unwrap()),
                u32::from_be_bytes(b[at + 4..at + 8].try_into().unwrap()),
            );
        }
        Counter {
            count: u64::from_be_bytes(b[..8].try_into().unwrap()),
            history,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        b[..8].copy_from_slice(&self.count.to_be_bytes());
        for (i, (w, s)) in self.history.iter().enumerate() {
            let at = 8 + i * 8;
            b[at..at + 4].copy_from_slice(&w.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&s.to_be_bytes());
        }
        b
    }

    fn next(&self, writer: u32, seq: u32) -> Counter {
        let mut n = self.clone();
        n.count += 1;
        n.history[(n.count % HISTORY as u64) as usize] = (writer, seq);
        n
    }

    fn made(&self, writer: u32, seq: u32) -> bool {
        self.history.contains(&(writer, seq))
    }
}

/// What one initiator saw.
#[derive(Default, Debug)]
struct Tally {
    good: u64,
    /// Lost statuses whose swap the block shows landed.
    landed_unanswered: u64,
    /// Lost statuses whose swap did not land.
    lost_not_landed: u64,
    miscompares: u64,
    retries: u64,
}

/// An initiator that keeps a session to the volume, through its own node
/// while it answers and through the other one when not.
struct Client {
    portals: [SocketAddr; 2],
    home: usize,
    /// The session's ISID qualifier, kept when it logs in again.
    isid: u16,
    i: Option<Initiator>,
}

impl Client {
    async fn session(&mut self) -> &mut Initiator {
        let t = Instant::now();
        while self.i.is_none() {
            for k in 0..2 {
                let portal = self.portals[(self.home + k) % 2];
                let target = format!("{}:{VOLUME}", node_prefix());
                // A node that is down refuses at once; one that is away
                // gets a few seconds.
                let limit = Duration::from_secs(3);
                if let Some(i) =
                    Initiator::try_normal_as(portal, &target, Some(self.isid), limit).await
                {
                    self.i = Some(i);
                    break;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no node takes a session"
            );
            if self.i.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.i.as_mut().unwrap()
    }

    /// Runs a command until it has an answer that says what happened:
    /// unit attentions and busy answers are sent again (the command did not
    /// run); an access state transition or a lost connection is sent again
    /// too, and sets `unsure` (it may have run).
    async fn run(
        &mut self,
        cdb: &[u8],
        data: &[u8],
        read_len: u32,
        unsure: &mut bool,
    ) -> testkit::Outcome {
        let t = Instant::now();
        loop {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no answer for a minute"
            );
            let o = self.session().await.run(cdb, data, read_len).await;
            match o {
                None => {
                    self.i = None;
                    *unsure = true;
                }
                Some(o) if o.status == 0x08 || o.status == 0x28 => {}
                Some(o) if o.status == 0x02 && o.sense_key == 0x06 => {}
                Some(o) if o.status == 0x02 && o.sense_key == 0x02 && o.asc == (0x04, 0x0A) => {
                    *unsure = true;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some(o) => return o,
            }
        }
    }

    async fn read(&mut self) -> Counter {
        let o = self
            .run(&rw16(0x88, 0, 1, false), &[], BLOCK as u32, &mut false)
            .await;
        assert_eq!(o.status, 0, "read of the counter: {o:?}");
        Counter::decode(&o.data)
    }
}

async fn hammer(id: u32, mut c: Client, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::default();
    let mut seq = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let old = c.read().await;
        seq += 1;
        let new = old.next(id, seq);
        let mut cdb = [0u8; 16];
        cdb[0] = 0x89;
        cdb[1] = 0x08; // FUA
        cdb[13] = 1;
        let mut data = old.encode();
        data.extend(new.encode());
        let mut unsure = false;
        let o = c.run(&cdb, &data, 0, &mut unsure).await;
        if unsure {
            t.retries += 1;
        }
        match (o.status, o.sense_key) {
            (0x00, _) => t.good += 1,
            (0x02, 0x0E) => {
                t.miscompares += 1;
                if unsure {
                    let now = c.read().await;
                    assert_ne!(
                        now,
                        new,
                        "initiator {id}: a COMPARE AND WRITE sent again was answered MISCOMPARE while the block holds its own write"
                    );
                    if now.made(id, seq) {
                        t.landed_unanswered += 1;
                    } else {
                        t.lost_not_landed += 1;
                    }
                }
            }
            _ => panic!("initiator {id}: COMPARE AND WRITE answered {o:?}"),
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ats_counter_hammered_through_both_nodes_stays_exact_across_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _witness, _p) = mirrored(dir.path(), VOLUME, "64M");
    let portals = [nodes[0].portal(), nodes[1].portal()];
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for home in 0..2 {
        for k in 0..PER_NODE {
            let id = (home * PER_NODE + k + 1) as u32;
            let c = Client {
                portals,
                home,
                isid: 0x7000 + id as u16,
                i: None,
            };
            workers.push(tokio::spawn(hammer(id, c, stop.clone())));
        }
    }
    // Failovers under the hammer: the primary killed, brought back and
    // caught up, then the next one killed.
    let mut p = 0;
    for _ in 0..FAILOVERS {
        tokio::time::sleep(Duration::from_secs(2)).await;
        p = primary_index(&[&nodes[0], &nodes[1]], VOLUME).expect("a primary");
        nodes[p].kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        nodes[p].restart();
        wait_converged(&[&nodes[0], &nodes[1]], VOLUME, 60).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for w in workers {
        let t = w.await.unwrap();
        println!("{t:?}");
        total.good += t.good;
        total.landed_unanswered += t.landed_unanswered;
        total.lost_not_landed += t.lost_not_landed;
        total.miscompares += t.miscompares;
        total.retries += t.retries;
    }
    let mut c = Client {
        portals,
        home: 1 - p,
        isid: 0x7fff,
        i: None,
    };
    let end = c.read().await;
    println!(
        "counter {} = {} answered GOOD + {} landed with their status lost; {} lost statuses did not land; {} miscompares; {} commands sent again, over {FAILOVERS} failovers",
        end.count,
        total.good,
        total.landed_unanswered,
        total.lost_not_landed,
        total.miscompares,
        total.retries,
    );
    let recognised: usize = nodes
        .iter()
        .map(|n| {
            n.log_text()
                .matches("a COMPARE AND WRITE applied before is sent again")
                .count()
        })
        .sum();
    println!(
        "{recognised} commands sent again were recognised as applied before and applied again"
    );
    assert!(
        total.good > 100,
        "too few swaps to mean anything: {total:?}"
    );
    assert!(
        total.retries > 0,
        "the failover sent no command again: {total:?}"
    );
    assert_eq!(
        end.count,
        total.good + total.landed_unanswered,
        "the counter is not the swaps that landed\n--- survivor's log:\n{}",
        nodes[1 - p].log_text()
    );
}
