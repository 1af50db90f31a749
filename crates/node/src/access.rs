//! Who may reach a volume: the initiator access list and CHAP secrets,
//! saved next to the volume in a file only the owner can read.

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
}
