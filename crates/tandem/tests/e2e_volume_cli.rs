//! The volume lifecycle through the real CLI and server: create, list, show,
//! resize, delete, the errors an administrator can make, and thin provisioning.

mod common;

use common::Server;

#[test]
fn volume_lifecycle_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));

    let out = server.cli_ok(&["volume", "create", "vm1", "--size", "1G"]);
    assert!(out.contains("iqn.2026-11.io.tandem:vm1"), "{out}");

    let list = server.cli_ok(&["volume", "list", "--json"]);
    let vols: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(vols.as_array().unwrap().len(), 1);
    assert_eq!(vols[0]["name"], "vm1");
    assert_eq!(vols[0]["size_bytes"], 1u64 << 30);
    assert_eq!(vols[0]["block_size"], 512);

    // Errors are refused with a message that names the object.
    let dup = server.cli(&["volume", "create", "vm1", "--size", "1G"]);
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("vm1"),
        "{dup:?}"
    );
    for (args, why) in [
        (
            vec!["volume", "create", "Bad_Name", "--size", "1G"],
            "invalid name",
        ),
        (vec!["volume", "create", "x", "--size", "10Q"], "bad unit"),
        (
            vec!["volume", "create", "x", "--size", "1000"],
            "not a block multiple",
        ),
        (
            vec![
                "volume",
                "create",
                "x",
                "--size",
                "1G",
                "--block-size",
                "1000",
            ],
            "bad block size",
        ),
        (vec!["volume", "resize", "vm1", "--size", "512M"], "shrink"),
        (
            vec!["volume", "resize", "nope", "--size", "2G"],
            "missing volume",
        ),
        (vec!["volume", "delete", "nope"], "missing volume"),
        (vec!["volume", "show", "nope"], "missing volume"),
    ] {
        let out = server.cli(&args);
        assert!(!out.status.success(), "{why}: {args:?} succeeded");
        assert!(!out.stderr.is_empty(), "{why}: no error message");
    }

    let out = server.cli_ok(&["volume", "resize", "vm1", "--size", "2G"]);
    assert!(out.contains("2 GiB"), "{out}");
    let show = server.cli_ok(&["volume", "show", "vm1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(v["size_bytes"], 2u64 << 30);

    server.cli_ok(&["volume", "delete", "vm1"]);
    let list = server.cli_ok(&["volume", "list", "--json"]);
    assert_eq!(list.trim(), "[]");
}

#[test]
fn thin_volumes_take_no_space_until_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli_ok(&["volume", "create", "huge", "--size", "1T"]);
    let show = server.cli_ok(&["volume", "show", "huge", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(v["size_bytes"], 1u64 << 40);
    assert!(
        v["allocated_bytes"].as_u64().unwrap() < 1 << 20,
        "a fresh 1 TiB volume allocated {}",
        v["allocated_bytes"]
    );
}

#[test]
fn cli_without_a_server_says_so() {
    let out = std::process::Command::new(common::tandem_bin())
        .args(["volume", "list"])
        .env("TANDEM_API", format!("127.0.0.1:{}", common::free_port()))
        .env("TANDEM_API_TOKEN", "any")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the tandem server"), "{err}");
}

#[test]
fn volumes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"));
    server.cli_ok(&[
        "volume",
        "create",
        "keep",
        "--size",
        "64M",
        "--block-size",
        "4096",
    ]);
    let before = server.cli_ok(&["volume", "show", "keep", "--json"]);
    server.stop();
    server.restart();
    let after = server.cli_ok(&["volume", "show", "keep", "--json"]);
    let (b, a): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&before).unwrap(),
        serde_json::from_str(&after).unwrap(),
    );
    for key in ["id", "size_bytes", "block_size", "iqn", "naa", "serial"] {
        assert_eq!(b[key], a[key], "{key} changed across a restart");
    }
}

#[test]
fn a_second_server_cannot_share_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _first = Server::start(&data);
    let out = std::process::Command::new(common::tandem_bin())
        .args([
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--iscsi-listen",
            &format!("127.0.0.1:{}", common::free_port()),
            "--api-listen",
            &format!("127.0.0.1:{}", common::free_port()),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a second server started on the same data dir"
    );
    assert!(!out.stderr.is_empty());
}
