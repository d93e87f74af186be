//! A seeded fuzz-style suite for everything squeeze reads: generated malformed safetensors
//! (dense and compressed), architectures, data files of every format and recipes, plus random
//! byte flips of valid files. Every case must end in a usable model/set or in a one-line error
//! naming the file: no panic, no abort, no hang, and (for `apply`) no output written.
//!
//! The bulk runs in-process through the library (fast); a sample of every category drives the
//! real binary. A failure prints its category and seed; rerun one case with
//! `SQUEEZE_FUZZ_SEED=<seed> SQUEEZE_FUZZ_CASES=1 cargo test --release --test fuzz`.
//! `SQUEEZE_FUZZ_BIN=<path to a squeeze binary>` runs every case through that binary instead
//! (to measure another build; add `SQUEEZE_FUZZ_NO_LIMIT_FLAG=1` for a build without
//! `--memory-limit`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::Dtype;
use squeeze::compress::{Bits, Recipe};
use squeeze::engine::CompressedModel;
use squeeze::model::Model;

mod common;
use common::{model_bytes, rand_vec};

/// Cases per category in-process, and how many of them also run through the binary.
const CASES: u64 = 250;
const BINARY_SAMPLE: u64 = 6;
const BASE_SEED: u64 = 0x5eed_f022;
/// How long one case may take before it counts as a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(20);
/// The memory limit the cases run under.
const MEMORY_LIMIT: &str = "1G";

const CATEGORIES: [&str; 6] = [
    "dense safetensors",
    "compressed safetensors",
    "architectures",
    "data files",
    "recipes",
    "byte flips",
];

/// What a case feeds to squeeze.
#[derive(Debug, Clone)]
enum Target {
    /// A model file (dense or compressed), with a description beside it or not.
    Model {
        model: PathBuf,
        arch: Option<PathBuf>,
    },
    /// An evaluation set.
    Data(PathBuf),
    /// A recipe for the fixture model.
    Recipe(PathBuf),
}

impl Target {
    /// The file the error must name.
    fn file(&self) -> &Path {
        match self {
            Target::Model { arch: Some(a), .. } => a,
            Target::Model { model, .. } => model,
            Target::Data(p) | Target::Recipe(p) => p,
        }
    }
}

/// Valid files the generators start from.
struct Fixtures {
    dir: PathBuf,
    model: Model,
    dense_bytes: Vec<u8>,
    compressed: Vec<Vec<u8>>,
    data: Vec<(String, Vec<u8>)>,
    data_file: PathBuf,
    model_file: PathBuf,
}

const ARCH: &str = "[input]\nshape = [1, 6, 6]\nscale = 0.00392156862745098\nmean = [0.5]\nstd = [0.25]\n\
[[layer]]\nop = \"conv2d\"\nname = \"c1\"\nweight = \"c1.weight\"\nbias = \"c1.bias\"\npadding = 1\n\
[[layer]]\nop = \"relu\"\n[[layer]]\nop = \"maxpool2d\"\nkernel = 2\n[[layer]]\nop = \"flatten\"\n\
[[layer]]\nop = \"linear\"\nname = \"fc\"\nweight = \"fc.weight\"\nbias = \"fc.bias\"\n";

fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

fn idx(ty: u8, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, ty, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(body);
    out
}

fn npz(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        w.start_file(*name, opts).expect("zip");
        w.write_all(bytes).expect("zip");
    }
    w.finish().expect("zip").into_inner()
}

