//! Image-folder evaluation sets (torchvision's ImageFolder layout): labels from the sorted class
//! sub-folders, conversion to the model's channels, resizing and centre cropping checked against
//! values computed by hand, every malformed folder refused with a message naming it, and
//! `squeeze eval` on a folder of MNIST digits scoring exactly what it scores on the same digits
//! read from IDX. Images are written by the tests into temporary directories.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use squeeze::data::{self, DataError, DataFormat, DataOptions, EvalSet, ImageInput};
use squeeze::model::InputSpec;
use tempfile::TempDir;

/// Options reading a folder for a model whose input is `shape`.
fn for_shape(shape: &[usize]) -> DataOptions {
    DataOptions {
        image_input: Some(ImageInput {
            shape: shape.to_vec(),
            model: PathBuf::from("model.safetensors"),
        }),
        ..Default::default()
    }
}

fn load(dir: &Path, shape: &[usize]) -> Result<EvalSet, DataError> {
    data::load(dir, &for_shape(shape))
}

/// A path under `dir`, its parent folders made.
fn at(dir: &Path, rel: &str) -> PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    p
}

/// A greyscale image of `w × h` given row by row, saved (PNG or JPEG by extension).
fn grey(dir: &Path, rel: &str, w: u32, h: u32, values: &[u8]) -> PathBuf {
    let p = at(dir, rel);
    GrayImage::from_raw(w, h, values.to_vec())
        .unwrap()
        .save(&p)
        .unwrap();
    p
}

/// A `w × h` greyscale image of one value.
fn flat(dir: &Path, rel: &str, w: u32, h: u32, value: u8) -> PathBuf {
    grey(dir, rel, w, h, &vec![value; (w * h) as usize])
}

#[track_caller]
fn assert_err(r: Result<EvalSet, DataError>, words: &[&str]) -> String {
    let e = match r {
        Ok(set) => panic!(
            "expected an error with {words:?}, loaded {} samples",
            set.len()
        ),
        Err(e) => e.to_string(),
    };
    for w in words {
        assert!(
            e.to_lowercase().contains(&w.to_lowercase()),
            "error lacks {w:?}: {e}"
        );
    }
    e
}

/// The (label, first value) of every sample, sorted.
fn labelled_values(set: &EvalSet) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = set
        .labels
        .iter()
        .zip(set.inputs.chunks_exact(set.sample_len()))
        .map(|(l, x)| (*l, x[0]))
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

#[test]
fn classes_are_the_sorted_sub_folders() {
    let d = TempDir::new().unwrap();
    // Written out of order; nested folders count for their class; other files are left out.
    flat(d.path(), "zebra/1.png", 2, 2, 30);
    flat(d.path(), "zebra/deeper/2.PNG", 2, 2, 31);
    flat(d.path(), "ant/1.jpg", 2, 2, 10);
    flat(d.path(), "bee/x.jpeg", 2, 2, 20);
    std::fs::write(d.path().join("bee/notes.txt"), "not an image").unwrap();
    std::fs::write(d.path().join("README.md"), "about the set").unwrap();
    flat(d.path(), "top-level.png", 2, 2, 99);
    flat(d.path(), ".hidden/1.png", 2, 2, 99);
    flat(d.path(), "ant/.thumb.png", 2, 2, 99);
    assert_eq!(
        DataFormat::detect(d.path()).unwrap(),
        DataFormat::ImageFolder
    );

    let set = load(d.path(), &[1, 2, 2]).unwrap();
    assert_eq!(set.classes, ["ant", "bee", "zebra"]);
    assert_eq!(set.sample_shape, [1, 2, 2]);
    assert_eq!(set.len(), 4);
    // JPEG is lossy: a flat image comes back within a step or two.
    let got = labelled_values(&set);
    let want = [(0, 10.0), (1, 20.0), (2, 30.0), (2, 31.0)];
    for ((gl, gv), (wl, wv)) in got.iter().zip(want) {
        assert_eq!(*gl, wl);
        assert!((gv - wv).abs() <= 2.0, "{got:?}");
    }
    // PNG is exact.
    assert_eq!(got[2..], [(2, 30.0), (2, 31.0)]);

    // The files read, for output checks and provenance: every image, nothing else.
    let mut files = data::source_files(d.path(), &DataOptions::default());
    files.sort();
    assert_eq!(files.len(), 5, "{files:?}");
    assert!(files.contains(&d.path().join("zebra/deeper/2.PNG")));
}

