//! One TCP connection: login, then a discovery or normal session.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use iscsi::login::LoginStep;
use iscsi::{
    Digests, LoginState, Negotiated, NopOut, Opcode, Pdu, RejectReason, SessionType, TextRequest,
    TextResponse, RESERVED_TAG,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::io::{next_pdu, receive_buffer};
use crate::{session, TargetConfig, Targets};

static NEXT_TSIH: AtomicU16 = AtomicU16::new(1);

fn next_tsih() -> u16 {
    loop {
        let t = NEXT_TSIH.fetch_add(1, Ordering::Relaxed);
        if t != 0 {
            return t;
        }
    }
}

/// How a login ended without a session.
enum Ended {
    /// It failed; why, naming the initiator and target.
    Refused(String),
    /// It was sent to another portal; who, to what, where.
    Redirected(String),
}

/// Serves one connection until it closes.
pub(crate) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    targets: Arc<Targets>,
    cfg: Arc<TargetConfig>,
    stop: watch::Receiver<bool>,
) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let (mut r, mut w) = stream.into_split();
    let mut rx = receive_buffer();
    let mut limits = cfg.limits;
    if let Some(tag) = targets.portal_group_tag() {
        limits.portal_group_tag = tag;
    }
    let login = tokio::time::timeout(cfg.login_timeout, async {
        let mut state = LoginState::new(limits);
        let mut stat_sn = 0u32;
        let tsih = next_tsih();
        let max = (cfg.limits.max_recv_data_segment_length as usize).max(8192);
        loop {
            let pdu = match next_pdu(&mut r, &mut rx, Digests::default(), max).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => {
                    return Err(Ended::Refused("data digest error during login".to_string()))
                }
                Err(why) => return Err(Ended::Refused(why)),
            };
            let step = state.step(&pdu, &*targets, tsih, stat_sn);
            stat_sn = stat_sn.wrapping_add(1);
            let (mut resp, done) = match step {
                LoginStep::Continue(p) => (p, None),
                LoginStep::Complete(p, neg) => (p, Some(Ok(*neg))),
                LoginStep::Fail(p, e) => (p, Some(Err(e))),
            };
            w.write_all(&resp.encode(Digests::default()))
                .await
                .map_err(|e| Ended::Refused(format!("cannot send login response: {e}")))?;
            match done {
                None => continue,
                Some(Ok(neg)) => return Ok((neg, stat_sn)),
                Some(Err(iscsi::LoginError::TargetMoved)) => {
                    let (initiator, target) = state.names();
                    let to = iscsi::text::parse(&resp.data)
                        .ok()
                        .and_then(|kv| kv.into_iter().find(|(k, _)| k == "TargetAddress"))
                        .map(|(_, v)| v)
                        .unwrap_or_default();
                    return Err(Ended::Redirected(format!(
                        "initiator {initiator:?} to target {:?} sent to {to}",
                        target.unwrap_or_default()
                    )));
                }
                Some(Err(e)) => {
                    let (initiator, target) = state.names();
                    let initiator = if initiator.is_empty() {
                        initiator_of(&pdu)
                    } else {
                        initiator.to_string()
                    };
                    let target = target
                        .map(str::to_string)
                        .unwrap_or_else(|| target_of(&pdu));
                    if let Some(why) = crate::RefusedLogin::of(e) {
                        let who = if initiator.is_empty() {
                            peer.to_string()
                        } else {
                            initiator.clone()
                        };
                        targets.count_refused(why, &who, &target);
                    }
                    return Err(Ended::Refused(format!(
                        "login refused ({e}) for initiator {initiator:?} to target {target:?}"
                    )));
                }
            }
        }
    })
    .await;
    let (neg, stat_sn) = match login {
        Ok(Ok(x)) => x,
        Ok(Err(Ended::Refused(why))) => {
            // Failed logins name the initiator's address and name (in `why`).
            tracing::warn!(%peer, "iSCSI login failed: {why}");
            return;
        }
        Ok(Err(Ended::Redirected(what))) => {
            tracing::info!(%peer, "iSCSI login redirected: {what}");
            return;
        }
        Err(_) => {
            targets.count_refused(crate::RefusedLogin::Timeout, &peer.to_string(), "");
            tracing::warn!(%peer, "iSCSI login timed out");
            return;
        }
    };
    match neg.session_type {
        SessionType::Discovery => {
            let here = portal_address(local, limits.portal_group_tag);
            discovery(r, rx, w, peer, &here, &targets, &cfg, neg, stat_sn).await
        }
        SessionType::Normal => {
            let name = neg.target_name.clone().unwrap_or_default();
            let Some(target) = targets.get(&name) else {
                return;
            };
            tracing::info!(%peer, initiator = %neg.initiator_name, target = %name, "iSCSI session started");
            session::run(r, rx, w, peer, local, target, &cfg, neg, stat_sn, stop).await;
        }
    }
}

fn initiator_of(p: &Pdu) -> String {
    iscsi::text::parse(&p.data)
        .ok()
        .and_then(|kv| {
            kv.into_iter()
                .find(|(k, _)| k == "InitiatorName")
                .map(|(_, v)| v)
        })
        .unwrap_or_default()
}

fn target_of(p: &Pdu) -> String {
    iscsi::text::parse(&p.data)
        .ok()
        .and_then(|kv| {
            kv.into_iter()
                .find(|(k, _)| k == "TargetName")
                .map(|(_, v)| v)
        })
        .unwrap_or_default()
}

