//! Who may reach a volume: the initiator access list and CHAP secrets,
//! saved next to the volume in a file only the owner can read, or, for a
//! cluster volume, recorded in the cluster state with the CHAP secrets
//! sealed under the data nodes' key ([`cluster::DataKey`]): witnesses keep
//! the state too, and must not learn the secrets.

use cluster::DataKey;
use iscsi::chap::Credentials;
use iscsi::AuthPolicy;
use portal::TargetAccess;
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// A CHAP user name and secret as the API carries them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChapSecret {
    /// CHAP user name (CHAP_N).
    pub user: String,
    /// Shared secret, 12 to 255 bytes.
    pub secret: String,
}

impl std::fmt::Debug for ChapSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSecret")
            .field("user", &self.user)
            .field("secret", &"<hidden>")
            .finish()
    }
}

impl ChapSecret {
    fn credentials(&self) -> Credentials {
        Credentials {
            user: self.user.clone(),
            secret: self.secret.as_bytes().to_vec(),
        }
    }
}

/// A volume's access rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessConfig {
    /// Initiator names (IQN, EUI or NAA) that may log in and see the target
    /// in discovery; empty: every initiator.
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    /// One-way CHAP: what initiators must prove. None: no authentication.
    #[serde(default)]
    pub chap: Option<ChapSecret>,
    /// Mutual CHAP: what the target proves when an initiator asks.
    #[serde(default)]
    pub mutual_chap: Option<ChapSecret>,
}

