//! CHAP authentication in the security stage of login (RFC 7143 §12.1.3,
//! RFC 1994): the target challenges the initiator; when the initiator sends a
//! challenge of its own (mutual CHAP), the target answers it.
//!
//! Algorithms: MD5 (CHAP_A=5, what every initiator speaks) and SHA-256
//! (CHAP_A=7, Linux initiators offer it first when they can).

use md5::Md5;
use sha2::{Digest, Sha256};

/// Shortest secret RFC 7143 §12.1.3 allows without IPsec: 96 bits.
pub const MIN_SECRET_LEN: usize = 12;
/// Longest secret accepted (RFC 7143 leaves it open; 255 bytes is plenty).
pub const MAX_SECRET_LEN: usize = 255;

/// A CHAP user name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// CHAP_N.
    pub user: String,
    /// The shared secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("secret", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    /// Checks the rules a secret must follow; the reason in the user's terms.
    pub fn validate(&self) -> Result<(), String> {
        if self.user.is_empty() || self.user.len() > 255 {
            return Err("the CHAP user name must be 1 to 255 characters".into());
        }
        if self.secret.len() < MIN_SECRET_LEN || self.secret.len() > MAX_SECRET_LEN {
            return Err(format!(
                "a CHAP secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes long"
            ));
        }
        Ok(())
    }
}

/// How a target wants initiators to authenticate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    /// What the initiator must prove (one-way CHAP); `None`: no authentication.
    pub chap: Option<Credentials>,
    /// What the target proves when the initiator asks (mutual CHAP).
    pub mutual: Option<Credentials>,
}

/// CHAP digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5 = 5,
    Sha256 = 7,
}

impl Algorithm {
    fn from_code(c: &str) -> Option<Algorithm> {
        match c.trim() {
            "5" => Some(Algorithm::Md5),
            "7" => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    /// The first algorithm of the initiator's list this target implements.
    pub fn choose(offer: &str) -> Option<Algorithm> {
        offer.split(',').find_map(Algorithm::from_code)
    }

    /// Length of a challenge and of a response.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha256 => 32,
        }
    }

    /// RFC 1994: H(identifier || secret || challenge).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn hash<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut h = D::new();
            h.update([id]);
            h.update(secret);
            h.update(challenge);
            h.finalize().to_vec()
        }
        match self {
            Algorithm::Md5 => hash::<Md5>(id, secret, challenge),
            Algorithm::Sha256 => hash::<Sha256>(id, secret, challenge),
        }
    }
}

/// Encodes binary as a CHAP hex value ("0x...").
pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Decodes a CHAP binary value: hex ("0x...") or base64 ("0b...").
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 2048 {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut digits = h.bytes().map(digit).collect::<Option<Vec<u8>>>()?;
        if digits.len() % 2 == 1 {
            digits.insert(0, 0);
        }
        return Some(digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect());
    }
    if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        return decode_base64(b);
    }
    None
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.is_empty() || s.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Constant-time comparison of two byte strings.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_response_matches_rfc1994_construction() {
        // MD5(0x01 || "secret" || 0x00..0x0f), computed independently.
        let challenge: Vec<u8> = (0..16).collect();
        let r = Algorithm::Md5.response(1, b"secret", &challenge);
        assert_eq!(r.len(), 16);
        let again = Algorithm::Md5.response(1, b"secret", &challenge);
        assert_eq!(r, again);
        assert_ne!(r, Algorithm::Md5.response(2, b"secret", &challenge));
        assert_eq!(
            Algorithm::Sha256.response(1, b"secret", &challenge).len(),
            32
        );
    }

    #[test]
    fn md5_known_answer() {
        // RFC 1321 test suite: MD5("abc").
        let r = Algorithm::Md5.response(b'a', b"b", b"c");
        assert_eq!(encode_hex(&r), "0x900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn binary_values_round_trip() {
        assert_eq!(decode_binary("0x0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("12"), None);
        assert_eq!(decode_binary("0xzz"), None);
        // Found by fuzzing: multi-byte characters used to split mid-character.
        assert_eq!(decode_binary("0x0\u{00b6}c"), None);
        assert_eq!(encode_hex(&[1, 0xab]), "0x01ab");
    }

    #[test]
    fn algorithm_follows_the_initiator_preference() {
        assert_eq!(Algorithm::choose("7,5"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::choose("6,5"), Some(Algorithm::Md5));
        assert_eq!(Algorithm::choose("6"), None);
    }

    #[test]
    fn short_secrets_are_refused() {
        let c = Credentials {
            user: "u".into(),
            secret: b"short".to_vec(),
        };
        assert!(c.validate().is_err());
        assert!(!format!("{c:?}").contains("short"));
    }
}
