//! Target-side login (RFC 7143 §6, §11.12, §11.13, §13): stage transitions,
//! security stage (AuthMethod None or CHAP, one-way or mutual), access
//! control by initiator name, operational parameter negotiation, and the
//! Login Response for every Login Request.

use bytes::Bytes;
use thiserror::Error;

use crate::chap::{self, Algorithm, AuthPolicy};
use crate::pdu::{Opcode, Pdu};
use crate::text;
use crate::views::{LoginRequest, LoginResponse};

/// Whether an initiator may log in, and how it must authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No such target.
    NotFound,
    /// The target exists but this initiator is not on its access list.
    Denied,
    /// Log in, authenticating as the policy says.
    Allowed(AuthPolicy),
    /// Log in at another portal for now (`host:port`, an IPv6 address in
    /// brackets): the login is answered "target moved temporarily" with
    /// that portal as TargetAddress (RFC 7143 §11.13.5, §13.8).
    Moved(String),
    /// The target cannot take a login now but will again: the login is
    /// answered "service unavailable", which initiators retry.
    Unavailable,
}

/// Decides who may log in to what. `target` is `None` for discovery sessions.
pub trait LoginPolicy {
    /// The access `initiator` has to `target`.
    fn access(&self, initiator: &str, target: Option<&str>) -> Access;
}

/// A plain "does this target exist" check: everyone may log in, unauthenticated.
impl<F: Fn(&str) -> bool> LoginPolicy for F {
    fn access(&self, _initiator: &str, target: Option<&str>) -> Access {
        match target {
            Some(t) if !self(t) => Access::NotFound,
            _ => Access::Allowed(AuthPolicy::default()),
        }
    }
}

/// Where the CHAP exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chap {
    /// AuthMethod not agreed yet.
    Idle,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    Chosen,
    /// Challenge sent; waiting for CHAP_N and CHAP_R.
    Challenged {
        alg: Algorithm,
        id: u8,
        challenge: Vec<u8>,
    },
}

/// Kind of session being logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    /// SendTargets only.
    Discovery,
    /// Full SCSI access to one target.
    Normal,
}

/// What this target offers in negotiation.
#[derive(Debug, Clone, Copy)]
pub struct TargetLimits {
    /// Largest data segment the target accepts (declared to the initiator).
    pub max_recv_data_segment_length: u32,
    /// Largest solicited+unsolicited burst.
    pub max_burst_length: u32,
    /// Largest unsolicited burst.
    pub first_burst_length: u32,
    /// Most R2Ts outstanding per task.
    pub max_outstanding_r2t: u32,
    /// Target portal group tag of the portal.
    pub portal_group_tag: u16,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 1024 * 1024,
            first_burst_length: 256 * 1024,
            max_outstanding_r2t: 16,
            portal_group_tag: 1,
        }
    }
}

/// Session and connection parameters after a successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment the initiator accepts: what the target may send.
    pub initiator_mrdsl: u32,
    /// Largest data segment the target accepts.
    pub target_mrdsl: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub max_outstanding_r2t: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
    pub max_connections: u32,
    /// CmdSN of the first command after login.
    pub exp_cmd_sn: u32,
}

/// Why a login failed: RFC 7143 §11.13.5 status class and detail.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum LoginError {
    /// Not a failure of the initiator's: the response names the portal to
    /// log in at instead (its TargetAddress key).
    #[error("target moved temporarily")]
    TargetMoved,
    #[error("initiator error")]
    Initiator,
    #[error("authentication failure")]
    AuthFailed,
    #[error("initiator not authorized for this target")]
    NotAuthorized,
    #[error("target not found")]
    TargetNotFound,
    #[error("unsupported version")]
    UnsupportedVersion,
    #[error("missing parameter")]
    MissingParameter,
    #[error("session does not exist")]
    NoSession,
    #[error("invalid request during login")]
    InvalidDuringLogin,
    #[error("target error")]
    TargetError,
    #[error("service unavailable")]
    ServiceUnavailable,
}

impl LoginError {
    /// (status class, status detail).
    pub fn status(self) -> (u8, u8) {
        match self {
            LoginError::TargetMoved => (1, 0x01),
            LoginError::Initiator => (2, 0x00),
            LoginError::AuthFailed => (2, 0x01),
            LoginError::NotAuthorized => (2, 0x02),
            LoginError::TargetNotFound => (2, 0x03),
            LoginError::UnsupportedVersion => (2, 0x05),
            LoginError::MissingParameter => (2, 0x07),
            LoginError::NoSession => (2, 0x0A),
            LoginError::InvalidDuringLogin => (2, 0x0B),
            LoginError::TargetError => (3, 0x00),
            LoginError::ServiceUnavailable => (3, 0x01),
        }
    }
}

