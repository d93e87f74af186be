//! The memory budget: how much a model, a run or a data set may ask squeeze to allocate.
//! Sizes come from files (shapes, header fields, architecture descriptions), so each is checked
//! against this budget before anything that large is allocated; going over is an error that
//! gives the figure, not an abort. The budget defaults to the machine's physical memory;
//! `--memory-limit` sets another.

use std::sync::atomic::{AtomicU64, Ordering};

/// 0: not set, the default applies.
static LIMIT: AtomicU64 = AtomicU64::new(0);

/// Used when the physical memory cannot be read.
const FALLBACK: u64 = 16 << 30;

/// The budget in bytes.
pub fn memory_limit() -> u64 {
    match LIMIT.load(Ordering::Relaxed) {
        0 => physical_memory().unwrap_or(FALLBACK),
        n => n,
    }
}

/// Sets the budget for this process (`--memory-limit`).
pub fn set_memory_limit(bytes: u64) {
    LIMIT.store(bytes.max(1), Ordering::Relaxed);
}

#[cfg(unix)]
fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system configuration values.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let (pages, size) = (u64::try_from(pages).ok()?, u64::try_from(size).ok()?);
    pages.checked_mul(size).filter(|b| *b > 0)
}

#[cfg(not(unix))]
fn physical_memory() -> Option<u64> {
    None
}

/// An allocation the memory budget refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    #[error(
        "{what} needs {}, more than the memory limit of {} (raise it with --memory-limit)",
        crate::units::bytes(*needs as f64),
        crate::units::bytes(*limit as f64)
    )]
    OverLimit {
        what: String,
        needs: u128,
        limit: u64,
    },
    #[error(
        "{what} needs more memory than can be counted (over 2^128 bytes); the memory limit is {}",
        crate::units::bytes(*limit as f64)
    )]
    Uncountable { what: String, limit: u64 },
}

/// Refuses `bytes` (`None`: too large to count) for `what` when it exceeds the budget.
pub fn check_memory(what: &str, bytes: Option<u128>) -> Result<(), MemoryError> {
    let limit = memory_limit();
    match bytes {
        Some(b) if b <= u128::from(limit) => Ok(()),
        Some(needs) => Err(MemoryError::OverLimit {
            what: what.to_string(),
            needs,
            limit,
        }),
        None => Err(MemoryError::Uncountable {
            what: what.to_string(),
            limit,
        }),
    }
}

/// A size on the command line that does not parse (`--memory-limit`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("unknown unit '{unit}' in '{text}'; expected a size such as 512M, 16G or 2T")]
    UnknownUnit { unit: String, text: String },
    #[error("'{0}' is not a size; expected e.g. 512M, 16G or 2T")]
    NotANumber(String),
    #[error("'{0}' is not a usable size; expected e.g. 512M, 16G or 2T")]
    Unusable(String),
}

/// Parses a size: a number of bytes with an optional unit (`512M`, `16G`, `16GiB`, `2T`;
/// binary multiples).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(SizeError::UnknownUnit {
                unit: other.to_string(),
                text: text.to_string(),
            });
        }
    };
    let n: f64 = number
        .parse()
        .map_err(|_| SizeError::NotANumber(text.to_string()))?;
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(SizeError::Unusable(text.to_string()));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("16GiB"), Ok(16 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("NaN").is_err());
    }
}
