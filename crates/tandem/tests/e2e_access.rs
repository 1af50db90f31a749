//! Who gets in: initiator access lists, one-way and mutual CHAP with libiscsi
//! as the initiator, discovery filtered per initiator, secrets kept in files
//! only the owner reads, and a management API that wants its token.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::{node_prefix, require_tool, Server};

const ALLOWED: &str = "iqn.2026-11.org.example:allowed";
const OTHER: &str = "iqn.2026-11.org.example:other";
const SECRET: &str = "initiator-secret-1";
const TARGET_SECRET: &str = "target-secret-22";

fn inq(
    server: &Server,
    initiator: &str,
    creds: Option<(&str, &str)>,
    env: &[(&str, &str)],
) -> Output {
    let auth = creds.map(|(u, p)| format!("{u}%{p}@")).unwrap_or_default();
    let url = format!(
        "iscsi://{auth}127.0.0.1:{}/{}:secure/0",
        server.iscsi_port,
        node_prefix()
    );
    let mut cmd = Command::new("iscsi-inq");
    cmd.args(["-i", initiator, &url]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run iscsi-inq")
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn http_status(port: u16, auth: Option<&str>) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /v1/volumes HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r.lines().next().unwrap_or_default().to_string()
}

#[test]
fn chap_and_access_lists_keep_strangers_out() {
    require_tool("iscsi-inq");
    require_tool("iscsi-ls");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    server.cli_ok(&["volume", "create", "secure", "--size", "64M"]);
    server.cli_ok(&["volume", "create", "open", "--size", "64M"]);
    let secret_file = dir.path().join("chap");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let out = server.cli_ok(&[
        "volume",
        "access",
        "secure",
        "--allow",
        ALLOWED,
        "--chap-user",
        "esx",
        "--chap-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    assert!(out.contains("may log in with CHAP"), "{out}");

    // The right initiator with the right secret gets in.
    let ok = inq(&server, ALLOWED, Some(("esx", SECRET)), &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Wrong secret, no secret, or another initiator: refused, and logged.
    let wrong = inq(&server, ALLOWED, Some(("esx", "not-the-secret")), &[]);
    assert!(!wrong.status.success());
    let none = inq(&server, ALLOWED, None, &[]);
    assert!(!none.status.success());
    let stranger = inq(&server, OTHER, Some(("esx", SECRET)), &[]);
    assert!(!stranger.status.success());
    // The server logs a refusal right after answering it.
    let mut log = server.log_text();
    for _ in 0..100 {
        if log.contains(OTHER) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        log = server.log_text();
    }
    assert!(
        log.contains("authentication failure") && log.contains(ALLOWED),
        "{log}"
    );
    assert!(
        log.contains("not authorized") && log.contains(OTHER),
        "{log}"
    );
    assert!(log.contains("127.0.0.1"), "failed logins name the address");

    // Discovery shows each initiator only what it may log in to.
    let portal = format!("iscsi://127.0.0.1:{}", server.iscsi_port);
    let seen = common::run_ok("iscsi-ls", &["-i", OTHER, &portal]);
    assert!(
        !seen.contains(":secure") && seen.contains(":open"),
        "{seen}"
    );
    let seen = common::run_ok("iscsi-ls", &["-i", ALLOWED, &portal]);
    assert!(seen.contains(":secure"), "{seen}");

    // Mutual CHAP: the initiator checks the target's answer too.
    let target_file = dir.path().join("target-chap");
    std::fs::write(&target_file, TARGET_SECRET).unwrap();
    server.cli_ok(&[
        "volume",
        "access",
        "secure",
        "--allow",
        ALLOWED,
        "--chap-user",
        "esx",
        "--chap-secret-file",
        secret_file.to_str().unwrap(),
        "--mutual-user",
        "tandem",
        "--mutual-secret-file",
        target_file.to_str().unwrap(),
    ]);
    let mutual = [
        ("LIBISCSI_CHAP_TARGET_USERNAME", "tandem"),
        ("LIBISCSI_CHAP_TARGET_PASSWORD", TARGET_SECRET),
    ];
    let ok = inq(&server, ALLOWED, Some(("esx", SECRET)), &mutual);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let impostor = [
        ("LIBISCSI_CHAP_TARGET_USERNAME", "tandem"),
        ("LIBISCSI_CHAP_TARGET_PASSWORD", "some-other-secret"),
    ];
    let bad = inq(&server, ALLOWED, Some(("esx", SECRET)), &impostor);
    assert!(
        !bad.status.success(),
        "initiator accepted a target that cannot prove itself"
    );

    // Secrets live in owner-only files and never come back out of the API.
    let show = server.cli_ok(&["volume", "show", "secure", "--json"]);
    assert!(
        !show.contains(SECRET) && !show.contains(TARGET_SECRET),
        "{show}"
    );
    assert!(show.contains("\"chap_user\": \"esx\""), "{show}");
    let access_file = std::fs::read_dir(data.join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().path().join("access.json"))
        .find(|p| p.exists())
        .expect("access.json");
    assert_eq!(mode(&access_file), 0o600);
    assert_eq!(mode(&data.join("api.token")), 0o600);

    // The rules survive a restart.
    server.stop();
    server.restart();
    let wrong = inq(&server, ALLOWED, Some(("esx", "not-the-secret")), &[]);
    assert!(!wrong.status.success());
    let ok = inq(&server, ALLOWED, Some(("esx", SECRET)), &mutual);
    assert!(ok.status.success());

    // Bad settings are refused with a reason.
    std::fs::write(&secret_file, "short").unwrap();
    let out = server.cli(&[
        "volume",
        "access",
        "secure",
        "--chap-user",
        "esx",
        "--chap-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("12 to 255 bytes"));
}

#[test]
fn management_api_wants_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    assert!(http_status(server.api_port, None).contains("401"));
    assert!(http_status(server.api_port, Some("guess")).contains("401"));
    let token = std::fs::read_to_string(data.join("api.token")).unwrap();
    assert!(http_status(server.api_port, Some(token.trim())).contains("200"));
    // The CLI without access to the token says where it looked.
    let out = Command::new(common::tandem_bin())
        .args(["volume", "list"])
        .env("TANDEM_API", format!("127.0.0.1:{}", server.api_port))
        .env("TANDEM_DATA_DIR", dir.path().join("elsewhere"))
        .env_remove("TANDEM_API_TOKEN")
        .env_remove("TANDEM_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("API token"));
    // A wrong token is refused by the server.
    let out = Command::new(common::tandem_bin())
        .args(["volume", "list"])
        .env("TANDEM_API", format!("127.0.0.1:{}", server.api_port))
        .env("TANDEM_API_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong API token"));
}
