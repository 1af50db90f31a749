//! Login negotiation: a sequence of Login Requests against a target that
//! requires CHAP and one that does not. Never panics; never completes a login
//! to the CHAP target without the secret.
#![no_main]

use iscsi::chap::Credentials;
use iscsi::login::LoginStep;
use iscsi::{Access, AuthPolicy, Digests, LoginPolicy, LoginState, Pdu, TargetLimits};
use libfuzzer_sys::fuzz_target;

struct Policy;

impl LoginPolicy for Policy {
    fn access(&self, initiator: &str, target: Option<&str>) -> Access {
        match target {
            None => Access::Allowed(AuthPolicy::default()),
            Some("iqn.2026-11.io.tandem:open") => Access::Allowed(AuthPolicy::default()),
            Some("iqn.2026-11.io.tandem:chap") if initiator.starts_with("iqn.") => {
                Access::Allowed(AuthPolicy {
                    chap: Some(Credentials {
                        user: "user".into(),
                        secret: b"0123456789abcdef".to_vec(),
                    }),
                    mutual: None,
                })
            }
            Some("iqn.2026-11.io.tandem:chap") => Access::Denied,
            _ => Access::NotFound,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut state = LoginState::new(TargetLimits::default());
    let mut rest = data;
    let mut stat_sn = 0;
    while let Ok((pdu, used)) = Pdu::parse(rest, Digests::default(), 65536) {
        rest = &rest[used..];
        match state.step(&pdu, &Policy, 1, stat_sn) {
            LoginStep::Continue(_) => {}
            LoginStep::Complete(_, neg) => {
                // The secret is not in the input space in practice; a
                // completed login to the CHAP target means CHAP was skipped.
                assert_ne!(
                    neg.target_name.as_deref(),
                    Some("iqn.2026-11.io.tandem:chap"),
                    "logged in to the CHAP target without authenticating"
                );
                return;
            }
            LoginStep::Fail(..) => return,
        }
        stat_sn += 1;
        if used == 0 {
            return;
        }
    }
});
