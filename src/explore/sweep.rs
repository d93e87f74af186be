//! Sweeps: sets of configurations evaluated in one go — the explorer's uniform grid (every
//! layer at the same sparsity × bits), and grids of any recipe fields read from a TOML file
//! (`squeeze sweep`), split into shards for job arrays and merged back. Sensitivity (each
//! layer alone) lives in `sensitivity`.

use crate::compress::Bits;
use crate::compress::recipe::PruneMethod;

use super::config::{Config, Permille, pct};

/// The uniform grid.
pub const UNIFORM_SPARSITIES: [Permille; 6] = [0, 500, 700, 800, 900, 950];
pub const UNIFORM_BITS: [Bits; 5] = [
    Bits::F32,
    Bits::Int(8),
    Bits::Int(6),
    Bits::Int(4),
    Bits::Int(2),
];

#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    pub config: Config,
    pub label: String,
}

/// All `n` layers at each sparsity (L1) × bits (symmetric, per channel) of the grid.
pub fn uniform(n: usize) -> Vec<SweepPoint> {
    let mut out = Vec::new();
    for s in UNIFORM_SPARSITIES {
        for bits in UNIFORM_BITS {
            let mut config = Config::dense(n);
            for l in &mut config.layers {
                if s > 0 {
                    l.prune = PruneMethod::L1;
                    l.sparsity = s;
                }
                l.bits = bits;
            }
            let b = match bits {
                Bits::F32 => "f32".to_string(),
                other => format!("int{other}"),
            };
            out.push(SweepPoint {
                config,
                label: format!("all layers: l1 {} {b}", pct(s)),
            });
        }
    }
    out
}

/// The whole-model curves (`W`): global L1 pruning at these overall sparsities…
pub const CURVE_SPARSITIES: [Permille; 10] = [100, 200, 300, 400, 500, 600, 700, 800, 900, 950];
/// …and every layer quantized (symmetric, per channel, no pruning) at these widths.
pub const CURVE_BITS: [u8; 7] = [8, 7, 6, 5, 4, 3, 2];

/// A family of whole-model configurations drawn as one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CurveFamily {
    /// Global L1 unstructured pruning over all layers, weights kept f32.
    GlobalL1,
    /// Every layer quantized to the same width, symmetric per channel, nothing pruned.
    UniformBits,
}

impl CurveFamily {
    pub const ALL: [CurveFamily; 2] = [CurveFamily::GlobalL1, CurveFamily::UniformBits];

    /// The legend's name.
    pub fn name(self) -> &'static str {
        match self {
            CurveFamily::GlobalL1 => "global L1",
            CurveFamily::UniformBits => "uniform bits",
        }
    }

    /// What the family's parameter is.
    pub fn parameter(self) -> &'static str {
        match self {
            CurveFamily::GlobalL1 => "overall sparsity (%)",
            CurveFamily::UniformBits => "bits per weight",
        }
    }

    /// The parameter as text: `90%`, `4 bits`.
    pub fn parameter_text(self, value: f64) -> String {
        match self {
            CurveFamily::GlobalL1 => format!("{value}%"),
            CurveFamily::UniformBits => format!("{value} bits"),
        }
    }

    /// The configurations of the family on `n` layers, in the order the line joins them
    /// (more compression further along).
    pub fn points(self, n: usize) -> Vec<SweepPoint> {
        match self {
            CurveFamily::GlobalL1 => CURVE_SPARSITIES
                .iter()
                .map(|&s| SweepPoint {
                    config: Config {
                        global: Some(s),
                        ..Config::dense(n)
                    },
                    label: format!("global l1 {}", pct(s)),
                })
                .collect(),
            CurveFamily::UniformBits => CURVE_BITS
                .iter()
                .map(|&b| {
                    let mut config = Config::dense(n);
                    for l in &mut config.layers {
                        l.bits = Bits::Int(u32::from(b));
                    }
                    SweepPoint {
                        config,
                        label: format!("all layers: int{b}"),
                    }
                })
                .collect(),
        }
    }
}

/// Both curves' configurations, global L1 first.
pub fn model_curves(n: usize) -> Vec<SweepPoint> {
    CurveFamily::ALL.iter().flat_map(|f| f.points(n)).collect()
}

