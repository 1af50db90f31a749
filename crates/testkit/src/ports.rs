//! Loopback ports for test servers.

use std::net::TcpListener;
use std::ops::Range;
use std::sync::atomic::{AtomicU16, Ordering};

/// Ports handed out by [`free_port`]: below Linux's ephemeral range (32768
/// and up), which outgoing connections take their local ports from. A port
/// the kernel chose for `bind(:0)` comes from that range, and a replication
/// or iSCSI connection could take it before the server it was meant for
/// binds it ("Address already in use").
const TEST_PORTS: Range<u16> = 20_000..32_000;

/// A loopback port nobody listens on right now, and no outgoing connection
/// can take.
pub fn free_port() -> u16 {
    let span = TEST_PORTS.end - TEST_PORTS.start;
    // Each test process starts somewhere else in the range, and processes
    // started one after the other (whose ids follow each other) far apart:
    // the id times about span / 1.618, so the next few ids land thousands
    // of ports away rather than next door, where the ports one process has
    // checked and not yet bound would be handed out again by the other.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (u64::from(std::process::id()) * 7417 % u64::from(span)) as u16;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = TEST_PORTS.start + (offset + n % span) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}");
}
