//! iSCSI (RFC 7143), target side, as pure functions over bytes: PDU framing
//! and fields, CRC32C digests, text key=value lists, login negotiation and
//! serial number arithmetic. The `portal` crate owns the sockets.
#![forbid(unsafe_code)]

pub mod chap;
pub mod login;
pub mod pdu;
pub mod serial;
pub mod text;

pub use chap::{AuthPolicy, Credentials};
pub use login::{
    Access, LoginError, LoginPolicy, LoginState, Negotiated, SessionType, TargetLimits,
};
pub use pdu::{Digests, Opcode, Pdu, PduError, Trailer, BHS_LEN};
