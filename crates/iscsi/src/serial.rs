//! Serial number arithmetic for CmdSN/StatSN/DataSN (RFC 1982, RFC 7143 §4.2.2.1).

/// `a < b` in 32-bit serial number arithmetic.
pub fn lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// `a <= b` in 32-bit serial number arithmetic.
pub fn le(a: u32, b: u32) -> bool {
    a == b || lt(a, b)
}

/// Whether `sn` lies in the window `[lo, hi]`.
pub fn in_window(sn: u32, lo: u32, hi: u32) -> bool {
    le(lo, sn) && le(sn, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_around() {
        assert!(lt(0xFFFF_FFFF, 0));
        assert!(lt(1, 2));
        assert!(!lt(2, 1));
        assert!(in_window(0, 0xFFFF_FFF0, 10));
        assert!(!in_window(11, 0xFFFF_FFF0, 10));
        assert!(le(5, 5));
    }
}
