//! The operations of the training forward pass ([`TrainOps`]) and the loss as candle graph
//! nodes with hand-written backward passes; the arithmetic is in `kernels`.
//!
//! Every gradient candle's backward hands from one node to the next costs a zeroed tensor and
//! an addition, and on 2 cores those passes over the activations cost as much as the layers'
//! arithmetic. So the nodes are few and large:
//! - a linear or conv layer is one node, bias included;
//! - [`TrainOps`] fuses a ReLU or a max pooling that directly follows into the node before it:
//!   the fused node still takes `(x, weight, bias)`, keeps the input each stage saw, and
//!   back-propagates through the stages and the layer in one call, so no gradient of the
//!   large intermediate activations goes through candle's store. (The unfused intermediate
//!   nodes stay valid: a value also used elsewhere, or observed, is back-propagated correctly,
//!   just without the saving.)
//! - cross-entropy is one node whose gradient is one pass.
//!
//! Max pooling's backward sends each output's gradient to the first maximum of its window (in
//! row-major order), as PyTorch does. candle's own max-pool backward multiplies it by
//! `maxima / (kh·kw)` instead (¼ for a 2×2 window with one maximum); see `max_pool2d`.
//!
//! Everything here is f32 on the CPU and deterministic whatever the number of threads.

use std::cell::RefCell;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage,
    Tensor, TensorId, bail,
};

use super::kernels::{self, Axis, Conv, Linear, MaxPool};
use crate::engine::ConvShape;
use crate::model::{Activation, Conv2dGeometry, ForwardOps, Pool2d, Reference};

/// The f32 values of a contiguous CPU tensor.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        bail!("{what}: only f32 tensors are supported");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => bail!("{what}: the input must be contiguous"),
    }
}

/// Runs `f` on the f32 values of a contiguous CPU tensor, without copying them.
fn with_f32<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("{what}: only CPU tensors are supported");
    };
    Ok(f(f32_slice(cpu, layout, what)?))
}

fn cpu_tensor(values: Vec<f32>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// What a layer node computes from `(x, weight, bias)`.
#[derive(Debug, Clone, Copy)]
enum Product {
    Linear(Linear),
    Conv(Conv),
}

impl Product {
    fn out_shape(&self) -> Shape {
        match self {
            Product::Linear(l) => Shape::from((l.n, l.out)),
            Product::Conv(c) => Shape::from((c.n, c.shape.cout, c.shape.oh, c.shape.ow)),
        }
    }

    fn forward(&self, x: &[f32], w: &[f32], b: &[f32]) -> Result<Vec<f32>> {
        Ok(match self {
            Product::Linear(l) => {
                if x.len() != l.n * l.inputs || w.len() != l.out * l.inputs || b.len() != l.out {
                    bail!("linear: unexpected input, weight or bias size");
                }
                l.forward(x, w, b)
            }
            Product::Conv(c) => {
                let s = &c.shape;
                if x.len() != c.n * c.sample_in() || w.len() != s.cout * s.k() || b.len() != s.cout
                {
                    bail!("conv2d: unexpected input, weight or bias size");
                }
                c.forward(x, w, b)
            }
        })
    }

    /// The gradients of `x`, the weight and the bias that need one, for the output gradient
    /// `dy`.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        dy: &[f32],
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        const WHAT: &str = "layer backward";
        let (dx, dw, db) = match self {
            Product::Linear(l) => {
                let dx = if x.track_op() {
                    Some(with_f32(w, WHAT, |w| l.input_grad(w, dy))?)
                } else {
                    None
                };
                let dw = if w.track_op() {
                    Some(with_f32(x, WHAT, |x| l.weight_grad(x, dy))?)
                } else {
                    None
                };
                (dx, dw, b.track_op().then(|| l.bias_grad(dy)))
            }
            Product::Conv(c) => {
                let (want_dx, want_dw) = (x.track_op(), w.track_op());
                let (dx, dw) = if want_dx || want_dw {
                    with_f32(x, WHAT, |xv| {
                        with_f32(w, WHAT, |wv| c.backward(xv, wv, dy, want_dx, want_dw))
                    })??
                } else {
                    (None, None)
                };
                (dx, dw, b.track_op().then(|| c.bias_grad(dy)))
            }
        };
        Ok((
            dx.map(|v| cpu_tensor(v, x.shape())).transpose()?,
            dw.map(|v| cpu_tensor(v, w.shape())).transpose()?,
            db.map(|v| cpu_tensor(v, b.shape())).transpose()?,
        ))
    }
}

