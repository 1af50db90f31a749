//! A finished command on its way back (RFC 7143 §11.4, §11.7): its data-in
//! cut into Data-In PDUs, with the status on the last one (phase collapse)
//! or in a SCSI Response of its own. The writer sends the PDUs one by one,
//! each header followed by its piece of the data, then gives the data
//! buffer back to the pool: nothing is copied or allocated per PDU.

use std::ops::Range;

use bytes::Bytes;
use iscsi::{Opcode, Pdu};
use scsi::{Response, Status};

const NO_TAG: u32 = 0xFFFF_FFFF;

/// The outcome of one command, addressed to its task.
pub(crate) struct Reply {
    pub lun: [u8; 8],
    pub itt: u32,
    /// Expected data transfer length of the command.
    pub edtl: u32,
    pub resp: Response,
}

impl Reply {
    /// The PDUs that carry this reply, each with the part of `resp.data`
    /// that follows its header; `mrdsl` is the initiator's
    /// MaxRecvDataSegmentLength.
    pub fn frames(&self, mrdsl: u32) -> Frames {
        let edtl = self.edtl as u64;
        let produced = self.resp.data.len() as u64;
        let (over, under, residual) = match self.resp.data_out_wanted {
            Some(wanted) => {
                let wanted = wanted as u64;
                (wanted > edtl, wanted < edtl, wanted.abs_diff(edtl))
            }
            None => (produced > edtl, produced < edtl, produced.abs_diff(edtl)),
        };
        Frames {
            lun: self.lun,
            itt: self.itt,
            status: self.resp.status,
            good: self.resp.status == Status::Good && self.resp.sense.is_none(),
            sense: self.resp.sense.clone(),
            over,
            under,
            residual: residual.min(u32::MAX as u64) as u32,
            len: self.resp.data.len().min(self.edtl as usize),
            chunk: mrdsl.max(512) as usize,
            offset: 0,
            data_sn: 0,
            done: false,
        }
    }

    /// The data-in bytes a frame carries.
    pub fn data(&self, range: Range<usize>) -> &[u8] {
        &self.resp.data[range]
    }
}

/// The PDUs of one reply, in order; see [`Reply::frames`].
pub(crate) struct Frames {
    lun: [u8; 8],
    itt: u32,
    status: Status,
    good: bool,
    sense: Option<Vec<u8>>,
    over: bool,
    under: bool,
    residual: u32,
    /// Data-in bytes sent: what was produced, cut to the expected length.
    len: usize,
    chunk: usize,
    offset: usize,
    data_sn: u32,
    done: bool,
}

impl Frames {
    fn residual_flags(&self) -> u8 {
        let mut flags = 0;
        if self.over {
            flags |= 0x04;
        }
        if self.under {
            flags |= 0x02;
        }
        flags
    }

    fn residual_count(&self) -> u32 {
        if self.over || self.under {
            self.residual
        } else {
            0
        }
    }
}

impl Iterator for Frames {
    /// A Data-In PDU without its data segment and the range of data-in
    /// that is its data segment, or a SCSI Response (carrying its sense in
    /// the PDU itself) and `None`.
    type Item = (Pdu, Option<Range<usize>>);

