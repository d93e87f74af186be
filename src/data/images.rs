//! Image folders, torchvision's `ImageFolder` layout: one sub-folder per class holding PNG or
//! JPEG files (sub-folders of a class folder count for that class). Classes are the sub-folder
//! names in sorted order and a sample's label is its class's index, as torchvision numbers
//! them. Names starting with `.` (`.DS_Store`, `.ipynb_checkpoints`) are skipped, files at the
//! top level are not samples, and files with other extensions (a README) are left out; image
//! formats torchvision would read but this reader does not (BMP, TIFF, WebP, PPM/PGM) are
//! refused rather than silently left out.
//!
//! Each image is decoded, converted to the model's channels (`C = 1`: luma as PIL computes it,
//! `0.299 R + 0.587 G + 0.114 B`; `C = 3`: RGB; alpha dropped; 16-bit samples reduced to 8)
//! and resized to the model's `[H, W]` as torchvision's `Resize` + `CenterCrop` would: scaled
//! (bilinear, antialiased when shrinking) until it covers `H × W` with its aspect ratio kept,
//! then cropped at the centre. An image whose binding side already has the input's length
//! (`28×40` for `28×28`) is only cropped, not resampled. Values stay raw (0–255): the model's `scale`, `mean` and `std`
//! apply as for every format.
//!
//! Samples come in a fixed order that mixes the classes (sorted by a hash of each file's path
//! inside the folder), so `--limit N`, calibration's first samples and fine-tuning's held-out
//! last samples are spread over the classes rather than taken from the first or last class.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, ImageBuffer, Pixel};
use rayon::prelude::*;

use super::source::check_memory;
use super::{DataError, DataOptions, EvalSet, format_err};

/// The extensions read (compared without case).
pub(crate) const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Image extensions torchvision's `ImageFolder` reads and this reader does not.
const REFUSED: [&str; 6] = ["bmp", "pgm", "ppm", "tif", "tiff", "webp"];

/// What an image folder expects, for messages.
const LAYOUT: &str = "one sub-folder per class holding PNG or JPEG images \
     (torchvision's ImageFolder layout, e.g. DIR/cat/1.png, DIR/dog/2.jpg)";

/// A resized image may be at most this many times the input's area before it is cropped: a
/// far more elongated image would take memory out of proportion to what is kept of it.
const MAX_COVER_FACTOR: u64 = 64;

/// The files of an image folder: class names by label, and every image with its label in the
/// order samples are read.
pub(crate) struct Listing {
    pub classes: Vec<String>,
    pub files: Vec<(PathBuf, u32)>,
}

fn io_err(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// The extension of a file name, lower-cased.
fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

/// Lists an image folder: its class sub-folders and their images, checked (no class without
/// an image, no image in a refused format).
pub(crate) fn list(dir: &Path) -> Result<Listing, DataError> {
    let mut class_dirs: Vec<(std::ffi::OsString, PathBuf)> = Vec::new();
    let (mut top_images, mut others) = (0usize, 0usize);
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        if hidden(&name) {
            continue;
        }
        let path = entry.path();
        // Symbolic links are followed, as torchvision does.
        if path.is_dir() {
            class_dirs.push((name, path));
        } else if extension(&path).is_some_and(|x| EXTENSIONS.contains(&x.as_str())) {
            top_images += 1;
        } else {
            others += 1;
        }
    }
    if class_dirs.is_empty() {
        let found = match (top_images, others) {
            (0, 0) => "the folder is empty".to_string(),
            (0, n) => format!("the folder holds {n} file(s) but no IDX pair and no sub-folder"),
            (n, _) => format!(
                "the folder holds {n} image(s) but no class sub-folders: the class of an image is the sub-folder it is in"
            ),
        };
        return Err(format_err(
            dir,
            format!(
                "{found}; expected an IDX pair (*-images-idx3-ubyte with its labels) or {LAYOUT}"
            ),
        ));
    }
    class_dirs.sort();
    let mut classes = Vec::with_capacity(class_dirs.len());
    let mut files = Vec::new();
    for (label, (name, class_dir)) in class_dirs.iter().enumerate() {
        let name = name.to_string_lossy().into_owned();
        let label = u32::try_from(label)
            .map_err(|_| format_err(dir, "the folder holds more than 2^32 classes"))?;
        let mut found = Vec::new();
        let mut ignored = Vec::new();
        let mut visited = Vec::new();
        collect(class_dir, &mut found, &mut ignored, &mut visited)?;
        if found.is_empty() {
            let ignored = match ignored.as_slice() {
                [] => String::new(),
                some => format!(
                    " ({} other file(s) left out, e.g. {})",
                    some.len(),
                    some[0].display()
                ),
            };
            return Err(format_err(
                class_dir,
                format!(
                    "class folder '{name}' (label {label}) holds no PNG or JPEG image{ignored}; expected at least one .png, .jpg or .jpeg file in every class folder"
                ),
            ));
        }
        files.extend(found.into_iter().map(|p| (p, label)));
        classes.push(name);
    }
    // A fixed order that mixes the classes: by a stable hash of the path inside the folder.
    let mut keyed: Vec<(u64, (PathBuf, u32))> = files
        .into_iter()
        .map(|(p, l)| {
            let rel = p.strip_prefix(dir).unwrap_or(&p);
            let key = crate::explore::eval::Fnv::default()
                .write(rel.as_os_str().as_encoded_bytes())
                .finish();
            (key, (p, l))
        })
        .collect();
    keyed.sort();
    Ok(Listing {
        classes,
        files: keyed.into_iter().map(|(_, f)| f).collect(),
    })
}

