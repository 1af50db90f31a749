//! A minimal iSCSI initiator over tokio, for tests that drive the target
//! through its socket: login, SCSI commands with R2T and Data-In, NOP answers.
//! It trusts nothing it receives beyond what the checks in tests need.
#![forbid(unsafe_code)]

pub mod history;
mod ports;

pub use ports::free_port;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use iscsi::{text, Digests, Opcode, Pdu, BHS_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The outcome of one SCSI command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// SCSI status (0 GOOD, 2 CHECK CONDITION, ...).
    pub status: u8,
    /// Sense key when the status carried sense data, else 0.
    pub sense_key: u8,
    /// Additional sense code and qualifier (fixed-format sense), else 0.
    pub asc: (u8, u8),
    /// Data-in received.
    pub data: Vec<u8>,
}

/// One connection of a test initiator.
pub struct Initiator {
    pub s: TcpStream,
    pub digests: Digests,
    pub cmd_sn: u32,
    pub itt: u32,
}

impl Initiator {
    /// Opens the TCP connection.
    pub async fn connect(addr: SocketAddr) -> Initiator {
        Initiator::try_connect(addr)
            .await
            .expect("connect to the target")
    }

    /// Opens the TCP connection, or says why it could not.
    pub async fn try_connect(addr: SocketAddr) -> std::io::Result<Initiator> {
        Ok(Initiator {
            s: TcpStream::connect(addr).await?,
            digests: Digests::default(),
            cmd_sn: 1,
            itt: 1,
        })
    }

    /// Sends one PDU.
    pub async fn send(&mut self, p: Pdu) {
        self.try_send(p).await.expect("send a PDU");
    }

    /// Sends one PDU; an error when the connection is gone.
    pub async fn try_send(&mut self, mut p: Pdu) -> std::io::Result<()> {
        let bytes = p.encode(self.digests);
        self.s.write_all(&bytes).await
    }

    /// Receives one PDU; `None` when the connection closed or 3 s passed.
    pub async fn recv(&mut self) -> Option<Pdu> {
        let mut bhs = [0u8; BHS_LEN];
        match tokio::time::timeout(Duration::from_secs(3), self.s.read_exact(&mut bhs)).await {
            Ok(Ok(_)) => {}
            _ => return None,
        }
        let n = Pdu::body_len(&bhs, self.digests, 1 << 24).ok()?;
        let mut body = vec![0u8; n];
        self.s.read_exact(&mut body).await.ok()?;
        Some(Pdu::from_parts(bhs, &body, self.digests).expect("target sent a valid PDU"))
    }

    /// Receives, skipping the target's own NOP-In pings (answering them).
    pub async fn recv_reply(&mut self) -> Option<Pdu> {
        loop {
            let p = self.recv().await?;
            if p.opcode() == Some(Opcode::NopIn) && p.itt() == 0xFFFF_FFFF {
                let mut a = Pdu::new(Opcode::NopOut);
                a.set_immediate(true);
                a.set_flags(0x80);
                a.set_itt(0xFFFF_FFFF);
                a.set_u32(20, p.u32_at(20));
                a.set_u32(24, self.cmd_sn);
                self.try_send(a).await.ok()?;
                continue;
            }
            return Some(p);
        }
    }

    /// Logs in straight to full feature phase with `keys`; panics if refused.
    pub async fn login(&mut self, keys: &[(&str, &str)]) -> Vec<(String, String)> {
        let r = self.try_login(keys).await.expect("login response");
        assert_eq!((r.byte(36), r.byte(37)), (0, 0), "login refused");
        self.logged_in(&r)
    }

    /// Takes up the digests a successful login response agreed on; its keys.
    fn logged_in(&mut self, r: &Pdu) -> Vec<(String, String)> {
        let kv = text::parse(&r.data).unwrap();
        let on = |k: &str| kv.iter().any(|(key, v)| key == k && v == "CRC32C");
        self.digests = Digests {
            header: on("HeaderDigest"),
            data: on("DataDigest"),
        };
        kv
    }

    /// Sends a one-step login and returns the target's response.
    pub async fn try_login(&mut self, keys: &[(&str, &str)]) -> Option<Pdu> {
        // A distinct ISID per connection: each is its own I_T nexus.
        static NEXT_ISID: AtomicU16 = AtomicU16::new(1);
        let isid = NEXT_ISID.fetch_add(1, Ordering::Relaxed);
        self.try_login_as(keys, isid).await
    }

