//! Errors of the pure protocol layer.

use crate::pdu::Pdu;

/// Why a byte buffer is not a valid PDU (RFC 7143 §11).
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    /// Fewer bytes than the PDU's framing says it has.
    #[error("PDU truncated: {have} bytes of {need}")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes the framing calls for.
        need: usize,
    },
    /// The data segment is longer than the receiver declared it accepts
    /// (MaxRecvDataSegmentLength, RFC 7143 §13.12).
    #[error("data segment of {len} bytes exceeds the declared maximum of {max}")]
    DataSegmentTooLong {
        /// DataSegmentLength of the PDU.
        len: u32,
        /// MaxRecvDataSegmentLength in force.
        max: u32,
    },
    /// The opcode is not one RFC 7143 §11.2.1.2 defines for this direction.
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// The header digest does not match (RFC 7143 §7.8); at ERL 0 the
    /// connection must be dropped because framing can no longer be trusted.
    #[error("header digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    HeaderDigest {
        /// Digest on the wire.
        received: u32,
        /// Digest of the bytes received.
        computed: u32,
    },
    /// The data digest does not match (RFC 7143 §7.8). The header was valid and
    /// is returned so the receiver can Reject the PDU and fail its task.
    #[error("data digest mismatch on {} PDU", .0.name())]
    DataDigest(Box<Pdu>),
    /// The additional header segments are malformed (RFC 7143 §11.2.2).
    #[error("malformed AHS: {0}")]
    BadAhs(&'static str),
    /// A field holds a value the protocol forbids.
    #[error("invalid field in {pdu}: {what}")]
    InvalidField {
        /// Name of the PDU type.
        pdu: &'static str,
        /// What is wrong.
        what: &'static str,
    },
}

/// Why text data (key=value pairs, RFC 7143 §6.1) cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// A key is longer than 63 bytes or uses characters outside the key alphabet.
    #[error("invalid key {0:?}")]
    BadKey(String),
    /// A pair has no '=' separator.
    #[error("text pair without '=': {0:?}")]
    NoSeparator(String),
    /// A value exceeds the maximum length.
    #[error("value of key {key} is {len} bytes, more than {max}")]
    ValueTooLong {
        /// The key.
        key: String,
        /// Value length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The text is not UTF-8.
    #[error("text is not UTF-8")]
    NotUtf8,
    /// The text (possibly spread over several PDUs) is larger than allowed.
    #[error("text of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Bytes accumulated.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The same key appears twice in one negotiation.
    #[error("key {0} sent more than once")]
    Duplicate(String),
}