/// The TargetAddress of this portal as the initiator reached it.
pub(crate) fn portal_address(local: SocketAddr, tag: u16) -> String {
    match local {
        SocketAddr::V4(a) => format!("{}:{},{tag}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{},{tag}", a.ip(), a.port()),
    }
}

/// The answer to `SendTargets=<which>` (RFC 7143 §13.3, Appendix C): each
/// target `initiator` may see, with this portal's address (`here`) first,
/// then every other portal that exports the target.
fn send_targets(targets: &Targets, initiator: &str, which: &str, here: &str) -> Vec<u8> {
    let list: Vec<(String, Vec<String>)> = targets
        .visible_to(initiator)
        .into_iter()
        .filter(|n| which == "All" || n == which)
        .map(|n| {
            let mut addrs = vec![here.to_string()];
            addrs.extend(
                targets
                    .elsewhere(&n)
                    .into_iter()
                    .map(|p| format!("{},{}", p.address, p.tag)),
            );
            (n, addrs)
        })
        .collect();
    iscsi::text::send_targets(&list)
}

/// A discovery session: SendTargets, NOP and Logout only (RFC 7143 §4.3).
/// `here` is this portal's TargetAddress as the initiator reached it.
#[allow(clippy::too_many_arguments)]
async fn discovery(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut rx: BytesMut,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    peer: SocketAddr,
    here: &str,
    targets: &Targets,
    cfg: &TargetConfig,
    neg: Negotiated,
    mut stat_sn: u32,
) {
    let digests = Digests {
        header: neg.header_digest,
        data: neg.data_digest,
    };
    let mut exp_cmd_sn = neg.exp_cmd_sn;
    let max = cfg.limits.max_recv_data_segment_length as usize;
    let mut pending_text: Option<(u32, Vec<u8>)> = None;
    let mut next_ttt = 1u32;
    loop {
        let read = tokio::time::timeout(
            cfg.nop_interval * 4,
            next_pdu(&mut r, &mut rx, digests, max),
        )
        .await;
        let pdu = match read {
            Ok(Ok(Ok(p))) => p,
            Ok(Ok(Err(bhs))) => {
                let rej = session::reject(RejectReason::DataDigestError, &bhs);
                let _ = send(&mut w, rej, digests, &mut stat_sn, exp_cmd_sn, false).await;
                return;
            }
            Ok(Err(_)) | Err(_) => return,
        };
        if !pdu.immediate() && pdu.opcode() != Some(Opcode::DataOut) {
            exp_cmd_sn = exp_cmd_sn.wrapping_add(1);
        }
        let reply = match pdu.opcode() {
            Some(Opcode::TextRequest) => {
                let req = TextRequest::view(&pdu);
                let ttt = req.target_transfer_tag();
                let body = match pending_text.take() {
                    Some((t, rest)) if t == ttt => Ok(rest),
                    _ => iscsi::text::parse(&pdu.data).map(|kv| {
                        let wanted = kv
                            .iter()
                            .find(|(k, _)| k == "SendTargets")
                            .map(|(_, v)| v.clone());
                        match wanted {
                            Some(which) => send_targets(targets, &neg.initiator_name, &which, here),
                            None => {
                                let pairs: Vec<(String, String)> = kv
                                    .into_iter()
                                    .map(|(k, _)| (k, "NotUnderstood".to_string()))
                                    .collect();
                                iscsi::text::encode(&pairs)
                            }
                        }
                    }),
                };
                match body {
                    Ok(mut body) => {
                        let mut p = TextResponse::new();
                        p.set_lun(req.lun());
                        p.set_itt(req.itt());
                        let limit = neg.initiator_mrdsl as usize;
                        if body.len() > limit {
                            // RFC 7143 §11.11: long answers continue in further exchanges.
                            let rest = body.split_off(limit);
                            let ttt = next_ttt;
                            next_ttt = next_ttt.wrapping_add(1).max(1);
                            p.set_final(false);
                            p.set_continues(true);
                            p.set_target_transfer_tag(ttt);
                            pending_text = Some((ttt, rest));
                        } else {
                            p.set_target_transfer_tag(RESERVED_TAG);
                        }
                        p.pdu_mut().data = Bytes::from(body);
                        p.into()
                    }
                    Err(_) => session::reject(RejectReason::InvalidPduField, &pdu.bhs),
                }
            }
            Some(Opcode::NopOut) if NopOut::view(&pdu).itt() != RESERVED_TAG => {
                session::nop_in_reply(&pdu, neg.initiator_mrdsl)
            }
            Some(Opcode::NopOut) => continue,
            Some(Opcode::LogoutRequest) => {
                let p = session::logout_response(&pdu);
                let _ = send(&mut w, p, digests, &mut stat_sn, exp_cmd_sn, true).await;
                return;
            }
            _ => {
                tracing::warn!(%peer, opcode = pdu.opcode_raw(), "PDU not allowed in a discovery session");
                session::reject(RejectReason::CommandNotSupported, &pdu.bhs)
            }
        };
        if send(&mut w, reply, digests, &mut stat_sn, exp_cmd_sn, true)
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn send(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    mut p: Pdu,
    digests: Digests,
    stat_sn: &mut u32,
    exp_cmd_sn: u32,
    advance: bool,
) -> std::io::Result<()> {
    p.set_stat_sn(*stat_sn);
    p.set_exp_cmd_sn(exp_cmd_sn);
    p.set_max_cmd_sn(exp_cmd_sn.wrapping_add(7));
    if advance && p.opcode() != Some(Opcode::Reject) {
        *stat_sn = stat_sn.wrapping_add(1);
    }
    w.write_all(&p.encode(digests)).await
}
