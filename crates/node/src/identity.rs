//! Names and SCSI identities of exported volumes.
//!
//! - IQN: `<prefix>:<volume name>`, e.g. `iqn.2026-11.io.tandem:vmstore`. The
//!   prefix is configurable; names are restricted by the store to characters
//!   valid in an IQN, so the IQN is stable for the life of the volume.
//! - NAA (VPD 0x83): an 8-byte NAA 3 ("locally assigned", SPC-4 7.8.6.6.3)
//!   identifier whose 60 low bits come from SHA-256(installation UUID ‖ volume
//!   UUID). Two installations, or two volumes of one, never share an identity
//!   even when the volume names are equal.
//! - Unit serial number (VPD 0x80): 32 hex digits of the same hash.

use scsi::LunIdentity;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The IQN prefix used when none is configured.
pub const DEFAULT_IQN_PREFIX: &str = "iqn.2026-11.io.tandem";

/// The iSCSI target name under which volume `name` is exported.
pub fn iqn_for(prefix: &str, name: &str) -> String {
    format!("{prefix}:{name}")
}

/// Checks that `prefix` is an `iqn.yyyy-mm.reversed.domain` name (RFC 3720 §3.2.6.3.1),
/// lowercase, with no `:` (the volume name follows the colon).
pub fn validate_iqn_prefix(prefix: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("IQN prefix {prefix:?} is invalid: {why}"));
    let Some(rest) = prefix.strip_prefix("iqn.") else {
        return bad("it must start with \"iqn.\"");
    };
    let date = rest.get(..7).unwrap_or("");
    let date_ok = date.len() == 7
        && date.as_bytes()[4] == b'-'
        && date[..4].bytes().all(|b| b.is_ascii_digit())
        && date[5..].bytes().all(|b| b.is_ascii_digit());
    if !date_ok || rest.as_bytes().get(7) != Some(&b'.') || rest.len() < 9 {
        return bad("it must look like iqn.yyyy-mm.reversed.domain");
    }
    if !rest[8..]
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return bad("the domain part may hold only a-z, 0-9, '.' and '-'");
    }
    if prefix.len() > 180 {
        return bad("it is longer than 180 characters");
    }
    Ok(())
}

fn identity_hash(installation: Uuid, volume: Uuid) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"tandem-lun-identity-v1");
    h.update(installation.as_bytes());
    h.update(volume.as_bytes());
    h.finalize().into()
}

/// The SCSI identity of a volume exported by this installation.
pub fn lun_identity(installation: Uuid, volume: Uuid, target_name: &str) -> LunIdentity {
    let hash = identity_hash(installation, volume);
    let mut naa = hash[..8].to_vec();
    naa[0] = 0x30 | (naa[0] & 0x0f);
    let serial: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
    LunIdentity {
        vendor: "TANDEM".into(),
        product: "VOLUME".into(),
        revision: env!("CARGO_PKG_VERSION")
            .split('.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
            .chars()
            .take(4)
            .collect(),
        serial,
        naa,
        target_name: target_name.to_string(),
        relative_port: 1,
        port_group: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_differ_across_installations_and_volumes() {
        let (i1, i2, v1, v2) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let a = lun_identity(i1, v1, "t");
        assert_eq!(
            a.naa,
            lun_identity(i1, v1, "t").naa,
            "identity must be stable"
        );
        assert_ne!(a.naa, lun_identity(i2, v1, "t").naa);
        assert_ne!(a.naa, lun_identity(i1, v2, "t").naa);
        assert_ne!(a.serial, lun_identity(i2, v1, "t").serial);
        assert_eq!(a.naa.len(), 8);
        assert_eq!(a.naa[0] >> 4, 3, "NAA 3: locally assigned");
        assert_eq!(a.serial.len(), 32);
    }

    #[test]
    fn iqn_prefixes_are_checked() {
        assert!(validate_iqn_prefix(DEFAULT_IQN_PREFIX).is_ok());
        assert!(validate_iqn_prefix("iqn.2001-04.com.example").is_ok());
        for bad in [
            "",
            "iqn.",
            "eui.0123",
            "iqn.2001-4.com.x",
            "iqn.2001-04.Com.x",
            "iqn.2001-04.com:x",
        ] {
            assert!(validate_iqn_prefix(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            iqn_for("iqn.2001-04.com.example", "vm1"),
            "iqn.2001-04.com.example:vm1"
        );
    }
}
