//! IDX files (MNIST's format), raw or gzip-compressed, read as a stream: the header, then only
//! the samples asked for.

use std::path::{Path, PathBuf};

use super::source::{Source, check_memory};
use super::{DataError, DataOptions, EvalSet};

fn format_err(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// An IDX array's header: element type, width and dimensions.
pub(crate) struct IdxHeader {
    ty: u8,
    width: usize,
    pub(crate) dims: Vec<usize>,
}

impl IdxHeader {
    /// Reads the header and checks what it claims against the file: a raw file must hold
    /// exactly the data the dimensions say; a compressed one at least could.
    pub(crate) fn read(src: &mut Source, path: &Path) -> Result<IdxHeader, DataError> {
        // A raw file that ends early is short; a compressed one says why it broke.
        let exact = src.exact_left().is_some();
        let magic = src.bytes(4, "the IDX header").map_err(|e| match exact {
            true => format_err(
                path,
                "not an IDX file (shorter than its 4-byte magic number)",
            ),
            false => e,
        })?;
        if magic[0] != 0 || magic[1] != 0 {
            return Err(format_err(path, "not an IDX file (bad magic number)"));
        }
        let (ty, ndim) = (magic[2], magic[3] as usize);
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
        let raw_dims = src
            .bytes(4 * ndim as u64, "the IDX header")
            .map_err(|e| match exact {
                true => format_err(path, "truncated IDX header"),
                false => e,
            })?;
        let dims: Vec<usize> = raw_dims
            .chunks_exact(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .collect();
        let header = IdxHeader { ty, width, dims };
        // Checked: the dimensions come from the file and may multiply past usize.
        let need = header.data_bytes().ok_or_else(|| {
            format_err(
                path,
                format!("IDX header says {:?}, which is too large", header.dims),
            )
        })?;
        match src.exact_left() {
            Some(held) if held != need => Err(format_err(
                path,
                format!(
                    "IDX header says {:?} ({need} bytes of data) but the file holds {held} bytes (truncated?)",
                    header.dims
                ),
            )),
            _ => {
                src.claim(need, &format!("the IDX header ({:?})", header.dims))?;
                Ok(header)
            }
        }
    }

    fn data_bytes(&self) -> Option<u64> {
        let n = super::array::element_count(&self.dims)?.checked_mul(self.width)?;
        u64::try_from(n).ok()
    }

    /// Reads the values of the first `rows` entries of the first dimension (all of them when
    /// `rows` is `None`) as f32, checked against the memory limit first.
    pub(crate) fn values(
        &self,
        src: &mut Source,
        path: &Path,
        rows: Option<usize>,
    ) -> Result<Vec<f32>, DataError> {
        let total = self.dims.first().copied().unwrap_or(1);
        let rows = rows.map_or(total, |r| r.min(total));
        let per_row = super::array::element_count(self.dims.get(1..).unwrap_or(&[])).unwrap_or(0);
        let count = rows.saturating_mul(per_row);
        check_memory(
            path,
            "the data set",
            (count as u128).checked_mul(std::mem::size_of::<f32>() as u128),
        )?;
        let mut values = Vec::with_capacity(count);
        let ty = self.ty;
        src.blocks(
            (count as u64).saturating_mul(self.width as u64),
            self.width,
            "the IDX data",
            |body| match ty {
                0x08 => values.extend(body.iter().map(|&b| b as f32)),
                0x09 => values.extend(body.iter().map(|&b| b as i8 as f32)),
                0x0B => values.extend(
                    body.chunks_exact(2)
                        .map(|b| i16::from_be_bytes([b[0], b[1]]) as f32),
                ),
                0x0C => values.extend(
                    body.chunks_exact(4)
                        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f32),
                ),
                0x0D => values.extend(
                    body.chunks_exact(4)
                        .map(|b| f32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                ),
                _ => values.extend(body.chunks_exact(8).map(|b| {
                    f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })),
            },
        )?;
        // Read whole, a compressed file must end where its header says.
        if rows == total && !src.at_end()? {
            return Err(format_err(
                path,
                format!(
                    "IDX header says {:?} but the file holds more data after it",
                    self.dims
                ),
            ));
        }
        Ok(values)
    }
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
    // Both headers first: counts are compared before any data is read.
    let mut src = Source::open(&images)?;
    let header = IdxHeader::read(&mut src, &images)?;
    let mut lsrc = Source::open(&labels_path)?;
    let lheader = IdxHeader::read(&mut lsrc, &labels_path)?;
    let (dims, ldims) = (header.dims.clone(), lheader.dims.clone());
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
    let inputs = header.values(&mut src, &images, opts.limit)?;
    let labels = lheader
        .values(&mut lsrc, &labels_path, opts.limit)?
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
        classes: Vec::new(),
    })
}

fn is_images_file(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().contains("idx3"))
}

/// Whether a directory holds an IDX image file (`*idx3*`).
pub(crate) fn dir_holds_images(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| is_images_file(&e.path()))
    })
}

pub(crate) fn find_images_in_dir(dir: &Path, split: super::Split) -> Result<PathBuf, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_images_file(p))
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
