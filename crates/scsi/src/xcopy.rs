//! EXTENDED COPY (LID1, SPC-4 6.4) with block-to-block segments, RECEIVE COPY
//! RESULTS (SPC-4 6.23) and the third-party copy VPD page (SPC-4 7.8.17).
//!
//! The logical unit that receives EXTENDED COPY is the copy manager. Its copy
//! targets are named by identification descriptors (the NAA or T10 vendor
//! designator of VPD 0x83) and may be any logical unit of this node; data
//! moves between volumes here, never through the initiator.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use volume::VolumeError;

use crate::cdb::{be16, be32, be64, op};
use crate::sense::{key, Sense};
use crate::LogicalUnit;

/// Copy targets (CSCD descriptors) one EXTENDED COPY may name.
pub const MAX_TARGET_DESCRIPTORS: u16 = 16;
/// Segment descriptors one EXTENDED COPY may carry.
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 64;
/// Largest target + segment descriptor lists, in bytes.
pub const MAX_DESCRIPTOR_LIST: u32 = 4096;
/// Largest segment, in bytes (a block-to-block segment counts at most 65535 blocks).
pub const MAX_SEGMENT_BYTES: u32 = 256 << 20;
/// Bytes moved per read/write while copying a segment.
const CHUNK_BYTES: u64 = 1 << 20;
/// Completed copies whose status RECEIVE COPY RESULTS can still report.
const HELD_RESULTS: usize = 64;

const HEADER: usize = 16;
const TARGET_DESCRIPTOR: usize = 32;
const IDENTIFICATION_DESCRIPTOR: u8 = 0xE4;
const BLOCK_TO_BLOCK: u8 = 0x02;
/// Descriptor type codes this copy manager implements.
const IMPLEMENTED: [u8; 2] = [BLOCK_TO_BLOCK, IDENTIFICATION_DESCRIPTOR];

const COPY_ABORTED: u8 = 0x0A;
const TOO_MANY_TARGETS: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x06);
const UNSUPPORTED_TARGET_TYPE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x07);
const TOO_MANY_SEGMENTS: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x08);
const UNSUPPORTED_SEGMENT_TYPE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x09);
const UNREACHABLE_TARGET: Sense = Sense::new(COPY_ABORTED, 0x08, 0x04);
const TARGET_NOT_REACHABLE: Sense = Sense::new(COPY_ABORTED, 0x0D, 0x02);
const SEGMENT_FAILED: Sense = Sense::new(COPY_ABORTED, 0x00, 0x00);

/// Every logical unit of this node, for resolving copy targets.
pub trait UnitDirectory: Send + Sync {
    /// The logical units currently exported.
    fn logical_units(&self) -> Vec<Arc<LogicalUnit>>;
}

/// One block-to-block segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    src: usize,
    dst: usize,
    blocks: u16,
    src_lba: u64,
    dst_lba: u64,
}

/// A parsed EXTENDED COPY parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyList {
    list_id: u8,
    /// Whether RECEIVE COPY RESULTS may ask for this copy's status.
    held: bool,
    /// Designators (code set, type, length, value) of the copy targets.
    targets: Vec<Vec<u8>>,
    segments: Vec<Segment>,
}

