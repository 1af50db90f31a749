//! The data key: a 32-byte key that only data nodes hold, under which the
//! secrets the replicated state has to carry (the CHAP secrets of volume
//! access rules) are sealed. Every member, witnesses included, keeps the
//! Raft log and the state; only data nodes use the secrets, so only they
//! can open them.
//!
//! - The first data node creates the key (at `cluster init`, or, in a
//!   cluster made before the key existed, when it finds none recorded) and
//!   records its id, never the key, with [`Command::SetDataKey`]: the first
//!   id recorded is the cluster's, so two data nodes creating one at once
//!   end up with one key.
//! - A data node that lacks the recorded key (it just joined, or lost the
//!   file) fetches it from a data member over the member channel
//!   (`/cluster/data-key`): the request proves the cluster secret like
//!   every member call, the answering member gives the key only to a member
//!   the state records as a data node, and wraps it under a key derived
//!   from the cluster secret and a salt of the request, so the key never
//!   crosses the network in clear.
//! - A witness never asks for it, and a member that became a witness drops
//!   the file at start.
//!
//! A sealed value is `sealed1:` and the hex of a 12-byte random nonce, the
//! ChaCha20-Poly1305 ciphertext and its tag. The caller binds it to where
//! it belongs (`context`, e.g. the volume id and the field), so a sealed
//! value copied into another volume's record does not open.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

use crate::files::{local, write_private};
use crate::http::Answer;
use crate::member::Inner;
use crate::{ClusterError, Command, Key, NodeId};

/// How a sealed value begins.
const SEALED: &str = "sealed1:";

/// Name of the key file in the member's directory.
const FILE: &str = "data.key";

/// The data nodes' key (see the module documentation).
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.id())
    }
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SealError {
    /// The text is not a sealed value.
    #[error("not a sealed value")]
    Malformed,
    /// Sealed under another key, for another place, or altered.
    #[error("the sealed value does not open with this node's data key")]
    WrongKey,
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> DataKey {
        let mut k = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        DataKey(k)
    }

    /// The key's public name, recorded in the state: 16 bytes of a MAC
    /// under the key, in hex. It tells keys apart and reveals nothing of
    /// the key.
    pub fn id(&self) -> String {
        hex::encode(&hmac(&self.0, &[b"tandem data key id"])[..16])
    }

    /// Whether `text` is a sealed value (rather than clear text).
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with(SEALED)
    }

    /// Seals `clear` for `context` (where the value belongs).
    pub fn seal(&self, context: &[u8], clear: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = ChaCha20Poly1305::new((&self.0).into())
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: clear,
                    aad: context,
                },
            )
            .expect("ChaCha20-Poly1305 seals any length used here");
        format!("{SEALED}{}{}", hex::encode(nonce), hex::encode(sealed))
    }

    /// Opens a value sealed by [`DataKey::seal`] for `context`.
    pub fn open(&self, context: &[u8], sealed: &str) -> Result<Vec<u8>, SealError> {
        let bytes = sealed
            .strip_prefix(SEALED)
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() >= 12 + 16)
            .ok_or(SealError::Malformed)?;
        let (nonce, sealed) = bytes.split_at(12);
        ChaCha20Poly1305::new((&self.0).into())
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: context,
                },
            )
            .map_err(|_| SealError::WrongKey)
    }

    fn from_hex(text: &str) -> Option<DataKey> {
        let b = hex::decode(text.trim()).ok()?;
        Some(DataKey(b.try_into().ok()?))
    }

    /// The key that wraps the data key on its way to `node`: derived from
    /// the cluster secret and the request's salt, never sent.
    fn transport(secret: &Key, salt: &[u8]) -> DataKey {
        DataKey(hmac(secret.bytes(), &[b"tandem data key transport", salt]))
    }
}