/// The curve a configuration lies on and its parameter there (sparsity in %, or bits); `None`
/// for a configuration on neither. Any global sparsity and any integer width count, so a
/// point reached by hand joins its curve too.
pub fn curve_of(config: &Config) -> Option<(CurveFamily, f64)> {
    use crate::compress::recipe::{GranularityKind, Scheme};
    if config.activation_bits.is_some() || config.layers.is_empty() {
        return None;
    }
    if let Some(g) = config.global.filter(|&g| g > 0) {
        // The global ranking replaces the layers' own pruning; their weights stay f32.
        return config
            .layers
            .iter()
            .all(|l| l.bits == Bits::F32)
            .then_some((CurveFamily::GlobalL1, f64::from(g) / 10.0));
    }
    let first = config.layers[0].bits;
    let Bits::Int(b) = first else { return None };
    config
        .layers
        .iter()
        .all(|l| {
            l.bits == first
                && l.scheme == Scheme::Symmetric
                && l.granularity == GranularityKind::Channel
                && (l.prune == PruneMethod::None
                    || (matches!(
                        l.prune,
                        PruneMethod::L1 | PruneMethod::Random | PruneMethod::Structured
                    ) && l.sparsity == 0))
        })
        .then_some((CurveFamily::UniformBits, f64::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uniform_sweep_covers_its_grid() {
        let u = uniform(2);
        assert_eq!(u.len(), UNIFORM_SPARSITIES.len() * UNIFORM_BITS.len());
        assert!(u[0].config.is_dense());
    }

    #[test]
    fn the_model_curves_cover_sparsities_and_bits_in_order() {
        let g = CurveFamily::GlobalL1.points(3);
        let s: Vec<Option<Permille>> = g.iter().map(|p| p.config.global).collect();
        assert_eq!(
            s,
            [100, 200, 300, 400, 500, 600, 700, 800, 900, 950].map(Some)
        );
        assert!(
            g.iter()
                .all(|p| p.config.layers.iter().all(|l| l.is_dense()))
        );
        let b = CurveFamily::UniformBits.points(3);
        let bits: Vec<Bits> = b.iter().map(|p| p.config.layers[2].bits).collect();
        assert_eq!(bits, [8, 7, 6, 5, 4, 3, 2].map(Bits::Int));
        assert!(b.iter().all(|p| p.config.global.is_none()
            && p.config.layers.iter().all(|l| l.prune == PruneMethod::None
                && l.granularity == crate::compress::recipe::GranularityKind::Channel)));
        let all = model_curves(3);
        assert_eq!(all.len(), 17);
        // Every point is recognised as on its own curve, with its parameter.
        let params: Vec<(CurveFamily, f64)> =
            all.iter().filter_map(|p| curve_of(&p.config)).collect();
        assert_eq!(params.len(), 17);
        assert_eq!(params[8], (CurveFamily::GlobalL1, 90.0));
        assert_eq!(params[9], (CurveFamily::GlobalL1, 95.0));
        assert_eq!(params[10], (CurveFamily::UniformBits, 8.0));
        assert_eq!(params[16], (CurveFamily::UniformBits, 2.0));
        // The dense model, a per-layer edit and mixed widths are on neither curve.
        assert_eq!(curve_of(&Config::dense(3)), None);
        let mut mixed = b[0].config.clone();
        mixed.layers[0].bits = Bits::Int(4);
        assert_eq!(curve_of(&mixed), None);
        let mut pruned = b[0].config.clone();
        pruned.layers[1].prune = PruneMethod::L1;
        pruned.layers[1].sparsity = 500;
        assert_eq!(curve_of(&pruned), None);
        let mut quantized = g[0].config.clone();
        quantized.layers[0].bits = Bits::Int(8);
        assert_eq!(curve_of(&quantized), None);
    }
}

/// A grid of recipes read from a TOML file: a recipe whose fields may hold lists, one
/// configuration per combination of list values.
#[derive(Debug, Clone, PartialEq)]
pub struct GridPoint {
    /// Position in the whole grid (stable: shards and merges use it).
    pub index: usize,
    pub recipe: crate::compress::Recipe,
    /// The list values this point takes, e.g. `default.sparsity=0.9 layer.fc3.bits=8`.
    pub label: String,
}

/// Grids larger than this are refused (a typo in a list, not a sweep anyone can run).
pub const MAX_GRID: usize = 1_000_000;

/// Why a grid file gives no configurations.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error(transparent)]
    Read(#[from] crate::files::FileError),
    #[error("{}: {source}", path.display())]
    In {
        path: std::path::PathBuf,
        source: Box<GridError>,
    },
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    #[error("{0}: an empty list gives no configuration")]
    EmptyList(String),
    #[error("the grid has more than {MAX_GRID} points")]
    TooLarge,
    #[error(transparent)]
    Write(#[from] toml::ser::Error),
    #[error("grid point {index} ({label}): {source}")]
    Point {
        index: usize,
        label: String,
        source: Box<crate::compress::RecipeError>,
    },
}

/// Reads a grid file. Every field of a recipe may be a list (`sparsity = [0.5, 0.7, 0.9]`);
/// the grid is the product of all lists, in the order of their table and field names. A
/// `[global]` `layers` list is a list of names, not an axis.
pub fn read_grid(path: &std::path::Path) -> Result<Vec<GridPoint>, GridError> {
    let text = crate::files::read_text(path)?;
    parse_grid(&text).map_err(|e| GridError::In {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Parses a grid's text (see `read_grid`).
pub fn parse_grid(text: &str) -> Result<Vec<GridPoint>, GridError> {
    let value: toml::Table = toml::from_str(text)?;
    // Axes: (path of keys, values), in path order.
    let mut axes: Vec<(Vec<String>, Vec<toml::Value>)> = Vec::new();
    fn walk(
        table: &toml::Table,
        path: &mut Vec<String>,
        axes: &mut Vec<(Vec<String>, Vec<toml::Value>)>,
    ) -> Result<(), GridError> {
        for (k, v) in table {
            path.push(k.clone());
            match v {
                toml::Value::Table(t) => walk(t, path, axes)?,
                toml::Value::Array(list)
                    if !(path.len() == 2 && path[0] == "global" && k == "layers") =>
                {
                    if list.is_empty() {
                        return Err(GridError::EmptyList(path.join(".")));
                    }
                    axes.push((path.clone(), list.clone()));
                }
                _ => {}
            }
            path.pop();
        }
        Ok(())
    }
    walk(&value, &mut Vec::new(), &mut axes)?;
    axes.sort_by(|a, b| a.0.cmp(&b.0));
    let total = axes
        .iter()
        .try_fold(1usize, |n, (_, v)| n.checked_mul(v.len()))
        .filter(|n| *n <= MAX_GRID)
        .ok_or(GridError::TooLarge)?;
    let mut out = Vec::with_capacity(total);
    for index in 0..total {
        let mut table = value.clone();
        let mut rest = index;
        let mut label = Vec::new();
        // The last axis varies fastest.
        let mut picks = vec![0; axes.len()];
        for (a, (_, values)) in axes.iter().enumerate().rev() {
            picks[a] = rest % values.len();
            rest /= values.len();
        }
        for ((path, values), &pick) in axes.iter().zip(&picks) {
            let chosen = values[pick].clone();
            label.push(format!("{}={}", path.join("."), chosen));
            set_path(&mut table, path, chosen);
        }
        let recipe_text = toml::to_string(&table)?;
        let recipe = crate::compress::Recipe::from_toml_str(&recipe_text).map_err(|source| {
            GridError::Point {
                index,
                label: label.join(" "),
                source: Box::new(source),
            }
        })?;
        out.push(GridPoint {
            index,
            recipe,
            label: if label.is_empty() {
                "the recipe".into()
            } else {
                label.join(" ")
            },
        });
    }
    Ok(out)
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for p in parents {
        let Some(toml::Value::Table(next)) = t.get_mut(p) else {
            return;
        };
        t = next;
    }
    t.insert(last.clone(), value);
}

/// A resolved recipe with prunings that remove nothing written as no pruning, so that two
/// recipes that compress alike compare equal.
pub fn without_noop_pruning(
    mut r: crate::compress::ResolvedRecipe,
) -> crate::compress::ResolvedRecipe {
    use crate::compress::Pruning;
    for l in &mut r.layers {
        if matches!(
            l.prune,
            Pruning::L1 { sparsity }
                | Pruning::Random { sparsity, .. }
                | Pruning::Structured { sparsity, .. }
                | Pruning::Global { sparsity } if sparsity == 0.0
        ) {
            l.prune = Pruning::None;
        }
    }
    if r.global.as_ref().is_some_and(|g| g.0 == 0.0) {
        r.global = None;
    }
    r
}

/// Shard `i` of `n`: every point whose index is `i` modulo `n` (so shards take turns
/// through the grid and get similar mixes of cheap and costly points).
pub fn shard(points: Vec<GridPoint>, i: usize, n: usize) -> Vec<GridPoint> {
    points
        .into_iter()
        .filter(|p| n > 0 && p.index % n == i)
        .collect()
}

/// A `--shard` that is not `i/n` with `i` below `n`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("shard \"{0}\": write i/n, e.g. 0/4 (shards count from 0)")]
    NoSlash(String),
    #[error("shard \"{text}\": {part} is not a number")]
    NotANumber { text: String, part: &'static str },
    #[error(
        "shard \"{text}\": i must be from 0 to n − 1 (a Slurm array 0-{}: --shard $SLURM_ARRAY_TASK_ID/{n})",
        n.saturating_sub(1)
    )]
    OutOfRange { text: String, n: usize },
}

/// Reads `--shard i/n` (`0/4` … `3/4`).
pub fn parse_shard(s: &str) -> Result<(usize, usize), ShardError> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| ShardError::NoSlash(s.to_string()))?;
    let number = |part: &'static str, v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| ShardError::NotANumber {
                text: s.to_string(),
                part,
            })
    };
    let (i, n) = (number("i", i)?, number("n", n)?);
    if n == 0 || i >= n {
        return Err(ShardError::OutOfRange {
            text: s.to_string(),
            n,
        });
    }
    Ok((i, n))
}

