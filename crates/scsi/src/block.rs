//! Block commands (SBC-3): READ, WRITE, VERIFY, SYNCHRONIZE CACHE, UNMAP,
//! WRITE SAME, COMPARE AND WRITE, READ CAPACITY, GET LBA STATUS.

use bytes::Bytes;
use volume::{BlockState, Provisioning, Volume, VolumeError};

use crate::cdb::{be16, be32, be64, op};
use crate::limits::Limits;
use crate::sense::Sense;

/// Data-in produced by a command, or the sense of its failure.
pub type Outcome = Result<Vec<u8>, Sense>;

/// Maps a volume failure to the sense an initiator understands.
pub fn volume_sense(e: &VolumeError, lba: u64) -> Sense {
    match e {
        VolumeError::OutOfRange { .. } => Sense::LBA_OUT_OF_RANGE,
        VolumeError::BadLength { .. } => Sense::invalid_cdb(0, None),
        VolumeError::Miscompare { offset } => Sense::MISCOMPARE.with_info(*offset as u64),
        VolumeError::NoSpace => Sense::SPACE_ALLOC_FAILED,
        VolumeError::Medium { lba, .. } => Sense::UNRECOVERED_READ.with_info(*lba),
        VolumeError::Shrink { .. } => Sense::invalid_cdb(0, None),
        VolumeError::Closed => Sense::NOT_READY,
        VolumeError::Unavailable(_) => Sense::ALUA_TRANSITION,
        VolumeError::Io(_) => Sense::WRITE_ERROR.with_info(lba),
    }
}

/// LBA and block count of a READ/WRITE/VERIFY-family CDB, and its FUA bit.
pub struct Rw {
    pub lba: u64,
    pub blocks: u32,
    pub fua: bool,
}

/// Decodes the LBA, transfer length and FUA of READ/WRITE 6/10/12/16 and VERIFY 10/12/16.
pub fn decode_rw(cdb: &[u8]) -> Result<Rw, Sense> {
    let fua = cdb[1] & 0x08 != 0;
    let rw = match cdb[0] {
        op::READ_6 | op::WRITE_6 => {
            let lba = (((cdb[1] & 0x1F) as u64) << 16) | be16(cdb, 2) as u64;
            let blocks = if cdb[4] == 0 { 256 } else { cdb[4] as u32 };
            return Ok(Rw {
                lba,
                blocks,
                fua: false,
            });
        }
        op::READ_10 | op::WRITE_10 | op::VERIFY_10 | op::WRITE_AND_VERIFY_10 | op::PRE_FETCH_10 => {
            Rw {
                lba: be32(cdb, 2) as u64,
                blocks: be16(cdb, 7) as u32,
                fua,
            }
        }
        op::READ_12 | op::WRITE_12 | op::WRITE_AND_VERIFY_12 | op::VERIFY_12 => Rw {
            lba: be32(cdb, 2) as u64,
            blocks: be32(cdb, 6),
            fua,
        },
        _ => Rw {
            lba: be64(cdb, 2),
            blocks: be32(cdb, 10),
            fua,
        },
    };
    // RDPROTECT/WRPROTECT/VRPROTECT: no protection information on these volumes.
    if cdb[1] & 0xE0 != 0 {
        return Err(Sense::invalid_cdb(1, Some(7)));
    }
    Ok(rw)
}

fn check(v: &dyn Volume, lba: u64, blocks: u64) -> Result<(), Sense> {
    volume::check_range(v.num_blocks(), lba, blocks).map_err(|_| Sense::LBA_OUT_OF_RANGE)
}

fn needs(data: &Bytes, bytes: u64) -> Result<Bytes, Sense> {
    if (data.len() as u64) < bytes {
        // The initiator sent less data than the CDB transfers: nothing is written.
        return Err(Sense::invalid_cdb(0, None));
    }
    Ok(data.slice(..bytes as usize))
}

