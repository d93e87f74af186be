//! Device targets: the flash, RAM and clock of the devices compressed models run on, read
//! from `assets/targets.toml` (built in) or a file of the same shape, and whether a measured
//! configuration fits one — flash against the packed bytes plus a code allowance, RAM against
//! the peak activation arena — with an estimated latency from per-format cycle counts.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::eval::LayerFigures;

/// The bundled targets file.
pub const BUILT_IN: &str = include_str!("../../assets/targets.toml");

/// Cycles per multiply-add of each kind of stored format (see `assets/targets.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cycles {
    pub dense_f32: f64,
    pub dense_f16: f64,
    pub dense_int8: f64,
    pub dense_int_low: f64,
    pub dense_codebook: f64,
    pub int8_int8: f64,
    pub sparse_extra: f64,
}

/// One device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flash_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_hz: Option<f64>,
    /// Flash the program takes besides the model.
    #[serde(default)]
    pub code_allowance_bytes: u64,
    /// This machine: RAM read from the operating system, latency measured, not estimated.
    #[serde(default)]
    pub measured: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycles_per_mac: Option<Cycles>,
    /// Where the figures come from.
    pub source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    target: Vec<Target>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("unknown target \"{name}\"; the targets are: {known}")]
    Unknown { name: String, known: String },
    #[error(transparent)]
    Read(#[from] crate::files::FileError),
}

/// Reads a targets file (`None`: the built-in one). The `host` entry gets this machine's RAM.
pub fn load(path: Option<&Path>) -> Result<Vec<Target>, TargetError> {
    let (text, shown) = match path {
        Some(p) => (crate::files::read_text(p)?, p.display().to_string()),
        None => (BUILT_IN.to_string(), "assets/targets.toml".to_string()),
    };
    parse(&text, &shown)
}

/// Parses a targets file's text (`shown` names it in errors).
pub fn parse(text: &str, shown: &str) -> Result<Vec<Target>, TargetError> {
    let file: TargetsFile = toml::from_str(text).map_err(|e| TargetError::File {
        path: shown.to_string(),
        msg: e.to_string(),
    })?;
    let mut targets = file.target;
    for t in &mut targets {
        let bad = |msg: String| TargetError::File {
            path: shown.to_string(),
            msg: format!("target {}: {msg}", t.name),
        };
        if t.measured {
            t.ram_bytes = t.ram_bytes.or_else(host_memory);
            continue;
        }
        match (t.clock_hz, &t.cycles_per_mac) {
            (Some(c), Some(_)) if c > 0.0 && c.is_finite() => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(bad(
                    "clock_hz and [cycles_per_mac] go together (both or neither)".into(),
                ));
            }
            (Some(c), Some(_)) => return Err(bad(format!("clock_hz {c} must be positive"))),
            (None, None) => {}
        }
        if let Some(c) = &t.cycles_per_mac {
            let all = [
                c.dense_f32,
                c.dense_f16,
                c.dense_int8,
                c.dense_int_low,
                c.dense_codebook,
                c.int8_int8,
                c.sparse_extra,
            ];
            if all.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(bad(
                    "every cycles_per_mac entry must be a non-negative number".into(),
                ));
            }
        }
    }
    Ok(targets)
}

