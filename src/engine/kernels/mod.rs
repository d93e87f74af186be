//! How a linear/conv layer runs. When a model is assembled, each layer (each group of a grouped
//! convolution) is *prepared once* (`LayerKernels::prepare`): from its stored format
//! (`format.rs`) come the execution variants its work runs on, each with the layout it reads,
//! built then from the stored bytes and never stored: one variant for a single input column (a
//! sample of a linear layer, a convolution with one output position), one for many (batches,
//! convolution positions), or the integer kernels when the layer's inputs are quantized. The
//! choice, and the CPU check it rests on (`cpu.rs`), happen there, once; running a layer is
//! one call to the chosen variant.
//!
//! The variants, each in its own file with its layout builder and its portable and AVX-512
//! loops:
//! - `dense.rs`: dense f32 rows, f16/bf16 rows widened in registers, any other values decoded
//!   row by row (the portable fallback);
//! - `codes.rs`: dense uniform codes and codebooks read as stored (8-bit codes, 4-bit nibble
//!   pairs, 4-bit codebook nibbles, any width unpacked in registers, one row at a time);
//! - `planes.rs`: dense 1–3- and 5–7-bit codes as bit planes;
//! - `row_blocks.rs`: sparse rows in 16-row blocks over 32-column windows;
//! - `gathered.rs`: sparse rows over the absolute column of every entry, one column or many;
//! - `panels.rs`: the layer decoded into the matrix product's row panels (batches, positions);
//! - `depthwise.rs`: depthwise convolutions computed directly, 16 channels at a time, every
//!   format and quantized activations included;
//! - `int8.rs`: 8-bit activation codes × 8-bit weight codes (AVX-512 VNNI);
//! - `integer.rs`: activation codes × uniform weight codes of any layout, exact i32 sums.
//!
//! `unpack.rs` holds the in-register unpacking of bit-packed codes that dense and sparse
//! variants share, `common.rs` the scratch buffers, bias and portable sums.

mod codes;
mod common;
mod dense;
mod depthwise;
mod gathered;
mod int8;
mod integer;
mod panels;
#[cfg(target_arch = "x86_64")]
mod planes;
mod row_blocks;
mod unpack;

use super::cpu::Isa;
use super::format::PackedLayer;
use super::gemm::ConvRhs;
use super::ops::Clamp;
use crate::compress::ActivationQuant;

pub use common::KernelScratch;
pub(crate) use depthwise::Depthwise;
pub use gathered::EntryColumns;
pub(crate) use int8::{Int8Layer, Layout, interleave_quads};
pub(crate) use integer::IntegerRows;
pub use integer::{fake_quantize, quantize_centered};
pub use row_blocks::RowBlocks;

/// What work a layer will be given, which decides the variants prepared for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// One input column at a time: a linear layer's single sample, a convolution with one
    /// output position. The single-column variants (row blocks, bit planes, ...) are built
    /// only then.
    pub one_column: bool,
    /// Its quantized inputs may run through the 8-bit kernel (linear layers and ungrouped
    /// convolutions, whose inputs the model lays out for it).
    pub int8: bool,
    /// It is a convolution the matrix product's tall panels serve better than its row panels
    /// (`gemm::product_direct`, `gemm::product_tall`): a window larger than 1 × 1 over enough
    /// input values and output columns (`gemm::DIRECT_MIN_K`, `gemm::DIRECT_MIN_WIDTH`), or any
    /// window over at most `gemm::FEW` positions. Measured with `squeeze info --time`: 1 × 1
    /// windows over more positions (MobileNetV2's expand and project layers) and 3 × 3 stems
    /// over 3 channels ran slower on tall panels.
    pub tall: bool,
}

impl Work {
    /// Every kind of work.
    pub const ALL: Work = Work {
        one_column: true,
        int8: true,
        tall: false,
    };
}

/// How one linear/conv layer (or one group of a grouped convolution) runs, prepared once from
/// its stored format.
#[derive(Debug, Clone)]
pub struct LayerKernels {
    rows: usize,
    cols: usize,
    run: Run,
}

/// The kernels a prepared layer's inputs go through.
#[derive(Debug, Clone)]
pub(crate) enum Run {
    /// Float inputs (for float weights under activation quantization, the inputs' quantized
    /// values).
    Float(Box<FloatKernels>),
    /// 8-bit activation codes × 8-bit weight codes.
    Int8(Int8Layer),
    /// Activation codes × uniform weight codes, exact i32 sums.
    Integer(IntegerRows, ActivationQuant),
}

