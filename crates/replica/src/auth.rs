//! Mutual authentication of the two ends of a replication connection.
//!
//! Both nodes know the cluster secret. Each side sends a fresh random nonce
//! and proves knowledge of the secret by an HMAC-SHA256 over both nonces and
//! its role; neither sends the secret, and a recorded exchange cannot be
//! replayed because the other side's nonce is new each time. The server
//! proves itself first, so a client never sends its proof to an impostor.
//!
//! ```text
//! client → server: "TNDMREPL" | client nonce (32)
//! server → client: server nonce (32) | HMAC(secret, "server" | client nonce | server nonce)
//! client → server: HMAC(secret, "client" | server nonce | client nonce)
//! server → client: 1 byte, 0 = accepted
//! ```
//!
//! The link is authenticated, not encrypted: run replication on a storage
//! network that outsiders cannot tap.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAGIC: &[u8; 8] = b"TNDMREPL";

/// The secret every node of a cluster shares.
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Wraps the shared secret bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> ClusterKey {
        ClusterKey(secret.into())
    }

    fn proof(&self, role: &[u8], a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(role);
        mac.update(a);
        mac.update(b);
        mac.finalize().into_bytes().into()
    }

    fn check(&self, role: &[u8], a: &[u8; 32], b: &[u8; 32], tag: &[u8; 32]) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(role);
        mac.update(a);
        mac.update(b);
        // Constant-time comparison.
        mac.verify_slice(tag).is_ok()
    }
}

/// Why the authentication of a connection failed.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The peer does not speak the replication protocol.
    #[error("the peer is not a Tandem replication endpoint")]
    NotTandem,
    /// The peer does not know the cluster secret.
    #[error("the peer failed to prove it knows the cluster secret")]
    BadProof,
    /// The server refused our proof.
    #[error("the peer refused this node's proof of the cluster secret")]
    Refused,
    /// The connection failed during the exchange.
    #[error("connection failed during authentication")]
    Io(#[from] std::io::Error),
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

/// Authenticates the connecting side and checks the server's proof.
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &ClusterKey,
) -> Result<(), AuthError> {
    let mine = nonce();
    let mut hello = Vec::with_capacity(40);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&mine);
    s.write_all(&hello).await?;
    let mut theirs = [0u8; 32];
    let mut tag = [0u8; 32];
    s.read_exact(&mut theirs).await?;
    s.read_exact(&mut tag).await?;
    if !key.check(b"server", &mine, &theirs, &tag) {
        return Err(AuthError::BadProof);
    }
    s.write_all(&key.proof(b"client", &theirs, &mine)).await?;
    let mut verdict = [0u8; 1];
    s.read_exact(&mut verdict).await?;
    if verdict[0] != 0 {
        return Err(AuthError::Refused);
    }
    Ok(())
}

/// Authenticates the accepting side and checks the client's proof.
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &ClusterKey,
) -> Result<(), AuthError> {
    let mut hello = [0u8; 40];
    s.read_exact(&mut hello).await?;
    if &hello[..8] != MAGIC {
        return Err(AuthError::NotTandem);
    }
    let theirs: [u8; 32] = hello[8..].try_into().expect("32 bytes");
    let mine = nonce();
    let mut answer = Vec::with_capacity(64);
    answer.extend_from_slice(&mine);
    answer.extend_from_slice(&key.proof(b"server", &theirs, &mine));
    s.write_all(&answer).await?;
    let mut tag = [0u8; 32];
    s.read_exact(&mut tag).await?;
    let ok = key.check(b"client", &mine, &theirs, &tag);
    s.write_all(&[if ok { 0 } else { 1 }]).await?;
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadProof)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        a: &ClusterKey,
        b: &ClusterKey,
    ) -> (Result<(), AuthError>, Result<(), AuthError>) {
        let (mut c, mut s) = tokio::io::duplex(1024);
        let (a, b) = (a.clone(), b.clone());
        let srv = tokio::spawn(async move { server(&mut s, &b).await });
        let cl = client(&mut c, &a).await;
        drop(c);
        (cl, srv.await.unwrap())
    }

    #[tokio::test]
    async fn same_secret_is_accepted_both_ways() {
        let k = ClusterKey::new(b"correct horse battery staple".to_vec());
        let (c, s) = pair(&k, &k).await;
        assert!(c.is_ok() && s.is_ok());
    }

    #[tokio::test]
    async fn client_refuses_an_impostor_server() {
        let (c, _) = pair(
            &ClusterKey::new(b"ours".to_vec()),
            &ClusterKey::new(b"theirs".to_vec()),
        )
        .await;
        assert!(matches!(c, Err(AuthError::BadProof)), "{c:?}");
    }

    #[tokio::test]
    async fn server_refuses_a_client_without_the_secret() {
        // A client that skips the server check still cannot produce a valid proof.
        let (mut c, mut s) = tokio::io::duplex(1024);
        let srv_key = ClusterKey::new(b"ours".to_vec());
        let srv = tokio::spawn(async move { server(&mut s, &srv_key).await });
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&[1u8; 32]);
        c.write_all(&hello).await.unwrap();
        let mut skip = [0u8; 64];
        c.read_exact(&mut skip).await.unwrap();
        c.write_all(&[0u8; 32]).await.unwrap();
        let mut verdict = [0u8; 1];
        c.read_exact(&mut verdict).await.unwrap();
        assert_eq!(verdict[0], 1);
        assert!(matches!(srv.await.unwrap(), Err(AuthError::BadProof)));
    }

    #[tokio::test]
    async fn non_tandem_peer_is_refused() {
        let (mut c, mut s) = tokio::io::duplex(1024);
        let k = ClusterKey::new(b"k".to_vec());
        let srv = tokio::spawn(async move { server(&mut s, &k).await });
        c.write_all(&[b'G'; 40]).await.unwrap();
        assert!(matches!(srv.await.unwrap(), Err(AuthError::NotTandem)));
    }
}