/// Where the data key lives in a member directory.
fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the data key saved in `dir`, if any.
pub(crate) fn load(dir: &Path) -> Result<Option<DataKey>, ClusterError> {
    let p = path(dir);
    match std::fs::read_to_string(&p) {
        Ok(text) => DataKey::from_hex(&text)
            .map(Some)
            .ok_or_else(|| local(&p, "not a data key (64 hex digits)")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(local(&p, e)),
    }
}

/// Saves the data key in `dir`, readable by the owner only.
fn save(dir: &Path, key: &DataKey) -> Result<(), ClusterError> {
    write_private(&path(dir), hex::encode(key.0).as_bytes())
}

/// Removes a data key from `dir` (a member that is a witness now).
pub(crate) fn forget(dir: &Path) {
    let p = path(dir);
    if p.exists() {
        match std::fs::remove_file(&p) {
            Ok(()) => tracing::info!("data key removed: this member is a witness"),
            Err(e) => tracing::warn!("removing {}: {e}", p.display()),
        }
    }
}

/// Body of `/cluster/data-key`.
#[derive(Serialize, Deserialize)]
pub(crate) struct DataKeyRequest {
    /// The data node asking.
    pub(crate) node: NodeId,
    /// 32 random bytes in hex, from which the transport key is derived.
    pub(crate) salt: String,
}

/// Why a member did not hand out the data key.
#[derive(Debug, Error)]
pub(crate) enum KeyRefusal {
    /// Only data nodes get it.
    #[error("node {node} is not a data node; the data key stays with data nodes")]
    NotDataNode { node: NodeId },
    /// This member does not hold the recorded key (yet).
    #[error("node {node} does not hold the cluster's data key")]
    NotHere { node: NodeId },
    /// The salt is not 32 bytes in hex.
    #[error("the request's salt is not 32 bytes in hex")]
    BadSalt,
}

/// Answers `/cluster/data-key` on a member: the recorded data key, wrapped
/// for the asking data node.
pub(crate) fn answer(s: &Inner, req: &DataKeyRequest) -> Result<String, KeyRefusal> {
    let state = s.store.state();
    if !state.nodes.get(&req.node).is_some_and(|n| n.holds_data()) {
        tracing::warn!(
            node = req.node,
            "data key refused to a member that is no data node"
        );
        return Err(KeyRefusal::NotDataNode { node: req.node });
    }
    let key = current(s).ok_or(KeyRefusal::NotHere { node: s.me.id })?;
    let salt = hex::decode(&req.salt)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or(KeyRefusal::BadSalt)?;
    let wrap = DataKey::transport(s.gate.key(), &salt);
    Ok(wrap.seal(&req.node.to_be_bytes(), &key.0))
}

/// This member's data key, if it is the one the state records.
pub(crate) fn current(s: &Inner) -> Option<DataKey> {
    let recorded = s.store.state().data_key.clone()?;
    s.data_key
        .lock()
        .unwrap()
        .clone()
        .filter(|k| k.id() == recorded)
}

/// Makes this data node's key the recorded one (see the module
/// documentation); returns once this member holds it.
pub(crate) async fn settle(s: &Inner) -> Result<(), ClusterError> {
    let state = s.store.state();
    if state.cluster_id.is_none() || !state.nodes.contains_key(&s.me.id) {
        return Err(ClusterError::NoDataKey(
            "this node is not a member yet".into(),
        ));
    }
    let held = s.data_key.lock().unwrap().clone();
    match (&state.data_key, held) {
        (Some(id), Some(k)) if k.id() == *id => Ok(()),
        (None, held) => {
            // None recorded: record ours (made now, or earlier but not yet
            // recorded). Saved first, so the recorded key is never lost.
            let key = held.unwrap_or_else(DataKey::generate);
            save(&s.dir, &key)?;
            *s.data_key.lock().unwrap() = Some(key.clone());
            s.propose(Command::SetDataKey { id: key.id() }).await?;
            tracing::info!(id = %key.id(), "data key recorded");
            Ok(())
        }
        (Some(id), _) => fetch(s, id).await,
    }
}

/// Fetches the recorded key `id` from another data member.
async fn fetch(s: &Inner, id: &str) -> Result<(), ClusterError> {
    let state = s.store.state();
    let mut last = format!("no data member holds data key {id}");
    for n in state.nodes.values() {
        if n.id == s.me.id || !n.holds_data() {
            continue;
        }
        let mut salt = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut salt);
        let req = DataKeyRequest {
            node: s.me.id,
            salt: hex::encode(salt),
        };
        let answer = s
            .caller
            .post::<_, Answer<String>>(&n.cluster_addr, "/cluster/data-key", &req)
            .await;
        let wrapped = match answer {
            Ok(Ok(w)) => w,
            Ok(Err(why)) => {
                last = format!("node {}: {why}", n.id);
                continue;
            }
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let key = DataKey::transport(s.gate.key(), &salt)
            .open(&s.me.id.to_be_bytes(), &wrapped)
            .ok()
            .and_then(|b| Some(DataKey(b.try_into().ok()?)));
        match key {
            Some(k) if k.id() == id => {
                save(&s.dir, &k)?;
                *s.data_key.lock().unwrap() = Some(k);
                tracing::info!(from = n.id, %id, "data key received");
                return Ok(());
            }
            _ => last = format!("node {} answered with another key", n.id),
        }
    }
    Err(ClusterError::NoDataKey(last))
}

/// On a data node: keeps the recorded data key here, checking again now
/// and then (the record may change hands only before the first key is
/// recorded, and a file may be lost).
pub(crate) async fn keep(me: Weak<Inner>) {
    let mut warned = false;
    loop {
        let Some(s) = me.upgrade() else { return };
        let wait = match settle(&s).await {
            Ok(()) => {
                warned = false;
                Duration::from_secs(2)
            }
            Err(why) => {
                if !warned && s.store.state().nodes.contains_key(&s.me.id) {
                    tracing::info!("data key not here yet: {why}");
                    warned = true;
                }
                Duration::from_millis(200)
            }
        };
        drop(s);
        tokio::time::sleep(wait).await;
    }
}

/// Waits up to `timeout` for this member to hold the recorded data key.
pub(crate) async fn wait(s: &Arc<Inner>, timeout: Duration) -> Option<DataKey> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(k) = current(s) {
            return Some(k);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let k = DataKey::generate();
        let sealed = k.seal(b"volume-1/chap", b"initiator-secret-1");
        assert!(DataKey::is_sealed(&sealed));
        assert!(!sealed.contains("initiator-secret-1"));
        assert!(!sealed.contains(&hex::encode("initiator-secret-1")));
        assert_eq!(
            k.open(b"volume-1/chap", &sealed).unwrap(),
            b"initiator-secret-1"
        );
        // Sealed twice, the values differ (fresh nonce), both open.
        let again = k.seal(b"volume-1/chap", b"initiator-secret-1");
        assert_ne!(again, sealed);
        assert!(k.open(b"volume-1/chap", &again).is_ok());
        assert_eq!(
            k.open(b"volume-2/chap", &sealed),
            Err(SealError::WrongKey),
            "another place"
        );
        assert_eq!(
            DataKey::generate().open(b"volume-1/chap", &sealed),
            Err(SealError::WrongKey),
            "another key"
        );
        let mut altered = sealed.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == '0' { '1' } else { '0' });
        assert_eq!(k.open(b"volume-1/chap", &altered), Err(SealError::WrongKey));
        for bad in ["initiator-secret-1", "sealed1:zz", "sealed1:00"] {
            assert_eq!(k.open(b"volume-1/chap", bad), Err(SealError::Malformed));
        }
        assert!(!format!("{k:?}").contains(&hex::encode(k.0)));
    }

    #[test]
    fn the_key_file_round_trips_and_the_id_tells_keys_apart() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path()).unwrap(), None);
        let k = DataKey::generate();
        save(d.path(), &k).unwrap();
        assert_eq!(load(d.path()).unwrap(), Some(k.clone()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(d.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(k.id(), k.clone().id());
        assert_ne!(k.id(), DataKey::generate().id());
        assert!(!k.id().contains(&hex::encode(&k.0[..4])));
        forget(d.path());
        assert_eq!(load(d.path()).unwrap(), None);
        std::fs::write(path(d.path()), "short").unwrap();
        assert!(load(d.path()).is_err());
    }

    #[test]
    fn the_transport_key_depends_on_secret_and_salt() {
        let secret = Key::generate();
        let a = DataKey::transport(&secret, &[1; 32]);
        assert_eq!(a, DataKey::transport(&secret, &[1; 32]));
        assert_ne!(a, DataKey::transport(&secret, &[2; 32]));
        assert_ne!(a, DataKey::transport(&Key::generate(), &[1; 32]));
    }
}
