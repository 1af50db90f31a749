//! Sizes as administrators write them: `10G`, `512MiB`, `1T`, `4096`.
//! Suffixes are binary (K = 1024), with or without `i`/`B`.

/// Parses a size such as `10G` or `1.5T` into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "size {s:?} is negative: give a size such as 10G or 512M"
        ));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("size {s:?} has no number; write e.g. 10G or 512M"));
    }
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        other => {
            return Err(format!(
                "size {s:?} has an unknown unit {other:?}; use K, M, G, T or P"
            ))
        }
    };
    let mult = 1u64 << shift;
    let bytes = if let Some((int, frac)) = num.split_once('.') {
        if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
            return Err(format!("size {s:?} is not a number"));
        }
        let whole: u64 = if int.is_empty() {
            0
        } else {
            int.parse()
                .map_err(|_| format!("size {s:?} is too large"))?
        };
        let frac_val: f64 = format!("0.{frac}")
            .parse()
            .map_err(|_| format!("size {s:?} is not a number"))?;
        whole
            .checked_mul(mult)
            .and_then(|w| w.checked_add((frac_val * mult as f64).round() as u64))
            .ok_or_else(|| format!("size {s:?} is too large"))?
    } else {
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .ok_or_else(|| format!("size {s:?} is too large"))?
    };
    if bytes == 0 {
        return Err(format!("size {s:?} is zero"));
    }
    Ok(bytes)
}

/// Formats bytes for people: `10 GiB`, `1.5 TiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut v = bytes as f64;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if (v - v.round()).abs() < 0.005 {
        format!("{} {}", v.round() as u64, UNITS[unit])
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_admins_write() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size(" 2 K").unwrap(), 2048);
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", "G", "10X", "0", "1.2.3G", "99999999999P", "-1G", "."] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_negative_size_says_so() {
        let err = parse_size("-1").unwrap_err();
        assert!(err.contains("negative"), "{err}");
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(10 << 30), "10 GiB");
        assert_eq!(format_size(3 << 29), "1.50 GiB");
    }
}