/// The blocks a READ 6/10/12/16 reads; `None` for a transfer length of 0.
fn read_request(v: &dyn Volume, cdb: &[u8], l: &Limits) -> Result<Option<Rw>, Sense> {
    let rw = decode_rw(cdb)?;
    check(v, rw.lba, rw.blocks as u64)?;
    if rw.blocks > l.max_transfer {
        return Err(Sense::invalid_cdb(0, None));
    }
    Ok((rw.blocks > 0).then_some(rw))
}

/// READ 6/10/12/16.
pub async fn read(v: &dyn Volume, cdb: &[u8], l: &Limits) -> Outcome {
    let Some(rw) = read_request(v, cdb, l)? else {
        return Ok(Vec::new());
    };
    v.read(rw.lba, rw.blocks)
        .await
        .map_err(|e| volume_sense(&e, rw.lba))
}

/// READ 6/10/12/16 done right away, or `None` when the volume would have
/// to wait (see [`Volume::read_now`]).
pub fn read_now(v: &dyn Volume, cdb: &[u8], l: &Limits) -> Option<Outcome> {
    let rw = match read_request(v, cdb, l) {
        Ok(Some(rw)) => rw,
        Ok(None) => return Some(Ok(Vec::new())),
        Err(sense) => return Some(Err(sense)),
    };
    let r = v.read_now(rw.lba, rw.blocks)?;
    Some(r.map_err(|e| volume_sense(&e, rw.lba)))
}

/// What a WRITE-family command writes: where, whether with FUA, and the
/// data; `None` when nothing is to be written.
fn write_request(
    v: &dyn Volume,
    cdb: &[u8],
    data: &Bytes,
    l: &Limits,
) -> Result<Option<(Rw, Bytes)>, Sense> {
    let mut rw = decode_rw(cdb)?;
    if matches!(
        cdb[0],
        op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16
    ) {
        rw.fua = true;
    }
    check(v, rw.lba, rw.blocks as u64)?;
    if rw.blocks > l.max_transfer {
        return Err(Sense::invalid_cdb(0, None));
    }
    // When the transport delivered less than the CDB asks for (expected data
    // transfer length below the transfer length), only the whole blocks that
    // arrived are written; the transport reports the overflow residual.
    let bs = v.block_size() as usize;
    let whole = (rw.blocks as usize).min(data.len() / bs);
    if whole == 0 {
        return Ok(None);
    }
    Ok(Some((rw, data.slice(..whole * bs))))
}

/// WRITE 6/10/12/16, and WRITE AND VERIFY 10/12/16 (SBC-3 5.36): the data
/// reaches stable storage before GOOD, so the verify reads back what was written.
pub async fn write(v: &dyn Volume, cdb: &[u8], data: &Bytes, l: &Limits) -> Outcome {
    let Some((rw, data)) = write_request(v, cdb, data, l)? else {
        return Ok(Vec::new());
    };
    v.write(rw.lba, data, rw.fua)
        .await
        .map_err(|e| volume_sense(&e, rw.lba))?;
    Ok(Vec::new())
}

/// WRITE 6/10/12/16 without FUA done right away, or `None` when the volume
/// would have to wait (see [`Volume::write_now`]).
pub fn write_now(v: &dyn Volume, cdb: &[u8], data: &Bytes, l: &Limits) -> Option<Outcome> {
    let (rw, data) = match write_request(v, cdb, data, l) {
        Ok(Some(w)) => w,
        Ok(None) => return Some(Ok(Vec::new())),
        Err(sense) => return Some(Err(sense)),
    };
    if rw.fua {
        return None;
    }
    let r = v.write_now(rw.lba, &data)?;
    Some(r.map(|()| Vec::new()).map_err(|e| volume_sense(&e, rw.lba)))
}