/// A stage that can follow a layer inside its node.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Relu,
    MaxPool(MaxPool),
}

impl Stage {
    fn out_shape(&self, input: &Shape) -> Result<Shape> {
        Ok(match self {
            Stage::Relu => input.clone(),
            Stage::MaxPool(p) => {
                let (n, c, _, _) = input.dims4()?;
                Shape::from((n, c, p.h.out, p.w.out))
            }
        })
    }

    fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(match self {
            Stage::Relu => kernels::relu_forward(x),
            Stage::MaxPool(p) => {
                if x.len() != p.planes * p.plane_in() {
                    bail!(
                        "max_pool2d: input of {} values, expected {}",
                        x.len(),
                        p.planes * p.plane_in()
                    );
                }
                p.forward(x)
            }
        })
    }

    /// Turns `grad`, the gradient of the stage's output, into the gradient of its input `x`:
    /// in place for a ReLU, into a buffer from `buffers` for a pooling. `relu_in` (a pooling
    /// only) is the input of the ReLU whose output `x` is: the ReLU's backward is then applied
    /// in the same pass.
    fn backward(
        &self,
        x: &[f32],
        relu_in: Option<&[f32]>,
        grad: Vec<f32>,
        buffers: &mut Buffers,
    ) -> Result<Vec<f32>> {
        match self {
            Stage::Relu => {
                let mut grad = grad;
                if grad.len() != x.len() {
                    bail!(
                        "relu backward: gradient of {} values for {}",
                        grad.len(),
                        x.len()
                    );
                }
                kernels::relu_backward_in_place(x, &mut grad);
                Ok(grad)
            }
            Stage::MaxPool(p) => {
                let n = p.planes * p.plane_in();
                if grad.len() != p.planes * p.plane_out()
                    || x.len() != n
                    || relu_in.is_some_and(|r| r.len() != n)
                {
                    bail!("max_pool2d backward: unexpected input or gradient size");
                }
                let mut dx = buffers.take(x.len());
                p.backward_into(x, relu_in, &grad, &mut dx);
                buffers.give(grad);
                Ok(dx)
            }
        }
    }
}

/// Gradient buffers reused from one backward pass to the next, so that they are neither zeroed
/// nor faulted in again each step (every value of one is written before it is read).
#[derive(Debug, Default)]
struct Buffers(Vec<Vec<f32>>);

thread_local! {
    static BUFFERS: std::cell::Cell<Buffers> = std::cell::Cell::new(Buffers::default());
}

impl Buffers {
    /// A buffer of `n` values with unspecified contents.
    fn take(&mut self, n: usize) -> Vec<f32> {
        match self.0.iter().position(|b| b.len() == n) {
            Some(i) => self.0.swap_remove(i),
            None => vec![0f32; n],
        }
    }

    /// Keeps `b` for a later `take`; a few at most.
    fn give(&mut self, b: Vec<f32>) {
        if self.0.len() < 8 {
            self.0.push(b);
        }
    }

    /// Runs `f` with this thread's buffers.
    fn with<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
        let mut b = BUFFERS.with(std::cell::Cell::take);
        let r = f(&mut b);
        BUFFERS.with(|c| c.set(b));
        r
    }
}

/// `(x, weight, bias)` → the product, then each stage in order. Each stage's input (computed by
/// the nodes built before this one) is kept here for the forward value and the backward.
#[derive(Debug, Clone)]
struct LayerNode {
    product: Product,
    stages: Vec<(Stage, Tensor)>,
}

