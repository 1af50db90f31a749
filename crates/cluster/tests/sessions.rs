//! Members answer for the iSCSI sessions logged in through them: a data
//! node asks another for its sessions over the member endpoint; a member
//! with nothing to report (a witness, a node whose iSCSI side is not up)
//! says so rather than answering "none", and a member that is gone cannot
//! be asked.

mod common;

use std::sync::Arc;

use cluster::{MemberSession, Role, SessionSource};
use common::{eventually, init, join};

/// A node's sessions, fixed.
struct Fixed(Vec<MemberSession>);

impl SessionSource for Fixed {
    fn sessions(&self) -> Option<Vec<MemberSession>> {
        Some(self.0.clone())
    }
}

/// A node whose iSCSI side has stopped.
struct Stopped;

impl SessionSource for Stopped {
    fn sessions(&self) -> Option<Vec<MemberSession>> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_reports_its_sessions_and_one_that_cannot_is_not_taken_for_none() {
    let (da, db, dw) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (a, token) = init(da.path(), "a", Role::Data).await;
    let b = join(db.path(), "b", Role::Data, &a, &token).await;
    let w = join(dw.path(), "w", Role::Witness, &a, &token).await;
    eventually("a sees three members", 10, || a.state().nodes.len() == 3).await;

    let logged_in = MemberSession {
        volume: uuid::Uuid::new_v4(),
        initiator: "iqn.2026-11.test:esx1".into(),
        address: "192.0.2.7:51000".into(),
    };
    // Before its node registers a source, B has nothing to report.
    let before = a.sessions_of(b.id()).await;
    assert!(before.is_err(), "{before:?}");
    b.serve_sessions(Arc::new(Fixed(vec![logged_in.clone()])));
    assert_eq!(a.sessions_of(b.id()).await.unwrap(), vec![logged_in]);

    // A asks itself without a call; a witness serves no iSCSI.
    assert!(a.sessions_of(a.id()).await.is_err());
    a.serve_sessions(Arc::new(Fixed(Vec::new())));
    assert_eq!(a.sessions_of(a.id()).await.unwrap(), Vec::new());
    let witness = a.sessions_of(w.id()).await.unwrap_err().to_string();
    assert!(witness.contains("serves no iSCSI"), "{witness}");
    // Nor is a node whose iSCSI side has stopped taken for one without sessions.
    b.serve_sessions(Arc::new(Stopped));
    assert!(a.sessions_of(b.id()).await.is_err());

    // B gone: it cannot be asked.
    let b_id = b.id();
    b.shutdown().await;
    drop(b);
    assert!(a.sessions_of(b_id).await.is_err());
    w.shutdown().await;
    a.shutdown().await;
}