/// VERIFY 10/16: BYTCHK 0 checks the range is readable, 1 compares data-out,
/// 3 compares one block of data-out against every block.
pub async fn verify(v: &dyn Volume, cdb: &[u8], data: &Bytes, l: &Limits) -> Outcome {
    let rw = decode_rw(cdb)?;
    let bytchk = (cdb[1] >> 1) & 0x03;
    check(v, rw.lba, rw.blocks as u64)?;
    if rw.blocks > l.max_transfer {
        return Err(Sense::invalid_cdb(0, None));
    }
    if rw.blocks == 0 {
        return Ok(Vec::new());
    }
    let bs = v.block_size() as u64;
    let stored = v
        .read(rw.lba, rw.blocks)
        .await
        .map_err(|e| volume_sense(&e, rw.lba))?;
    let expected: Vec<u8> = match bytchk {
        0 => return Ok(Vec::new()),
        1 => needs(data, rw.blocks as u64 * bs)?.to_vec(),
        3 => needs(data, bs)?.repeat(rw.blocks as usize),
        _ => return Err(Sense::invalid_cdb(1, Some(2))),
    };
    match volume::first_difference(&stored, &expected) {
        Some(off) => Err(Sense::MISCOMPARE.with_info(off as u64)),
        None => Ok(Vec::new()),
    }
}

/// SYNCHRONIZE CACHE 10/16: range-checked flush of the whole volume.
pub async fn synchronize_cache(v: &dyn Volume, cdb: &[u8]) -> Outcome {
    let (lba, blocks) = if cdb[0] == op::SYNCHRONIZE_CACHE_10 {
        (be32(cdb, 2) as u64, be16(cdb, 7) as u64)
    } else {
        (be64(cdb, 2), be32(cdb, 10) as u64)
    };
    let blocks = if blocks == 0 {
        v.num_blocks().saturating_sub(lba)
    } else {
        blocks
    };
    if lba >= v.num_blocks() {
        return Err(Sense::LBA_OUT_OF_RANGE);
    }
    check(v, lba, blocks)?;
    v.flush().await.map_err(|e| volume_sense(&e, lba))?;
    Ok(Vec::new())
}

/// UNMAP with its parameter list (SBC-3 5.28).
pub async fn unmap(v: &dyn Volume, cdb: &[u8], data: &Bytes, l: &Limits) -> Outcome {
    if cdb[1] & 0x01 != 0 {
        return Err(Sense::invalid_cdb(1, Some(0))); // ANCHOR is not supported
    }
    let plen = be16(cdb, 7) as usize;
    if plen == 0 {
        return Ok(Vec::new());
    }
    if plen < 8 || data.len() < plen {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let p = &data[..plen];
    let desc_len = be16(p, 2) as usize;
    if !desc_len.is_multiple_of(16) || 8 + desc_len > plen {
        return Err(Sense::PARAM_LIST_LENGTH);
    }
    let count = desc_len / 16;
    if count as u32 > l.max_unmap_descriptors {
        return Err(Sense::INVALID_PARAM);
    }
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let d = &p[8 + 16 * i..24 + 16 * i];
        let (lba, blocks) = (be64(d, 0), be32(d, 8) as u64);
        if blocks > l.max_unmap_lbas as u64 {
            return Err(Sense::INVALID_PARAM);
        }
        check(v, lba, blocks)?;
        ranges.push((lba, blocks));
    }
    for (lba, blocks) in ranges {
        if blocks > 0 {
            v.unmap(lba, blocks)
                .await
                .map_err(|e| volume_sense(&e, lba))?;
        }
    }
    Ok(Vec::new())
}

