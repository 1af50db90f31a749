//! The data key reaches data nodes only: the first data node makes it at
//! init, a data node that joins receives it, a witness never does; a
//! secret sealed under it is nowhere in clear in any member's database,
//! and a member that lost its key file gets it back.

mod common;

use std::time::Duration;

use cluster::{Command, Role};
use common::{create, eventually, init, join};

const SECRET: &str = "initiator-secret-1";

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_key_reaches_data_nodes_only_and_sealed_secrets_stay_sealed() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, token) = init(dirs[0].path(), "a", Role::Data).await;
    let key = a
        .data_key()
        .expect("the first data node makes the key at init");
    assert_eq!(a.state().data_key, Some(key.id()));
    let w = join(dirs[1].path(), "w", Role::Witness, &a, &token).await;
    let b = join(dirs[2].path(), "b", Role::Data, &a, &token).await;
    let got = b
        .wait_data_key(Duration::from_secs(10))
        .await
        .expect("a joining data node receives the key");
    assert_eq!(got, key);
    assert!(dirs[2].path().join("data.key").exists());

    // The witness holds the state, never the key, and may not ask for it.
    assert_eq!(w.state().data_key, Some(key.id()));
    assert!(w.wait_data_key(Duration::from_millis(500)).await.is_none());
    assert!(!dirs[1].path().join("data.key").exists());
    let caller = cluster::net::Caller::new(w.secret(), Duration::from_secs(2));
    let asked: Result<String, String> = caller
        .post(
            &a.local_addr().to_string(),
            "/cluster/data-key",
            &serde_json::json!({ "node": w.id(), "salt": "00".repeat(32) }),
        )
        .await
        .unwrap();
    let why = asked.expect_err("a witness got the data key");
    assert!(why.contains("not a data node"), "{why}");

    // A secret sealed for a volume's record: in clear nowhere, on no member.
    a.propose(create("vm", 2)).await.unwrap();
    let id = a.state().volumes["vm"].id;
    let sealed = key.seal(id.as_bytes(), SECRET.as_bytes());
    let access = format!(r#"{{"chap":{{"user":"esx","sealed":"{sealed}"}}}}"#);
    b.propose(Command::SetAccess {
        volume: "vm".into(),
        access: Some(access.clone()),
    })
    .await
    .unwrap();
    eventually("every member applied the rule", 10, || {
        [&a, &b, &w]
            .iter()
            .all(|c| c.state().volumes["vm"].access.as_deref() == Some(access.as_str()))
    })
    .await;
    a.compact_log().await.unwrap();
    for d in &dirs {
        let db = std::fs::read(d.path().join("raft.redb")).unwrap();
        assert!(!holds(&db, SECRET.as_bytes()), "{:?}", d.path());
        assert!(!holds(&db, hex::encode(SECRET).as_bytes()));
    }
    let on_witness = w.state().volumes["vm"].access.clone().unwrap();
    assert!(on_witness.contains(&sealed), "the witness keeps the record");
    assert!(cluster::DataKey::generate()
        .open(id.as_bytes(), &sealed)
        .is_err());
    assert_eq!(
        b.data_key().unwrap().open(id.as_bytes(), &sealed).unwrap(),
        SECRET.as_bytes()
    );

    // A data node that lost its key file fetches it again at start.
    let b_dir = dirs[2].path().to_path_buf();
    let b_addr = b.local_addr();
    b.shutdown().await;
    drop(b);
    std::fs::remove_file(b_dir.join("data.key")).unwrap();
    let b = cluster::Cluster::open(&b_dir, b_addr).await.unwrap();
    assert_eq!(b.wait_data_key(Duration::from_secs(10)).await, Some(key));
    b.shutdown().await;
    w.shutdown().await;
    a.shutdown().await;
}