impl CustomOp3 for LayerNode {
    fn name(&self) -> &'static str {
        "squeeze-layer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Some((stage, input)) = self.stages.last() else {
            let x = f32_slice(s1, l1, "layer input")?;
            let w = f32_slice(s2, l2, "layer weight")?;
            let b = f32_slice(s3, l3, "layer bias")?;
            let y = self.product.forward(x, w, b)?;
            return Ok((CpuStorage::F32(y), self.product.out_shape()));
        };
        // The stages before the last ran in earlier nodes: only the last is computed here.
        let y = with_f32(input, "layer stage", |v| stage.forward(v))??;
        Ok((CpuStorage::F32(y), stage.out_shape(input.shape())?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        if self.stages.is_empty() {
            return with_f32(&grad, "layer backward", |g| {
                self.product.backward(x, w, b, g)
            })?;
        }
        Buffers::with(|buffers| {
            let mut dy = with_f32(&grad, "layer backward", |g| {
                let mut dy = buffers.take(g.len());
                dy.copy_from_slice(g);
                dy
            })?;
            let mut k = self.stages.len();
            while k > 0 {
                let (stage, input) = &self.stages[k - 1];
                // A pooling of a ReLU's output takes the ReLU's backward in its own pass.
                let relu = match (stage, k.checked_sub(2).map(|j| &self.stages[j])) {
                    (Stage::MaxPool(_), Some((Stage::Relu, relu_in))) => Some(relu_in),
                    _ => None,
                };
                dy = with_f32(input, "layer backward", |xv| match relu {
                    Some(r) => with_f32(r, "layer backward", |rv| {
                        stage.backward(xv, Some(rv), dy, buffers)
                    })?,
                    None => stage.backward(xv, None, dy, buffers),
                })??;
                k -= if relu.is_some() { 2 } else { 1 };
            }
            let grads = self.product.backward(x, w, b, &dy);
            buffers.give(dy);
            grads
        })
    }
}

/// `(x, weight, bias)` contiguous, a zero bias (that needs no gradient) when there is none.
fn operands(x: &Tensor, w: &Tensor, b: Option<&Tensor>, out: usize) -> Result<[Tensor; 3]> {
    let b = match b {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(out, x.dtype(), x.device())?,
    };
    Ok([x.contiguous()?, w.contiguous()?, b])
}

/// The linear layer's node and its operands.
fn linear_node(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<(LayerNode, [Tensor; 3])> {
    let (n, inputs) = x.dims2()?;
    let (out, win) = w.dims2()?;
    if win != inputs {
        bail!(
            "linear: weight {:?} does not take {inputs} inputs",
            w.dims()
        );
    }
    let node = LayerNode {
        product: Product::Linear(Linear { n, inputs, out }),
        stages: Vec::new(),
    };
    Ok((node, operands(x, w, b, out)?))
}

/// The convolution's node and its operands.
fn conv_node(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    geometry: Conv2dGeometry,
) -> Result<(LayerNode, [Tensor; 3])> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, cg, kh, kw) = w.dims4()?;
    let groups = geometry.groups;
    if groups == 0 || cg * groups != c || !o.is_multiple_of(groups) {
        bail!(
            "conv2d: weight {:?} does not fit {c} input channels in {groups} groups",
            w.dims()
        );
    }
    let (stride, pad, dil) = (geometry.stride, geometry.padding, geometry.dilation);
    let ah = Axis::new(h, kh, stride.0, pad.0, dil.0).map_err(candle_core::Error::msg)?;
    let aw = Axis::new(wd, kw, stride.1, pad.1, dil.1).map_err(candle_core::Error::msg)?;
    let shape = ConvShape {
        cin: c,
        h,
        w: wd,
        cout: o,
        kh,
        kw,
        stride,
        pad,
        dil,
        groups,
        oh: ah.out,
        ow: aw.out,
    };
    let node = LayerNode {
        product: Product::Conv(Conv { n, shape }),
        stages: Vec::new(),
    };
    Ok((node, operands(x, w, b, o)?))
}

/// `x · wᵀ + b` for `x` `[N, in]`, `w` `[out, in]` (and `b` `[out]`), as one graph node whose
/// products run on the engine's GEMM: the forward with the bias written first, the backward
/// as `dx = dy · w` (only when `x` needs a gradient) and `dw = dyᵀ · x`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (node, [x, w, b]) = linear_node(x, w, b)?;
    x.apply_op3(&w, &b, node)
}