/// WRITE SAME 10/16 (SBC-3 5.41, 5.42), with UNMAP and (16) NDOB.
pub async fn write_same(v: &dyn Volume, cdb: &[u8], data: &Bytes, l: &Limits) -> Outcome {
    let ten = cdb[0] == op::WRITE_SAME_10;
    let (lba, blocks) = if ten {
        (be32(cdb, 2) as u64, be16(cdb, 7) as u64)
    } else {
        (be64(cdb, 2), be32(cdb, 10) as u64)
    };
    let flags = cdb[1];
    let unmap = flags & 0x08 != 0;
    if flags & 0x10 != 0 {
        return Err(Sense::invalid_cdb(1, Some(4))); // ANCHOR
    }
    if flags & 0xE0 != 0 {
        return Err(Sense::invalid_cdb(1, Some(7))); // WRPROTECT
    }
    let ndob = !ten && flags & 0x01 != 0;
    if blocks == 0 || blocks > l.max_write_same as u64 {
        // WSNZ is set in VPD 0xB0: zero blocks is refused.
        return Err(Sense::invalid_cdb(if ten { 7 } else { 10 }, None));
    }
    check(v, lba, blocks)?;
    let bs = v.block_size() as u64;
    let pattern = if ndob {
        Bytes::from(vec![0u8; bs as usize])
    } else {
        needs(data, bs)?
    };
    let unmap = unmap && v.provisioning() == Provisioning::Thin;
    v.write_same(lba, blocks, pattern, unmap, false)
        .await
        .map_err(|e| volume_sense(&e, lba))?;
    Ok(Vec::new())
}

/// COMPARE AND WRITE (SBC-3 5.2) for `initiator`: data-out holds the verify
/// blocks then the write blocks.
pub async fn compare_and_write(
    v: &dyn Volume,
    initiator: &str,
    cdb: &[u8],
    data: &Bytes,
    l: &Limits,
) -> Outcome {
    let lba = be64(cdb, 2);
    let blocks = cdb[13] as u64;
    let fua = cdb[1] & 0x08 != 0;
    if cdb[1] & 0xE0 != 0 {
        return Err(Sense::invalid_cdb(1, Some(7)));
    }
    if blocks > l.max_compare_and_write as u64 {
        return Err(Sense::invalid_cdb(13, None));
    }
    check(v, lba, blocks)?;
    if blocks == 0 {
        // Nothing to compare; data-out for it means the CDB does not match the transfer.
        return if data.is_empty() {
            Ok(Vec::new())
        } else {
            Err(Sense::invalid_cdb(13, None))
        };
    }
    let n = (blocks * v.block_size() as u64) as usize;
    let all = needs(data, 2 * n as u64)?;
    match v
        .compare_and_write_for(initiator, lba, all.slice(..n), all.slice(n..), fua)
        .await
    {
        Ok(()) => Ok(Vec::new()),
        Err(e) => Err(volume_sense(&e, lba)),
    }
}

/// READ CAPACITY (10) (SBC-3 5.15).
pub fn read_capacity_10(v: &dyn Volume) -> Outcome {
    let last = v.num_blocks().saturating_sub(1);
    let mut d = Vec::with_capacity(8);
    d.extend_from_slice(&(last.min(0xFFFF_FFFF) as u32).to_be_bytes());
    d.extend_from_slice(&v.block_size().to_be_bytes());
    Ok(d)
}

/// READ CAPACITY (16) (SBC-3 5.16), with LBPME/LBPRZ for thin volumes.
pub fn read_capacity_16(v: &dyn Volume) -> Outcome {
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&v.num_blocks().saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&v.block_size().to_be_bytes());
    if v.provisioning() == Provisioning::Thin {
        d[14] = 0x80 | 0x40;
    }
    Ok(d)
}

/// GET LBA STATUS (SBC-3 5.7): mapped/deallocated runs from the starting LBA.
pub async fn get_lba_status(v: &dyn Volume, cdb: &[u8]) -> Outcome {
    let start = be64(cdb, 2);
    let alloc = be32(cdb, 10) as usize;
    if start >= v.num_blocks() {
        return Err(Sense::LBA_OUT_OF_RANGE);
    }
    let max_desc = (alloc.saturating_sub(8) / 16).clamp(1, 64);
    let mut d = vec![0u8; 8];
    let mut lba = start;
    while lba < v.num_blocks() && (d.len() - 8) / 16 < max_desc {
        let (state, run) = v
            .block_status(lba)
            .await
            .map_err(|e| volume_sense(&e, lba))?;
        let run = run.min(u32::MAX as u64);
        d.extend_from_slice(&lba.to_be_bytes());
        d.extend_from_slice(&(run as u32).to_be_bytes());
        d.push(match state {
            BlockState::Mapped => 0,
            BlockState::Deallocated => 1,
        });
        d.extend_from_slice(&[0, 0, 0]);
        lba += run;
    }
    let len = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(d)
}