#[test]
fn samples_mix_the_classes_and_limit_takes_the_first() {
    let d = TempDir::new().unwrap();
    for class in 0..4u8 {
        for i in 0..25 {
            flat(d.path(), &format!("c{class}/{i:03}.png"), 1, 1, class);
        }
    }
    let set = load(d.path(), &[1, 1, 1]).unwrap();
    // Not class after class: the first 25 samples hold several classes.
    let first: std::collections::BTreeSet<u32> = set.labels[..25].iter().copied().collect();
    assert!(first.len() >= 3, "{:?}", &set.labels[..25]);
    // Values match labels whatever the order.
    for (l, x) in set.labels.iter().zip(&set.inputs) {
        assert_eq!(*l as f32, *x);
    }
    // The same order every time, and --limit reads its start.
    let again = load(d.path(), &[1, 1, 1]).unwrap();
    assert_eq!(again.labels, set.labels);
    let opts = DataOptions {
        limit: Some(10),
        ..for_shape(&[1, 1, 1])
    };
    let some = data::load(d.path(), &opts).unwrap();
    assert_eq!(some.labels, set.labels[..10]);
    assert_eq!(some.classes.len(), 4);
}

#[test]
fn exact_and_larger_images_are_cropped_at_the_centre_without_resampling() {
    let d = TempDir::new().unwrap();
    // 4 wide, 2 high, for a 2×2 input: the height already fits, columns 1 and 2 are kept.
    grey(d.path(), "a/wide.png", 4, 2, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let set = load(d.path(), &[1, 2, 2]).unwrap();
    assert_eq!(set.inputs, [2.0, 3.0, 6.0, 7.0]);

    // 5 wide: (5 − 2) / 2 = 1.5 rounds to 2 as torchvision's CenterCrop (Python's round).
    let d = TempDir::new().unwrap();
    grey(
        d.path(),
        "a/odd.png",
        5,
        2,
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    );
    assert_eq!(
        load(d.path(), &[1, 2, 2]).unwrap().inputs,
        [3.0, 4.0, 8.0, 9.0]
    );
    // 3 high: (3 − 2) / 2 = 0.5 rounds to 0.
    let d = TempDir::new().unwrap();
    grey(d.path(), "a/tall.png", 2, 3, &[1, 2, 3, 4, 5, 6]);
    assert_eq!(
        load(d.path(), &[1, 2, 2]).unwrap().inputs,
        [1.0, 2.0, 3.0, 4.0]
    );
}

#[test]
fn smaller_and_larger_images_are_resized_bilinearly() {
    // 2×2 to 1×1: the triangle filter, stretched by the factor 2, weighs the four equally.
    let d = TempDir::new().unwrap();
    grey(d.path(), "a/1.png", 2, 2, &[10, 20, 30, 41]);
    assert_eq!(load(d.path(), &[1, 1, 1]).unwrap().inputs, [25.0]); // 25.25 rounded

    // 4×2 to 2×1: rows averaged; output column 0 is centred at source x = 1.0, so the
    // stretched triangle weighs columns 0, 1, 2 by 0.75, 0.75, 0.25 (normalised by 1.75), and
    // column 1 weighs columns 1, 2, 3 by 0.25, 0.75, 0.75.
    let d = TempDir::new().unwrap();
    let row = [0u8, 70, 140, 210];
    grey(d.path(), "a/1.png", 4, 2, &[row, row].concat());
    // (0·0.75 + 70·0.75 + 140·0.25) / 1.75 = 50; (70·0.25 + 140·0.75 + 210·0.75) / 1.75 = 160.
    assert_eq!(load(d.path(), &[1, 1, 2]).unwrap().inputs, [50.0, 160.0]);

    // 30×40 to 20×20: resized to 20×26 (the longer side rounded down), then rows 3..23 kept.
    // A vertical ramp shows which rows: the first kept is centred at source y = 3.5 × 40/26.
    let d = TempDir::new().unwrap();
    let ramp: Vec<u8> = (0..40u32).flat_map(|y| [y as u8 * 5; 30]).collect();
    grey(d.path(), "a/1.png", 30, 40, &ramp);
    let set = load(d.path(), &[1, 20, 20]).unwrap();
    let first_row = set.inputs[0];
    let centre = 3.5 * 40.0 / 26.0 - 0.5; // in source pixel indices
    assert!(
        (first_row - 5.0 * centre).abs() <= 1.0,
        "{first_row} vs {}",
        5.0 * centre
    );
    // Every column of a row holds the same value, rows increase.
    for r in set.inputs.chunks_exact(20) {
        assert!(r.iter().all(|v| *v == r[0]));
    }
    assert!(set.inputs.windows(21).all(|w| w[20] >= w[0]));

    // A 1×1 image grows to any size unchanged.
    let d = TempDir::new().unwrap();
    flat(d.path(), "a/1.png", 1, 1, 77);
    assert_eq!(load(d.path(), &[1, 3, 3]).unwrap().inputs, [77.0; 9]);
}

#[test]
fn greyscale_and_rgb_inputs() {
    let d = TempDir::new().unwrap();
    let p = at(d.path(), "a/rgb.png");
    RgbImage::from_pixel(2, 1, Rgb([200, 100, 50]))
        .save(&p)
        .unwrap();
    // Alpha is dropped, whatever it is.
    let p = at(d.path(), "b/rgba.png");
    RgbaImage::from_pixel(2, 1, Rgba([200, 100, 50, 0]))
        .save(&p)
        .unwrap();
    let p = at(d.path(), "c/grey.png");
    GrayImage::from_pixel(2, 1, Luma([90])).save(&p).unwrap();

    let rgb = load(d.path(), &[3, 1, 2]).unwrap();
    let by_label = |set: &EvalSet, l: u32| {
        let i = set.labels.iter().position(|x| *x == l).unwrap();
        set.inputs[i * set.sample_len()..(i + 1) * set.sample_len()].to_vec()
    };
    // Channel planes: R R G G B B.
    assert_eq!(by_label(&rgb, 0), [200.0, 200.0, 100.0, 100.0, 50.0, 50.0]);
    assert_eq!(by_label(&rgb, 1), by_label(&rgb, 0));
    assert_eq!(by_label(&rgb, 2), [90.0; 6]);

    // Luma as PIL's convert("L"): 0.299 · 200 + 0.587 · 100 + 0.114 · 50 = 124.2 → 124.
    let grey = load(d.path(), &[1, 1, 2]).unwrap();
    assert_eq!(by_label(&grey, 0), [124.0, 124.0]);
    assert_eq!(by_label(&grey, 1), [124.0, 124.0]);
    assert_eq!(by_label(&grey, 2), [90.0, 90.0]);
}

#[test]
fn the_model_input_scaling_applies() {
    let d = TempDir::new().unwrap();
    let p = at(d.path(), "a/1.png");
    RgbImage::from_pixel(1, 1, Rgb([255, 0, 51]))
        .save(&p)
        .unwrap();
    let set = load(d.path(), &[3, 1, 1]).unwrap();
    let spec = InputSpec {
        shape: vec![3, 1, 1],
        scale: 1.0 / 255.0,
        mean: vec![0.5, 0.0, 0.1],
        std: vec![0.5, 1.0, 0.1],
    };
    let x = set.prepare(&spec, 10).unwrap();
    let want = [1.0, 0.0, 1.0];
    for (g, w) in x.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{x:?}");
    }
}