/// The target called `name`.
pub fn find(targets: &[Target], name: &str) -> Result<Target, TargetError> {
    targets
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(name))
        .cloned()
        .ok_or_else(|| TargetError::Unknown {
            name: name.to_string(),
            known: targets
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Physical memory, as Linux reports it (`MemTotal`).
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What a configuration needs against what a device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Margin {
    pub need: u64,
    pub have: u64,
}

impl Margin {
    pub fn fits(&self) -> bool {
        self.need <= self.have
    }

    /// `have − need` (negative when it does not fit).
    pub fn spare(&self) -> i64 {
        self.have as i64 - self.need as i64
    }
}

/// Whether a configuration fits a target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fit {
    pub target: String,
    /// Packed model plus code allowance against flash (none: no flash limit).
    pub flash: Option<Margin>,
    /// Peak activation arena against RAM.
    pub ram: Option<Margin>,
    /// Estimated single-sample latency on the device (never measured there).
    pub latency_estimate_us: Option<f64>,
}

impl Fit {
    pub fn fits(&self) -> bool {
        self.flash.is_none_or(|m| m.fits()) && self.ram.is_none_or(|m| m.fits())
    }
}

impl Target {
    /// What flash leaves for the model once the program is in.
    pub fn model_bytes_room(&self) -> Option<f64> {
        self.flash_bytes
            .map(|f| f.saturating_sub(self.code_allowance_bytes) as f64)
    }

    /// Checks a configuration of `size_bytes` packed bytes, `arena_bytes` of activation
    /// memory and these layers against the device.
    pub fn fit(
        &self,
        size_bytes: u64,
        arena_bytes: u64,
        layers: &[LayerFigures],
        activation_bits: Option<u8>,
    ) -> Fit {
        Fit {
            target: self.name.clone(),
            flash: self.flash_bytes.map(|have| Margin {
                need: size_bytes + self.code_allowance_bytes,
                have,
            }),
            ram: self.ram_bytes.map(|have| Margin {
                need: arena_bytes,
                have,
            }),
            latency_estimate_us: self.latency_estimate_us(layers, activation_bits),
        }
    }

    /// Σ layers' multiply-adds × cycles per multiply-add of their format ÷ clock, in µs.
    pub fn latency_estimate_us(
        &self,
        layers: &[LayerFigures],
        activation_bits: Option<u8>,
    ) -> Option<f64> {
        let (clock, cycles) = (self.clock_hz?, self.cycles_per_mac.as_ref()?);
        if layers.iter().any(|l| l.macs == 0 && !l.format.is_empty()) {
            // Figures journaled before multiply-adds were recorded.
            return None;
        }
        let total: f64 = layers
            .iter()
            .map(|l| l.macs as f64 * cycles.per_mac(&l.format, activation_bits.is_some()))
            .sum();
        Some(total / clock * 1e6)
    }
}

impl Cycles {
    /// Cycles per multiply-add of a stored format named as the engine names it
    /// (`dense+f32`, `csr8+u4/channel ×a8`, `bitmask+codebook5`).
    pub fn per_mac(&self, format: &str, int_activations: bool) -> f64 {
        let sparse = !format.starts_with("dense");
        let values = format.split('+').nth(1).unwrap_or("f32");
        let int_act = int_activations || format.contains('×');
        let uniform_bits = values
            .strip_prefix('u')
            .and_then(|v| v.split('/').next())
            .and_then(|b| b.parse::<u32>().ok());
        let base = match (values, uniform_bits) {
            (_, Some(b)) if int_act => {
                if b >= 8 {
                    self.int8_int8
                } else {
                    self.int8_int8 + (self.dense_int_low - self.dense_int8).max(0.0)
                }
            }
            (_, Some(b)) if b >= 8 => self.dense_int8,
            (_, Some(_)) => self.dense_int_low,
            (v, None) if v.starts_with("codebook") => self.dense_codebook,
            (v, None) if v.starts_with("f16") || v.starts_with("bf16") => self.dense_f16,
            _ => self.dense_f32,
        };
        if sparse {
            base + self.sparse_extra
        } else {
            base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_targets_parse_with_sources() {
        let targets = load(None).unwrap();
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["cortex-m4", "cortex-m7", "esp32-s3", "pi-zero-2w", "host"]
        );
        assert!(targets.iter().all(|t| !t.source.is_empty()));
        let m4 = find(&targets, "Cortex-M4").unwrap();
        assert_eq!(m4.ram_bytes, Some(256 * 1024));
        assert_eq!(m4.flash_bytes, Some(1024 * 1024));
        let err = find(&targets, "cray-1").unwrap_err().to_string();
        assert!(err.contains("cortex-m7"), "{err}");
    }

    #[test]
    fn fit_and_estimate_by_hand() {
        let m4 = find(&load(None).unwrap(), "cortex-m4").unwrap();
        let layer = |macs: u64, format: &str| LayerFigures {
            macs,
            format: format.into(),
            ..Default::default()
        };
        // 235,200 f32 multiply-adds × 4 cycles + 2,360 sparse 4-bit entries × (7 + 3) cycles,
        // at 80 MHz: (940,800 + 23,600) / 80 = 12,055 µs.
        let layers = [layer(235_200, "dense+f32"), layer(2_360, "csr8+u4/channel")];
        let fit = m4.fit(100_000, 200_000, &layers, None);
        assert_eq!(
            fit.flash,
            Some(Margin {
                need: 165_536,
                have: 1_048_576
            })
        );
        assert!(fit.fits());
        assert!((fit.latency_estimate_us.unwrap() - 12_055.0).abs() < 1e-6);
        // The arena decides RAM: 300,000 bytes do not fit 256 KiB, by 37,856.
        let fit = m4.fit(100_000, 300_000, &layers, None);
        assert!(!fit.fits());
        assert_eq!(fit.ram.unwrap().spare(), -37_856);
        // 8-bit weights with 8-bit activations run as integer multiply-adds.
        let c = m4.cycles_per_mac.unwrap();
        assert_eq!(c.per_mac("dense+u8/channel ×a8", true), 1.0);
        assert_eq!(c.per_mac("dense+u4/channel ×a8", true), 3.0);
        assert_eq!(c.per_mac("bitmask+codebook5", false), 9.0);
    }

    #[test]
    fn bad_files_name_the_field() {
        let err = parse(
            "[[target]]\nname = \"x\"\ndescription = \"\"\nsource = \"\"\nclock_hz = 1e6\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("t.toml") && err.contains("cycles_per_mac"),
            "{err}"
        );
        let err = parse("[[target]]\nname = 3\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.toml:"), "{err}");
    }
}