/// One layer of a measured point in a result line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResultLayer {
    pub name: String,
    pub format: String,
    pub size_bytes: u64,
    pub sparsity: f64,
    pub macs: u64,
}

/// One line of a sweep's result file: a configuration, what was measured, and what it was
/// measured on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResultLine {
    pub index: usize,
    /// Hex hash of (model, data, calibration, recipe): equal for the same configuration on
    /// any machine.
    pub config_hash: String,
    pub label: String,
    pub recipe: crate::compress::Recipe,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p90_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arena_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arena_layer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<ResultLayer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On the accuracy-vs-size frontier of the file's points.
    #[serde(default)]
    pub pareto: bool,
    /// On the accuracy-vs-latency frontier.
    #[serde(default)]
    pub pareto_latency: bool,
    /// The seed of random choices (random pruning): the explorer's configurations use 0.
    pub seed: u64,
    pub inputs: super::results::Inputs,
}

impl ResultLine {
    /// A line from a measured point's full-set and latency figures.
    pub fn new(
        point: &GridPoint,
        key: u64,
        full: Option<&super::eval::Figures>,
        latency: Option<&super::eval::Figures>,
        error: Option<String>,
        info: &super::info::ModelInfo,
        inputs: &super::results::Inputs,
    ) -> ResultLine {
        ResultLine {
            index: point.index,
            config_hash: super::journal::key_hex(key),
            label: point.label.clone(),
            recipe: point.recipe.clone(),
            accuracy: full.and_then(|f| f.accuracy).map(|a| a.value),
            size_bytes: full.and_then(|f| f.size_bytes),
            dense_bytes: full.and_then(|f| f.dense_bytes),
            entropy_bytes: full.and_then(|f| f.entropy_bytes),
            sparsity: full.and_then(|f| f.sparsity),
            latency_us: latency.and_then(|f| f.latency_us),
            latency_p90_us: latency.and_then(|f| f.latency_p90_us),
            arena_bytes: full.and_then(|f| f.arena_bytes),
            arena_layer: full.and_then(|f| f.arena_layer.clone()),
            layers: full
                .map(|f| {
                    f.layers
                        .iter()
                        .zip(&info.layers)
                        .map(|(l, i)| ResultLayer {
                            name: i.name.clone(),
                            format: l.format.clone(),
                            size_bytes: l.size_bytes,
                            sparsity: l.sparsity,
                            macs: l.macs,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            error,
            pareto: false,
            pareto_latency: false,
            seed: 0,
            inputs: inputs.clone(),
        }
    }
}

/// Marks the lines on the accuracy-vs-size and accuracy-vs-latency frontiers.
pub fn mark_pareto(lines: &mut [ResultLine]) {
    let size: Vec<(f64, f64)> = lines
        .iter()
        .map(|l| match (l.size_bytes, l.accuracy) {
            (Some(s), Some(a)) => (s as f64, a),
            _ => (f64::NAN, f64::NAN),
        })
        .collect();
    let latency: Vec<(f64, f64)> = lines
        .iter()
        .map(|l| match (l.latency_us, l.accuracy) {
            (Some(s), Some(a)) => (s, a),
            _ => (f64::NAN, f64::NAN),
        })
        .collect();
    for l in lines.iter_mut() {
        l.pareto = false;
        l.pareto_latency = false;
    }
    for i in super::pareto::frontier(&size) {
        lines[i].pareto = true;
    }
    for i in super::pareto::frontier(&latency) {
        lines[i].pareto_latency = true;
    }
}

/// The lines as a JSON-lines file.
pub fn to_jsonl(lines: &[ResultLine]) -> String {
    let mut out = String::new();
    for l in lines {
        out.push_str(&serde_json::to_string(l).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// Joins result files: every line of every file (each file's lines numbered for messages),
/// one per configuration hash (the first seen), in grid order, the frontiers marked again.
/// Files measured on other model or data contents are refused.
/// Why result files cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{file}:{line}: not a sweep result line: {source}")]
    NotALine {
        file: String,
        line: usize,
        source: serde_json::Error,
    },
    #[error(
        "{file}:{line}: measured on other model or data contents than {first} (model sha256 {theirs} vs {ours}); merge results of one model and data set"
    )]
    OtherInputs {
        file: String,
        line: usize,
        first: String,
        theirs: String,
        ours: String,
    },
}

pub fn merge(files: &[(String, String)]) -> Result<(Vec<ResultLine>, usize), MergeError> {
    let mut out: Vec<ResultLine> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    let mut first: Option<(String, super::results::Inputs)> = None;
    for (name, text) in files {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let l: ResultLine =
                serde_json::from_str(line).map_err(|source| MergeError::NotALine {
                    file: name.clone(),
                    line: i + 1,
                    source,
                })?;
            match &first {
                Some((f, inputs)) if !inputs.same_inputs(&l.inputs) => {
                    return Err(MergeError::OtherInputs {
                        file: name.clone(),
                        line: i + 1,
                        first: f.clone(),
                        theirs: l.inputs.model.sha256.clone(),
                        ours: inputs.model.sha256.clone(),
                    });
                }
                Some(_) => {}
                None => first = Some((name.clone(), l.inputs.clone())),
            }
            if seen.insert(l.config_hash.clone()) {
                out.push(l);
            } else {
                duplicates += 1;
            }
        }
    }
    out.sort_by(|a, b| {
        a.index
            .cmp(&b.index)
            .then(a.config_hash.cmp(&b.config_hash))
    });
    mark_pareto(&mut out);
    Ok((out, duplicates))
}

#[cfg(test)]
mod grid_tests {
    use super::*;

    #[test]
    fn grids_take_the_product_of_their_lists() {
        let g = parse_grid(
            "[default]\nprune = \"l1\"\nsparsity = [0.5, 0.9]\nbits = [8, 4, 2]\n[layer.fc3]\nsparsity = 0.0\n[global]\nlayers = [\"fc1\", \"fc2\"]\nsparsity = [0.3]\n",
        )
        .unwrap();
        assert_eq!(g.len(), 6);
        assert_eq!(
            g[0].label,
            "default.bits=8 default.sparsity=0.5 global.sparsity=0.3"
        );
        assert_eq!(g[5].recipe.default.sparsity, Some(0.9));
        assert_eq!(g[5].recipe.default.bits, Some(Bits::Int(2)));
        assert_eq!(
            g[0].recipe.global.as_ref().and_then(|g| g.layers.clone()),
            Some(vec!["fc1".to_string(), "fc2".to_string()])
        );
        assert!(g.iter().enumerate().all(|(i, p)| p.index == i));
        let shards: Vec<Vec<GridPoint>> = (0..4).map(|i| shard(g.clone(), i, 4)).collect();
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), 6);
        assert_eq!(shards[1][0].index, 1);
        assert_eq!(shards[1][1].index, 5);
        assert!(
            parse_grid("[default]\nbits = []\n")
                .unwrap_err()
                .to_string()
                .contains("empty list")
        );
        assert!(
            parse_grid("[default]\nprune = [\"l1\", \"bogus\"]\n")
                .unwrap_err()
                .to_string()
                .contains("grid point 1")
        );
        assert_eq!(parse_shard("3/4"), Ok((3, 4)));
        assert_eq!(
            parse_shard("4/4"),
            Err(ShardError::OutOfRange {
                text: "4/4".into(),
                n: 4
            })
        );
        assert_eq!(parse_shard("x"), Err(ShardError::NoSlash("x".into())));
        assert!(
            parse_shard("1/y")
                .unwrap_err()
                .to_string()
                .ends_with("n is not a number")
        );
        // The example grid of the cluster scripts.
        let example = read_grid(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/cluster/grid.toml"
        )))
        .unwrap();
        assert_eq!(example.len(), 36);
    }
}
