//! Human units for sizes, times, accuracies and counts: the one formatter the command line,
//! the explorer, its reports and plots, and the memory-limit messages all print with.

/// Bytes in binary units with three significant digits: `512 B`, `1.50 KiB`, `132 KiB`,
/// `1.02 MiB`, `3.00 TiB`; bytes below 1 KiB stay bytes.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024.0 {
        return format!("{n:.0} B");
    }
    let mut v = n / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{:.*} {}", decimals(v), v, UNITS[unit])
}

/// Microseconds as `850 ns`, `17.3 µs`, `1.20 ms` or `2.5 s`.
pub fn micros(us: f64) -> String {
    if us == 0.0 {
        "0".into()
    } else if us < 1.0 {
        format!("{:.0} ns", us * 1000.0)
    } else if us < 1000.0 {
        format!("{:.*} µs", decimals(us), us)
    } else if us < 1_000_000.0 {
        format!("{:.*} ms", decimals(us / 1000.0), us / 1000.0)
    } else {
        format!("{:.1} s", us / 1e6)
    }
}

/// Three significant digits for values from 1 to 999.
fn decimals(v: f64) -> usize {
    if v < 10.0 {
        2
    } else if v < 100.0 {
        1
    } else {
        0
    }
}

/// An accuracy in [0, 1] as a percentage with two decimals.
pub fn percent(p: f64) -> String {
    format!("{:.2}%", p * 100.0)
}

/// A signed difference of accuracies in percentage points: `+0.12 pt`, `−1.30 pt`.
pub fn points_delta(d: f64) -> String {
    let pt = d * 100.0;
    if pt.abs() < 0.005 {
        "±0.00 pt".to_string()
    } else if pt < 0.0 {
        format!("−{:.2} pt", -pt)
    } else {
        format!("+{pt:.2} pt")
    }
}

/// Large counts with thin grouping: `266610` → `266.6k`.
pub fn count(n: usize) -> String {
    let f = n as f64;
    if n < 10_000 {
        n.to_string()
    } else if n < 1_000_000 {
        format!("{:.1}k", f / 1e3)
    } else {
        format!("{:.2}M", f / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.50 KiB");
        assert_eq!(bytes(1_066_440.0), "1.02 MiB");
        assert_eq!(bytes(135_168.0), "132 KiB");
        assert_eq!(bytes(64.0 * 1024.0), "64.0 KiB");
        assert_eq!(bytes(f64::from(1u32 << 30)), "1.00 GiB");
        assert_eq!(bytes(3.0 * 1024f64.powi(4)), "3.00 TiB");
        assert_eq!(bytes(2f64.powi(70)), "1024 EiB");
        assert_eq!(micros(0.5), "500 ns");
        assert_eq!(micros(17.25), "17.2 µs");
        assert_eq!(micros(1200.0), "1.20 ms");
        assert_eq!(points_delta(-0.013), "−1.30 pt");
        assert_eq!(points_delta(0.0), "±0.00 pt");
        assert_eq!(count(266_610), "266.6k");
    }
}