impl Fixtures {
    fn new(dir: &Path) -> Fixtures {
        let mut rng = StdRng::seed_from_u64(1);
        let tensors = vec![
            (
                "c1.weight".to_string(),
                vec![2, 1, 3, 3],
                rand_vec(&mut rng, 18),
            ),
            ("c1.bias".to_string(), vec![2], rand_vec(&mut rng, 2)),
            ("fc.weight".to_string(), vec![3, 18], rand_vec(&mut rng, 54)),
            ("fc.bias".to_string(), vec![3], rand_vec(&mut rng, 3)),
        ];
        let dense_bytes = model_bytes(ARCH, &tensors);
        let model_file = dir.join("fixture.safetensors");
        std::fs::write(&model_file, &dense_bytes).expect("write");
        let model = squeeze::model::load(&model_file)
            .expect("fixture loads")
            .model;
        let mut compressed = Vec::new();
        for recipe in [
            "[default]\nprune = \"l1\"\nsparsity = 0.6\nbits = 4\nscheme = \"asymmetric\"\n",
            "[default]\nbits = 8\n",
            "[default]\nprune = \"l1\"\nsparsity = 0.9\nbits = 3\nscheme = \"kmeans\"\n",
            "[default]\nbits = 16\n",
            "[default]\nprune = \"l1\"\nsparsity = 0.5\nbits = 2\ngranularity = \"group\"\ngroup_size = 3\n",
        ] {
            let r = Recipe::from_toml_str(recipe).expect("recipe");
            let plan = squeeze::compress::apply(&model, &r, None).expect("plan");
            let cm = CompressedModel::build(&plan).expect("build");
            compressed.push(cm.to_bytes(Some(recipe)).expect("bytes"));
        }
        // Four samples in every data format.
        let pixels: Vec<u8> = (0..4 * 36).map(|_| rng.random()).collect();
        let labels: Vec<u8> = vec![0, 1, 2, 1];
        let st = {
            let t = vec![
                (
                    "inputs".to_string(),
                    Dtype::U8,
                    vec![4, 1, 6, 6],
                    pixels.clone(),
                ),
                ("labels".to_string(), Dtype::U8, vec![4], labels.clone()),
            ];
            squeeze::files::serialize(&t, &BTreeMap::new()).expect("ser")
        };
        let csv = {
            let mut s: String = (0..36).map(|i| format!("p{i},")).collect();
            s.push_str("label\n");
            for (i, l) in labels.iter().enumerate() {
                for p in &pixels[i * 36..(i + 1) * 36] {
                    s.push_str(&format!("{p},"));
                }
                s.push_str(&format!("{l}\n"));
            }
            s.into_bytes()
        };
        let x = npy("|u1", &[4, 1, 6, 6], &pixels);
        let y = npy("|u1", &[4], &labels);
        let data = vec![
            ("d.safetensors".to_string(), st.clone()),
            ("d.csv".to_string(), csv),
            ("x_test.npy".to_string(), x.clone()),
            ("y_test.npy".to_string(), y.clone()),
            ("d.npz".to_string(), npz(&[("x.npy", x), ("y.npy", y)])),
            (
                "t-images-idx3-ubyte".to_string(),
                idx(8, &[4, 6, 6], &pixels),
            ),
            ("t-labels-idx1-ubyte".to_string(), idx(8, &[4], &labels)),
            (
                "g-images-idx3-ubyte.gz".to_string(),
                gz(&idx(8, &[4, 6, 6], &pixels)),
            ),
            (
                "g-labels-idx1-ubyte.gz".to_string(),
                gz(&idx(8, &[4], &labels)),
            ),
        ];
        let data_file = dir.join("fixture-data.safetensors");
        std::fs::write(&data_file, &st).expect("write");
        Fixtures {
            dir: dir.to_path_buf(),
            model,
            dense_bytes,
            compressed,
            data,
            data_file,
            model_file,
        }
    }
}

/// Sizes that break careless arithmetic.
fn extreme(rng: &mut StdRng) -> String {
    let v: &[&str] = &[
        "0",
        "1",
        "-1",
        "2",
        "3",
        "7",
        "255",
        "65535",
        "65536",
        "2147483647",
        "4294967295",
        "4294967296",
        "1099511627776",
        "4611686018427387904",
        "9223372036854775807",
        "18446744073709551615",
        "1e38",
        "3e38",
        "-3e38",
        "1e-45",
        "0.5",
        "null",
        "\"x\"",
        "[]",
        "{}",
    ];
    v[rng.random_range(0..v.len())].to_string()
}

/// Replaces one number in a JSON text (a metadata value or the header) by an extreme value.
fn mutate_json_number(rng: &mut StdRng, text: &str) -> String {
    let spans: Vec<(usize, usize)> = {
        let b = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
                let start = i;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'e') {
                    i += 1;
                }
                out.push((start, i));
            } else {
                i += 1;
            }
        }
        out
    };
    if spans.is_empty() {
        return text.to_string();
    }
    let (s, e) = spans[rng.random_range(0..spans.len())];
    format!("{}{}{}", &text[..s], extreme(rng), &text[e..])
}

