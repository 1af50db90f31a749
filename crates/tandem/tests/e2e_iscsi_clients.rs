//! Real initiators against the real binary: libiscsi's iscsi-ls discovers the
//! volume, iscsi-inq reads its identity, qemu-img writes a random image and
//! reads it back byte-identical, also after a clean restart and after kill -9.

mod common;

use std::path::Path;

use common::{require_tool, run_ok, Server};
use rand::RngCore;
use sha2::{Digest, Sha256};

fn sha256_file(p: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(p).unwrap()).into()
}

#[test]
fn discovery_lists_new_volumes_at_once() {
    require_tool("iscsi-ls");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let portal = format!("iscsi://127.0.0.1:{}", server.iscsi_port);

    let out = run_ok("iscsi-ls", &[&portal]);
    assert!(
        !out.contains("Target:"),
        "a fresh node exports targets: {out}"
    );

    server.cli_ok(&["volume", "create", "alpha", "--size", "256M"]);
    server.cli_ok(&[
        "volume",
        "create",
        "beta",
        "--size",
        "1G",
        "--block-size",
        "4096",
    ]);
    let out = run_ok("iscsi-ls", &["-s", &portal]);
    for name in ["alpha", "beta"] {
        let line = format!(
            "Target:iqn.2026-11.io.tandem:{name} Portal:127.0.0.1:{},1",
            server.iscsi_port
        );
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }
    // -s logs in to each target and reports LUN 0 with its capacity.
    assert!(out.contains("Lun:0"), "no LUN listed:\n{out}");
    // iscsi-ls prints last LBA × block size in MiB, rounded down: 256 MiB shows as 255M.
    assert!(out.contains("(Size:255M)"), "alpha's size missing:\n{out}");
    assert!(out.contains("(Size:1023M)"), "beta's size missing:\n{out}");

    server.cli_ok(&["volume", "delete", "alpha"]);
    let out = run_ok("iscsi-ls", &[&portal]);
    assert!(
        !out.contains(":alpha "),
        "deleted volume still discovered:\n{out}"
    );
    assert!(out.contains(":beta "), "{out}");
}

#[test]
fn inquiry_reports_the_volume_identity() {
    require_tool("iscsi-inq");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli_ok(&["volume", "create", "ident", "--size", "128M"]);
    let show: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["volume", "show", "ident", "--json"])).unwrap();
    let serial = show["serial"].as_str().unwrap().to_string();

    let url = server.url("ident");
    let std_inq = run_ok("iscsi-inq", &[&url]);
    assert!(std_inq.contains("TANDEM"), "vendor missing:\n{std_inq}");

    // iscsi-inq takes the page code in decimal; it prints NAA bytes raw, so
    // check the designator is there and the T10 designator carries the serial.
    let vpd83 = run_ok("iscsi-inq", &["-e", "1", "-c", "131", &url]);
    assert!(
        vpd83.contains("Designator Type:(3) NAA"),
        "no NAA designator:\n{vpd83}"
    );
    assert!(
        vpd83.contains(&format!("TANDEM  {serial}")),
        "T10 designator missing:\n{vpd83}"
    );
    assert!(
        vpd83.contains("iqn.2026-11.io.tandem:ident"),
        "target name missing:\n{vpd83}"
    );

    let vpd80 = run_ok("iscsi-inq", &["-e", "1", "-c", "128", &url]);
    assert!(
        vpd80.contains(&serial),
        "serial {serial} missing from VPD 0x80:\n{vpd80}"
    );

    // The identity is stable across restarts and unique per installation.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Server::start(&other_dir.path().join("data"));
    other.cli_ok(&["volume", "create", "ident", "--size", "128M"]);
    let other_show: serde_json::Value =
        serde_json::from_str(&other.cli_ok(&["volume", "show", "ident", "--json"])).unwrap();
    assert_ne!(
        other_show["naa"], show["naa"],
        "two installations present one identity"
    );
}

#[test]
fn resize_shows_up_in_read_capacity() {
    require_tool("iscsi-readcapacity16");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli_ok(&["volume", "create", "grow", "--size", "64M"]);
    let url = server.url("grow");
    let before = run_ok("iscsi-readcapacity16", &[&url]);
    assert!(
        before.contains(&format!("{}", (64u64 << 20) / 512 - 1)),
        "{before}"
    );
    server.cli_ok(&["volume", "resize", "grow", "--size", "128M"]);
    let after = run_ok("iscsi-readcapacity16", &[&url]);
    assert!(
        after.contains(&format!("{}", (128u64 << 20) / 512 - 1)),
        "{after}"
    );
}

#[test]
fn qemu_img_round_trip_survives_restart_and_kill() {
    require_tool("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"));
    server.cli_ok(&["volume", "create", "img", "--size", "64M"]);
    let url = server.url("img");

    let src = dir.path().join("src.raw");
    let mut data = vec![0u8; 64 << 20];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(&src, &data).unwrap();
    drop(data);
    let want = sha256_file(&src);

    // -n: the target exists already; qemu-img ends with SYNCHRONIZE CACHE.
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &url,
        ],
    );

    let read_back = |server: &Server, tag: &str| {
        let back = dir.path().join(format!("back-{tag}.raw"));
        run_ok(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "raw",
                &server.url("img"),
                back.to_str().unwrap(),
            ],
        );
        assert_eq!(sha256_file(&back), want, "image read back differs ({tag})");
        std::fs::remove_file(back).unwrap();
    };
    read_back(&server, "live");

    server.stop();
    server.restart();
    read_back(&server, "after-restart");

    server.kill();
    server.restart();
    read_back(&server, "after-kill");

    // The image is also readable through qemu-img's own view of the device.
    let info = run_ok("qemu-img", &["info", &url]);
    assert!(info.contains("64 MiB"), "{info}");
}