#[test]
fn malformed_folders_are_refused_naming_them() {
    // Empty.
    let d = TempDir::new().unwrap();
    let e = assert_err(
        load(d.path(), &[1, 2, 2]),
        &["empty", "sub-folder per class"],
    );
    assert!(e.contains(&d.path().display().to_string()), "{e}");
    // Images without class sub-folders.
    flat(d.path(), "1.png", 2, 2, 0);
    flat(d.path(), "2.png", 2, 2, 0);
    assert_err(
        load(d.path(), &[1, 2, 2]),
        &["2 image(s)", "no class sub-folders"],
    );
    // A class folder without images (what it left out is named).
    let d = TempDir::new().unwrap();
    flat(d.path(), "cat/1.png", 2, 2, 0);
    std::fs::create_dir(d.path().join("dog")).unwrap();
    std::fs::write(d.path().join("dog/list.txt"), "x").unwrap();
    let e = assert_err(
        load(d.path(), &[1, 2, 2]),
        &[
            "class folder 'dog'",
            "label 1",
            "no PNG or JPEG",
            "list.txt",
        ],
    );
    assert!(
        e.starts_with(&d.path().join("dog").display().to_string()),
        "{e}"
    );
    // An image in a format torchvision reads and this reader does not.
    let d = TempDir::new().unwrap();
    flat(d.path(), "cat/1.png", 2, 2, 0);
    std::fs::write(d.path().join("cat/2.bmp"), "BM").unwrap();
    assert_err(
        load(d.path(), &[1, 2, 2]),
        &["2.bmp", "'.bmp'", "expected PNG or JPEG"],
    );
}