/// The header JSON and data of a safetensors file.
fn split(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8")) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    (header, bytes[8 + n..].to_vec())
}

fn join(header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    let mut json = serde_json::to_vec(header).expect("json");
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    out
}

/// A malformed safetensors file from a valid one: metadata numbers, tensor shapes, dtypes,
/// offsets or data overwritten; the checksum record usually removed so the checks behind it
/// are reached.
fn malformed_safetensors(rng: &mut StdRng, good: &[u8]) -> Vec<u8> {
    let (mut header, mut data) = split(good);
    if rng.random_bool(0.8)
        && let Some(serde_json::Value::Object(m)) = header.get_mut("__metadata__")
    {
        m.remove(squeeze::files::CHECKSUM_KEY);
    }
    let names: Vec<String> = header.keys().cloned().collect();
    let edits = rng.random_range(1..=3);
    for _ in 0..edits {
        let name = &names[rng.random_range(0..names.len())];
        match rng.random_range(0..6) {
            0 | 1 if name == "__metadata__" => {
                if let Some(serde_json::Value::Object(m)) = header.get_mut(name) {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    if let Some(k) = keys.get(rng.random_range(0..keys.len().max(1))) {
                        let v = m[k].as_str().unwrap_or_default().to_string();
                        m.insert(k.clone(), mutate_json_number(rng, &v).into());
                    }
                }
            }
            0 => {
                if let Some(v) = header.get(name).map(|v| v.to_string())
                    && let Ok(v) = serde_json::from_str(&mutate_json_number(rng, &v))
                {
                    header.insert(name.clone(), v);
                }
            }
            1 => {
                let dt = ["F32", "F16", "U8", "I32", "U16", "F64", "BOOL", "X"];
                if let Some(t) = header.get_mut(name).and_then(|v| v.as_object_mut()) {
                    t.insert("dtype".into(), dt[rng.random_range(0..dt.len())].into());
                }
            }
            2 => {
                // Extreme values written over part of the data.
                if !data.is_empty() {
                    let at = rng.random_range(0..data.len());
                    let fill: [u8; 4] = match rng.random_range(0..4) {
                        0 => [0xff; 4],
                        1 => [0; 4],
                        2 => 3e38f32.to_le_bytes(),
                        _ => f32::NAN.to_le_bytes(),
                    };
                    for (i, b) in fill.iter().enumerate() {
                        if let Some(d) = data.get_mut(at + i) {
                            *d = *b;
                        }
                    }
                }
            }
            3 => {
                header.remove(name);
            }
            4 => {
                let cut = rng.random_range(0..=data.len());
                data.truncate(cut);
            }
            _ => {
                if let Some(v) = header.get(name).map(|v| v.to_string())
                    && let Ok(v) = serde_json::from_str(&mutate_json_number(rng, &v))
                {
                    header.insert(name.clone(), v);
                }
            }
        }
    }
    join(&header, &data)
}