/// Adds the images under `dir` (recursively) to `found` and other files to `ignored`; refuses
/// images in a format not read. `visited` guards against symbolic-link cycles.
fn collect(
    dir: &Path,
    found: &mut Vec<PathBuf>,
    ignored: &mut Vec<PathBuf>,
    visited: &mut Vec<PathBuf>,
) -> Result<(), DataError> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| io_err(dir, e))?;
    if visited.contains(&canonical) {
        return Ok(());
    }
    visited.push(canonical);
    let mut entries: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if !hidden(&entry.file_name()) {
            entries.push(entry.path());
        }
    }
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, found, ignored, visited)?;
            continue;
        }
        match extension(&path) {
            Some(x) if EXTENSIONS.contains(&x.as_str()) => found.push(path),
            Some(x) if REFUSED.contains(&x.as_str()) => {
                return Err(format_err(
                    &path,
                    format!(
                        "'.{x}' images are not read; expected PNG or JPEG (.png, .jpg, .jpeg): convert it, or move it out of the folder"
                    ),
                ));
            }
            _ => ignored.push(path),
        }
    }
    Ok(())
}

/// The channels, height and width the model's input asks for, checked.
fn target(dir: &Path, opts: &DataOptions) -> Result<(usize, u32, u32), DataError> {
    let Some(input) = &opts.image_input else {
        return Err(DataError::Mismatch {
            path: dir.to_path_buf(),
            msg: "an image folder is resized to a model's input, and no model was given to read it with".into(),
        });
    };
    let shape = &input.shape;
    let not_image = |why: &str| DataError::Mismatch {
        path: dir.to_path_buf(),
        msg: format!(
            "an image folder needs a model whose input is an image, [C, H, W] with C = 1 (greyscale) or 3 (RGB); the input of {} is {shape:?}{why}",
            input.model.display()
        ),
    };
    match shape.as_slice() {
        [c @ (1 | 3), h, w] if *h > 0 && *w > 0 => {
            let side = |v: usize| u32::try_from(v).map_err(|_| not_image(" (too large)"));
            Ok((*c, side(*h)?, side(*w)?))
        }
        [_, _, _] => Err(not_image("")),
        _ => Err(not_image(" (set the model's [input] shape to [C, H, W])")),
    }
}

pub(crate) fn load(dir: &Path, opts: &DataOptions) -> Result<EvalSet, DataError> {
    super::reject_labels_option(dir, opts, "the class sub-folders")?;
    let (c, h, w) = target(dir, opts)?;
    let listing = list(dir)?;
    let mut files = listing.files;
    if let Some(n) = opts.limit {
        files.truncate(n);
    }
    let sample_len = c * h as usize * w as usize;
    check_memory(
        dir,
        "the image folder",
        (files.len() as u128)
            .checked_mul(sample_len as u128)
            .and_then(|v| v.checked_mul(std::mem::size_of::<f32>() as u128)),
    )?;
    let mut inputs = vec![0f32; files.len() * sample_len];
    let results: Vec<Result<(), DataError>> = inputs
        .par_chunks_mut(sample_len)
        .zip(files.par_iter())
        .map(|(out, (path, _))| read_image(path, c, (w, h), out))
        .collect();
    let mut failures = results.into_iter().filter_map(Result::err);
    if let Some(first) = failures.next() {
        let more = failures.count();
        return Err(match (first, more) {
            (e, 0) => e,
            (DataError::Format { path, msg }, n) => DataError::Format {
                path,
                msg: format!("{msg} (and {n} more image(s) that cannot be read)"),
            },
            (e, _) => e,
        });
    }
    Ok(EvalSet {
        source: dir.to_path_buf(),
        inputs,
        sample_shape: vec![c, h as usize, w as usize],
        labels: files.iter().map(|(_, l)| *l).collect(),
        classes: listing.classes,
    })
}

