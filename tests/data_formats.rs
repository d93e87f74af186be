//! Evaluation-set readers: every format loads a good file with the right shape, values and
//! labels, and every malformed file gives an error naming the file, the field and what was
//! expected. Fixtures are written by the tests into temporary directories.

// clippy.toml lets #[test] functions unwrap; this file's helpers do too.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use squeeze::data::{self, DataError, DataFormat, DataOptions, EvalSet};
use squeeze::model::InputSpec;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Fixture writers

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An IDX file of u8 values.
fn idx_u8(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

/// An NPY file (`version` 1, 2 or 3) with the header padded so the data starts on a multiple
/// of 64 bytes.
fn npy_v(version: u8, descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape = match shape {
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let fortran = if fortran { "True" } else { "False" };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
    let prefix = if version == 1 { 10 } else { 12 };
    while (prefix + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([version, 0]);
    if version == 1 {
        out.extend((header.len() as u16).to_le_bytes());
    } else {
        out.extend((header.len() as u32).to_le_bytes());
    }
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    npy_v(1, descr, false, shape, data)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn npz(members: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in members {
        w.start_file(*name, opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn safetensors(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Assertions

fn load(p: &Path) -> Result<EvalSet, DataError> {
    data::load(p, &DataOptions::default())
}

fn with_labels(p: &Path, labels: &Path) -> Result<EvalSet, DataError> {
    data::load(
        p,
        &DataOptions {
            labels: Some(labels.to_path_buf()),
            ..Default::default()
        },
    )
}

/// Asserts the load failed with a message containing every word (case-insensitive).
#[track_caller]
fn assert_err(r: Result<EvalSet, DataError>, words: &[&str]) -> String {
    let e = match r {
        Ok(set) => panic!("expected an error, loaded {} samples", set.len()),
        Err(e) => e.to_string(),
    };
    let lower = e.to_lowercase();
    for w in words {
        assert!(lower.contains(&w.to_lowercase()), "error lacks {w:?}: {e}");
    }
    e
}

/// Three 2×2 samples with values 0..12 and labels 2, 0, 1.
const X12: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const Y3: [u8; 3] = [2, 0, 1];

#[track_caller]
fn assert_x12(set: &EvalSet, shape: &[usize]) {
    assert_eq!(set.len(), 3);
    assert_eq!(set.sample_shape, shape);
    let want: Vec<f32> = X12.iter().map(|&v| v as f32).collect();
    assert_eq!(set.inputs, want);
    assert_eq!(set.labels, vec![2, 0, 1]);
}

// ---------------------------------------------------------------------------------------------
// IDX

#[test]
fn idx_raw_pair_loads() {
    let d = TempDir::new().unwrap();
    let x = write(d.path(), "t-images-idx3-ubyte", &idx_u8(&[3, 2, 2], &X12));
    write(d.path(), "t-labels-idx1-ubyte", &idx_u8(&[3], &Y3));
    assert_x12(&load(&x).unwrap(), &[2, 2]);
    assert_eq!(DataFormat::detect(&x).unwrap(), DataFormat::Idx);
}

#[test]
fn idx_gz_pair_and_directory_load() {
    let d = TempDir::new().unwrap();
    let x = write(
        d.path(),
        "t-images-idx3-ubyte.gz",
        &gz(&idx_u8(&[3, 2, 2], &X12)),
    );
    // The labels uncompressed while the images are compressed: still found.
    write(d.path(), "t-labels-idx1-ubyte", &idx_u8(&[3], &Y3));
    assert_x12(&load(&x).unwrap(), &[2, 2]);
    assert_x12(&load(d.path()).unwrap(), &[2, 2]);
}

#[test]
fn a_directory_with_a_train_and_a_test_pair_reads_the_split_asked_for() {
    let d = TempDir::new().unwrap();
    write(
        d.path(),
        "t10k-images-idx3-ubyte",
        &idx_u8(&[3, 2, 2], &X12),
    );
    write(d.path(), "t10k-labels-idx1-ubyte", &idx_u8(&[3], &Y3));
    let train_x: Vec<u8> = X12.iter().take(8).map(|v| v + 100).collect();
    write(
        d.path(),
        "train-images-idx3-ubyte",
        &idx_u8(&[2, 2, 2], &train_x),
    );
    write(d.path(), "train-labels-idx1-ubyte", &idx_u8(&[2], &[1, 1]));
    // Evaluation (the default) reads the test pair; training asks for the training pair.
    assert_x12(&load(d.path()).unwrap(), &[2, 2]);
    let train = data::load(
        d.path(),
        &DataOptions {
            split: data::Split::Train,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(train.len(), 2);
    assert_eq!(train.inputs[0], 100.0);
    // The training set beside a test set: the folder, or the sibling file.
    assert_eq!(
        data::training_set_beside(d.path()).as_deref(),
        Some(d.path())
    );
    assert_eq!(
        data::training_set_beside(&d.path().join("t10k-images-idx3-ubyte")),
        Some(d.path().join("train-images-idx3-ubyte"))
    );
    assert_eq!(
        data::training_set_beside(&d.path().join("train-images-idx3-ubyte")),
        None
    );
    // A third image file that belongs to neither split leaves the choice ambiguous for neither.
    write(
        d.path(),
        "extra-images-idx3-ubyte",
        &idx_u8(&[3, 2, 2], &X12),
    );
    assert_x12(&load(d.path()).unwrap(), &[2, 2]);
}

#[test]
fn idx_labels_option() {
    let d = TempDir::new().unwrap();
    let x = write(d.path(), "imgs.idx3-ubyte", &idx_u8(&[3, 2, 2], &X12));
    let y = write(d.path(), "answers.idx", &idx_u8(&[3], &Y3));
    assert_x12(&with_labels(&x, &y).unwrap(), &[2, 2]);
}

#[test]
fn idx_errors() {
    let d = TempDir::new().unwrap();
    // No labels beside the images.
    let x = write(d.path(), "a-images-idx3-ubyte", &idx_u8(&[3, 2, 2], &X12));
    assert_err(load(&x), &["a-images-idx3-ubyte", "labels", "--labels"]);
    // Bad magic.
    let bad = write(d.path(), "b-images-idx3-ubyte", b"\x01\x02\x08\x03hello");
    let y = write(d.path(), "b-labels-idx1-ubyte", &idx_u8(&[3], &Y3));
    assert_err(load(&bad), &["b-images-idx3-ubyte", "bad magic"]);
    // Truncated data.
    let t = write(
        d.path(),
        "c-images-idx3-ubyte",
        &idx_u8(&[3, 2, 2], &X12[..10]),
    );
    assert_err(with_labels(&t, &y), &["c-images-idx3-ubyte", "truncated"]);
    // Truncated header.
    let t = write(d.path(), "d-images-idx3-ubyte", &[0, 0, 8, 3, 0, 0]);
    assert_err(with_labels(&t, &y), &["d-images-idx3-ubyte", "truncated"]);
    // Mismatched counts.
    let x = write(d.path(), "e-images-idx3-ubyte", &idx_u8(&[3, 2, 2], &X12));
    let y2 = write(d.path(), "e-labels-idx1-ubyte", &idx_u8(&[2], &Y3[..2]));
    assert_err(load(&x), &["e-labels-idx1-ubyte", "2 labels", "3 images"]);
    drop(y2);
    // Empty set.
    let x = write(d.path(), "f-images-idx3-ubyte", &idx_u8(&[0, 2, 2], &[]));
    write(d.path(), "f-labels-idx1-ubyte", &idx_u8(&[0], &[]));
    assert_err(load(&x), &["f-images-idx3-ubyte", "empty", "0 samples"]);
    // Dimensions whose product overflows.
    let x = write(
        d.path(),
        "h-images-idx3-ubyte",
        &idx_u8(&[u32::MAX, u32::MAX, u32::MAX], &[]),
    );
    assert_err(with_labels(&x, &y), &["h-images-idx3-ubyte", "too large"]);
    // A broken gzip stream.
    let mut g = gz(&idx_u8(&[3, 2, 2], &X12));
    g.truncate(g.len() / 2);
    let x = write(d.path(), "g-images-idx3-ubyte.gz", &g);
    assert_err(with_labels(&x, &y), &["g-images-idx3-ubyte.gz", "gzip"]);
}

#[test]
fn real_mnist_test_set_loads() {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/data/mnist/t10k-images-idx3-ubyte.gz");
    let set = load(&p).unwrap();
    assert_eq!(set.len(), 10_000);
    assert_eq!(set.sample_shape, vec![28, 28]);
    assert_eq!(set.inputs.len(), 10_000 * 784);
    assert!(set.labels.iter().all(|&l| l < 10));
    // Every digit occurs.
    for digit in 0..10 {
        assert!(set.labels.contains(&digit), "no {digit}");
    }
    assert!(set.inputs.iter().all(|&v| (0.0..=255.0).contains(&v)));
}

// ---------------------------------------------------------------------------------------------
// safetensors

#[test]
fn safetensors_u8_inputs_i64_labels() {
    let d = TempDir::new().unwrap();
    let bytes = safetensors(&[
        ("inputs", Dtype::U8, vec![3, 2, 2], X12.to_vec()),
        ("labels", Dtype::I64, vec![3], i64_bytes(&[2, 0, 1])),
    ]);
    let p = write(d.path(), "set.safetensors", &bytes);
    assert_x12(&load(&p).unwrap(), &[2, 2]);
}

#[test]
fn safetensors_every_input_dtype() {
    let d = TempDir::new().unwrap();
    let vals: Vec<f32> = X12.iter().map(|&v| v as f32).collect();
    let cases: Vec<(Dtype, Vec<u8>)> = vec![
        (Dtype::F32, f32_bytes(&vals)),
        (
            Dtype::F64,
            vals.iter()
                .flat_map(|&v| (v as f64).to_le_bytes())
                .collect(),
        ),
        (
            Dtype::F16,
            vals.iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        (
            Dtype::BF16,
            vals.iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        (Dtype::I8, X12.to_vec()),
        (
            Dtype::I16,
            vals.iter()
                .flat_map(|&v| (v as i16).to_le_bytes())
                .collect(),
        ),
        (
            Dtype::U16,
            vals.iter()
                .flat_map(|&v| (v as u16).to_le_bytes())
                .collect(),
        ),
        (
            Dtype::I32,
            vals.iter()
                .flat_map(|&v| (v as i32).to_le_bytes())
                .collect(),
        ),
        (
            Dtype::U32,
            vals.iter()
                .flat_map(|&v| (v as u32).to_le_bytes())
                .collect(),
        ),
        (
            Dtype::I64,
            vals.iter()
                .flat_map(|&v| (v as i64).to_le_bytes())
                .collect(),
        ),
        (
            Dtype::U64,
            vals.iter()
                .flat_map(|&v| (v as u64).to_le_bytes())
                .collect(),
        ),
    ];
    let label_dtypes: Vec<(Dtype, Vec<u8>)> = vec![
        (Dtype::U8, Y3.to_vec()),
        (
            Dtype::I32,
            Y3.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        ),
        (
            Dtype::U16,
            Y3.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect(),
        ),
        // Whole-number float labels are class indices too.
        (Dtype::F32, f32_bytes(&[2.0, 0.0, 1.0])),
    ];
    for (i, (dt, bytes)) in cases.into_iter().enumerate() {
        let (ldt, lbytes) = label_dtypes[i % label_dtypes.len()].clone();
        let file = safetensors(&[
            ("inputs", dt, vec![3, 4], bytes),
            ("labels", ldt, vec![3], lbytes),
        ]);
        let p = write(d.path(), &format!("s{i}.safetensors"), &file);
        let set = load(&p).unwrap_or_else(|e| panic!("{dt:?}: {e}"));
        assert_x12(&set, &[4]);
    }
}

#[test]
fn safetensors_errors() {
    let d = TempDir::new().unwrap();
    let x = ("inputs", Dtype::U8, vec![3, 2, 2], X12.to_vec());
    let y = ("labels", Dtype::I64, vec![3], i64_bytes(&[2, 0, 1]));
    let st = |name: &str, t: &[(&str, Dtype, Vec<usize>, Vec<u8>)]| {
        write(d.path(), name, &safetensors(t))
    };

    let p = st(
        "noinputs.safetensors",
        &[("pixels", Dtype::U8, vec![3, 4], X12.to_vec()), y.clone()],
    );
    assert_err(
        load(&p),
        &[
            "noinputs.safetensors",
            "no tensor 'inputs'",
            "pixels",
            "labels",
        ],
    );

    let p = st("nolabels.safetensors", std::slice::from_ref(&x));
    assert_err(
        load(&p),
        &["nolabels.safetensors", "no tensor 'labels'", "inputs"],
    );

    let p = st(
        "fraction.safetensors",
        &[
            x.clone(),
            ("labels", Dtype::F32, vec![3], f32_bytes(&[2.0, 0.5, 1.0])),
        ],
    );
    assert_err(
        load(&p),
        &[
            "fraction.safetensors",
            "tensor 'labels'",
            "sample 1",
            "0.5",
            "whole number",
        ],
    );

    let p = st(
        "negative.safetensors",
        &[
            x.clone(),
            ("labels", Dtype::I64, vec![3], i64_bytes(&[2, -1, 1])),
        ],
    );
    assert_err(
        load(&p),
        &["negative.safetensors", "tensor 'labels'", "-1", "negative"],
    );

    let p = st(
        "counts.safetensors",
        &[
            x.clone(),
            ("labels", Dtype::I64, vec![2], i64_bytes(&[2, 0])),
        ],
    );
    assert_err(load(&p), &["counts.safetensors", "2 labels", "3 samples"]);

    let p = st(
        "onehot.safetensors",
        &[x.clone(), ("labels", Dtype::U8, vec![3, 3], vec![0; 9])],
    );
    assert_err(
        load(&p),
        &["onehot.safetensors", "tensor 'labels'", "[3, 3]", "one-hot"],
    );

    let p = st(
        "empty.safetensors",
        &[
            ("inputs", Dtype::U8, vec![0, 2, 2], vec![]),
            ("labels", Dtype::I64, vec![0], vec![]),
        ],
    );
    assert_err(load(&p), &["empty.safetensors", "empty", "0 samples"]);

    let p = st(
        "scalar.safetensors",
        &[("inputs", Dtype::F32, vec![], f32_bytes(&[1.0])), y.clone()],
    );
    assert_err(
        load(&p),
        &["scalar.safetensors", "scalar", "[N, ...sample shape]"],
    );

    let p = st(
        "c64.safetensors",
        &[("inputs", Dtype::C64, vec![3], vec![0; 24]), y.clone()],
    );
    assert_err(load(&p), &["c64.safetensors", "C64", "not supported"]);

    let full = safetensors(&[x.clone(), y.clone()]);
    let p = write(d.path(), "truncated.safetensors", &full[..full.len() - 5]);
    assert_err(
        load(&p),
        &["truncated.safetensors", "safetensors", "truncated"],
    );
    let p = write(d.path(), "tiny.safetensors", &full[..4]);
    assert_err(load(&p), &["tiny.safetensors", "safetensors"]);

    let p = write(d.path(), "good.safetensors", &full);
    assert_err(
        with_labels(&p, Path::new("y.npy")),
        &["good.safetensors", "--labels"],
    );
}

// ---------------------------------------------------------------------------------------------
// NPY

#[test]
fn npy_pair_standard_names() {
    let d = TempDir::new().unwrap();
    let vals: Vec<f32> = X12.iter().map(|&v| v as f32).collect();
    for (xn, yn) in [
        ("x_test.npy", "y_test.npy"),
        ("foo_x.npy", "foo_y.npy"),
        ("images.npy", "labels.npy"),
        ("X.npy", "Y.npy"),
    ] {
        let sub = d.path().join(xn.replace('.', "_"));
        std::fs::create_dir(&sub).unwrap();
        let x = write(&sub, xn, &npy("<f4", &[3, 2, 2], &f32_bytes(&vals)));
        write(&sub, yn, &npy("<i8", &[3], &i64_bytes(&[2, 0, 1])));
        let set = load(&x).unwrap_or_else(|e| panic!("{xn}: {e}"));
        assert_x12(&set, &[2, 2]);
    }
}

#[test]
fn npy_versions_dtypes_and_layouts() {
    let d = TempDir::new().unwrap();
    let y = write(d.path(), "answers.npy", &npy("|u1", &[3], &Y3));
    // Version 2 and 3 headers.
    for v in [2, 3] {
        let x = write(
            d.path(),
            &format!("v{v}.npy"),
            &npy_v(v, "|u1", false, &[3, 2, 2], &X12),
        );
        assert_x12(&with_labels(&x, &y).unwrap(), &[2, 2]);
    }
    // Big-endian f8.
    let be: Vec<u8> = X12.iter().flat_map(|&v| (v as f64).to_be_bytes()).collect();
    let x = write(d.path(), "be.npy", &npy(">f8", &[3, 4], &be));
    assert_x12(&with_labels(&x, &y).unwrap(), &[4]);
    // Half precision, little-endian u2 and i4, signed bytes.
    let f2: Vec<u8> = X12
        .iter()
        .flat_map(|&v| half::f16::from_f32(v as f32).to_le_bytes())
        .collect();
    let x = write(d.path(), "f2.npy", &npy("<f2", &[3, 4], &f2));
    assert_x12(&with_labels(&x, &y).unwrap(), &[4]);
    let u2: Vec<u8> = X12.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect();
    let x = write(d.path(), "u2.npy", &npy("<u2", &[3, 4], &u2));
    assert_x12(&with_labels(&x, &y).unwrap(), &[4]);
    let i4: Vec<u8> = X12.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect();
    let x = write(d.path(), "i4.npy", &npy("<i4", &[3, 4], &i4));
    assert_x12(&with_labels(&x, &y).unwrap(), &[4]);
    let x = write(d.path(), "i1.npy", &npy("|i1", &[3, 4], &X12));
    assert_x12(&with_labels(&x, &y).unwrap(), &[4]);
    // Fortran order: the 3×4 array stored column by column is transposed back.
    let mut cols = Vec::new();
    for c in 0..4 {
        for r in 0..3 {
            cols.push(X12[r * 4 + c]);
        }
    }
    let x = write(
        d.path(),
        "fortran.npy",
        &npy_v(1, "|u1", true, &[3, 4], &cols),
    );
    assert_x12(&with_labels(&x, &y).unwrap(), &[4]);
    // Labels as a column vector [N, 1] and as whole-number floats.
    let y2 = write(
        d.path(),
        "col.npy",
        &npy("<f4", &[3, 1], &f32_bytes(&[2.0, 0.0, 1.0])),
    );
    let x = write(d.path(), "plain.npy", &npy("|u1", &[3, 2, 2], &X12));
    assert_x12(&with_labels(&x, &y2).unwrap(), &[2, 2]);
    // Gzip-compressed NPY.
    let x = write(d.path(), "x_gz.npy.gz", &gz(&npy("|u1", &[3, 2, 2], &X12)));
    write(d.path(), "y_gz.npy.gz", &gz(&npy("|u1", &[3], &Y3)));
    assert_x12(&load(&x).unwrap(), &[2, 2]);
}

#[test]
fn npy_labels_not_found() {
    let d = TempDir::new().unwrap();
    let x = write(d.path(), "x_test.npy", &npy("|u1", &[3, 2, 2], &X12));
    assert_err(
        load(&x),
        &[
            "x_test.npy",
            "no labels file",
            "tried",
            "y_test.npy",
            "--labels",
        ],
    );
    let x = write(d.path(), "digits.npy", &npy("|u1", &[3, 2, 2], &X12));
    assert_err(
        load(&x),
        &["digits.npy", "cannot guess", "y_test.npy", "--labels"],
    );
    let x = write(d.path(), "images.npy", &npy("|u1", &[3, 2, 2], &X12));
    assert_err(
        with_labels(&x, &d.path().join("missing.npy")),
        &["missing.npy"],
    );
}

#[test]
fn npy_errors() {
    let d = TempDir::new().unwrap();
    let good_x = npy("|u1", &[3, 2, 2], &X12);
    let good_y = npy("|u1", &[3], &Y3);
    let y = write(d.path(), "labels_ok.npy", &good_y);
    let x = write(d.path(), "inputs_ok.npy", &good_x);
    let case = |name: &str, bytes: &[u8]| write(d.path(), name, bytes);

    let p = case("badmagic.npy", b"\x93NUMPX\x01\x00\x10\x00{}              ");
    assert_err(
        with_labels(&p, &y),
        &["badmagic.npy", "not an NPY file", "magic"],
    );

    let p = case("empty_file.npy", b"");
    assert_err(with_labels(&p, &y), &["empty_file.npy", "empty"]);

    let p = case("shortdata.npy", &good_x[..good_x.len() - 3]);
    assert_err(
        with_labels(&p, &y),
        &["shortdata.npy", "12 bytes", "9", "truncated"],
    );

    let p = case("shortheader.npy", &good_x[..40]);
    assert_err(
        with_labels(&p, &y),
        &["shortheader.npy", "truncated NPY header"],
    );

    let p = case("object.npy", &npy("|O", &[3], &[0; 24]));
    assert_err(with_labels(&p, &y), &["object.npy", "object array", "'|O'"]);

    let p = case("strings.npy", &npy("<U2", &[3], &[0; 24]));
    assert_err(
        with_labels(&p, &y),
        &["strings.npy", "'<U2'", "not supported", "<f4"],
    );

    let p = case(
        "frac.npy",
        &npy(
            "<f8",
            &[3],
            &[2.0f64, 0.25, 1.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>(),
        ),
    );
    assert_err(
        with_labels(&x, &p),
        &["frac.npy", "labels", "sample 1", "0.25", "whole number"],
    );

    let p = case("neg.npy", &npy("<i8", &[3], &i64_bytes(&[0, 1, -3])));
    assert_err(
        with_labels(&x, &p),
        &["neg.npy", "sample 2", "-3", "negative"],
    );

    let p = case("two.npy", &npy("|u1", &[2], &Y3[..2]));
    assert_err(
        with_labels(&x, &p),
        &["two.npy", "2 labels", "3 samples", "inputs_ok.npy"],
    );

    let p = case("none.npy", &npy("|u1", &[0, 2, 2], &[]));
    let y0 = case("none_y.npy", &npy("|u1", &[0], &[]));
    assert_err(with_labels(&p, &y0), &["none.npy", "empty", "0 samples"]);
}

// ---------------------------------------------------------------------------------------------
// NPZ

#[test]
fn npz_stored_and_deflated() {
    let d = TempDir::new().unwrap();
    let vals: Vec<f32> = X12.iter().map(|&v| v as f32).collect();
    for deflate in [false, true] {
        let bytes = npz(
            &[
                ("x.npy", npy("<f4", &[3, 2, 2], &f32_bytes(&vals))),
                ("y.npy", npy("<i8", &[3], &i64_bytes(&[2, 0, 1]))),
            ],
            deflate,
        );
        let p = write(d.path(), &format!("set{deflate}.npz"), &bytes);
        assert_x12(&load(&p).unwrap(), &[2, 2]);
    }
}

#[test]
fn npz_errors() {
    let d = TempDir::new().unwrap();
    let x = ("x.npy", npy("|u1", &[3, 2, 2], &X12));
    let y = ("y.npy", npy("|u1", &[3], &Y3));

    let p = write(
        d.path(),
        "noy.npz",
        &npz(&[x.clone(), ("z.npy", npy("|u1", &[3], &Y3))], true),
    );
    assert_err(load(&p), &["noy.npz", "no array 'y'", "holds: x, z"]);

    let p = write(d.path(), "nox.npz", &npz(std::slice::from_ref(&y), false));
    assert_err(load(&p), &["nox.npz", "no array 'x'", "holds: y"]);

    let p = write(
        d.path(),
        "counts.npz",
        &npz(
            &[x.clone(), ("y.npy", npy("|u1", &[4], &[0, 1, 2, 3]))],
            false,
        ),
    );
    assert_err(
        load(&p),
        &[
            "counts.npz",
            "array 'y'",
            "4 labels",
            "array 'x'",
            "3 samples",
        ],
    );

    let p = write(
        d.path(),
        "neg.npz",
        &npz(
            &[x.clone(), ("y.npy", npy("|i1", &[3], &[0, 0xff, 1]))],
            false,
        ),
    );
    assert_err(load(&p), &["neg.npz", "array 'y'", "negative"]);

    let p = write(
        d.path(),
        "obj.npz",
        &npz(&[("x.npy", npy("|O", &[3], &[0; 24])), y.clone()], false),
    );
    assert_err(load(&p), &["obj.npz", "array 'x'", "object array"]);

    let full = npz(&[x.clone(), y.clone()], true);
    let p = write(d.path(), "truncated.npz", &full[..full.len() / 2]);
    assert_err(load(&p), &["truncated.npz", "NPZ", "truncated"]);

    let p = write(d.path(), "notzip.npz", b"hello, this is not a zip archive");
    assert_err(load(&p), &["notzip.npz", "NPZ", "zip"]);
}

// ---------------------------------------------------------------------------------------------
// CSV

#[test]
fn csv_loads_with_crlf_quotes_and_blank_lines() {
    let d = TempDir::new().unwrap();
    let text = "a,b,label,c,d\r\n0,1,2,2,3\r\n\"4\",5, 0 ,6,7\r\n8,9,\"1\",10,11\r\n\r\n\r\n";
    let p = write(d.path(), "set.csv", text.as_bytes());
    assert_x12(&load(&p).unwrap(), &[4]);
    // LF, no trailing newline, label first.
    let text = "label,a,b,c,d\n2,0,1,2,3\n0,4,5,6,7\n1.0,8,9,10,11";
    let p = write(d.path(), "lf.csv", text.as_bytes());
    assert_x12(&load(&p).unwrap(), &[4]);
    // Semicolons and a custom label column.
    let text = "a;b;c;d;digit\n0;1;2;3;2\n4;5;6;7;0\n8;9;10;11;1\n";
    let p = write(d.path(), "semi.csv", text.as_bytes());
    let opts = DataOptions {
        label_column: Some("digit".into()),
        ..Default::default()
    };
    assert_x12(&data::load(&p, &opts).unwrap(), &[4]);
}

#[test]
fn csv_errors() {
    let d = TempDir::new().unwrap();
    let case = |name: &str, text: &str| write(d.path(), name, text.as_bytes());

    let p = case("nolabel.csv", "a,b,target\n1,2,0\n");
    assert_err(
        load(&p),
        &["nolabel.csv", "no label column 'label'", "a, b, target"],
    );

    let p = case("noheader.csv", "1,2,0\n3,4,1\n");
    assert_err(load(&p), &["noheader.csv", "label", "header row"]);

    let p = case("word.csv", "a,b,label\n1,2,0\n3,x,1\n");
    assert_err(
        load(&p),
        &["word.csv", "line 3", "column 'b'", "'x'", "not a number"],
    );

    let p = case("fields.csv", "a,b,label\n1,2,0\n3,1\n");
    assert_err(load(&p), &["fields.csv", "line 3", "2 fields", "3 columns"]);

    let p = case("frac.csv", "a,b,label\n1,2,0.5\n");
    assert_err(
        load(&p),
        &[
            "frac.csv",
            "line 2",
            "column 'label'",
            "0.5",
            "whole number",
        ],
    );

    let p = case("neg.csv", "a,b,label\n1,2,-1\n");
    assert_err(load(&p), &["neg.csv", "line 2", "-1", "negative"]);

    let p = case("headeronly.csv", "a,b,label\r\n\r\n");
    assert_err(load(&p), &["headeronly.csv", "empty", "0 samples"]);

    let p = case("nothing.csv", "\n\n");
    assert_err(load(&p), &["nothing.csv", "empty", "header row"]);

    let p = case("onlylabel.csv", "label\n1\n");
    assert_err(load(&p), &["onlylabel.csv", "feature columns"]);

    let p = case("quote.csv", "a,label\n\"1,0\n");
    assert_err(load(&p), &["quote.csv", "line 2", "unterminated"]);

    let p = case("ok.csv", "a,label\n1,0\n");
    assert_err(with_labels(&p, Path::new("y.npy")), &["ok.csv", "--labels"]);
}

// ---------------------------------------------------------------------------------------------
// Dispatch and shared checks

#[test]
fn missing_file_names_it() {
    let d = TempDir::new().unwrap();
    for name in [
        "nope.npy",
        "nope.csv",
        "nope.safetensors",
        "nope.npz",
        "nope-images-idx3-ubyte.gz",
    ] {
        let e = assert_err(load(&d.path().join(name)), &[name]);
        assert!(
            e.to_lowercase().contains("no such file") || e.contains("cannot find"),
            "{e}"
        );
    }
}

#[test]
fn unknown_extension_lists_formats() {
    let d = TempDir::new().unwrap();
    let p = write(d.path(), "set.parquet", b"PAR1");
    assert_err(
        load(&p),
        &[
            "set.parquet",
            "unknown",
            "'.parquet'",
            ".safetensors",
            ".npy",
            ".npz",
            ".csv",
            "idx",
        ],
    );
    let p = write(d.path(), "mystery", b"just some text");
    assert_err(load(&p), &["mystery", "unknown", "no extension", ".npz"]);
}

#[test]
fn content_sniffed_without_extension() {
    let d = TempDir::new().unwrap();
    let x = write(d.path(), "x_test", &npy("|u1", &[3, 2, 2], &X12));
    write(d.path(), "y_test", &npy("|u1", &[3], &Y3));
    assert_eq!(DataFormat::detect(&x).unwrap(), DataFormat::Npy);
    assert_x12(&load(&x).unwrap(), &[2, 2]);
    let z = write(
        d.path(),
        "bundle",
        &npz(
            &[
                ("x.npy", npy("|u1", &[3, 2, 2], &X12)),
                ("y.npy", npy("|u1", &[3], &Y3)),
            ],
            false,
        ),
    );
    assert_eq!(DataFormat::detect(&z).unwrap(), DataFormat::Npz);
    assert_x12(&load(&z).unwrap(), &[2, 2]);
    let s = write(
        d.path(),
        "tensors",
        &safetensors(&[
            ("inputs", Dtype::U8, vec![3, 4], X12.to_vec()),
            ("labels", Dtype::U8, vec![3], Y3.to_vec()),
        ]),
    );
    assert_eq!(DataFormat::detect(&s).unwrap(), DataFormat::Safetensors);
    assert_x12(&load(&s).unwrap(), &[4]);
}

#[test]
fn nan_inputs_are_caught_by_prepare() {
    let d = TempDir::new().unwrap();
    let p = write(d.path(), "nan.csv", b"a,b,label\n1,2,0\n3,nan,1\n");
    let set = load(&p).unwrap();
    let spec = InputSpec {
        shape: vec![2],
        scale: 1.0,
        mean: vec![0.0],
        std: vec![1.0],
    };
    let e = set.prepare(&spec, 2).unwrap_err().to_string();
    assert!(
        e.contains("nan.csv") && e.contains("sample 1") && e.contains("NaN"),
        "{e}"
    );
    // A finite set prepares; the scaling is applied.
    let p = write(d.path(), "ok.csv", b"a,b,label\n1,2,0\n3,4,1\n");
    let set = load(&p).unwrap();
    let spec = InputSpec {
        shape: vec![2],
        scale: 0.5,
        mean: vec![1.0],
        std: vec![2.0],
    };
    assert_eq!(set.prepare(&spec, 2).unwrap(), vec![-0.25, 0.0, 0.25, 0.5]);
}

#[test]
fn truncated_and_corrupted_files_never_panic() {
    let d = TempDir::new().unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a-images-idx3-ubyte", idx_u8(&[3, 2, 2], &X12)),
        (
            "a.safetensors",
            safetensors(&[
                ("inputs", Dtype::U8, vec![3, 4], X12.to_vec()),
                ("labels", Dtype::U8, vec![3], Y3.to_vec()),
            ]),
        ),
        (
            "x_a.npy",
            npy_v(2, "<f4", true, &[3, 4], &f32_bytes(&[0.0; 12])),
        ),
        (
            "a.npz",
            npz(
                &[
                    ("x.npy", npy("|u1", &[3, 2, 2], &X12)),
                    ("y.npy", npy("|u1", &[3], &Y3)),
                ],
                true,
            ),
        ),
        ("a.csv", b"a,\"b\",label\r\n1,2,0\r\n3,4,1\r\n".to_vec()),
    ];
    write(d.path(), "a-labels-idx1-ubyte", &idx_u8(&[3], &Y3));
    write(d.path(), "y_a.npy", &npy("|u1", &[3], &Y3));
    for (name, bytes) in &files {
        let p = d.path().join(name);
        for cut in 0..bytes.len() {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let _ = load(&p);
        }
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                std::fs::write(&p, &b).unwrap();
                let _ = load(&p);
            }
        }
    }
}
