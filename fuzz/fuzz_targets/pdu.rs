//! iSCSI framing: BHS, AHS, data segment, padding and digests, from raw bytes.
#![no_main]

use iscsi::{Digests, Pdu};
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
        // Whatever parses re-encodes to something that parses to the same PDU.
        let again = pdu.encode(digests);
        let (back, n) = Pdu::parse(&again, digests, 1 << 20).expect("re-encoded PDU parses");
        assert_eq!(n, again.len());
        assert_eq!(back.bhs, pdu.bhs);
        assert_eq!(back.data, pdu.data);
    }
});