impl LayerKernels {
    /// Prepares `layer` for `work` on the kernels this CPU runs (`cpu::Isa::current`).
    pub fn prepare(layer: &PackedLayer, work: Work) -> LayerKernels {
        let isa = Isa::current();
        let run = match layer.activation {
            Some(act) => {
                if let Some(k) = Int8Layer::new(layer, isa).filter(|_| work.int8) {
                    Run::Int8(k)
                } else if let Some(k) = IntegerRows::new(layer, act) {
                    Run::Integer(k, act)
                } else {
                    Run::Float(Box::new(FloatKernels::new(layer, work, isa, Some(act))))
                }
            }
            None => Run::Float(Box::new(FloatKernels::new(layer, work, isa, None))),
        };
        LayerKernels {
            rows: layer.rows,
            cols: layer.cols,
            run,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn kernels(&self) -> &Run {
        &self.run
    }

    /// `y (rows × p) = bias + W · xᵀ` for float inputs `x` sample-major (`p × cols`), when the
    /// layer's many-column kernel reads that layout itself (the matrix product); `false`, with
    /// nothing written, when the caller must transpose `x` for `run`.
    pub(crate) fn run_samples(
        &self,
        x: &[f32],
        p: usize,
        y: &mut [f32],
        s: &mut KernelScratch,
    ) -> bool {
        match &self.run {
            Run::Float(f) if f.fake_quant.is_none() => f.run_samples(x, p, y, s),
            _ => false,
        }
    }

    /// `y (rows × p) = bias + W · B` for `B` the im2col matrix of `c` (`p` its columns), when
    /// the layer runs float inputs as one matrix product, which packs `B` from the input planes
    /// itself; `false`, with nothing written, when the caller must form the im2col matrix.
    /// Given `clamp`, the outputs are bounded.
    pub(crate) fn run_conv(
        &self,
        c: ConvRhs<'_>,
        y: &mut [f32],
        s: &mut KernelScratch,
        clamp: Option<Clamp>,
    ) -> bool {
        match &self.run {
            Run::Float(f) if f.fake_quant.is_none() => match &f.many {
                ManyColumns::Panels(k) => {
                    k.run_conv(c, y, s, clamp);
                    true
                }
                ManyColumns::Gathered(k) => k.run_conv(c, y, s, clamp),
            },
            _ => false,
        }
    }

    /// Whether `run_conv` runs one sample as a direct convolution, without im2col.
    pub(crate) fn direct(&self) -> bool {
        match &self.run {
            Run::Float(f) if f.fake_quant.is_none() => match &f.many {
                ManyColumns::Panels(k) => k.direct(),
                ManyColumns::Gathered(_) => false,
            },
            _ => false,
        }
    }

    /// A short name of the variants chosen, for tests and reports: `one-column / many-column`,
    /// or the integer kernel's.
    pub fn describe(&self) -> String {
        match &self.run {
            Run::Float(f) => format!(
                "{} / {}",
                f.one.as_ref().map_or("-", OneColumn::name),
                f.many.name()
            ),
            Run::Int8(_) => "int8".into(),
            Run::Integer(..) => "integer".into(),
        }
    }

    /// `y (rows × p) = bias + W · B` for raw float inputs `B` (`cols × p`, feature-major),
    /// quantized first as the layer's activation quantization says (codes for the integer
    /// kernels, their values for float weights): one layer as a model computes it.
    pub fn run(&self, b: &[f32], p: usize, y: &mut [f32], s: &mut KernelScratch) {
        let (rows, cols) = (self.rows, self.cols);
        assert!(
            b.len() >= cols * p && y.len() >= rows * p,
            "layer operands too short"
        );
        match &self.run {
            Run::Float(f) => match f.fake_quant {
                Some(a) => {
                    let mut bq = b[..cols * p].to_vec();
                    fake_quantize(&mut bq, a.bits, a.scale, a.zero_point);
                    f.run(&bq, p, y, s);
                }
                None => f.run(b, p, y, s),
            },
            Run::Integer(k, a) => {
                let mut q = vec![0i16; cols * p];
                quantize_centered(&b[..cols * p], a.bits, a.scale, a.zero_point, &mut q);
                k.run(&q, p, y, s);
            }
            Run::Int8(k) => {
                // Codes feature-major, padded with zero rows to whole quads, interleaved for
                // the kernel; its sample-major outputs transposed back.
                let mut codes = vec![0u8; k.kp * p];
                k.quantize(&b[..cols * p], &mut codes[..cols * p]);
                let mut quads = vec![0u8; k.kp * p];
                interleave_quads(&codes, p, &mut quads);
                let mut out = vec![0f32; p * rows];
                k.run(&quads, p, Layout::Quads, &mut out);
                for (j, o) in out.chunks_exact(rows.max(1)).enumerate().take(p) {
                    for (r, &v) in o.iter().enumerate() {
                        y[r * p + j] = v;
                    }
                }
            }
        }
    }
}

/// A layer's float kernels: one variant for one input column, one for many.
#[derive(Debug, Clone)]
pub(crate) struct FloatKernels {
    rows: usize,
    cols: usize,
    one: Option<OneColumn>,
    many: ManyColumns,
    /// Float weights under activation quantization see their inputs' quantized values.
    pub(crate) fake_quant: Option<ActivationQuant>,
}

impl FloatKernels {
    fn new(layer: &PackedLayer, work: Work, isa: Isa, fake_quant: Option<ActivationQuant>) -> Self {
        let columns = EntryColumns::of(layer);
        let one = work.one_column.then(|| match &columns {
            None => dense_one(layer, isa),
            Some(ec) => sparse_one(layer, ec, isa),
        });
        let many = match columns {
            Some(ec) if layer.density() < panels::SPARSE_GEMM_DENSITY => {
                ManyColumns::Gathered(gathered::GatheredBatch::new(layer, ec))
            }
            _ => ManyColumns::Panels(panels::GemmPanels::new(layer, isa.avx512, work.tall)),
        };
        FloatKernels {
            rows: layer.rows,
            cols: layer.cols,
            one,
            many,
            fake_quant,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// `y (rows × p) = bias + W · b` for `b` feature-major (`cols × p`): one column on the
    /// single-column variant when the layer has one.
    pub(crate) fn run(&self, b: &[f32], p: usize, y: &mut [f32], s: &mut KernelScratch) {
        self.run_bounded(b, p, y, s, None);
    }

    /// `run`, the outputs bounded by `clamp`: as the matrix product stores them, or after.
    pub(crate) fn run_bounded(
        &self,
        b: &[f32],
        p: usize,
        y: &mut [f32],
        s: &mut KernelScratch,
        clamp: Option<Clamp>,
    ) {
        let (rows, cols) = (self.rows, self.cols);
        let (b, y) = (&b[..cols * p], &mut y[..rows * p]);
        match (&self.one, p, &self.many) {
            (Some(one), 1, _) => one.run(b, y, s),
            (_, _, ManyColumns::Panels(k)) => return k.run(b, p, y, s, clamp),
            (_, _, ManyColumns::Gathered(k)) => k.run(b, p, y, s),
        }
        if let Some(c) = clamp {
            c.apply(y);
        }
    }

    /// `y (rows × p) = bias + W · xᵀ` for `x` sample-major (`p × cols`), when the many-column
    /// variant reads that layout itself (the matrix product); `false`, with nothing written,
    /// when the caller must transpose `x` and use `run`.
    pub(crate) fn run_samples(
        &self,
        x: &[f32],
        p: usize,
        y: &mut [f32],
        s: &mut KernelScratch,
    ) -> bool {
        match &self.many {
            ManyColumns::Panels(k) if p > 1 => {
                k.run_samples(&x[..p * self.cols], p, &mut y[..self.rows * p], s);
                true
            }
            _ => false,
        }
    }
}

/// The variants for one input column: `y = W·x + bias`.
#[derive(Debug, Clone)]
enum OneColumn {
    DenseF32(dense::F32Rows),
    #[cfg(target_arch = "x86_64")]
    Half(dense::HalfRows),
    #[cfg(target_arch = "x86_64")]
    Bytes(codes::ByteRows),
    #[cfg(target_arch = "x86_64")]
    Nibbles(codes::NibbleRows),
    #[cfg(target_arch = "x86_64")]
    Planes(planes::PlaneRows),
    #[cfg(target_arch = "x86_64")]
    BookNibbles(codes::BookNibbleRows),
    #[cfg(target_arch = "x86_64")]
    Unpacked(codes::UnpackedRows),
    RowDots(codes::RowDots),
    Decoded(dense::DecodedRows),
    #[cfg(target_arch = "x86_64")]
    Blocks(row_blocks::BlockRows),
    #[cfg(target_arch = "x86_64")]
    Mask(gathered::MaskRows),
    Gathered(gathered::GatheredRows),
}

impl OneColumn {
    fn run(&self, x: &[f32], y: &mut [f32], s: &mut KernelScratch) {
        match self {
            OneColumn::DenseF32(k) => k.run(x, y),
            #[cfg(target_arch = "x86_64")]
            OneColumn::Half(k) => k.run(x, y),
            #[cfg(target_arch = "x86_64")]
            OneColumn::Bytes(k) => k.run(x, y),
            #[cfg(target_arch = "x86_64")]
            OneColumn::Nibbles(k) => k.run(x, y, s),
            #[cfg(target_arch = "x86_64")]
            OneColumn::Planes(k) => k.run(x, y, s),
            #[cfg(target_arch = "x86_64")]
            OneColumn::BookNibbles(k) => k.run(x, y, s),
            #[cfg(target_arch = "x86_64")]
            OneColumn::Unpacked(k) => k.run(x, y),
            OneColumn::RowDots(k) => k.run(x, y, s),
            OneColumn::Decoded(k) => k.run(x, y, s),
            #[cfg(target_arch = "x86_64")]
            OneColumn::Blocks(k) => k.run(x, y, s),
            #[cfg(target_arch = "x86_64")]
            OneColumn::Mask(k) => k.run(x, y),
            OneColumn::Gathered(k) => k.run(x, y, s),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            OneColumn::DenseF32(_) => "dense f32",
            #[cfg(target_arch = "x86_64")]
            OneColumn::Half(_) => "half rows",
            #[cfg(target_arch = "x86_64")]
            OneColumn::Bytes(_) => "8-bit rows",
            #[cfg(target_arch = "x86_64")]
            OneColumn::Nibbles(_) => "nibble rows",
            #[cfg(target_arch = "x86_64")]
            OneColumn::Planes(_) => "bit planes",
            #[cfg(target_arch = "x86_64")]
            OneColumn::BookNibbles(_) => "codebook nibbles",
            #[cfg(target_arch = "x86_64")]
            OneColumn::Unpacked(_) => "unpacked in registers",
            OneColumn::RowDots(_) => "row dots",
            OneColumn::Decoded(_) => "decoded rows",
            #[cfg(target_arch = "x86_64")]
            OneColumn::Blocks(_) => "row blocks",
            #[cfg(target_arch = "x86_64")]
            OneColumn::Mask(_) => "mask expansion",
            OneColumn::Gathered(_) => "gathered columns",
        }
    }
}

/// The variants for many input columns: `Y = W·B + bias`.
#[derive(Debug, Clone)]
enum ManyColumns {
    Panels(panels::GemmPanels),
    Gathered(gathered::GatheredBatch),
}

impl ManyColumns {
    fn name(&self) -> &'static str {
        match self {
            ManyColumns::Panels(_) => "gemm panels",
            ManyColumns::Gathered(_) => "gathered columns",
        }
    }
}

/// The single-column variant of a dense-indexed layer: the vector kernels where the CPU and
/// the values allow (half precision, 8-bit codes, nibble pairs, bit planes, codebook
/// nibbles, in-register unpacking), else dense f32 rows, per-row code dots or decoded rows.
fn dense_one(layer: &PackedLayer, isa: Isa) -> OneColumn {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx512) = isa.avx512 {
        if let Some(k) = dense::HalfRows::new(layer, avx512) {
            return OneColumn::Half(k);
        }
        if let Some(rows) = codes::ScaledRows::new(layer) {
            if let Some(k) = codes::ByteRows::new(&rows, avx512) {
                return OneColumn::Bytes(k);
            }
            if let Some(k) = codes::NibbleRows::new(&rows, avx512) {
                return OneColumn::Nibbles(k);
            }
            if let Some(k) = planes::PlaneRows::new(&rows, avx512) {
                return OneColumn::Planes(k);
            }
        }
        if let Some(k) = codes::BookNibbleRows::new(layer, avx512) {
            return OneColumn::BookNibbles(k);
        }
        if let Some(k) = isa.vbmi.and_then(|v| codes::UnpackedRows::new(layer, v)) {
            return OneColumn::Unpacked(k);
        }
    }
    if let Some(k) = dense::F32Rows::new(layer) {
        return OneColumn::DenseF32(k);
    }
    if let Some(rows) = codes::ScaledRows::new(layer) {
        return OneColumn::RowDots(codes::RowDots::new(&rows, isa.avx512));
    }
    OneColumn::Decoded(dense::DecodedRows::new(layer))
}

/// The single-column variant of a sparse layer: row blocks where the CPU allows and the padding
/// stays small, mask expansion for dense-ish half-precision bitmasks, else gathered columns.
fn sparse_one(layer: &PackedLayer, columns: &EntryColumns, isa: Isa) -> OneColumn {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx512) = isa.avx512 {
        if let Some(k) = row_blocks::BlockRows::new(layer, columns, avx512) {
            return OneColumn::Blocks(k);
        }
        if let Some(k) = gathered::MaskRows::new(layer, columns, avx512) {
            return OneColumn::Mask(k);
        }
    }
    OneColumn::Gathered(gathered::GatheredRows::new(layer, columns.clone(), isa))
}