/// A 2-D convolution of `x` `[N, C, H, W]` with `weight` `[O, C/groups, kh, kw]` (and `bias`
/// `[O]`), equal to candle's `conv2d` on the zero-padded input up to rounding, with any stride,
/// padding and dilation per dimension. Gradients flow to `x` (when it needs one), the weight and
/// the bias.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Conv2dGeometry,
) -> Result<Tensor> {
    let (node, [x, w, b]) = conv_node(x, weight, bias, geometry)?;
    x.apply_op3(&w, &b, node)
}

/// One stage on its own, as a node: `x` → the stage's output.
#[derive(Debug, Clone, Copy)]
struct StageNode(Stage);

impl CustomOp1 for StageNode {
    fn name(&self) -> &'static str {
        match self.0 {
            Stage::Relu => "squeeze-relu",
            Stage::MaxPool(_) => "squeeze-max-pool2d",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let y = self.0.forward(x)?;
        Ok((CpuStorage::F32(y), self.0.out_shape(layout.shape())?))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let grad = grad_res.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, &StageBackward(self.0))?))
    }
}

/// `(stage input, output gradient)` → input gradient.
#[derive(Debug, Clone, Copy)]
struct StageBackward(Stage);

impl CustomOp2 for StageBackward {
    fn name(&self) -> &'static str {
        "squeeze-stage-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "backward")?;
        let g = f32_slice(s2, l2, "backward")?;
        // A fresh gradient (it becomes a tensor): no buffer to reuse.
        let dx = self
            .0
            .backward(x, None, g.to_vec(), &mut Buffers::default())?;
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

fn pool_stage(x: &Tensor, p: &Pool2d) -> Result<Stage> {
    let (n, c, h, w) = x.dims4()?;
    let axis = |size, k, s, pad| Axis::new(size, k, s, pad, 1).map_err(candle_core::Error::msg);
    Ok(Stage::MaxPool(MaxPool {
        planes: n * c,
        h: axis(h, p.kernel.0, p.stride.0, p.padding.0)?,
        w: axis(w, p.kernel.1, p.stride.1, p.padding.1)?,
    }))
}

/// Max pooling of `x` `[N, C, H, W]`, padding counting as −∞. Its values equal candle's
/// `max_pool2d_with_stride` on the padded input; its gradient goes to the first maximum of each
/// window (PyTorch's rule), where candle's backward scales it by `maxima / (kh·kw)` and
/// supports only stride = kernel.
pub fn max_pool2d(
    x: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Tensor> {
    let p = Pool2d {
        kernel,
        stride,
        padding,
    };
    x.contiguous()?.apply_op1(StageNode(pool_stage(x, &p)?))
}

/// ReLU whose backward is one pass: `grad · [x ≥ 0]`, candle's rule (which takes four passes and
/// two temporaries).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(StageNode(Stage::Relu))
}

/// The mean cross-entropy of `logits` `[N, C]` against class indices `labels` `[N]`:
/// candle-nn's `cross_entropy` (log-softmax, then the negative log-likelihood) as one graph
/// node, its gradient `(softmax − onehot) / N` computed in one pass.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (n, classes) = logits.dims2()?;
    if labels.dims() != [n] {
        bail!(
            "cross_entropy: labels {:?} for logits {:?}",
            labels.dims(),
            logits.dims()
        );
    }
    let labels = labels.to_dtype(DType::U32)?.contiguous()?;
    logits
        .contiguous()?
        .apply_op2(&labels, CrossEntropy { n, classes })
}

#[derive(Debug, Clone, Copy)]
struct CrossEntropy {
    n: usize,
    classes: usize,
}