/// Decodes one image into `out`: `channels` planes of `width × height` raw values.
fn read_image(
    path: &Path,
    channels: usize,
    (width, height): (u32, u32),
    out: &mut [f32],
) -> Result<(), DataError> {
    let (file, _) = crate::files::open_regular(path)?;
    let image = image::io::Reader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| io_err(path, e))?
        .decode()
        .map_err(|e| {
            let why = match &e {
                image::ImageError::IoError(io)
                    if io.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    "the file ends before the image does (truncated?)".to_string()
                }
                _ => e.to_string(),
            };
            format_err(
                path,
                format!("cannot decode the image (expected PNG or JPEG): {why}"),
            )
        })?;
    if image.width() == 0 || image.height() == 0 {
        return Err(format_err(path, "the image has no pixels"));
    }
    if channels == 1 {
        let grey = luma(&image);
        let fitted = resize_and_crop(path, &grey, (width, height))?;
        for (o, p) in out.iter_mut().zip(fitted.pixels()) {
            *o = f32::from(p.0[0]);
        }
    } else {
        let rgb = image.to_rgb8();
        let fitted = resize_and_crop(path, &rgb, (width, height))?;
        let plane = width as usize * height as usize;
        for (i, p) in fitted.pixels().enumerate() {
            for (ch, v) in p.0.iter().enumerate() {
                out[ch * plane + i] = f32::from(*v);
            }
        }
    }
    Ok(())
}

/// Greyscale as PIL's `convert("L")` computes it (ITU-R 601-2 luma, in 16-bit fixed point);
/// an image already grey keeps its values.
fn luma(image: &DynamicImage) -> GrayImage {
    match image {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_) => image.to_luma8(),
        _ => {
            let rgb = image.to_rgb8();
            GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                let [r, g, b] = rgb.get_pixel(x, y).0;
                let l =
                    (u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000)
                        >> 16;
                // At most 255: the weights sum to 65536.
                image::Luma([l.min(255) as u8])
            })
        }
    }
}

/// The size an image of `(w, h)` is resized to so that it covers `(tw, th)` with its aspect
/// ratio kept: the side that needs the larger scale becomes the target's, the other is scaled
/// and rounded down, as torchvision's `Resize` does for the shorter side.
pub(crate) fn cover_size((w, h): (u32, u32), (tw, th): (u32, u32)) -> (u64, u64) {
    let (w, h, tw, th) = (u64::from(w), u64::from(h), u64::from(tw), u64::from(th));
    if th * w >= tw * h {
        (th * w / h, th)
    } else {
        (tw, tw * h / w)
    }
}

/// The offset of a centred crop of `size` from `full`, rounded as torchvision's `CenterCrop`
/// (Python's `round`: halves to even).
pub(crate) fn crop_offset(full: u64, size: u64) -> u64 {
    ((full - size) as f64 / 2.0).round_ties_even() as u64
}

/// Resizes `image` to cover `(tw, th)` and crops the centre.
fn resize_and_crop<P: Pixel<Subpixel = u8> + 'static>(
    path: &Path,
    image: &ImageBuffer<P, Vec<u8>>,
    (tw, th): (u32, u32),
) -> Result<ImageBuffer<P, Vec<u8>>, DataError> {
    let (nw, nh) = cover_size(image.dimensions(), (tw, th));
    if nw * nh > MAX_COVER_FACTOR * u64::from(tw) * u64::from(th) {
        return Err(format_err(
            path,
            format!(
                "a {}×{} image is too elongated for a {tw}×{th} input: scaled to cover it, it would be {nw}×{nh}; expected an aspect ratio within {MAX_COVER_FACTOR}:1 of the input's (crop it first)",
                image.width(),
                image.height()
            ),
        ));
    }
    let (Ok(nw), Ok(nh)) = (u32::try_from(nw), u32::try_from(nh)) else {
        return Err(format_err(
            path,
            format!("scaled to cover a {tw}×{th} input, the image would be {nw}×{nh}, too large"),
        ));
    };
    let (x, y) = (
        crop_offset(u64::from(nw), u64::from(tw)) as u32,
        crop_offset(u64::from(nh), u64::from(th)) as u32,
    );
    if (nw, nh) == image.dimensions() {
        return Ok(imageops::crop_imm(image, x, y, tw, th).to_image());
    }
    let resized = imageops::resize(image, nw, nh, FilterType::Triangle);
    Ok(imageops::crop_imm(&resized, x, y, tw, th).to_image())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_size_keeps_the_aspect_ratio() {
        // The shorter side becomes the target's; the other rounds down.
        assert_eq!(cover_size((40, 30), (28, 28)), (37, 28));
        assert_eq!(cover_size((30, 40), (28, 28)), (28, 37));
        assert_eq!(cover_size((28, 28), (28, 28)), (28, 28));
        // A non-square input: the side that needs the larger scale binds.
        assert_eq!(cover_size((100, 100), (20, 10)), (20, 20));
        assert_eq!(cover_size((10, 100), (20, 10)), (20, 200));
    }

    #[test]
    fn crop_offsets_round_halves_to_even() {
        assert_eq!(crop_offset(28, 28), 0);
        assert_eq!(crop_offset(30, 28), 1);
        // (29 − 28) / 2 = 0.5 → 0; (31 − 28) / 2 = 1.5 → 2; (33 − 28) / 2 = 2.5 → 2.
        assert_eq!(crop_offset(29, 28), 0);
        assert_eq!(crop_offset(31, 28), 2);
        assert_eq!(crop_offset(33, 28), 2);
    }
}