fn random_arch(rng: &mut StdRng) -> (String, Vec<(String, Vec<usize>)>) {
    let mut text = String::from("[input]\n");
    let c = [1usize, 2, 3][rng.random_range(0..3)];
    let shape = match rng.random_range(0..4) {
        0 => format!("[{c}, 6, 6]"),
        1 => "[36]".to_string(),
        2 => format!("[{}, {}, {}]", extreme(rng), extreme(rng), extreme(rng)),
        _ => format!("[{c}, {}, 6]", extreme(rng)),
    };
    text += &format!("shape = {shape}\n");
    if rng.random_bool(0.3) {
        text += &format!("std = [{}]\nmean = [{}]\n", extreme(rng), extreme(rng));
    }
    let mut tensors = Vec::new();
    let ops = [
        "conv2d",
        "linear",
        "relu",
        "maxpool2d",
        "avgpool2d",
        "flatten",
        "batchnorm",
        "leaky_relu",
        "global_avgpool",
        "dropout",
        "add",
        "softmax",
    ];
    let layers = rng.random_range(1..6);
    for i in 0..layers {
        let op = ops[rng.random_range(0..ops.len())];
        let name = format!("l{i}");
        text += &format!("[[layer]]\nop = \"{op}\"\nname = \"{name}\"\n");
        let small = |rng: &mut StdRng| -> String {
            if rng.random_bool(0.2) {
                extreme(rng)
            } else {
                rng.random_range(0..4usize).to_string()
            }
        };
        match op {
            "conv2d" => {
                text += &format!(
                    "weight = \"{name}.weight\"\nstride = {}\npadding = {}\ndilation = {}\ngroups = {}\n",
                    small(rng),
                    small(rng),
                    small(rng),
                    small(rng)
                );
                let dims = (0..4).map(|_| rng.random_range(1..4)).collect();
                tensors.push((format!("{name}.weight"), dims));
            }
            "linear" => {
                text += &format!("weight = \"{name}.weight\"\nbias = \"{name}.bias\"\n");
                let (o, n) = (
                    rng.random_range(1..5),
                    [36usize, 18, 8, 3][rng.random_range(0..4)],
                );
                tensors.push((format!("{name}.weight"), vec![o, n]));
                tensors.push((format!("{name}.bias"), vec![o]));
            }
            "maxpool2d" | "avgpool2d" => {
                text += &format!(
                    "kernel = {}\nstride = {}\npadding = {}\n",
                    small(rng),
                    small(rng),
                    small(rng)
                );
            }
            "batchnorm" => {
                for t in ["weight", "bias", "running_mean", "running_var"] {
                    text += &format!("{t} = \"{name}.{t}\"\n");
                    tensors.push((format!("{name}.{t}"), vec![rng.random_range(1..4)]));
                }
                text += &format!("eps = {}\n", extreme(rng));
            }
            "leaky_relu" => text += &format!("slope = {}\n", extreme(rng)),
            "dropout" => text += &format!("p = {}\n", extreme(rng)),
            "add" => text += &format!("from = \"l{}\"\n", rng.random_range(0..layers)),
            _ => {}
        }
    }
    (text, tensors)
}

