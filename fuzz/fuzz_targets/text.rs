//! key=value text (login, SendTargets), including CHAP binary values.
#![no_main]

use iscsi::{chap, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = text::parse(data) {
        let again = text::encode(&pairs);
        assert_eq!(text::parse(&again).expect("re-encoded text parses"), pairs);
        for (_, v) in &pairs {
            let _ = chap::decode_binary(v);
        }
    }
});
