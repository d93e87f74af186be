//! What every result file records so that a point can be measured again and two result files
//! compared honestly: squeeze's version, the model and data files with their SHA-256, the
//! calibration inputs, the number of samples, and (beside it, per result) the recipe and seed.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One input file and the SHA-256 of its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: String,
    pub sha256: String,
}

impl FileDigest {
    pub fn of(path: &Path) -> Result<FileDigest, crate::files::FileError> {
        Ok(FileDigest {
            path: path.display().to_string(),
            sha256: crate::files::sha256_file(path)?,
        })
    }
}

/// Where activation calibration took its inputs from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalibrationSource {
    /// `training set` or `evaluation set`.
    pub set: String,
    pub path: String,
    /// Samples available (a recipe's `calibration_samples` takes the first of them).
    pub samples: usize,
}

/// The inputs behind every figure of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub squeeze_version: String,
    pub model: FileDigest,
    /// The evaluation set's files (inputs, and labels when they are a file of their own).
    pub data: Vec<FileDigest>,
    /// Samples evaluated (after `--limit`).
    pub samples: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationSource>,
}

impl Inputs {
    /// Hashes the model file and the evaluation set's files.
    pub fn new(
        model: &Path,
        data_files: &[std::path::PathBuf],
        samples: usize,
        calibration: Option<CalibrationSource>,
    ) -> Result<Inputs, crate::files::FileError> {
        Ok(Inputs {
            squeeze_version: env!("CARGO_PKG_VERSION").to_string(),
            model: FileDigest::of(model)?,
            data: data_files
                .iter()
                .map(|p| FileDigest::of(p))
                .collect::<Result<_, _>>()?,
            samples,
            calibration,
        })
    }

    /// Whether two result files were measured on the same model and data (paths may differ
    /// between machines; contents may not).
    pub fn same_inputs(&self, other: &Inputs) -> bool {
        let digests = |p: &Inputs| {
            let mut d: Vec<String> = p.data.iter().map(|f| f.sha256.clone()).collect();
            d.sort();
            (p.model.sha256.clone(), d, p.samples)
        };
        digests(self) == digests(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            FileDigest::of(&p).unwrap().sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
