//! iSCSI (RFC 7143), target side, as pure functions over bytes: PDU framing,
//! typed views and builders of each PDU kind, CRC32C digests, text key=value
//! lists, login negotiation and serial number arithmetic. The `portal` crate
//! owns the sockets.
#![forbid(unsafe_code)]

pub mod ahs;
pub mod chap;
pub mod login;
pub mod pdu;
pub mod serial;
pub mod text;
pub mod views;

pub use ahs::AhsError;
pub use chap::{AuthPolicy, Credentials};
pub use login::{
    Access, LoginError, LoginPolicy, LoginState, Negotiated, SessionType, TargetLimits,
};
pub use pdu::{Digests, Opcode, Pdu, PduError, Trailer, BHS_LEN};
pub use views::{
    AsyncMessage, CommandResponse, DataIn, DataOut, LoginRequest, LoginResponse, LogoutRequest,
    LogoutResponse, LogoutResponseCode, NopIn, NopOut, R2t, Reject, RejectReason, ScsiCommand,
    ScsiResponse, TaskFunction, TaskMgmtRequest, TaskMgmtResponse, TaskResponse, TextRequest,
    TextResponse, RESERVED_TAG,
};