impl AccessConfig {
    /// Checks the rules; the error says what to fix.
    pub fn validate(&self) -> Result<(), NodeError> {
        let bad = |m: String| Err(NodeError::Invalid(m));
        for name in &self.allowed_initiators {
            let ok_prefix = ["iqn.", "eui.", "naa."]
                .iter()
                .any(|p| name.to_ascii_lowercase().starts_with(p));
            if !ok_prefix || name.len() > 223 || name.chars().any(|c| c.is_whitespace()) {
                return bad(format!(
                    "{name:?} is not an iSCSI initiator name (iqn., eui. or naa., at most 223 characters)"
                ));
            }
        }
        if let Some(c) = &self.chap {
            c.credentials().validate().map_err(NodeError::Invalid)?;
        }
        match (&self.chap, &self.mutual_chap) {
            (None, Some(_)) => {
                return bad("mutual CHAP needs one-way CHAP set as well".into());
            }
            (Some(c), Some(m)) => {
                m.credentials().validate().map_err(NodeError::Invalid)?;
                if c.secret == m.secret {
                    // RFC 7143 §12.1.3: the two directions must not share a secret.
                    return bad("the mutual CHAP secret must differ from the CHAP secret".into());
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// What the target enforces.
    pub fn target_access(&self) -> TargetAccess {
        TargetAccess {
            allowed_initiators: self.allowed_initiators.clone(),
            auth: AuthPolicy {
                chap: self.chap.as_ref().map(ChapSecret::credentials),
                mutual: self.mutual_chap.as_ref().map(ChapSecret::credentials),
            },
        }
    }
}

/// A CHAP user and secret as the cluster state records them.
#[derive(Serialize, Deserialize)]
struct RecordedChap {
    user: String,
    /// The secret sealed under the data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
    /// The secret in clear: only in rules recorded before secrets were
    /// sealed; read, never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

/// Access rules as the cluster state records them (the JSON shape of
/// [`AccessConfig`], secrets sealed).
#[derive(Serialize, Deserialize)]
struct RecordedAccess {
    #[serde(default)]
    allowed_initiators: Vec<String>,
    #[serde(default)]
    chap: Option<RecordedChap>,
    #[serde(default)]
    mutual_chap: Option<RecordedChap>,
}

/// Where a sealed secret belongs: the volume and the field, so that it
/// opens nowhere else.
fn context(volume: uuid::Uuid, field: &str, user: &str) -> Vec<u8> {
    [
        volume.as_bytes().as_slice(),
        field.as_bytes(),
        b"\0",
        user.as_bytes(),
    ]
    .concat()
}

impl AccessConfig {
    /// The rules as the cluster state records them for volume `volume`
    /// (its id): the CHAP secrets sealed under `key`, which rules with
    /// secrets need.
    pub(crate) fn to_record(
        &self,
        key: Option<&DataKey>,
        volume: uuid::Uuid,
    ) -> Result<String, RecordError> {
        let seal = |field: &str, c: &ChapSecret| -> Result<RecordedChap, RecordError> {
            let key = key.ok_or(RecordError::NoKey)?;
            Ok(RecordedChap {
                user: c.user.clone(),
                sealed: Some(key.seal(&context(volume, field, &c.user), c.secret.as_bytes())),
                secret: None,
            })
        };
        let r = RecordedAccess {
            allowed_initiators: self.allowed_initiators.clone(),
            chap: self.chap.as_ref().map(|c| seal("chap", c)).transpose()?,
            mutual_chap: self
                .mutual_chap
                .as_ref()
                .map(|c| seal("mutual_chap", c))
                .transpose()?,
        };
        Ok(serde_json::to_string(&r).expect("plain data encodes"))
    }

    /// Reads rules recorded in the cluster state for volume `volume`,
    /// opening sealed secrets with `key` (a node without the key, or with
    /// another, cannot). Rules recorded with clear secrets read as they are.
    pub(crate) fn from_record(
        record: &str,
        key: Option<&DataKey>,
        volume: uuid::Uuid,
    ) -> Result<AccessConfig, RecordError> {
        let r: RecordedAccess = serde_json::from_str(record).map_err(RecordError::Unreadable)?;
        let open = |field: &str, c: RecordedChap| -> Result<ChapSecret, RecordError> {
            let secret = match (c.sealed, c.secret) {
                (Some(sealed), _) => {
                    let key = key.ok_or(RecordError::NoKey)?;
                    let clear = key
                        .open(&context(volume, field, &c.user), &sealed)
                        .map_err(RecordError::Sealed)?;
                    String::from_utf8(clear).map_err(|_| RecordError::NotText)?
                }
                (None, Some(clear)) => clear,
                (None, None) => return Err(RecordError::NoSecret),
            };
            Ok(ChapSecret {
                user: c.user,
                secret,
            })
        };
        Ok(AccessConfig {
            allowed_initiators: r.allowed_initiators,
            chap: r.chap.map(|c| open("chap", c)).transpose()?,
            mutual_chap: r.mutual_chap.map(|c| open("mutual_chap", c)).transpose()?,
        })
    }

    /// Whether recorded rules hold a CHAP secret in clear (recorded before
    /// secrets were sealed): they are sealed anew when seen.
    pub(crate) fn record_has_clear_secret(record: &str) -> bool {
        serde_json::from_str::<RecordedAccess>(record).is_ok_and(|r| {
            [r.chap, r.mutual_chap]
                .iter()
                .flatten()
                .any(|c| c.secret.is_some())
        })
    }
}

/// Why access rules recorded in the cluster state could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// Not the JSON of access rules.
    #[error("unreadable: {0}")]
    Unreadable(serde_json::Error),
    /// Sealed secrets and no data key here (yet).
    #[error("the CHAP secrets are sealed and this node has no data key yet")]
    NoKey,
    /// A sealed secret that does not open.
    #[error("a sealed CHAP secret does not open: {0}")]
    Sealed(cluster::SealError),
    /// A secret that is not text.
    #[error("a sealed CHAP secret is not text")]
    NotText,
    /// A CHAP user without a secret.
    #[error("a CHAP user has no secret")]
    NoSecret,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(user: &str, s: &str) -> Option<ChapSecret> {
        Some(ChapSecret {
            user: user.into(),
            secret: s.into(),
        })
    }

    #[test]
    fn rules_are_checked() {
        let ok = AccessConfig {
            allowed_initiators: vec!["iqn.1993-08.org.debian:01:abc".into()],
            chap: secret("esx", "twelve-chars"),
            mutual_chap: secret("tandem", "other-secret"),
        };
        ok.validate().unwrap();
        let mut bad = ok.clone();
        bad.allowed_initiators = vec!["host1".into()];
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.chap = secret("esx", "short");
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.mutual_chap = secret("tandem", "twelve-chars");
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.chap = None;
        assert!(bad.validate().is_err());
        assert!(!format!("{:?}", secret("u", "hidden-secret")).contains("hidden-secret"));
    }

    /// A rule with both secrets, and the state of a cluster that records
    /// it for volume `id` (as a data node would, sealed under `key`).
    fn recorded(key: &DataKey, id: uuid::Uuid) -> (AccessConfig, cluster::Command) {
        let rule = AccessConfig {
            allowed_initiators: vec!["iqn.1993-08.org.debian:01:abc".into()],
            chap: secret("esx", "initiator-secret-1"),
            mutual_chap: secret("tandem", "target-secret-22"),
        };
        let cmd = cluster::Command::SetAccess {
            volume: "v".into(),
            access: Some(rule.to_record(Some(key), id).unwrap()),
        };
        (rule, cmd)
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    #[test]
    fn the_cluster_log_and_state_hold_no_secret_and_a_witness_cannot_open_them() {
        let key = DataKey::generate();
        let id = uuid::Uuid::new_v4();
        let (rule, cmd) = recorded(&key, id);
        let mut state = cluster::ClusterState::default();
        state.apply(&cluster::Command::AddNode {
            info: cluster::NodeInfo {
                id: 1,
                name: "a".into(),
                role: Some(cluster::Role::Data),
                ..Default::default()
            },
        });
        state.apply(&cluster::Command::CreateVolume {
            id,
            name: "v".into(),
            size_bytes: 1 << 20,
            block_size: 512,
            replicas: 1,
        });
        assert_eq!(state.apply(&cmd), cluster::Outcome::Done);
        // The bytes a log entry and a snapshot are made of.
        let entry = serde_json::to_vec(&cmd).unwrap();
        let snapshot = serde_json::to_vec(&state).unwrap();
        for bytes in [&entry, &snapshot] {
            for s in ["initiator-secret-1", "target-secret-22"] {
                assert!(
                    !contains(bytes, s),
                    "{s} in {}",
                    String::from_utf8_lossy(bytes)
                );
                let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
                assert!(!contains(bytes, &hex));
            }
            // What is not secret stays readable.
            assert!(contains(bytes, "iqn.1993-08.org.debian:01:abc"));
            assert!(contains(bytes, "esx"));
        }
        let record = state.volumes["v"].access.as_deref().unwrap();
        // A data node with the key reads the rule back whole.
        let back = AccessConfig::from_record(record, Some(&key), id).unwrap();
        assert_eq!(back, rule);
        // A witness (no data key) gets no secret, nor does another key, nor
        // the same rule copied to another volume.
        assert!(matches!(
            AccessConfig::from_record(record, None, id),
            Err(RecordError::NoKey)
        ));
        assert!(matches!(
            AccessConfig::from_record(record, Some(&DataKey::generate()), id),
            Err(RecordError::Sealed(_))
        ));
        assert!(matches!(
            AccessConfig::from_record(record, Some(&key), uuid::Uuid::new_v4()),
            Err(RecordError::Sealed(_))
        ));
        assert!(!AccessConfig::record_has_clear_secret(record));
    }

    #[test]
    fn rules_recorded_with_clear_secrets_still_read_and_are_sealed_anew() {
        // As a node before sealing recorded them: the API's JSON.
        let id = uuid::Uuid::new_v4();
        let old = AccessConfig {
            allowed_initiators: vec![],
            chap: secret("esx", "initiator-secret-1"),
            mutual_chap: None,
        };
        let legacy = serde_json::to_string(&old).unwrap();
        assert!(AccessConfig::record_has_clear_secret(&legacy));
        assert_eq!(AccessConfig::from_record(&legacy, None, id).unwrap(), old);
        let key = DataKey::generate();
        let resealed = AccessConfig::from_record(&legacy, Some(&key), id)
            .unwrap()
            .to_record(Some(&key), id)
            .unwrap();
        assert!(!resealed.contains("initiator-secret-1"));
        assert!(!AccessConfig::record_has_clear_secret(&resealed));
        assert_eq!(
            AccessConfig::from_record(&resealed, Some(&key), id).unwrap(),
            old
        );
        // Rules without secrets need no key.
        let listed = AccessConfig {
            allowed_initiators: vec!["iqn.1993-08.org.debian:01:abc".into()],
            ..AccessConfig::default()
        };
        let record = listed.to_record(None, id).unwrap();
        assert_eq!(
            AccessConfig::from_record(&record, None, id).unwrap(),
            listed
        );
        assert!(matches!(old.to_record(None, id), Err(RecordError::NoKey)));
        let open = serde_json::to_string(&AccessConfig::default()).unwrap();
        assert!(!AccessConfig::record_has_clear_secret(&open));
        assert_eq!(
            AccessConfig::from_record(&open, None, id).unwrap(),
            AccessConfig::default()
        );
        assert!(AccessConfig::from_record("{", None, id).is_err());
        assert!(matches!(
            AccessConfig::from_record(r#"{"chap":{"user":"esx"}}"#, None, id),
            Err(RecordError::NoSecret)
        ));
    }
}
