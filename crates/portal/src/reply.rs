//! A finished command on its way back (RFC 7143 §11.4, §11.7): its data-in
//! cut into Data-In PDUs, with the status on the last one (phase collapse)
//! or in a SCSI Response of its own. The writer sends the PDUs one by one,
//! each header followed by its piece of the data, then gives the data
//! buffer back to the pool: nothing is copied or allocated per PDU.

use std::ops::Range;

use iscsi::{CommandResponse, DataIn, Pdu, ScsiResponse, RESERVED_TAG};
use scsi::{Response, Status};

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
            let mut p = DataIn::new();
            if last {
                p.set_final(true);
                if self.good {
                    // Phase collapse: status rides on the last Data-In.
                    p.set_status_present(true);
                    p.set_residual_overflow(self.over);
                    p.set_residual_underflow(self.under);
                    p.set_status(self.status as u8);
                    p.set_residual_count(self.residual_count());
                    self.done = true;
                }
            }
            p.set_lun(self.lun);
            p.set_itt(self.itt);
            p.set_target_transfer_tag(RESERVED_TAG);
            p.set_data_sn(self.data_sn);
            p.set_buffer_offset(self.offset as u32);
            self.data_sn += 1;
            self.offset = range.end;
            return Some((p.into(), Some(range)));
        }
        self.done = true;
        let mut r = ScsiResponse::new();
        r.set_residual_overflow(self.over);
        r.set_residual_underflow(self.under);
        r.set_command_response(CommandResponse::CompletedAtTarget);
        r.set_status(self.status as u8);
        r.set_itt(self.itt);
        r.set_exp_data_sn(self.data_sn);
        r.set_residual_count(self.residual_count());
        if let Some(sense) = self.sense.take() {
            r.set_sense(&sense);
        }
        Some((r.into(), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iscsi::Opcode;

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
            let d = DataIn::view(p);
            assert_eq!(d.data_sn(), i as u32);
            assert_eq!(d.buffer_offset(), range.start as u32);
            assert_eq!(d.target_transfer_tag(), RESERVED_TAG);
            assert_eq!(d.itt(), 9);
        }
        let last = DataIn::view(&frames[2].0);
        assert!(last.is_final() && last.status_present(), "F and S");
        assert!(!last.residual_overflow() && !last.residual_underflow());
        assert_eq!(last.status(), Status::Good as u8);
        let first = DataIn::view(&frames[0].0);
        assert!(!first.is_final() && !first.status_present());
        assert_eq!(r.data(frames[1].1.clone())[0], (4096 % 256) as u8);
    }

    #[test]
    fn short_data_reports_an_underflow_and_long_data_is_cut_with_an_overflow() {
        let r = reply(100, 512, Status::Good, None);
        let frames: Vec<_> = r.frames(8192).collect();
        assert_eq!(frames.len(), 1);
        let d = DataIn::view(&frames[0].0);
        assert!(d.is_final() && d.status_present() && d.residual_underflow());
        assert!(!d.residual_overflow());
        assert_eq!(d.residual_count(), 412);

        let r = reply(600, 512, Status::Good, None);
        let frames: Vec<_> = r.frames(8192).collect();
        assert_eq!(frames[0].1, Some(0..512));
        let d = DataIn::view(&frames[0].0);
        assert!(d.is_final() && d.status_present() && d.residual_overflow());
        assert!(!d.residual_underflow());
        assert_eq!(d.residual_count(), 88);
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
        let r = ScsiResponse::view(p);
        assert_eq!(r.status(), Status::CheckCondition as u8);
        assert_eq!(r.response(), CommandResponse::CompletedAtTarget as u8);
        assert_eq!(r.sense(), Some(&sense[..]));
        assert_eq!(p.data.len(), 2 + sense.len());

        // Data and a failure: Data-In without status, then the response.
        let r = reply(1000, 1000, Status::CheckCondition, Some(sense));
        let frames: Vec<_> = r.frames(8192).collect();
        assert_eq!(frames.len(), 2);
        let d = DataIn::view(&frames[0].0);
        assert!(d.is_final() && !d.status_present(), "data without status");
        assert_eq!(frames[1].0.opcode(), Some(Opcode::ScsiResponse));
        let r = ScsiResponse::view(&frames[1].0);
        assert_eq!(r.exp_data_sn(), 1, "ExpDataSN counts the Data-In");
    }

    #[test]
    fn a_command_without_data_gets_only_a_scsi_response() {
        let r = reply(0, 0, Status::Good, None);
        let frames: Vec<_> = r.frames(8192).collect();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0.opcode(), Some(Opcode::ScsiResponse));
        let r = ScsiResponse::view(&frames[0].0);
        assert!(!r.residual_overflow() && !r.residual_underflow());
        assert_eq!((r.status(), r.residual_count()), (Status::Good as u8, 0));
    }
}
