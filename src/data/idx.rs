//! IDX files (MNIST's format), raw or gzip-compressed.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, DataOptions, EvalSet};

fn format_err(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads a whole file, un-gzipping it when it starts with the gzip magic.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format_err(path, format!("broken gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An IDX array: dimensions and values as f32.
pub(crate) fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<f32>), DataError> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(format_err(path, "not an IDX file (bad magic number)"));
    }
    let (ty, ndim) = (bytes[2], bytes[3] as usize);
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(format_err(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let width = match ty {
        0x08 | 0x09 => 1,
        0x0B => 2,
        0x0C | 0x0D => 4,
        0x0E => 8,
        other => {
            return Err(format_err(
                path,
                format!("unknown IDX element type 0x{other:02x}"),
            ));
        }
    };
    // Checked: the dimensions come from the file and may multiply past usize.
    let need = super::array::element_count(&dims)
        .and_then(|n| n.checked_mul(width))
        .ok_or_else(|| {
            format_err(
                path,
                format!("IDX header says {dims:?}, which is too large"),
            )
        })?;
    let body = &bytes[header..];
    if body.len() != need {
        return Err(format_err(
            path,
            format!(
                "IDX header says {dims:?} ({} bytes of data) but the file holds {} bytes (truncated?)",
                need,
                body.len()
            ),
        ));
    }
    let values: Vec<f32> = match ty {
        0x08 => body.iter().map(|&b| b as f32).collect(),
        0x09 => body.iter().map(|&b| b as i8 as f32).collect(),
        0x0B => body
            .chunks_exact(2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]) as f32)
            .collect(),
        0x0C => body
            .chunks_exact(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        0x0D => body
            .chunks_exact(4)
            .map(|b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => body
            .chunks_exact(8)
            .map(|b| f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
    };
    Ok((dims, values))
}

/// `t10k-images-idx3-ubyte(.gz)` → `t10k-labels-idx1-ubyte(.gz)`.
pub(crate) fn labels_path_for(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_string_lossy().into_owned();
    let candidate = name.replace("images", "labels").replace("idx3", "idx1");
    if candidate == name {
        return None;
    }
    let with = images.with_file_name(&candidate);
    if with.exists() {
        return Some(with);
    }
    // The labels may be compressed when the images are not, or the other way round.
    let alt = match candidate.strip_suffix(".gz") {
        Some(plain) => plain.to_string(),
        None => format!("{candidate}.gz"),
    };
    let alt = images.with_file_name(alt);
    alt.exists().then_some(alt)
}

pub(crate) fn load(path: &Path, opts: &DataOptions) -> Result<EvalSet, DataError> {
    let images = if path.is_dir() {
        find_images_in_dir(path, opts.split)?
    } else {
        path.to_path_buf()
    };
    let labels_path = match &opts.labels {
        Some(l) => l.clone(),
        None => labels_path_for(&images).ok_or_else(|| {
            format_err(
                &images,
                "no labels file found beside it (expected the same name with \"labels\" and \"idx1\"); give one with --labels",
            )
        })?,
    };
    let (dims, inputs) = read_idx(&images)?;
    let (ldims, labels) = read_idx(&labels_path)?;
    if dims.is_empty() {
        return Err(format_err(
            &images,
            "IDX images need at least one dimension",
        ));
    }
    if ldims.len() != 1 {
        return Err(format_err(
            &labels_path,
            format!("labels must be 1-D, found shape {ldims:?}"),
        ));
    }
    if ldims[0] != dims[0] {
        return Err(DataError::Mismatch {
            path: labels_path,
            msg: format!(
                "{} labels for {} images in {}",
                ldims[0],
                dims[0],
                images.display()
            ),
        });
    }
    let labels = labels
        .iter()
        .map(|&l| {
            if l < 0.0 || l.fract() != 0.0 {
                Err(format_err(
                    &labels_path,
                    format!("label {l} is not a class index"),
                ))
            } else {
                Ok(l as u32)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EvalSet {
        source: images,
        inputs,
        sample_shape: dims[1..].to_vec(),
        labels,
    })
}

pub(crate) fn find_images_in_dir(dir: &Path, split: super::Split) -> Result<PathBuf, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("idx3"))
        })
        .collect();
    found.sort();
    if found.len() > 1 {
        // MNIST's folder holds a training and a test pair: take the split the command reads.
        let of_split: Vec<&PathBuf> = found
            .iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| split.matches(&n.to_string_lossy()))
            })
            .collect();
        if let [one] = of_split.as_slice() {
            return Ok((*one).clone());
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format_err(
            dir,
            "the directory holds no IDX image file (*idx3*)",
        )),
        _ => Err(format_err(
            dir,
            format!(
                "the directory holds {} IDX image files; name one: {}",
                found.len(),
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