    /// [`Initiator::try_login`] with the ISID qualifier `isid`: a session
    /// that logs in again after its connection died keeps its ISID, and so
    /// its I_T nexus, as initiators do.
    pub async fn try_login_as(&mut self, keys: &[(&str, &str)], isid: u16) -> Option<Pdu> {
        let mut p = Pdu::new(Opcode::LoginRequest);
        p.set_immediate(true);
        p.set_flags(0x80 | 0x04 | 0x03); // operational → full feature
        let isid = isid.to_be_bytes();
        p.bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, isid[0], isid[1]]);
        p.set_itt(self.itt);
        p.set_u32(24, self.cmd_sn);
        p.data = Bytes::from(text::encode(keys));
        self.try_send(p).await.ok()?;
        let r = self.recv().await?;
        assert_eq!(r.opcode(), Some(Opcode::LoginResponse));
        Some(r)
    }

    /// Connects and logs in to `target` as a normal session.
    pub async fn normal(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> Initiator {
        let mut i = Initiator::connect(addr).await;
        let mut keys = vec![
            ("InitiatorName", "iqn.2026-11.test:init"),
            ("TargetName", target),
            ("SessionType", "Normal"),
        ];
        keys.extend_from_slice(extra);
        i.login(&keys).await;
        i
    }

    /// Connects and logs in to `target` as a normal session, for tests
    /// whose targets come and go: `None` (no panic) when the connection is
    /// refused or drops, the login is refused, or `limit` passes.
    pub async fn try_normal(addr: SocketAddr, target: &str, limit: Duration) -> Option<Initiator> {
        Initiator::try_normal_as(addr, target, None, limit).await
    }

    /// [`Initiator::try_normal`], as the session with ISID qualifier `isid`
    /// when given (see [`Initiator::try_login_as`]).
    pub async fn try_normal_as(
        addr: SocketAddr,
        target: &str,
        isid: Option<u16>,
        limit: Duration,
    ) -> Option<Initiator> {
        let attempt = async {
            let mut i = Initiator::try_connect(addr).await.ok()?;
            let keys = [
                ("InitiatorName", "iqn.2026-11.test:init"),
                ("TargetName", target),
                ("SessionType", "Normal"),
            ];
            let r = match isid {
                Some(isid) => i.try_login_as(&keys, isid).await?,
                None => i.try_login(&keys).await?,
            };
            if (r.byte(36), r.byte(37)) != (0, 0) {
                return None;
            }
            i.logged_in(&r);
            Some(i)
        };
        tokio::time::timeout(limit, attempt).await.ok().flatten()
    }

    /// Builds a SCSI Command PDU (LUN 0, simple task) and advances ITT/CmdSN.
    pub fn command(&mut self, cdb: &[u8], edtl: u32, write: bool, immediate: &[u8]) -> Pdu {
        let mut p = Pdu::new(Opcode::ScsiCommand);
        p.set_flags(0x80 | if write { 0x20 } else { 0x40 } | 0x01);
        p.set_itt(self.itt);
        p.set_u32(20, edtl);
        p.set_u32(24, self.cmd_sn);
        p.bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        p.data = Bytes::copy_from_slice(immediate);
        self.itt += 1;
        self.cmd_sn += 1;
        p
    }

    /// Sends the Data-Out PDUs that `r2t` asks for from `data`, at most
    /// `chunk` bytes each, numbered from DataSN 0.
    pub async fn answer_r2t(&mut self, r2t: &Pdu, itt: u32, data: &[u8], chunk: usize) {
        self.try_answer_r2t(r2t, itt, data, chunk)
            .await
            .expect("send Data-Out");
    }

    /// [`Initiator::answer_r2t`], with an error when the connection is gone.
    pub async fn try_answer_r2t(
        &mut self,
        r2t: &Pdu,
        itt: u32,
        data: &[u8],
        chunk: usize,
    ) -> std::io::Result<()> {
        let (off, len) = (r2t.u32_at(40) as usize, r2t.u32_at(44) as usize);
        let end = (off + len).min(data.len());
        for (sn, start) in (off..end).step_by(chunk).enumerate() {
            let stop = (start + chunk).min(end);
            let mut d = Pdu::new(Opcode::DataOut);
            d.set_flags(if stop == end { 0x80 } else { 0 });
            d.set_itt(itt);
            d.set_u32(20, r2t.u32_at(20));
            d.set_u32(36, sn as u32);
            d.set_u32(40, start as u32);
            d.data = Bytes::copy_from_slice(&data[start..stop]);
            self.try_send(d).await?;
        }
        Ok(())
    }

    /// Runs a data-less command and returns (status, sense key).
    pub async fn simple(&mut self, cdb: &[u8]) -> (u8, u8) {
        let o = self.run(cdb, &[], 0).await.expect("response");
        (o.status, o.sense_key)
    }

    /// Runs one command: sends `data_out` when the target asks for it (R2T),
    /// collects Data-In up to `read_len` bytes. `None` if the connection died.
    pub async fn run(&mut self, cdb: &[u8], data_out: &[u8], read_len: u32) -> Option<Outcome> {
        let write = !data_out.is_empty();
        let edtl = if write {
            data_out.len() as u32
        } else {
            read_len
        };
        let cmd = self.command(cdb, edtl, write, &[]);
        let itt = cmd.itt();
        self.try_send(cmd).await.ok()?;
        let mut data = vec![0u8; read_len as usize];
        loop {
            let p = self.recv_reply().await?;
            match p.opcode() {
                Some(Opcode::R2t) => self.try_answer_r2t(&p, itt, data_out, 8192).await.ok()?,
                Some(Opcode::DataIn) => {
                    let off = p.u32_at(40) as usize;
                    let n = p.data.len().min(data.len().saturating_sub(off));
                    data[off..off + n].copy_from_slice(&p.data[..n]);
                    if p.flags() & 0x01 != 0 {
                        return Some(Outcome {
                            status: p.byte(3),
                            sense_key: 0,
                            asc: (0, 0),
                            data,
                        });
                    }
                }
                Some(Opcode::ScsiResponse) => {
                    // Data segment: sense length (2 bytes), then fixed-format sense.
                    let at = |i: usize| p.data.get(2 + i).copied().unwrap_or(0);
                    return Some(Outcome {
                        status: p.byte(3),
                        sense_key: at(2) & 0x0f,
                        asc: (at(12), at(13)),
                        data,
                    });
                }
                _ => return None,
            }
        }
    }
}

/// A READ (10) / WRITE (10) style CDB: opcode, LBA, block count.
pub fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A READ (16) / WRITE (16) CDB, with FUA when asked.
pub fn rw16(op: u8, lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = if fua { 0x08 } else { 0 };
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}
