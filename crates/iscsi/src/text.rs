//! Text key=value lists (RFC 7143 §6.1): NUL-terminated `key=value` pairs.

use thiserror::Error;

/// Largest key (RFC 7143 §6.1: 63 bytes).
pub const MAX_KEY: usize = 63;
/// Largest value this target accepts.
pub const MAX_VALUE: usize = 8192;
/// Most pairs one login or text exchange may carry.
pub const MAX_PAIRS: usize = 512;

/// Why a text data segment is malformed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TextError {
    /// A pair has no `=`.
    #[error("text pair {0:?} has no '='")]
    NoEquals(String),
    /// A key is empty or too long, or holds invalid characters.
    #[error("text key {0:?} is invalid")]
    BadKey(String),
    /// A value is too long.
    #[error("value of {0} is longer than {MAX_VALUE} bytes")]
    ValueTooLong(String),
    /// More pairs than allowed.
    #[error("more than {MAX_PAIRS} text pairs")]
    TooMany,
    /// Not UTF-8.
    #[error("text is not UTF-8")]
    NotUtf8,
}

/// Parses a data segment into pairs, in order.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for raw in data.split(|&b| b == 0) {
        if raw.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| TextError::NoEquals(s.chars().take(64).collect()))?;
        if k.is_empty()
            || k.len() > MAX_KEY
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.+@_".contains(&b))
        {
            return Err(TextError::BadKey(k.chars().take(64).collect()));
        }
        if v.len() > MAX_VALUE {
            return Err(TextError::ValueTooLong(k.to_string()));
        }
        if out.len() == MAX_PAIRS {
            return Err(TextError::TooMany);
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Encodes pairs as a data segment.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// The SendTargets answer (RFC 7143 Appendix C): each target name followed
/// by its portal addresses (`ip:port,tag`).
pub fn send_targets(targets: &[(String, Vec<String>)]) -> Vec<u8> {
    let mut pairs = Vec::new();
    for (name, addrs) in targets {
        pairs.push(("TargetName", name.as_str()));
        for a in addrs {
            pairs.push(("TargetAddress", a.as_str()));
        }
    }
    encode(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_rejects() {
        let p = parse(b"InitiatorName=iqn.x\0HeaderDigest=CRC32C,None\0\0").unwrap();
        assert_eq!(p[1], ("HeaderDigest".into(), "CRC32C,None".into()));
        assert!(matches!(parse(b"novalue\0"), Err(TextError::NoEquals(_))));
        assert!(matches!(parse(b"=x\0"), Err(TextError::BadKey(_))));
        assert!(matches!(
            parse(&[0xff, b'=', b'1']),
            Err(TextError::NotUtf8)
        ));
        let long = format!("K={}", "v".repeat(MAX_VALUE + 1));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(TextError::ValueTooLong(_))
        ));
        assert_eq!(parse(b"SendTargets=All\0").unwrap()[0].1, "All");
    }

    proptest! {
        #[test]
        fn round_trip(pairs in proptest::collection::vec(("[A-Za-z][A-Za-z0-9.-]{0,20}", "[ -~&&[^=]]{0,40}"), 0..20)) {
            let enc = encode(&pairs);
            prop_assert_eq!(parse(&enc).unwrap(), pairs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&b);
        }
    }
}