/// Parses and checks an EXTENDED COPY (LID1) parameter list of `list_len` bytes.
/// `Ok(None)` is an empty list: nothing to do.
pub fn parse(data: &[u8], list_len: usize) -> Result<Option<CopyList>, Sense> {
    if list_len == 0 {
        return Ok(None);
    }
    if list_len < HEADER || data.len() < list_len {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let p = &data[..list_len];
    let list_id = p[0];
    let usage = (p[1] >> 3) & 0x03;
    if usage == 0x01 {
        return Err(Sense::INVALID_PARAM.with_field(1, Some(3)));
    }
    let tgt_len = be16(p, 2) as usize;
    let seg_len = be32(p, 8) as usize;
    let inline_len = be32(p, 12) as usize;
    if inline_len != 0 {
        return Err(Sense::INVALID_PARAM.with_field(12, None));
    }
    if tgt_len as u64 + seg_len as u64 > MAX_DESCRIPTOR_LIST as u64 {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    if HEADER + tgt_len + seg_len > list_len {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    if !tgt_len.is_multiple_of(TARGET_DESCRIPTOR) {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    if tgt_len / TARGET_DESCRIPTOR > MAX_TARGET_DESCRIPTORS as usize {
        return Err(TOO_MANY_TARGETS);
    }
    let mut targets = Vec::new();
    for (i, d) in p[HEADER..HEADER + tgt_len]
        .chunks_exact(TARGET_DESCRIPTOR)
        .enumerate()
    {
        let at = (HEADER + i * TARGET_DESCRIPTOR) as u16;
        if d[0] != IDENTIFICATION_DESCRIPTOR {
            return Err(UNSUPPORTED_TARGET_TYPE.with_field(at, None));
        }
        // Byte 1: LU ID TYPE is ignored (SPC-4), NUL is obsolete; the
        // peripheral device type must be a block device.
        if d[1] & 0x1F != 0 {
            return Err(UNSUPPORTED_TARGET_TYPE.with_field(at + 1, Some(4)));
        }
        let dlen = d[7] as usize;
        if dlen == 0 || dlen > 16 {
            return Err(Sense::INVALID_PARAM.with_field(at + 7, None));
        }
        targets.push(d[4..8 + dlen].to_vec());
    }
    let mut segments = Vec::new();
    let mut at = HEADER + tgt_len;
    let end = HEADER + tgt_len + seg_len;
    while at < end {
        if end - at < 4 {
            return Err(Sense::PARAM_LIST_LENGTH);
        }
        let d = &p[at..end];
        if d[0] != BLOCK_TO_BLOCK {
            return Err(UNSUPPORTED_SEGMENT_TYPE.with_field(at as u16, None));
        }
        let dlen = be16(d, 2) as usize;
        if dlen != 0x18 {
            return Err(Sense::INVALID_PARAM.with_field(at as u16 + 2, None));
        }
        if d.len() < 4 + dlen {
            return Err(Sense::PARAM_LIST_LENGTH);
        }
        if segments.len() == MAX_SEGMENT_DESCRIPTORS as usize {
            return Err(TOO_MANY_SEGMENTS);
        }
        segments.push(Segment {
            src: be16(d, 4) as usize,
            dst: be16(d, 6) as usize,
            blocks: be16(d, 10),
            src_lba: be64(d, 12),
            dst_lba: be64(d, 20),
        });
        at += 4 + dlen;
    }
    Ok(Some(CopyList {
        list_id,
        held: usage == 0x00,
        targets,
        segments,
    }))
}

/// Status of one finished copy, as COPY STATUS reports it.
#[derive(Debug, Clone)]
struct Finished {
    nexus: String,
    list_id: u8,
    ok: bool,
    segments: u16,
    bytes: u64,
}

/// The copy manager state of one logical unit.
#[derive(Default)]
pub struct CopyManager {
    directory: Mutex<Option<Weak<dyn UnitDirectory>>>,
    results: Mutex<VecDeque<Finished>>,
}

impl CopyManager {
    /// Lets copies reach the other logical units of the node.
    pub fn set_directory(&self, directory: Weak<dyn UnitDirectory>) {
        *self.directory.lock().unwrap() = Some(directory);
    }

    fn resolve(&self, me: &LogicalUnit, designator: &[u8]) -> Option<Resolved> {
        if me.has_designator(designator) {
            return Some(Resolved::Me);
        }
        let dir = self.directory.lock().unwrap().as_ref()?.upgrade()?;
        dir.logical_units()
            .into_iter()
            .find(|lu| lu.has_designator(designator))
            .map(Resolved::Other)
    }

    /// Runs EXTENDED COPY for `nexus` on the copy manager `me`.
    pub async fn extended_copy(
        &self,
        me: &LogicalUnit,
        nexus: &str,
        cdb: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>, Sense> {
        if cdb[1] & 0x1F != 0 {
            // Only LID1 (service action 0).
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        let Some(list) = parse(data, be32(cdb, 10) as usize)? else {
            return Ok(Vec::new());
        };
        let mut units = Vec::with_capacity(list.targets.len());
        for d in &list.targets {
            units.push(self.resolve(me, d));
        }
        let mut done = 0u16;
        let mut bytes = 0u64;
        let mut outcome = Ok(());
        for seg in &list.segments {
            let step = copy_segment(me, nexus, &units, seg).await;
            match step {
                Ok(n) => {
                    done += 1;
                    bytes += n;
                }
                Err(s) => {
                    outcome = Err(s);
                    break;
                }
            }
        }
        if list.held {
            let mut r = self.results.lock().unwrap();
            r.retain(|f| !(f.nexus == nexus && f.list_id == list.list_id));
            if r.len() == HELD_RESULTS {
                r.pop_front();
            }
            r.push_back(Finished {
                nexus: nexus.to_string(),
                list_id: list.list_id,
                ok: outcome.is_ok(),
                segments: done,
                bytes,
            });
        }
        outcome.map(|()| Vec::new())
    }

    /// RECEIVE COPY RESULTS: COPY STATUS (0x00) and OPERATING PARAMETERS (0x03).
    pub fn receive_copy_results(&self, nexus: &str, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        match cdb[1] & 0x1F {
            0x00 => {
                let list_id = cdb[2];
                let r = self.results.lock().unwrap();
                let f = r
                    .iter()
                    .find(|f| f.nexus == nexus && f.list_id == list_id)
                    .ok_or(Sense::invalid_cdb(2, None))?;
                let mut d = vec![0u8; 12];
                d[0..4].copy_from_slice(&8u32.to_be_bytes());
                d[4] = if f.ok { 0x01 } else { 0x02 };
                d[5..7].copy_from_slice(&f.segments.to_be_bytes());
                // Transfer count in KiB (units code 1).
                d[7] = 0x01;
                d[8..12]
                    .copy_from_slice(&((f.bytes >> 10).min(u32::MAX as u64) as u32).to_be_bytes());
                Ok(d)
            }
            0x03 => {
                let mut d = vec![0u8; 44];
                d[8..10].copy_from_slice(&MAX_TARGET_DESCRIPTORS.to_be_bytes());
                d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
                d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST.to_be_bytes());
                d[16..20].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
                // No inline data, no held data, no stream devices.
                d[34..36].copy_from_slice(&1u16.to_be_bytes()); // total concurrent copies
                d[36] = 1; // maximum concurrent copies
                d[37] = 9; // data segment granularity: 512 bytes (log2)
                d[43] = IMPLEMENTED.len() as u8;
                d.extend_from_slice(&IMPLEMENTED);
                let len = (d.len() - 4) as u32;
                d[0..4].copy_from_slice(&len.to_be_bytes());
                Ok(d)
            }
            _ => Err(Sense::invalid_cdb(1, Some(4))),
        }
    }
}

enum Resolved {
    Me,
    Other(Arc<LogicalUnit>),
}

async fn copy_segment(
    me: &LogicalUnit,
    nexus: &str,
    units: &[Option<Resolved>],
    seg: &Segment,
) -> Result<u64, Sense> {
    let unit = |i: usize| -> Result<&LogicalUnit, Sense> {
        match units.get(i) {
            None => Err(UNREACHABLE_TARGET),
            Some(None) => Err(TARGET_NOT_REACHABLE),
            Some(Some(Resolved::Me)) => Ok(me),
            Some(Some(Resolved::Other(lu))) => Ok(lu),
        }
    };
    let src = unit(seg.src)?;
    let dst = unit(seg.dst)?;
    // The copy acts for the initiator: its reservations bind the copy too.
    if !src.reservations.allows(nexus, &[op::READ_16])
        || !dst.reservations.allows(nexus, &[op::WRITE_16])
    {
        return Err(crate::reservations::CONFLICT);
    }
    if dst.mode.lock().unwrap().swp {
        return Err(crate::mode::WRITE_PROTECTED);
    }
    let (sv, dv) = (src.volume(), dst.volume());
    let bs = sv.block_size() as u64;
    if dv.block_size() as u64 != bs {
        return Err(SEGMENT_FAILED);
    }
    let blocks = seg.blocks as u64;
    if volume::check_range(sv.num_blocks(), seg.src_lba, blocks).is_err()
        || volume::check_range(dv.num_blocks(), seg.dst_lba, blocks).is_err()
    {
        return Err(SEGMENT_FAILED.with_info(seg.src_lba));
    }
    let chunk = (CHUNK_BYTES / bs).max(1);
    // Overlapping ranges of one volume copy back to front when moving up.
    let same = Arc::ptr_eq(sv, dv);
    let backwards = same && seg.dst_lba > seg.src_lba;
    let mut starts: Vec<u64> = (0..blocks).step_by(chunk as usize).collect();
    if backwards {
        starts.reverse();
    }
    for off in starts {
        let n = chunk.min(blocks - off) as u32;
        let data = sv
            .read(seg.src_lba + off, n)
            .await
            .map_err(|_| SEGMENT_FAILED)?;
        dv.write(seg.dst_lba + off, Bytes::from(data), false)
            .await
            .map_err(|e| match e {
                VolumeError::NoSpace => Sense::SPACE_ALLOC_FAILED,
                _ => SEGMENT_FAILED,
            })?;
    }
    // The copy manager's own volume is handled by its EXTENDED COPY command.
    if !std::ptr::eq(dst, me) {
        dst.medium_changed(true).await.map_err(|_| SEGMENT_FAILED)?;
    }
    Ok(blocks * bs)
}

/// VPD page 0x8F body: supported commands, parameter data, supported
/// descriptors and general copy operations (SPC-4 7.8.17).
pub fn third_party_copy_page() -> Vec<u8> {
    let mut d = Vec::new();
    let mut descriptor = |kind: u16, body: Vec<u8>| {
        let mut body = body;
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        d.extend_from_slice(&kind.to_be_bytes());
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend(body);
    };
    // Supported commands: EXTENDED COPY (LID1), RECEIVE COPY RESULTS.
    let cmds = [
        op::EXTENDED_COPY,
        1,
        0x00,
        op::RECEIVE_COPY_RESULTS,
        2,
        0x00,
        0x03,
    ];
    let mut body = vec![cmds.len() as u8];
    body.extend_from_slice(&cmds);
    descriptor(0x0001, body);
    // Parameter data.
    let mut body = vec![0u8; 28];
    body[4..6].copy_from_slice(&MAX_TARGET_DESCRIPTORS.to_be_bytes());
    body[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    body[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST.to_be_bytes());
    descriptor(0x0008, body);
    // Supported descriptors.
    let mut body = vec![IMPLEMENTED.len() as u8];
    body.extend_from_slice(&IMPLEMENTED);
    descriptor(0x000C, body);
    // General copy operations.
    let mut body = vec![0u8; 28];
    body[0..4].copy_from_slice(&1u32.to_be_bytes()); // total concurrent copies
    body[4..8].copy_from_slice(&1u32.to_be_bytes()); // maximum identified concurrent copies
    body[8..12].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
    body[12] = 9; // data segment granularity (log2 bytes)
    descriptor(0x8001, body);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(targets: &[[u8; 32]], segs: &[[u8; 28]]) -> Vec<u8> {
        let mut p = vec![0u8; 16];
        p[0] = 7;
        p[2..4].copy_from_slice(&((targets.len() * 32) as u16).to_be_bytes());
        p[8..12].copy_from_slice(&((segs.len() * 28) as u32).to_be_bytes());
        for t in targets {
            p.extend_from_slice(t);
        }
        for s in segs {
            p.extend_from_slice(s);
        }
        p
    }

    fn target(naa: [u8; 8]) -> [u8; 32] {
        let mut t = [0u8; 32];
        t[0] = 0xE4;
        t[4] = 0x01;
        t[5] = 0x03;
        t[7] = 8;
        t[8..16].copy_from_slice(&naa);
        t[30] = 0x02; // 512-byte blocks
        t
    }

    fn segment(blocks: u16, src: u64, dst: u64) -> [u8; 28] {
        let mut s = [0u8; 28];
        s[0] = 0x02;
        s[2..4].copy_from_slice(&0x18u16.to_be_bytes());
        s[10..12].copy_from_slice(&blocks.to_be_bytes());
        s[12..20].copy_from_slice(&src.to_be_bytes());
        s[20..28].copy_from_slice(&dst.to_be_bytes());
        s
    }

    #[test]
    fn parses_a_block_to_block_copy() {
        let p = list(&[target([0x3A; 8])], &[segment(16, 0, 100)]);
        let l = parse(&p, p.len()).unwrap().unwrap();
        assert_eq!(l.list_id, 7);
        assert!(l.held);
        assert_eq!(l.targets[0][4..], [0x3A; 8]);
        assert_eq!(l.segments[0].blocks, 16);
        assert_eq!(l.segments[0].dst_lba, 100);
        assert_eq!(parse(&p, 0).unwrap(), None);
    }

    #[test]
    fn rejects_truncated_and_oversized_lists() {
        let p = list(&[target([1; 8])], &[segment(1, 0, 1)]);
        assert_eq!(
            parse(&p, p.len() - 1).unwrap_err(),
            Sense::PARAM_LIST_LENGTH
        );
        assert_eq!(parse(&p, 47).unwrap_err(), Sense::PARAM_LIST_LENGTH);
        let many: Vec<_> = (0..17).map(|_| target([1; 8])).collect();
        let p = list(&many, &[segment(1, 0, 1)]);
        assert_eq!(parse(&p, p.len()).unwrap_err(), TOO_MANY_TARGETS);
        let segs: Vec<_> = (0..65).map(|_| segment(1, 0, 1)).collect();
        let p = list(&[target([1; 8])], &segs);
        assert_eq!(parse(&p, p.len()).unwrap_err(), TOO_MANY_SEGMENTS);
    }

    #[test]
    fn rejects_unsupported_descriptor_types() {
        let mut t = target([1; 8]);
        t[0] = 0xE0;
        let p = list(&[t], &[segment(1, 0, 1)]);
        assert_eq!(parse(&p, p.len()).unwrap_err().ascq, 0x07);
        let mut s = segment(1, 0, 1);
        s[0] = 0x03;
        let p = list(&[target([1; 8])], &[s]);
        assert_eq!(parse(&p, p.len()).unwrap_err().ascq, 0x09);
    }

    #[test]
    fn vpd_page_lists_the_copy_commands() {
        let d = third_party_copy_page();
        assert_eq!(u16::from_be_bytes([d[0], d[1]]), 0x0001);
        assert_eq!(d.len() % 4, 0);
        assert_eq!(&d[5..8], &[op::EXTENDED_COPY, 1, 0]);
    }
}