impl CrossEntropy {
    /// Checks the operands and returns the logits and the labels.
    fn operands<'a>(
        &self,
        s1: &'a CpuStorage,
        l1: &Layout,
        s2: &'a CpuStorage,
        l2: &Layout,
    ) -> Result<(&'a [f32], &'a [u32])> {
        let z = f32_slice(s1, l1, "cross_entropy logits")?;
        let (CpuStorage::U32(labels), Some((a, b))) = (s2, l2.contiguous_offsets()) else {
            bail!("cross_entropy: labels must be contiguous u32");
        };
        let labels = &labels[a..b];
        if z.len() != self.n * self.classes || labels.len() != self.n {
            bail!("cross_entropy: unexpected logits or labels size");
        }
        if let Some(&bad) = labels.iter().find(|&&y| y as usize >= self.classes) {
            bail!(
                "cross_entropy: label {bad} out of range for {} classes",
                self.classes
            );
        }
        Ok((z, labels))
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "squeeze-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (z, labels) = self.operands(s1, l1, s2, l2)?;
        let loss = kernels::cross_entropy(z, labels, self.classes);
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !logits.track_op() {
            return Ok((None, None));
        }
        let scale = grad.to_scalar::<f32>()? / self.n.max(1) as f32;
        let dz = logits.apply_op2_no_bwd(labels, &CrossEntropyBackward(*self, scale))?;
        Ok((Some(dz), None))
    }
}

/// `(logits, labels)` → `scale · (softmax(logits) − onehot(labels))`.
#[derive(Debug, Clone, Copy)]
struct CrossEntropyBackward(CrossEntropy, f32);

impl CustomOp2 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "squeeze-cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let CrossEntropyBackward(ce, scale) = *self;
        let (z, labels) = ce.operands(s1, l1, s2, l2)?;
        let dz = kernels::cross_entropy_grad(z, labels, ce.classes, scale);
        Ok((CpuStorage::F32(dz), l1.shape().clone()))
    }
}

/// The last layer node [`TrainOps`] built, which a following stage can join.
#[derive(Debug)]
struct Open {
    /// Its output.
    out: TensorId,
    node: LayerNode,
    operands: [Tensor; 3],
}

/// The operations of the training forward pass: linear, conv2d, ReLU and max pooling as the
/// nodes above (a ReLU or max pooling that reads a layer's output fused into the layer's
/// node), dropout active; everything else as the inference reference. One value per forward
/// pass: it remembers the last layer node it built.
#[derive(Debug, Default)]
pub struct TrainOps {
    open: RefCell<Option<Open>>,
}

impl TrainOps {
    /// Builds `node`'s output and keeps it open for a following stage.
    fn build(&self, node: LayerNode, operands: [Tensor; 3]) -> Result<Tensor> {
        let [x, w, b] = &operands;
        let y = x.apply_op3(w, b, node.clone())?;
        *self.open.borrow_mut() = Some(Open {
            out: y.id(),
            node,
            operands,
        });
        Ok(y)
    }

    /// `stage` on `x`: joined to the open layer node when `x` is its output, else a node of
    /// its own.
    fn stage(&self, x: &Tensor, stage: Stage) -> Result<Tensor> {
        let open = self.open.borrow_mut().take();
        match open {
            Some(Open {
                out,
                mut node,
                operands,
            }) if out == x.id() => {
                node.stages.push((stage, x.detach()));
                self.build(node, operands)
            }
            _ => x.contiguous()?.apply_op1(StageNode(stage)),
        }
    }
}

impl ForwardOps for TrainOps {
    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        if x.rank() != 2 {
            return Reference.linear(x, w, b);
        }
        let (node, operands) = linear_node(x, w, b)?;
        self.build(node, operands)
    }

    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        g: &Conv2dGeometry,
    ) -> Result<Tensor> {
        let (node, operands) = conv_node(x, w, b, *g)?;
        self.build(node, operands)
    }

    fn activation(&self, x: &Tensor, a: Activation) -> Result<Tensor> {
        match a {
            Activation::Relu => self.stage(x, Stage::Relu),
            other => crate::model::activation(x, other),
        }
    }

    fn max_pool2d(&self, x: &Tensor, p: &Pool2d) -> Result<Tensor> {
        // Same values; the gradient goes to each window's first maximum.
        self.stage(x, pool_stage(x, p)?)
    }

    fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if p > 0.0 {
            candle_nn::ops::dropout(x, p as f32)
        } else {
            Ok(x.clone())
        }
    }
}