    fn next(&mut self) -> Option<(Pdu, Option<Range<usize>>)> {
        if self.done {
            return None;
        }
        if self.offset < self.len {
            let n = self.chunk.min(self.len - self.offset);
            let range = self.offset..self.offset + n;
            let last = range.end == self.len;
            let mut p = Pdu::new(Opcode::DataIn);
            let mut flags = 0u8;
            if last {
                flags |= 0x80;
                if self.good {
                    // Phase collapse: status rides on the last Data-In.
                    flags |= 0x01 | self.residual_flags();
                    p.set_byte(3, self.status as u8);
                    p.set_u32(44, self.residual_count());
                    self.done = true;
                }
            }
            p.set_flags(flags);
            p.set_lun(self.lun);
            p.set_itt(self.itt);
            p.set_u32(20, NO_TAG);
            p.set_u32(36, self.data_sn);
            p.set_u32(40, self.offset as u32);
            self.data_sn += 1;
            self.offset = range.end;
            return Some((p, Some(range)));
        }
        self.done = true;
        let mut r = Pdu::new(Opcode::ScsiResponse);
        r.set_flags(0x80 | self.residual_flags());
        r.set_byte(2, 0); // command completed at target
        r.set_byte(3, self.status as u8);
        r.set_itt(self.itt);
        r.set_u32(36, self.data_sn);
        r.set_u32(44, self.residual_count());
        if let Some(sense) = self.sense.take() {
            // RFC 7143 §11.4.7.2: SenseLength, then the sense data.
            let mut d = Vec::with_capacity(2 + sense.len());
            d.extend_from_slice(&(sense.len() as u16).to_be_bytes());
            d.extend_from_slice(&sense);
            r.data = Bytes::from(d);
        }
        Some((r, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(data: usize, edtl: u32, status: Status, sense: Option<Vec<u8>>) -> Reply {
        Reply {
            lun: [0; 8],
            itt: 9,
            edtl,
            resp: Response {
                status,
                data: (0..data).map(|i| i as u8).collect(),
                sense,
                data_out_wanted: None,
            },
        }
    }

    #[test]
    fn data_is_cut_at_the_initiators_segment_length_and_status_rides_on_the_last_piece() {
        let r = reply(10_000, 10_000, Status::Good, None);
        let frames: Vec<(Pdu, Range<usize>)> = r
            .frames(4096)
            .map(|(p, range)| (p, range.expect("Data-In")))
            .collect();
        let ranges: Vec<Range<usize>> = frames.iter().map(|f| f.1.clone()).collect();
        assert_eq!(ranges, vec![0..4096, 4096..8192, 8192..10_000]);
        for (i, (p, range)) in frames.iter().enumerate() {
            assert_eq!(p.opcode(), Some(Opcode::DataIn));
            assert_eq!(p.u32_at(36), i as u32, "DataSN");
            assert_eq!(p.u32_at(40), range.start as u32, "buffer offset");
        }
        let last = &frames[2].0;
        assert_eq!(last.flags(), 0x81, "F and S, no residual");
        assert_eq!(frames[0].0.flags(), 0);
        assert_eq!(r.data(frames[1].1.clone())[0], (4096 % 256) as u8);
    }

    #[test]
    fn short_data_reports_an_underflow_and_long_data_is_cut_with_an_overflow() {
        let r = reply(100, 512, Status::Good, None);
        let frames: Vec<_> = r.frames(8192).collect();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0.flags(), 0x83);
        assert_eq!(frames[0].0.u32_at(44), 412);

        let r = reply(600, 512, Status::Good, None);
        let frames: Vec<_> = r.frames(8192).collect();
        assert_eq!(frames[0].1, Some(0..512));
        assert_eq!(frames[0].0.flags(), 0x85);
        assert_eq!(frames[0].0.u32_at(44), 88);
    }

    #[test]
    fn a_failed_command_gets_a_scsi_response_with_its_sense_after_any_data() {
        let sense = vec![0x70, 0, 5, 0, 0, 0, 0, 10];
        let r = reply(0, 512, Status::CheckCondition, Some(sense.clone()));
        let frames: Vec<_> = r.frames(8192).collect();
        assert_eq!(frames.len(), 1);
        let (p, range) = &frames[0];
        assert_eq!(p.opcode(), Some(Opcode::ScsiResponse));
        assert_eq!(*range, None);
        assert_eq!(p.byte(3), Status::CheckCondition as u8);
        assert_eq!(&p.data[..2], &(sense.len() as u16).to_be_bytes());
        assert_eq!(&p.data[2..], &sense[..]);

        // Data and a failure: Data-In without status, then the response.
        let r = reply(1000, 1000, Status::CheckCondition, Some(sense));
        let frames: Vec<_> = r.frames(8192).collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0.flags(), 0x80);
        assert_eq!(frames[1].0.opcode(), Some(Opcode::ScsiResponse));
        assert_eq!(frames[1].0.u32_at(36), 1, "ExpDataSN counts the Data-In");
    }

    #[test]
    fn a_command_without_data_gets_only_a_scsi_response() {
        let r = reply(0, 0, Status::Good, None);
        let frames: Vec<_> = r.frames(8192).collect();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0.opcode(), Some(Opcode::ScsiResponse));
        assert_eq!(frames[0].0.flags(), 0x80);
    }
}