/// What to do after one Login Request.
#[derive(Debug)]
pub enum LoginStep {
    /// Send the response and wait for the next Login Request.
    Continue(Pdu),
    /// Send the response; the connection is in full feature phase.
    Complete(Pdu, Box<Negotiated>),
    /// Send the response and close the connection.
    Fail(Pdu, LoginError),
}

const SECURITY: u8 = 0;
const OPERATIONAL: u8 = 1;
const FULL_FEATURE: u8 = 3;

/// Target-side login state of one connection.
pub struct LoginState {
    limits: TargetLimits,
    neg: Negotiated,
    stage: u8,
    first: bool,
    pending: Vec<u8>,
    sent_tpgt: bool,
    sent_mrdsl: bool,
    /// The target's authentication policy, known after the first request.
    auth: AuthPolicy,
    chap: Chap,
    /// Whether the security stage is satisfied.
    authenticated: bool,
}

fn yes(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yn(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

fn number(v: &str, lo: u32, hi: u32) -> Option<u32> {
    let n: u64 = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else {
        v.parse().ok()?
    };
    (lo as u64..=hi as u64).contains(&n).then_some(n as u32)
}

impl LoginState {
    /// A fresh connection's login state.
    pub fn new(limits: TargetLimits) -> LoginState {
        LoginState {
            limits,
            neg: Negotiated {
                session_type: SessionType::Normal,
                initiator_name: String::new(),
                initiator_alias: None,
                target_name: None,
                isid: [0; 6],
                header_digest: false,
                data_digest: false,
                initiator_mrdsl: 8192,
                target_mrdsl: limits.max_recv_data_segment_length,
                immediate_data: true,
                initial_r2t: true,
                first_burst_length: 65536.min(limits.first_burst_length),
                max_burst_length: 262144.min(limits.max_burst_length),
                max_outstanding_r2t: 1,
                default_time2wait: 2,
                default_time2retain: 20,
                error_recovery_level: 0,
                max_connections: 1,
                exp_cmd_sn: 0,
            },
            stage: SECURITY,
            first: true,
            pending: Vec::new(),
            sent_tpgt: false,
            sent_mrdsl: false,
            auth: AuthPolicy::default(),
            chap: Chap::Idle,
            authenticated: false,
        }
    }

    /// The initiator and target names given so far (for logging failures).
    pub fn names(&self) -> (&str, Option<&str>) {
        (&self.neg.initiator_name, self.neg.target_name.as_deref())
    }

    /// The session type once known.
    pub fn session_type(&self) -> SessionType {
        self.neg.session_type
    }

    /// Handles one Login Request. `policy` says who may log in to what and how
    /// they authenticate; `tsih` is the session handle to hand out on success;
    /// `stat_sn` is the StatSN of this response.
    pub fn step(
        &mut self,
        req: &Pdu,
        policy: &dyn LoginPolicy,
        tsih: u16,
        stat_sn: u32,
    ) -> LoginStep {
        // Read at the Login Request's layout even when the opcode is another:
        // the refusal answers with the stages and CmdSN found there.
        let login = LoginRequest::at_layout(req);
        let transit = login.transit();
        let cont = login.continues();
        let csg = login.csg();
        let nsg = login.nsg();
        let cmd_sn = login.cmd_sn();
        let answer = |this: &Self, e: LoginError, data: Vec<u8>| {
            let mut r = this.response(req, stat_sn, cmd_sn, false, csg, nsg, 0, data);
            let (class, detail) = e.status();
            let mut v = LoginResponse::view(&mut r);
            v.set_status_class(class);
            v.set_status_detail(detail);
            LoginStep::Fail(r, e)
        };
        let fail = |this: &Self, e: LoginError| answer(this, e, Vec::new());
        if req.opcode() != Some(Opcode::LoginRequest) {
            return fail(self, LoginError::InvalidDuringLogin);
        }
        // RFC 7143 §11.12: version-min > 0 is a version we do not speak.
        if login.version_min() > 0 {
            return fail(self, LoginError::UnsupportedVersion);
        }
        if self.first {
            self.neg.isid = login.isid();
            self.neg.exp_cmd_sn = cmd_sn;
            if login.tsih() != 0 {
                // Adding a connection to an existing session (MaxConnections=1).
                return fail(self, LoginError::NoSession);
            }
        }
        // RFC 7143 §6.3: the initiator may skip the security stage, never go back.
        if csg != self.stage && !(csg == OPERATIONAL && self.stage == SECURITY) {
            return fail(self, LoginError::Initiator);
        }
        if csg == 2 || csg == FULL_FEATURE || (transit && (nsg == 2 || nsg <= csg)) {
            return fail(self, LoginError::Initiator);
        }
        self.stage = csg;

        self.pending.extend_from_slice(&req.data);
        if self.pending.len() > 64 * 1024 {
            return fail(self, LoginError::Initiator);
        }
        if cont {
            // RFC 7143 §11.12.2: more text follows; answer with an empty response.
            return LoginStep::Continue(self.response(
                req,
                stat_sn,
                cmd_sn,
                false,
                csg,
                nsg,
                0,
                Vec::new(),
            ));
        }
        let pairs = match text::parse(&std::mem::take(&mut self.pending)) {
            Ok(p) => p,
            Err(_) => return fail(self, LoginError::Initiator),
        };

        let mut reply: Vec<(String, String)> = Vec::new();
        let identity_key = |k: &str| matches!(k, "InitiatorName" | "SessionType" | "TargetName");
        if self.first {
            // Who is logging in to what decides everything else: those keys first.
            for (k, v) in pairs.iter().filter(|(k, _)| identity_key(k)) {
                if let Err(e) = self.negotiate(k, v, csg) {
                    return fail(self, e);
                }
            }
            self.first = false;
            if self.neg.initiator_name.is_empty() {
                return fail(self, LoginError::MissingParameter);
            }
            let target = match self.neg.session_type {
                SessionType::Discovery => None,
                SessionType::Normal => match &self.neg.target_name {
                    None => return fail(self, LoginError::MissingParameter),
                    Some(t) => Some(t.as_str()),
                },
            };
            match policy.access(&self.neg.initiator_name, target) {
                Access::NotFound => return fail(self, LoginError::TargetNotFound),
                Access::Denied => return fail(self, LoginError::NotAuthorized),
                Access::Allowed(auth) => self.auth = auth,
                // RFC 7143 §13.8: a redirection's TargetAddress carries no
                // portal group tag; the initiator learns it at the portal.
                Access::Moved(address) => {
                    let data = text::encode(&[("TargetAddress", address.as_str())]);
                    return answer(self, LoginError::TargetMoved, data);
                }
                Access::Unavailable => return fail(self, LoginError::ServiceUnavailable),
            }
        }
        let mut chap_keys: Vec<(String, String)> = Vec::new();
        for (k, v) in &pairs {
            if identity_key(k) {
                continue;
            }
            if k.starts_with("CHAP_") {
                chap_keys.push((k.clone(), v.clone()));
                continue;
            }
            match self.negotiate(k, v, csg) {
                Ok(Some(answer)) => reply.push((k.clone(), answer)),
                Ok(None) => {}
                Err(e) => return fail(self, e),
            }
        }
        if !chap_keys.is_empty() {
            if csg != SECURITY {
                return fail(self, LoginError::Initiator);
            }
            match self.chap_step(&chap_keys) {
                Ok(mut answers) => reply.append(&mut answers),
                Err(e) => return fail(self, e),
            }
        }
        // Leaving the security stage (or never entering it) needs an
        // authenticated initiator when the target asks for CHAP.
        let mut transit = transit;
        if !self.authenticated && (csg == OPERATIONAL || transit) {
            match (&self.auth.chap, &self.chap) {
                (None, _) => self.authenticated = true,
                // Mid-exchange: the target declines the transition for now
                // (RFC 7143 §6.2) and the exchange goes on.
                (Some(_), Chap::Chosen | Chap::Challenged { .. }) if csg == SECURITY => {
                    transit = false;
                }
                _ => return fail(self, LoginError::AuthFailed),
            }
        }
        if !self.sent_tpgt && self.neg.session_type == SessionType::Normal {
            self.sent_tpgt = true;
            reply.push((
                "TargetPortalGroupTag".into(),
                self.limits.portal_group_tag.to_string(),
            ));
        }
        let entering_operational = csg == OPERATIONAL || (transit && nsg == OPERATIONAL);
        if !self.sent_mrdsl && entering_operational {
            // Declarative: tell the initiator how large a data segment we accept.
            self.sent_mrdsl = true;
            reply.push((
                "MaxRecvDataSegmentLength".into(),
                self.limits.max_recv_data_segment_length.to_string(),
            ));
        }
        if transit {
            self.stage = nsg;
        }
        let data = text::encode(&reply);
        if transit && nsg == FULL_FEATURE {
            let r = self.response(req, stat_sn, cmd_sn, true, csg, nsg, tsih, data);
            return LoginStep::Complete(r, Box::new(self.neg.clone()));
        }
        LoginStep::Continue(self.response(req, stat_sn, cmd_sn, transit, csg, nsg, 0, data))
    }

    #[allow(clippy::too_many_arguments)]
    fn response(
        &self,
        req: &Pdu,
        stat_sn: u32,
        cmd_sn: u32,
        transit: bool,
        csg: u8,
        nsg: u8,
        tsih: u16,
        data: Vec<u8>,
    ) -> Pdu {
        // RFC 7143 §11.13: Login Response, version 0 (max and active).
        let login = LoginRequest::at_layout(req);
        let mut r = LoginResponse::new();
        r.set_csg(csg);
        if transit {
            r.set_transit(true);
            r.set_nsg(nsg);
        }
        r.set_isid(login.isid());
        r.set_tsih(tsih);
        r.set_itt(login.itt());
        r.set_stat_sn(stat_sn);
        r.set_exp_cmd_sn(cmd_sn);
        r.set_max_cmd_sn(cmd_sn.wrapping_add(1));
        r.pdu_mut().data = Bytes::from(data);
        r.into()
    }

    /// One round of the CHAP exchange (RFC 7143 §12.1.3).
    fn chap_step(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<(String, String)>, LoginError> {
        let get = |name: &str| {
            keys.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        match std::mem::replace(&mut self.chap, Chap::Idle) {
            Chap::Chosen => {
                let offer = get("CHAP_A").ok_or(LoginError::AuthFailed)?;
                let alg = Algorithm::choose(offer).ok_or(LoginError::AuthFailed)?;
                let id: u8 = rand::random();
                let challenge: Vec<u8> = (0..alg.digest_len())
                    .map(|_| rand::random::<u8>())
                    .collect();
                let answers = vec![
                    ("CHAP_A".to_string(), (alg as u8).to_string()),
                    ("CHAP_I".to_string(), id.to_string()),
                    ("CHAP_C".to_string(), chap::encode_hex(&challenge)),
                ];
                self.chap = Chap::Challenged { alg, id, challenge };
                Ok(answers)
            }
            Chap::Challenged { alg, id, challenge } => {
                let creds = self.auth.chap.as_ref().ok_or(LoginError::AuthFailed)?;
                let name = get("CHAP_N").ok_or(LoginError::AuthFailed)?;
                let response = get("CHAP_R")
                    .and_then(chap::decode_binary)
                    .ok_or(LoginError::AuthFailed)?;
                let expected = alg.response(id, &creds.secret, &challenge);
                if name != creds.user || !chap::same(&response, &expected) {
                    return Err(LoginError::AuthFailed);
                }
                let mut answers = Vec::new();
                match (get("CHAP_I"), get("CHAP_C")) {
                    (None, None) => {}
                    (Some(i), Some(c)) => {
                        // Mutual CHAP: the target proves itself in turn.
                        let mutual = self.auth.mutual.as_ref().ok_or(LoginError::AuthFailed)?;
                        let their_id: u8 = number(i, 0, 255).ok_or(LoginError::AuthFailed)? as u8;
                        let their = chap::decode_binary(c).ok_or(LoginError::AuthFailed)?;
                        if their.is_empty() || their.len() > 1024 || chap::same(&their, &challenge)
                        {
                            // An echoed challenge is a reflection attack.
                            return Err(LoginError::AuthFailed);
                        }
                        let r = alg.response(their_id, &mutual.secret, &their);
                        answers.push(("CHAP_N".to_string(), mutual.user.clone()));
                        answers.push(("CHAP_R".to_string(), chap::encode_hex(&r)));
                    }
                    _ => return Err(LoginError::AuthFailed),
                }
                self.authenticated = true;
                Ok(answers)
            }
            Chap::Idle => Err(LoginError::Initiator),
        }
    }

    /// Negotiates one key; returns the answer to send, if any.
    fn negotiate(&mut self, key: &str, value: &str, csg: u8) -> Result<Option<String>, LoginError> {
        let discovery = self.neg.session_type == SessionType::Discovery;
        let l = self.limits;
        let n = &mut self.neg;
        let reject = || Ok(Some("Reject".to_string()));
        let session_key_in_discovery = matches!(
            key,
            "InitialR2T"
                | "ImmediateData"
                | "MaxBurstLength"
                | "FirstBurstLength"
                | "MaxOutstandingR2T"
                | "DataPDUInOrder"
                | "DataSequenceInOrder"
                | "MaxConnections"
        );
        if discovery && session_key_in_discovery {
            return Ok(Some("Irrelevant".into()));
        }
        match key {
            "InitiatorName" => {
                if value.is_empty() || value.len() > 223 {
                    return Err(LoginError::Initiator);
                }
                n.initiator_name = value.to_string();
                Ok(None)
            }
            "InitiatorAlias" => {
                n.initiator_alias = Some(value.to_string());
                Ok(None)
            }
            "TargetName" => {
                n.target_name = Some(value.to_string());
                Ok(None)
            }
            "SessionType" => match value {
                "Discovery" => {
                    n.session_type = SessionType::Discovery;
                    Ok(None)
                }
                "Normal" => {
                    n.session_type = SessionType::Normal;
                    Ok(None)
                }
                _ => Err(LoginError::Initiator),
            },
            "AuthMethod" => {
                if csg != SECURITY {
                    return Ok(Some("Irrelevant".into()));
                }
                let offered = |m: &str| value.split(',').any(|o| o == m);
                if self.auth.chap.is_some() {
                    if !offered("CHAP") {
                        return Err(LoginError::AuthFailed);
                    }
                    self.chap = Chap::Chosen;
                    Ok(Some("CHAP".into()))
                } else if offered("None") {
                    self.authenticated = true;
                    Ok(Some("None".into()))
                } else {
                    // The initiator insists on authenticating a target that has
                    // no CHAP secrets configured.
                    Err(LoginError::AuthFailed)
                }
            }
            "HeaderDigest" | "DataDigest" => {
                let choice = value.split(',').find(|d| *d == "CRC32C" || *d == "None");
                let Some(choice) = choice else {
                    return reject();
                };
                let on = choice == "CRC32C";
                if key == "HeaderDigest" {
                    n.header_digest = on;
                } else {
                    n.data_digest = on;
                }
                Ok(Some(choice.to_string()))
            }
            "MaxRecvDataSegmentLength" => {
                // Declarative: the initiator's own receive limit.
                let Some(v) = number(value, 512, 16_777_215) else {
                    return reject();
                };
                n.initiator_mrdsl = v;
                Ok(None)
            }
            "ImmediateData" => {
                let Some(v) = yes(value) else { return reject() };
                n.immediate_data = v; // AND with our Yes
                Ok(Some(yn(n.immediate_data)))
            }
            "InitialR2T" => {
                let Some(v) = yes(value) else { return reject() };
                n.initial_r2t = v; // OR with our No
                Ok(Some(yn(n.initial_r2t)))
            }
            "FirstBurstLength" => {
                let Some(v) = number(value, 512, 16_777_215) else {
                    return reject();
                };
                n.first_burst_length = v.min(l.first_burst_length);
                Ok(Some(n.first_burst_length.to_string()))
            }
            "MaxBurstLength" => {
                let Some(v) = number(value, 512, 16_777_215) else {
                    return reject();
                };
                n.max_burst_length = v.min(l.max_burst_length);
                Ok(Some(n.max_burst_length.to_string()))
            }
            "MaxOutstandingR2T" => {
                let Some(v) = number(value, 1, 65535) else {
                    return reject();
                };
                n.max_outstanding_r2t = v.min(l.max_outstanding_r2t);
                Ok(Some(n.max_outstanding_r2t.to_string()))
            }
            "DefaultTime2Wait" => {
                let Some(v) = number(value, 0, 3600) else {
                    return reject();
                };
                n.default_time2wait = v.max(2);
                Ok(Some(n.default_time2wait.to_string()))
            }
            "DefaultTime2Retain" => {
                let Some(v) = number(value, 0, 3600) else {
                    return reject();
                };
                n.default_time2retain = v.min(20);
                Ok(Some(n.default_time2retain.to_string()))
            }
            "ErrorRecoveryLevel" => {
                let Some(_) = number(value, 0, 2) else {
                    return reject();
                };
                n.error_recovery_level = 0;
                Ok(Some("0".into()))
            }
            "MaxConnections" => {
                let Some(_) = number(value, 1, 65535) else {
                    return reject();
                };
                n.max_connections = 1;
                Ok(Some("1".into()))
            }
            "DataPDUInOrder" | "DataSequenceInOrder" => {
                let Some(_) = yes(value) else { return reject() };
                Ok(Some("Yes".into())) // OR with our Yes
            }
            "IFMarker" | "OFMarker" => {
                let Some(_) = yes(value) else { return reject() };
                Ok(Some("No".into())) // AND with our No
            }
            "IFMarkInt" | "OFMarkInt" => Ok(Some("Irrelevant".into())),
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => reject(),
            _ => Ok(Some("NotUnderstood".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login_pdu(flags: u8, itt: u32, keys: &[(&str, &str)]) -> Pdu {
        let mut p = Pdu::new(Opcode::LoginRequest);
        p.set_immediate(true);
        p.set_flags(flags);
        p.bhs[8..14].copy_from_slice(&[0x40, 0, 0x12, 0x34, 0, 1]);
        p.set_itt(itt);
        p.set_u32(24, 7);
        p.data = Bytes::from(text::encode(keys));
        p
    }

    fn keys(p: &Pdu) -> Vec<(String, String)> {
        text::parse(&p.data).unwrap()
    }

    fn exists(t: &str) -> bool {
        t == "iqn.2026-11.io.tandem:vol"
    }

    /// The key set libiscsi sends: security stage, then operational.
    #[test]
    fn libiscsi_style_login() {
        let mut s = LoginState::new(TargetLimits::default());
        let r1 = login_pdu(
            0x80 | 0x01,
            1,
            &[
                (
                    "InitiatorName",
                    "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-ls",
                ),
                ("TargetName", "iqn.2026-11.io.tandem:vol"),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
            ],
        );
        let LoginStep::Continue(resp) = s.step(&r1, &exists, 5, 0) else {
            panic!("security stage failed")
        };
        assert_eq!(resp.flags(), 0x80 | 0x01);
        assert!(keys(&resp).contains(&("AuthMethod".into(), "None".into())));
        assert!(keys(&resp).iter().any(|(k, _)| k == "TargetPortalGroupTag"));
        let r2 = login_pdu(
            0x80 | 0x04 | 0x03,
            1,
            &[
                ("HeaderDigest", "None,CRC32C"),
                ("DataDigest", "CRC32C,None"),
                ("DefaultTime2Wait", "2"),
                ("DefaultTime2Retain", "0"),
                ("IFMarker", "No"),
                ("OFMarker", "No"),
                ("ErrorRecoveryLevel", "0"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxBurstLength", "16776192"),
                ("FirstBurstLength", "262144"),
                ("MaxOutstandingR2T", "1"),
                ("MaxConnections", "1"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("MaxRecvDataSegmentLength", "262144"),
                ("X-com.example.Foo", "1"),
            ],
        );
        let LoginStep::Complete(resp, neg) = s.step(&r2, &exists, 5, 1) else {
            panic!("operational stage failed")
        };
        assert_eq!(resp.flags(), 0x80 | 0x04 | 0x03);
        assert_eq!(resp.u16_at(14), 5, "TSIH handed out");
        let k = keys(&resp);
        assert!(k.contains(&("HeaderDigest".into(), "None".into())));
        assert!(k.contains(&("DataDigest".into(), "CRC32C".into())));
        assert!(k.contains(&("MaxBurstLength".into(), "1048576".into())));
        assert!(k.contains(&("X-com.example.Foo".into(), "NotUnderstood".into())));
        assert!(!neg.header_digest && neg.data_digest);
        assert!(!neg.initial_r2t && neg.immediate_data);
        assert_eq!(neg.initiator_mrdsl, 262144);
        assert_eq!(neg.first_burst_length, 262144);
        assert_eq!(neg.exp_cmd_sn, 7);
    }

    #[test]
    fn discovery_in_one_step() {
        let mut s = LoginState::new(TargetLimits::default());
        let r = login_pdu(
            0x80 | 0x04 | 0x03,
            1,
            &[
                ("InitiatorName", "iqn.x"),
                ("SessionType", "Discovery"),
                ("InitialR2T", "No"),
                ("MaxRecvDataSegmentLength", "8192"),
            ],
        );
        let LoginStep::Complete(resp, neg) = s.step(&r, &exists, 9, 0) else {
            panic!()
        };
        assert_eq!(neg.session_type, SessionType::Discovery);
        assert!(keys(&resp).contains(&("InitialR2T".into(), "Irrelevant".into())));
    }

    #[test]
    fn failures_carry_status() {
        type Case<'a> = (Vec<(&'a str, &'a str)>, (u8, u8));
        let cases: Vec<Case> = vec![
            (vec![("TargetName", "iqn.2026-11.io.tandem:vol")], (2, 0x07)),
            (vec![("InitiatorName", "iqn.x")], (2, 0x07)),
            (
                vec![("InitiatorName", "iqn.x"), ("TargetName", "iqn.nope:x")],
                (2, 0x03),
            ),
            (
                vec![
                    ("InitiatorName", "iqn.x"),
                    ("TargetName", "iqn.2026-11.io.tandem:vol"),
                    ("AuthMethod", "CHAP"),
                ],
                (2, 0x01),
            ),
        ];
        for (k, want) in cases {
            let mut s = LoginState::new(TargetLimits::default());
            match s.step(&login_pdu(0x81, 1, &k), &exists, 1, 0) {
                LoginStep::Fail(r, _) => assert_eq!((r.byte(36), r.byte(37)), want, "{k:?}"),
                other => panic!("{k:?} logged in: {other:?}"),
            }
        }
        let mut s = LoginState::new(TargetLimits::default());
        let mut p = login_pdu(0x81, 1, &[("InitiatorName", "iqn.x")]);
        p.set_byte(3, 1);
        assert!(matches!(
            s.step(&p, &exists, 1, 0),
            LoginStep::Fail(_, LoginError::UnsupportedVersion)
        ));
        let mut s = LoginState::new(TargetLimits::default());
        let p = login_pdu(0x80 | 0x02, 1, &[("InitiatorName", "iqn.x")]);
        assert!(matches!(
            s.step(&p, &exists, 1, 0),
            LoginStep::Fail(_, LoginError::Initiator)
        ));
    }

    #[test]
    fn bad_values_are_rejected_not_fatal() {
        let mut s = LoginState::new(TargetLimits::default());
        let r = login_pdu(
            0x80 | 0x04 | 0x03,
            1,
            &[
                ("InitiatorName", "iqn.x"),
                ("SessionType", "Discovery"),
                ("HeaderDigest", "MD5"),
                ("MaxRecvDataSegmentLength", "12"),
            ],
        );
        let LoginStep::Complete(resp, _) = s.step(&r, &exists, 9, 0) else {
            panic!()
        };
        let k = keys(&resp);
        assert!(k.contains(&("HeaderDigest".into(), "Reject".into())));
        assert!(k.contains(&("MaxRecvDataSegmentLength".into(), "Reject".into())));
    }

    /// Sends normal sessions of one target elsewhere, or nowhere for now.
    struct Redirecting(Access);

    impl LoginPolicy for Redirecting {
        fn access(&self, _initiator: &str, target: Option<&str>) -> Access {
            match target {
                None => Access::Allowed(AuthPolicy::default()),
                Some("iqn.2026-11.io.tandem:vol") => self.0.clone(),
                Some(_) => Access::NotFound,
            }
        }
    }

    /// RFC 7143 §11.13.5: a redirection is status 0x0101 with the new
    /// portal as TargetAddress (no tag, §13.8) and nothing else; a target
    /// that cannot say where is "service unavailable" (0x0301). Neither
    /// hands out a session; discovery is never redirected.
    #[test]
    fn redirection_and_unavailable_target() {
        let first = [
            ("InitiatorName", "iqn.x"),
            ("TargetName", "iqn.2026-11.io.tandem:vol"),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
        ];
        for address in ["10.0.0.2:3260", "[fd00::2]:3260"] {
            let policy = Redirecting(Access::Moved(address.into()));
            let mut s = LoginState::new(TargetLimits::default());
            let LoginStep::Fail(r, LoginError::TargetMoved) =
                s.step(&login_pdu(0x80 | 0x01, 1, &first), &policy, 4, 0)
            else {
                panic!("not redirected")
            };
            assert_eq!((r.byte(36), r.byte(37)), (1, 0x01));
            assert_eq!(keys(&r), vec![("TargetAddress".into(), address.into())]);
            assert_eq!(r.opcode(), Some(Opcode::LoginResponse));
            assert_eq!(r.flags() & 0x80, 0, "no transit");
            assert_eq!(r.u16_at(14), 0, "no session handle");
            assert_eq!(r.itt(), 1);
        }
        let policy = Redirecting(Access::Unavailable);
        let mut s = LoginState::new(TargetLimits::default());
        let LoginStep::Fail(r, LoginError::ServiceUnavailable) =
            s.step(&login_pdu(0x80 | 0x01, 1, &first), &policy, 4, 0)
        else {
            panic!("not refused")
        };
        assert_eq!((r.byte(36), r.byte(37)), (3, 0x01));
        assert!(r.data.is_empty());
        // Discovery goes on as usual at the same portal.
        let policy = Redirecting(Access::Moved("10.0.0.2:3260".into()));
        let mut s = LoginState::new(TargetLimits::default());
        let r = login_pdu(
            0x80 | 0x04 | 0x03,
            1,
            &[("InitiatorName", "iqn.x"), ("SessionType", "Discovery")],
        );
        assert!(matches!(
            s.step(&r, &policy, 4, 0),
            LoginStep::Complete(_, _)
        ));
    }

    struct Chapped {
        mutual: bool,
    }

    impl LoginPolicy for Chapped {
        fn access(&self, initiator: &str, target: Option<&str>) -> Access {
            if target.is_some_and(|t| t != "iqn.2026-11.io.tandem:vol") {
                return Access::NotFound;
            }
            if initiator != "iqn.ok" {
                return Access::Denied;
            }
            Access::Allowed(AuthPolicy {
                chap: Some(chap::Credentials {
                    user: "alice".into(),
                    secret: b"initiator-secret".to_vec(),
                }),
                mutual: self.mutual.then(|| chap::Credentials {
                    user: "tandem".into(),
                    secret: b"target-secret-1".to_vec(),
                }),
            })
        }
    }

    fn get(k: &[(String, String)], name: &str) -> String {
        k.iter()
            .find(|(x, _)| x == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    }

    /// Runs the CHAP exchange up to the response; returns the last step.
    fn chap_login(policy: &Chapped, initiator: &str, secret: &[u8], mutual: bool) -> LoginStep {
        let mut s = LoginState::new(TargetLimits::default());
        let r1 = login_pdu(
            0x80 | 0x01,
            1,
            &[
                ("InitiatorName", initiator),
                ("TargetName", "iqn.2026-11.io.tandem:vol"),
                ("SessionType", "Normal"),
                ("AuthMethod", "CHAP,None"),
            ],
        );
        let step = s.step(&r1, policy, 1, 0);
        let LoginStep::Continue(resp) = step else {
            return step;
        };
        assert_eq!(resp.flags() & 0x80, 0, "no transit before authentication");
        assert_eq!(get(&keys(&resp), "AuthMethod"), "CHAP");
        let LoginStep::Continue(resp) =
            s.step(&login_pdu(0x00, 1, &[("CHAP_A", "6,5")]), policy, 1, 1)
        else {
            panic!("CHAP_A refused")
        };
        let k = keys(&resp);
        assert_eq!(get(&k, "CHAP_A"), "5");
        let id: u8 = get(&k, "CHAP_I").parse().unwrap();
        let challenge = chap::decode_binary(&get(&k, "CHAP_C")).unwrap();
        let r = Algorithm::Md5.response(id, secret, &challenge);
        let r = chap::encode_hex(&r);
        let my_challenge = chap::encode_hex(&[9u8; 16]);
        let mut answer = vec![("CHAP_N", "alice"), ("CHAP_R", r.as_str())];
        if mutual {
            answer.push(("CHAP_I", "77"));
            answer.push(("CHAP_C", my_challenge.as_str()));
        }
        s.step(&login_pdu(0x80 | 0x01, 1, &answer), policy, 1, 2)
    }

    #[test]
    fn one_way_chap() {
        let p = Chapped { mutual: false };
        let LoginStep::Continue(resp) = chap_login(&p, "iqn.ok", b"initiator-secret", false) else {
            panic!("good secret refused")
        };
        assert_eq!(
            resp.flags() & 0x83,
            0x81,
            "moves on to the operational stage"
        );
        match chap_login(&p, "iqn.ok", b"wrong-secret-123", false) {
            LoginStep::Fail(r, LoginError::AuthFailed) => {
                assert_eq!((r.byte(36), r.byte(37)), (2, 1))
            }
            other => panic!("wrong secret: {other:?}"),
        }
        // Asking for mutual CHAP when the target has no secret of its own fails.
        assert!(matches!(
            chap_login(&p, "iqn.ok", b"initiator-secret", true),
            LoginStep::Fail(_, LoginError::AuthFailed)
        ));
    }

    #[test]
    fn mutual_chap_proves_the_target() {
        let p = Chapped { mutual: true };
        let LoginStep::Continue(resp) = chap_login(&p, "iqn.ok", b"initiator-secret", true) else {
            panic!("mutual login failed")
        };
        let k = keys(&resp);
        assert_eq!(get(&k, "CHAP_N"), "tandem");
        let want = Algorithm::Md5.response(77, b"target-secret-1", &[9u8; 16]);
        assert_eq!(chap::decode_binary(&get(&k, "CHAP_R")).unwrap(), want);
    }

    #[test]
    fn access_lists_and_skipping_authentication() {
        let p = Chapped { mutual: false };
        match chap_login(&p, "iqn.intruder", b"initiator-secret", false) {
            LoginStep::Fail(r, LoginError::NotAuthorized) => {
                assert_eq!((r.byte(36), r.byte(37)), (2, 2))
            }
            other => panic!("{other:?}"),
        }
        // Straight to the operational stage, or AuthMethod=None only: refused.
        for (flags, keys) in [
            (0x80 | 0x04 | 0x03, vec![]),
            (0x80 | 0x01, vec![("AuthMethod", "None")]),
        ] {
            let mut s = LoginState::new(TargetLimits::default());
            let mut k = vec![
                ("InitiatorName", "iqn.ok"),
                ("TargetName", "iqn.2026-11.io.tandem:vol"),
            ];
            k.extend(keys);
            assert!(matches!(
                s.step(&login_pdu(flags, 1, &k), &p, 1, 0),
                LoginStep::Fail(_, LoginError::AuthFailed)
            ));
        }
    }
}