#[test]
fn unreadable_images_are_named() {
    let d = TempDir::new().unwrap();
    flat(d.path(), "cat/good.png", 2, 2, 0);
    std::fs::write(d.path().join("cat/garbage.png"), b"not an image at all").unwrap();
    assert_err(
        load(d.path(), &[1, 2, 2]),
        &["garbage.png", "cannot decode"],
    );

    // Truncated files of both formats, and a second bad image counted.
    let d = TempDir::new().unwrap();
    let png = flat(d.path(), "cat/a.png", 16, 16, 7);
    let jpg = grey(
        d.path(),
        "dog/b.jpg",
        16,
        16,
        &(0..=255u8).collect::<Vec<_>>(),
    );
    for p in [&png, &jpg] {
        let bytes = std::fs::read(p).unwrap();
        std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
    }
    // The first in reading order is named, the other counted.
    let e = assert_err(
        load(d.path(), &[1, 4, 4]),
        &["cannot decode", "truncated?", "and 1 more image"],
    );
    assert!(e.contains("a.png") ^ e.contains("b.jpg"), "{e}");
}

#[test]
fn the_model_must_take_images() {
    let d = TempDir::new().unwrap();
    flat(d.path(), "cat/1.png", 2, 2, 0);
    for shape in [&[784][..], &[2, 28, 28], &[28, 28], &[1, 0, 28]] {
        assert_err(
            load(d.path(), shape),
            &["model.safetensors", "[C, H, W]", "C = 1", "3 (RGB)"],
        );
    }
    // Read without a model (what no command does).
    assert_err(data::load(d.path(), &DataOptions::default()), &["no model"]);
    // Labels come from the folders.
    let opts = DataOptions {
        labels: Some(d.path().join("labels.npy")),
        ..for_shape(&[1, 2, 2])
    };
    assert_err(
        data::load(d.path(), &opts),
        &["--labels", "class sub-folders"],
    );
    // More classes than outputs.
    flat(d.path(), "dog/1.png", 2, 2, 0);
    flat(d.path(), "eel/1.png", 2, 2, 0);
    let set = load(d.path(), &[1, 2, 2]).unwrap();
    let spec = InputSpec {
        shape: vec![1, 2, 2],
        scale: 1.0,
        mean: vec![0.0],
        std: vec![1.0],
    };
    let e = set.prepare(&spec, 2).unwrap_err().to_string();
    for w in ["3 classes", "cat, dog, eel", "2 outputs"] {
        assert!(e.contains(w), "{e}");
    }
    assert!(set.prepare(&spec, 3).is_ok());
}

#[test]
fn far_too_elongated_images_are_refused() {
    let d = TempDir::new().unwrap();
    let strip = flat(d.path(), "cat/strip.png", 1, 200, 5);
    // Scaled to cover 2×2 it would be 2×400: 200 times the input's area.
    assert_err(
        load(d.path(), &[1, 2, 2]),
        &[
            "strip.png",
            "1×200",
            "2×400",
            "too elongated",
            "crop it first",
        ],
    );
    // Within the bound (40 times) it loads.
    std::fs::remove_file(strip).unwrap();
    flat(d.path(), "cat/strip.png", 1, 40, 5);
    assert_eq!(load(d.path(), &[1, 1, 1]).unwrap().inputs, [5.0]);
}

