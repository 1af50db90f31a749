//! INQUIRY standard data and VPD pages (SPC-4 6.6, 7.8; SBC-3 6.6).

use volume::Provisioning;

use crate::cdb::{ascii_field, be16};
use crate::limits::Limits;
use crate::sense::Sense;
use crate::LunIdentity;

/// VPD pages this unit reports, in ascending order.
pub const SUPPORTED_VPD: [u8; 7] = [0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2];

/// Builds the INQUIRY answer for `cdb` (before truncation to the allocation length).
pub fn inquiry(
    cdb: &[u8],
    id: &LunIdentity,
    limits: &Limits,
    provisioning: Provisioning,
) -> Result<Vec<u8>, Sense> {
    let evpd = cdb[1] & 0x01 != 0;
    if cdb[1] & 0xFE != 0 {
        // CMDDT (obsolete) and reserved bits.
        return Err(Sense::invalid_cdb(1, Some(1)));
    }
    let page = cdb[2];
    if !evpd {
        if page != 0 {
            return Err(Sense::invalid_cdb(2, None));
        }
        return Ok(standard(id));
    }
    match page {
        0x00 => Ok(vpd(0x00, SUPPORTED_VPD.to_vec())),
        0x80 => Ok(vpd(
            0x80,
            id.serial
                .bytes()
                .filter(|b| (0x20..0x7f).contains(b))
                .collect(),
        )),
        0x83 => Ok(vpd(0x83, device_identification(id))),
        0x8F => Ok(vpd(0x8F, crate::xcopy::third_party_copy_page())),
        0xB0 => Ok(vpd(0xB0, block_limits(limits))),
        0xB1 => Ok(vpd(0xB1, vec![0u8; 0x3C])),
        0xB2 => Ok(vpd(0xB2, provisioning_page(provisioning))),
        _ => Err(Sense::invalid_cdb(2, None)),
    }
}

/// The allocation length of an INQUIRY CDB.
pub fn allocation_length(cdb: &[u8]) -> usize {
    be16(cdb, 3) as usize
}

// SPC-4 6.6.2: standard INQUIRY data.
fn standard(id: &LunIdentity) -> Vec<u8> {
    let mut d = vec![0u8; 74];
    d[0] = 0x00; // peripheral qualifier 0, direct access block device
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP, response data format 2
    d[5] = 0x10 | 0x08; // TPGS = 01b: implicit ALUA; 3PC: EXTENDED COPY
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(&ascii_field(&id.vendor, 8));
    d[16..32].copy_from_slice(&ascii_field(&id.product, 16));
    d[32..36].copy_from_slice(&ascii_field(&id.revision, 4));
    // Version descriptors (SPC-4 table 144): SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00A0u16, 0x0960, 0x0460, 0x04C0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d.resize(96, 0);
    d[4] = (d.len() - 5) as u8;
    d
}

fn vpd(page: u8, body: Vec<u8>) -> Vec<u8> {
    let mut d = vec![0x00, page];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend(body);
    d
}

// SPC-4 7.8.6: device identification designators.
fn device_identification(id: &LunIdentity) -> Vec<u8> {
    let mut d = Vec::new();
    let mut add = |code_set: u8, piv_assoc_type: u8, value: &[u8]| {
        d.push(code_set);
        d.push(piv_assoc_type);
        d.push(0);
        d.push(value.len() as u8);
        d.extend_from_slice(value);
    };
    // NAA, associated with the logical unit, binary.
    add(0x01, 0x03, &id.naa);
    // T10 vendor ID, logical unit, ASCII: vendor (8) + serial.
    add(0x02, 0x01, &t10_designator(id));
    // Relative target port and target port group, target port, iSCSI protocol.
    let mut port = vec![0, 0];
    port.extend_from_slice(&id.relative_port.to_be_bytes());
    add(0x51, 0x94, &port);
    let mut group = vec![0, 0];
    group.extend_from_slice(&id.port_group.to_be_bytes());
    add(0x51, 0x95, &group);
    // SCSI name string of the target device, UTF-8, NUL-terminated, padded to 4.
    let mut name: Vec<u8> = id
        .target_name
        .as_bytes()
        .iter()
        .copied()
        .take(251)
        .collect();
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    add(0x53, 0xA8, &name);
    d
}

/// The T10 vendor ID designator value: vendor (8 bytes) + serial number.
pub fn t10_designator(id: &LunIdentity) -> Vec<u8> {
    let mut t10 = ascii_field(&id.vendor, 8);
    t10.extend(id.serial.bytes().filter(|b| (0x20..0x7f).contains(b)));
    t10
}

// SBC-3 6.6.4: block limits.
fn block_limits(l: &Limits) -> Vec<u8> {
    let mut d = vec![0u8; 0x3C];
    d[0] = 0x01; // WSNZ: WRITE SAME with zero blocks is refused
    d[1] = l.max_compare_and_write as u8;
    d[2..4].copy_from_slice(&(l.optimal_granularity as u16).to_be_bytes());
    d[4..8].copy_from_slice(&l.max_transfer.to_be_bytes());
    d[8..12].copy_from_slice(&l.optimal_transfer.to_be_bytes());
    d[16..20].copy_from_slice(&l.max_unmap_lbas.to_be_bytes());
    d[20..24].copy_from_slice(&l.max_unmap_descriptors.to_be_bytes());
    d[24..28].copy_from_slice(&l.optimal_granularity.to_be_bytes());
    d[32..40].copy_from_slice(&(l.max_write_same as u64).to_be_bytes());
    d
}

// SBC-3 6.6.5: logical block provisioning.
fn provisioning_page(p: Provisioning) -> Vec<u8> {
    match p {
        // LBPU, LBPWS, LBPWS10, LBPRZ; provisioning type 2 = thin.
        Provisioning::Thin => vec![0x00, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0x00],
        Provisioning::Full => vec![0x00, 0x00, 0x00, 0x00],
    }
}
