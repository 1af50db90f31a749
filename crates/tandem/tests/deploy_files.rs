//! The service files shipped in deploy/systemd pass `systemd-analyze
//! verify` (with ExecStart pointed at the binary under test) and carry the
//! hardening they promise.

use std::path::Path;
use std::process::Command;

const UNITS: [&str; 2] = ["tandem.service", "tandem-witness.service"];

fn unit_text(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_units_are_hardened() {
    for name in UNITS {
        let text = unit_text(name);
        for line in [
            "User=tandem",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "KillSignal=SIGTERM",
        ] {
            assert!(text.lines().any(|l| l == line), "{name} lacks {line}");
        }
        assert!(
            text.lines().any(|l| l.starts_with("LimitNOFILE=")),
            "{name}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("ExecStart=/usr/local/bin/tandem ")),
            "{name}"
        );
    }
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let found = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        println!("systemd-analyze is not installed: the units are not verified");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in UNITS {
        let unit = dir.path().join(name);
        let text = unit_text(name).replace("/usr/local/bin/tandem", env!("CARGO_BIN_EXE_tandem"));
        std::fs::write(&unit, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        // Unknown keys and bad values are warnings, with a zero exit status.
        let about_it: Vec<&str> = err.lines().filter(|l| l.contains(name)).collect();
        assert!(about_it.is_empty(), "{name}:\n{}", about_it.join("\n"));
    }
}