#[test]
fn a_folder_with_an_idx_pair_is_still_idx() {
    let d = TempDir::new().unwrap();
    let mnist = common::asset("data/mnist");
    for f in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        std::fs::copy(mnist.join(f), d.path().join(f)).unwrap();
    }
    std::fs::create_dir(d.path().join("plots")).unwrap();
    assert_eq!(DataFormat::detect(d.path()).unwrap(), DataFormat::Idx);
}

/// MNIST's first test digits written as PNGs, one folder per digit: `squeeze eval` on LeNet-5
/// and LeNet-300-100 (both `[1, 28, 28]`) scores exactly what it scores on the same digits read
/// from IDX.
#[test]
fn eval_on_a_folder_of_mnist_digits_matches_idx() {
    const N: usize = 200;
    let idx = common::asset("data/mnist/t10k-images-idx3-ubyte.gz");
    let opts = DataOptions {
        limit: Some(N),
        ..Default::default()
    };
    let set = data::load(&idx, &opts).unwrap();
    let d = TempDir::new().unwrap();
    for (i, (x, l)) in set.inputs.chunks_exact(784).zip(&set.labels).enumerate() {
        let pixels: Vec<u8> = x.iter().map(|v| *v as u8).collect();
        grey(d.path(), &format!("{l}/{i:05}.png"), 28, 28, &pixels);
    }
    // Top-1 and the confusion matrix.
    let accuracy = |model: &Path, data: &[&str]| -> (f64, serde_json::Value) {
        let out = common::squeeze()
            .args(["eval", "--no-timing", "--format", "json", "--model"])
            .arg(model)
            .args(data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["samples"].as_u64(), Some(N as u64), "{v}");
        (v["accuracy"].as_f64().unwrap(), v["confusion"].clone())
    };
    let folder = d.path().to_str().unwrap();
    let limit = N.to_string();
    let from_idx = ["--data", idx.to_str().unwrap(), "--limit", &limit];
    let lenet5 = common::asset("models/lenet5.safetensors");
    let mlp = common::asset("models/lenet-300-100.safetensors");
    let mut lenet5_accuracy = 0.0;
    for model in [&lenet5, &mlp] {
        let from_folder = accuracy(model, &["--data", folder]);
        assert_eq!(
            from_folder,
            accuracy(model, &from_idx),
            "{}",
            model.display()
        );
        assert!(from_folder.0 > 0.9, "{}: {from_folder:?}", model.display());
        if model == &lenet5 {
            lenet5_accuracy = from_folder.0;
        }
    }

    // The same digits as 56×56 RGB JPEGs: decoded, converted to grey and resized back to
    // 28×28, LeNet-5 still reads nearly all of them.
    let big_rgb = TempDir::new().unwrap();
    for (i, (x, l)) in set.inputs.chunks_exact(784).zip(&set.labels).enumerate() {
        let small = GrayImage::from_fn(28, 28, |c, r| Luma([x[(r * 28 + c) as usize] as u8]));
        let big = image::imageops::resize(&small, 56, 56, image::imageops::FilterType::Triangle);
        let rgb = RgbImage::from_fn(56, 56, |c, r| {
            let v = big.get_pixel(c, r).0[0];
            Rgb([v, v, v])
        });
        rgb.save(at(big_rgb.path(), &format!("{l}/{i:05}.jpg")))
            .unwrap();
    }
    let (resized, _) = accuracy(&lenet5, &["--data", big_rgb.path().to_str().unwrap()]);
    assert!(
        resized >= lenet5_accuracy - 0.03,
        "{resized} vs {lenet5_accuracy}"
    );

    // A model whose input is a vector cannot be given images.
    let arch = format!("[input]\nshape = [784]\n{}", common::linear_toml("fc"));
    let tensors = vec![
        ("fc.weight".to_string(), vec![10, 784], vec![0.0; 7840]),
        ("fc.bias".to_string(), vec![10], vec![0.0; 10]),
    ];
    let models = TempDir::new().unwrap();
    let vector = common::write_model(models.path(), "vector.safetensors", &arch, &tensors);
    let out = common::squeeze()
        .args(["eval", "--no-timing", "--model"])
        .arg(&vector)
        .arg("--data")
        .arg(d.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("[C, H, W]") && e.contains("vector.safetensors") && e.contains("[784]"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
}