/// PRE-FETCH 10/16 (SBC-3 5.9): range-checked; there is no separate cache to
/// fill, so GOOD (not CONDITION MET) tells the initiator nothing was staged.
pub fn pre_fetch(v: &dyn Volume, cdb: &[u8]) -> Outcome {
    let rw = decode_rw(cdb)?;
    check(v, rw.lba, rw.blocks as u64)?;
    Ok(Vec::new())
}

/// Attempts ORWRITE makes before giving up under constant contention.
const ORWRITE_ATTEMPTS: usize = 16;

/// ORWRITE (16) (SBC-3 5.8): ORs data-out into the blocks, atomically against
/// every other writer (read, OR, then compare-and-write the result; a block
/// changed in between is read again).
pub async fn orwrite(v: &dyn Volume, cdb: &[u8], data: &Bytes, l: &Limits) -> Outcome {
    if cdb[1] & 0xE0 != 0 {
        // ORPROTECT: these volumes carry no protection information.
        return Err(Sense::invalid_cdb(1, Some(7)));
    }
    let lba = be64(cdb, 2);
    let blocks = be32(cdb, 10);
    let fua = cdb[1] & 0x08 != 0;
    check(v, lba, blocks as u64)?;
    if blocks > l.max_transfer {
        return Err(Sense::invalid_cdb(10, None));
    }
    if blocks == 0 {
        return Ok(Vec::new());
    }
    let mask = needs(data, blocks as u64 * v.block_size() as u64)?;
    for _ in 0..ORWRITE_ATTEMPTS {
        let current = v
            .read(lba, blocks)
            .await
            .map_err(|e| volume_sense(&e, lba))?;
        let merged: Vec<u8> = current
            .iter()
            .zip(mask.iter())
            .map(|(a, b)| a | b)
            .collect();
        match v
            .compare_and_write(lba, Bytes::from(current), Bytes::from(merged), fua)
            .await
        {
            Ok(()) => return Ok(Vec::new()),
            Err(VolumeError::Miscompare { .. }) => continue,
            Err(e) => return Err(volume_sense(&e, lba)),
        }
    }
    Err(Sense::new(crate::sense::key::ABORTED_COMMAND, 0x00, 0x00))
}

/// READ DEFECT DATA (10)/(12) (SBC-3 5.17, 5.18): a thin volume has no
/// medium of its own, so both lists are valid and empty, in the format asked for.
pub fn read_defect_data(cdb: &[u8]) -> Outcome {
    if cdb[0] == op::READ_DEFECT_DATA_10 {
        let flags = cdb[2] & 0x1F;
        Ok(vec![0, flags, 0, 0])
    } else {
        let flags = cdb[1] & 0x1F;
        Ok(vec![0, flags, 0, 0, 0, 0, 0, 0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_failing_its_checksum_is_an_unrecovered_read_error_at_its_lba() {
        // SBC-3 4.18.1: the INFORMATION field names the first LBA in error.
        let e = VolumeError::Medium {
            lba: 77,
            reason: "the data does not match its checksum".into(),
        };
        let fixed = volume_sense(&e, 70).encode(false);
        assert_eq!(fixed[0], 0xF0, "VALID: the INFORMATION field holds the LBA");
        assert_eq!(fixed[2], crate::sense::key::MEDIUM_ERROR);
        assert_eq!((fixed[12], fixed[13]), (0x11, 0x00));
        assert_eq!(&fixed[3..7], &77u32.to_be_bytes());
        let desc = volume_sense(&e, 70).encode(true);
        assert_eq!((desc[1], desc[2], desc[3]), (0x03, 0x11, 0x00));
        assert_eq!(&desc[12..20], &77u64.to_be_bytes());
    }
}