fn random_data(rng: &mut StdRng, dir: &Path, f: &Fixtures) -> PathBuf {
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let dim = |rng: &mut StdRng| -> u32 {
        if rng.random_bool(0.2) {
            [0u32, u32::MAX, 1 << 31, 1 << 20][rng.random_range(0..4)]
        } else {
            rng.random_range(1..8)
        }
    };
    match rng.random_range(0..5) {
        0 => {
            let ty = [8u8, 9, 0x0B, 0x0C, 0x0D, 0x0E, 0x07][rng.random_range(0..7)];
            let nd = rng.random_range(0..5);
            let dims: Vec<u32> = (0..nd).map(|_| dim(rng)).collect();
            let body: Vec<u8> = (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect();
            let n = dims.first().copied().unwrap_or(0);
            let labels = idx(8, &[n], &vec![1u8; (n as usize).min(100)]);
            let (images, labels) = if rng.random_bool(0.5) {
                (gz(&idx(ty, &dims, &body)), gz(&labels))
            } else {
                (idx(ty, &dims, &body), labels)
            };
            write("fz-labels-idx1-ubyte", &labels);
            write("fz-images-idx3-ubyte", &images)
        }
        1 => {
            let descr =
                ["|u1", "<f4", "<i8", ">f8", "|b1", "<c8", "O", "<f2"][rng.random_range(0..8)];
            let shape: Vec<usize> = (0..rng.random_range(0..4))
                .map(|_| dim(rng) as usize)
                .collect();
            let body: Vec<u8> = (0..rng.random_range(0..300))
                .map(|_| rng.random())
                .collect();
            let mut x = npy(descr, &shape, &body);
            if rng.random_bool(0.3) {
                let at = rng.random_range(8..x.len().min(80));
                x[at] = rng.random();
            }
            let n = shape.first().copied().unwrap_or(1).min(50);
            write("y_fz.npy", &npy("<i8", &[n], &vec![0u8; n * 8]));
            if rng.random_bool(0.3) {
                write(
                    "fz.npz",
                    &npz(&[("x.npy", x), ("y.npy", npy("|u1", &[n], &vec![0; n]))]),
                )
            } else {
                write("x_fz.npy", &x)
            }
        }
        2 => {
            let cols = rng.random_range(0..5);
            let mut s = String::new();
            for c in 0..cols {
                s += &format!("c{c},");
            }
            s += if rng.random_bool(0.8) {
                "label\n"
            } else {
                "lbl\n"
            };
            for _ in 0..rng.random_range(0..5) {
                for _ in 0..cols + rng.random_range(0..2) {
                    s += &format!("{},", extreme(rng));
                }
                s += &format!("{}\n", extreme(rng));
            }
            write("fz.csv", s.as_bytes())
        }
        3 => {
            let good = &f.data[0].1;
            write("fz.safetensors", &malformed_safetensors(rng, good))
        }
        _ => {
            // A valid file of another format under a misleading or missing extension.
            let (_, bytes) = &f.data[rng.random_range(0..f.data.len())];
            let names = [
                "fz",
                "fz.csv",
                "fz.npy",
                "fz.safetensors",
                "fz-images-idx3-ubyte",
            ];
            write(names[rng.random_range(0..names.len())], bytes)
        }
    }
}

fn random_recipe(rng: &mut StdRng, dir: &Path) -> PathBuf {
    let keys = [
        "prune",
        "sparsity",
        "bits",
        "scheme",
        "granularity",
        "group_size",
        "n",
        "m",
        "quality",
        "seed",
        "norm",
    ];
    let values = [
        "\"l1\"",
        "\"nm\"",
        "\"structured\"",
        "\"kmeans\"",
        "\"asymmetric\"",
        "\"group\"",
        "\"bf16\"",
        "nan",
        "inf",
        "-0.5",
        "0.99",
        "1",
        "8",
        "0",
        "33",
        "\"x\"",
    ];
    let mut text = String::new();
    for table in [
        "[default]",
        "[layer.c1]",
        "[layer.fc]",
        "[global]",
        "[activations]",
    ] {
        if rng.random_bool(0.5) {
            continue;
        }
        text += table;
        text.push('\n');
        for _ in 0..rng.random_range(0..4) {
            let k = keys[rng.random_range(0..keys.len())];
            let v = if rng.random_bool(0.5) {
                values[rng.random_range(0..values.len())].to_string()
            } else {
                extreme(rng)
            };
            text += &format!("{k} = {v}\n");
        }
    }
    let p = dir.join("fz-recipe.toml");
    std::fs::write(&p, text).expect("write");
    p
}

fn flip(rng: &mut StdRng, bytes: &mut [u8]) {
    for _ in 0..rng.random_range(1..=8) {
        let at = if rng.random_bool(0.5) {
            rng.random_range(0..bytes.len().min(300))
        } else {
            rng.random_range(0..bytes.len())
        };
        bytes[at] ^= 1 << rng.random_range(0..8);
    }
}

/// Writes one case's files into `dir` and says what to feed squeeze.
fn generate(category: &str, seed: u64, dir: &Path, f: &Fixtures) -> Target {
    let mut rng = StdRng::seed_from_u64(seed);
    let model = |bytes: &[u8]| {
        let p = dir.join("fz.safetensors");
        std::fs::write(&p, bytes).expect("write");
        Target::Model {
            model: p,
            arch: None,
        }
    };
    match category {
        "dense safetensors" => model(&malformed_safetensors(&mut rng, &f.dense_bytes)),
        "compressed safetensors" => {
            let good = &f.compressed[rng.random_range(0..f.compressed.len())];
            model(&malformed_safetensors(&mut rng, good))
        }
        "architectures" => {
            let (text, tensors) = random_arch(&mut rng);
            let named: Vec<_> = tensors
                .iter()
                .map(|(n, s)| (n.clone(), s.clone(), rand_vec(&mut rng, s.iter().product())))
                .collect();
            let p = dir.join("fz.safetensors");
            let bytes = squeeze::model::to_safetensors_bytes(&named, &HashMap::new()).expect("ser");
            std::fs::write(&p, bytes).expect("write");
            let a = dir.join("fz-arch.toml");
            std::fs::write(&a, text).expect("write");
            Target::Model {
                model: p,
                arch: Some(a),
            }
        }
        "data files" => Target::Data(random_data(&mut rng, dir, f)),
        "recipes" => Target::Recipe(random_recipe(&mut rng, dir)),
        _ => {
            let which = rng.random_range(0..3);
            match which {
                0 => {
                    let mut b = f.dense_bytes.clone();
                    flip(&mut rng, &mut b);
                    model(&b)
                }
                1 => {
                    let mut b = f.compressed[rng.random_range(0..f.compressed.len())].clone();
                    flip(&mut rng, &mut b);
                    model(&b)
                }
                _ => {
                    let (name, bytes) = &f.data[rng.random_range(0..f.data.len())];
                    // Keep the pair's partner beside the flipped file.
                    for (n, b) in &f.data {
                        std::fs::write(dir.join(n), b).expect("write");
                    }
                    let mut b = bytes.clone();
                    flip(&mut rng, &mut b);
                    let name = if name.starts_with("y_") || name.contains("labels") {
                        // Flip the labels, read through the inputs.
                        std::fs::write(dir.join(name), &b).expect("write");
                        name.replace("y_", "x_")
                            .replace("labels-idx1", "images-idx3")
                    } else {
                        std::fs::write(dir.join(name), &b).expect("write");
                        name.clone()
                    };
                    Target::Data(dir.join(name))
                }
            }
        }
    }
}

/// Runs a case in-process: load what the target names and, when it loads, run one sample.
/// `Err` is the error text squeeze would print.
fn run_library(target: &Target, f: &Fixtures) -> Result<(), String> {
    match target {
        Target::Model { model, arch } => {
            if arch.is_none() && squeeze::engine::is_compressed_file(model) {
                let cm = squeeze::engine::load_compressed(model).map_err(|e| e.to_string())?;
                let x = vec![0.25f32; cm.input_len()];
                let _ = cm.logits(&x, 1);
            } else {
                let m = squeeze::model::load_with_arch(model, arch.as_deref())
                    .map_err(|e| e.to_string())?
                    .model;
                let plan =
                    squeeze::compress::apply(&m, &Recipe::quick(0.0, Bits::F32, false), None)
                        .map_err(|e| e.to_string())?;
                let cm = CompressedModel::build(&plan).map_err(|e| e.to_string())?;
                let x = vec![0.25f32; cm.input_len()];
                let _ = cm.logits(&x, 1);
            }
        }
        Target::Data(path) => {
            let set = squeeze::data::load(path, &Default::default()).map_err(|e| e.to_string())?;
            set.prepare(&f.model.input, 3).map_err(|e| e.to_string())?;
        }
        Target::Recipe(path) => {
            let r = Recipe::from_path(path).map_err(|e| e.to_string())?;
            let plan = squeeze::compress::apply(&f.model, &r, None)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let cm = CompressedModel::build(&plan).map_err(|e| e.to_string())?;
            let _ = cm.logits(&vec![0.25f32; cm.input_len()], 1);
        }
    }
    Ok(())
}

/// Runs a case through a squeeze binary: `eval` for models and data, `apply` for recipes.
/// `Err` describes what went wrong (a panic, a signal, a hang, a bad message, an output).
fn run_binary(bin: &Path, target: &Target, f: &Fixtures, dir: &Path) -> Result<(), String> {
    let mut cmd = std::process::Command::new(bin);
    let out_file = dir.join("fz-out.safetensors");
    let _ = std::fs::remove_file(&out_file);
    match target {
        Target::Model { model, arch } => {
            cmd.args(["eval", "--no-timing", "--model"]).arg(model);
            if let Some(a) = arch {
                cmd.arg("--arch").arg(a);
            }
            cmd.arg("--data").arg(&f.data_file);
        }
        Target::Data(p) => {
            cmd.args(["eval", "--no-timing", "--model"])
                .arg(&f.model_file)
                .arg("--data")
                .arg(p);
        }
        Target::Recipe(p) => {
            cmd.args(["apply", "--model"])
                .arg(&f.model_file)
                .arg("--recipe")
                .arg(p)
                .arg("--out")
                .arg(&out_file);
        }
    }
    if std::env::var_os("SQUEEZE_FUZZ_NO_LIMIT_FLAG").is_none() {
        cmd.args(["--memory-limit", MEMORY_LIMIT]);
    }
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
        // which is async-signal-safe; it caps the child's address space so a runaway
        // allocation fails there instead of exhausting the machine.
        unsafe {
            cmd.pre_exec(|| {
                let cap = libc::rlimit {
                    rlim_cur: 8 << 30,
                    rlim_max: 8 << 30,
                };
                libc::setrlimit(libc::RLIMIT_AS, &cap);
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if start.elapsed() > CASE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("hang: no answer in {CASE_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    match status.code() {
        Some(0) => Ok(()),
        Some(1) => {
            if out_file.exists() {
                return Err(format!("failed but wrote {}", out_file.display()));
            }
            check_message(&stderr, target)
        }
        Some(c) => Err(format!("exit code {c}: {}", stderr.trim())),
        None => Err(format!("killed by a signal: {}", stderr.trim())),
    }
}

/// An error is one `error:` line (warnings aside) that names the file.
fn check_message(stderr: &str, target: &Target) -> Result<(), String> {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("warning: "))
        .collect();
    if errors.len() != 1 || !errors[0].starts_with("error: ") {
        return Err(format!("not a one-line error: {stderr:?}"));
    }
    named(errors[0], target)
}

fn named(message: &str, target: &Target) -> Result<(), String> {
    let name = target
        .file()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Every generated file's name holds "fz"; a model with its description may be reported
    // through either, and an IDX or NPY pair through its partner file.
    let partner_named = message.contains("labels") || message.contains("_test");
    if message.contains(&name)
        || message.contains("fz")
        || (matches!(target, Target::Data(_)) && partner_named)
    {
        Ok(())
    } else {
        Err(format!("the error does not name {name}: {message}"))
    }
}

/// Runs `work` on its own thread, catching a panic and giving up after [`CASE_TIMEOUT`].
fn guarded(
    work: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<Result<(), String>, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(AssertUnwindSafe(work));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(CASE_TIMEOUT) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(p)) => Err(format!(
            "panic: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
        Err(_) => Err(format!("hang: no answer in {CASE_TIMEOUT:?}")),
    }
}

#[derive(Default)]
struct Tally {
    tried: u64,
    failed: Vec<String>,
}

#[test]
fn malformed_inputs_are_answers_never_crashes() {
    let base = std::env::var("SQUEEZE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(BASE_SEED);
    let cases = std::env::var("SQUEEZE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CASES);
    let only_binary = std::env::var_os("SQUEEZE_FUZZ_BIN").map(PathBuf::from);
    let bin = only_binary
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_squeeze")));
    squeeze::limits::set_memory_limit(1 << 30);
    let root = tempfile::tempdir().expect("tmp");
    let fixtures = std::sync::Arc::new(Fixtures::new(root.path()));
    // Panics of the cases (on unnamed threads) are counted, not printed one by one.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name().is_some() {
            default_hook(info);
        }
    }));
    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for (c, category) in CATEGORIES.iter().enumerate() {
        let tally = tallies.entry(*category).or_default();
        for i in 0..cases {
            let seed = base.wrapping_add((c as u64) << 32).wrapping_add(i);
            let dir = fixtures.dir.join(format!("case-{c}-{i}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            let target = generate(category, seed, &dir, &fixtures);
            let binary = only_binary.is_some() || i < BINARY_SAMPLE;
            let result = if binary {
                run_binary(&bin, &target, &fixtures, &dir)
            } else {
                let f = std::sync::Arc::clone(&fixtures);
                let t = target.clone();
                match guarded(move || run_library(&t, &f)) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(msg)) if msg.contains('\n') => Err(format!("multi-line error: {msg}")),
                    Ok(Err(msg)) => named(&msg, &target),
                    Err(crash) => Err(crash),
                }
            };
            tally.tried += 1;
            if let Err(why) = result {
                tally.failed.push(format!(
                    "{category} seed {seed} ({}): {why}",
                    if binary { "binary" } else { "library" }
                ));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let _ = std::panic::take_hook();
    let mut report = String::new();
    let mut failures = Vec::new();
    for (category, t) in &tallies {
        report += &format!("{category}: {} cases, {} failed\n", t.tried, t.failed.len());
        failures.extend(t.failed.iter().cloned());
    }
    println!("{report}");
    assert!(
        failures.is_empty(),
        "{report}\n{} failing case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
