//! Optimizers: AdamW and SGD with momentum, each written as PyTorch computes it, updating every
//! parameter in place in one pass over its values, gradient and state (candle-nn's AdamW takes
//! a dozen tensor operations, each a pass and an allocation, per parameter and step).
//!
//! The update of each value depends only on that value's own state, so splitting the pass over
//! threads changes nothing.

use std::cell::RefCell;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, Var, bail};
use rayon::prelude::*;

use super::{OptimizerKind, TrainConfig};

/// Hyper-parameters of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Rule {
    /// `torch.optim.AdamW`: `w ← w·(1 − lr·λ)`, `m ← β₁m + (1 − β₁)g`, `v ← β₂v + (1 − β₂)g²`,
    /// `w ← w − lr·m̂ / (√v̂ + ε)` with `m̂ = m / (1 − β₁ᵗ)`, `v̂ = v / (1 − β₂ᵗ)`.
    AdamW {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
    /// `torch.optim.SGD` with momentum and L2 weight decay: `v ← μ·v + (g + λ·w)` from `v = 0`,
    /// `w ← w − lr·v`.
    Sgd {
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    },
}

impl Rule {
    /// State values kept per parameter value: AdamW's two moments, SGD's velocity.
    fn state_per_value(&self) -> usize {
        match self {
            Rule::AdamW { .. } => 2,
            Rule::Sgd { .. } => 1,
        }
    }
}

/// One parameter and its optimizer state (AdamW: first then second moments; SGD: velocity).
struct Slot {
    var: Var,
    state: Vec<f32>,
}

pub(super) struct Optim {
    rule: Rule,
    slots: Vec<Slot>,
    /// Steps taken (AdamW's bias correction).
    t: u32,
}

impl Optim {
    pub(super) fn new(vars: &[Var], cfg: &TrainConfig) -> Result<Self> {
        let rule = match cfg.optimizer {
            OptimizerKind::AdamW => Rule::AdamW {
                lr: cfg.lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: cfg.weight_decay,
            },
            OptimizerKind::Sgd => Rule::Sgd {
                lr: cfg.lr,
                momentum: cfg.momentum,
                weight_decay: cfg.weight_decay,
            },
        };
        Ok(Self::with_rule(vars, rule))
    }

    pub(super) fn with_rule(vars: &[Var], rule: Rule) -> Self {
        let slots = vars
            .iter()
            .map(|v| Slot {
                var: v.clone(),
                state: vec![0f32; rule.state_per_value() * v.elem_count()],
            })
            .collect();
        Optim { rule, slots, t: 0 }
    }

    pub(super) fn set_lr(&mut self, lr: f64) {
        match &mut self.rule {
            Rule::AdamW { lr: l, .. } | Rule::Sgd { lr: l, .. } => *l = lr,
        }
    }

    pub(super) fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// Updates every parameter that has a gradient in `grads`.
    pub(super) fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.t += 1;
        for slot in &mut self.slots {
            let Some(g) = grads.get(&slot.var) else {
                continue;
            };
            let op = Update {
                rule: self.rule,
                t: self.t,
                state: RefCell::new(&mut slot.state),
            };
            slot.var.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
        }
        Ok(())
    }
}

/// One step on one parameter: `(w, g)` with `w` updated in place and the state beside it.
struct Update<'a> {
    rule: Rule,
    t: u32,
    /// `cpu_fwd` takes `&self`; the state is this step's alone.
    state: RefCell<&'a mut Vec<f32>>,
}

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "squeeze-optimizer-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(w), CpuStorage::F32(g)) = (s1, s2) else {
            bail!("optimizer: only f32 parameters are supported");
        };
        let (Some((w0, w1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            bail!("optimizer: parameters and gradients must be contiguous");
        };
        let (w, g) = (&mut w[w0..w1], &g[g0..g1]);
        let mut state = self.state.borrow_mut();
        if g.len() != w.len() || state.len() != self.rule.state_per_value() * w.len() {
            bail!("optimizer: gradient or state size differs from the parameter's");
        }
        match self.rule {
            Rule::AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let (m, v) = state.split_at_mut(w.len());
                let decay = (1.0 - lr * weight_decay) as f32;
                let (b1, b2) = (beta1 as f32, beta2 as f32);
                let (c1, c2) = ((1.0 - beta1) as f32, (1.0 - beta2) as f32);
                let t = self.t as i32;
                let scale_m = (1.0 / (1.0 - beta1.powi(t))) as f32;
                let scale_v = (1.0 / (1.0 - beta2.powi(t))) as f32;
                let (lr, eps) = (lr as f32, eps as f32);
                w.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK))
                    .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                    .for_each(|((w, g), (m, v))| {
                        for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m).zip(v) {
                            *m = b1 * *m + c1 * g;
                            *v = b2 * *v + c2 * (g * g);
                            let step = (*m * scale_m) / ((*v * scale_v).sqrt() + eps);
                            *w = *w * decay - lr * step;
                        }
                    });
            }
            Rule::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                let (lr, mu, wd) = (lr as f32, momentum as f32, weight_decay as f32);
                w.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK))
                    .zip(state.par_chunks_mut(CHUNK))
                    .for_each(|((w, g), vel)| {
                        for ((w, &g), vel) in w.iter_mut().zip(g).zip(vel) {
                            let d = g + wd * *w;
                            // The velocity starts at zero: the first step is `d` exactly.
                            *vel = mu * *vel + d;
                            *w -= lr * *vel;
                        }
                    });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};
    use candle_nn::Optimizer as _;

    use super::*;

    fn vars(seed: u64) -> Vec<Var> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        [vec![3usize, 40_000], vec![7]]
            .into_iter()
            .map(|shape| {
                let n = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                Var::from_vec(v, shape, &Device::Cpu).unwrap()
            })
            .collect()
    }

    /// A loss whose gradients differ per value and per step: Σ sin(w)·c.
    fn grads(vars: &[Var]) -> GradStore {
        let mut loss = Tensor::new(0f32, &Device::Cpu).unwrap();
        for (i, v) in vars.iter().enumerate() {
            let t = v.as_tensor();
            let term = (t.sin().unwrap() * (i as f64 + 0.5))
                .unwrap()
                .sum_all()
                .unwrap();
            loss = (loss + term).unwrap();
        }
        loss.backward().unwrap()
    }

    fn values(vars: &[Var]) -> Vec<f32> {
        vars.iter()
            .flat_map(|v| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn adamw_matches_candle_nn() {
        let (ours, theirs) = (vars(1), vars(1));
        let params = candle_nn::ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.05,
            ..Default::default()
        };
        let mut opt = Optim::with_rule(
            &ours,
            Rule::AdamW {
                lr: params.lr,
                beta1: params.beta1,
                beta2: params.beta2,
                eps: params.eps,
                weight_decay: params.weight_decay,
            },
        );
        let mut reference = candle_nn::AdamW::new(theirs.clone(), params).unwrap();
        for step in 0..5 {
            if step == 3 {
                opt.set_lr(1e-3);
                reference.set_learning_rate(1e-3);
            }
            opt.step(&grads(&ours)).unwrap();
            reference.step(&grads(&theirs)).unwrap();
            assert_close(&values(&ours), &values(&theirs));
        }
    }

    #[test]
    fn sgd_with_momentum_and_decay_is_pytorchs() {
        let (lr, mu, wd) = (0.1f32, 0.9f32, 0.01f32);
        let ours = vars(2);
        let mut opt = Optim::with_rule(
            &ours,
            Rule::Sgd {
                lr: lr as f64,
                momentum: mu as f64,
                weight_decay: wd as f64,
            },
        );
        let mut w = values(&ours);
        let mut vel = vec![0f32; w.len()];
        for _ in 0..3 {
            let g: Vec<f32> = {
                let gs = grads(&ours);
                ours.iter()
                    .flat_map(|v| {
                        gs.get(v)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                    })
                    .collect()
            };
            opt.step(&grads(&ours)).unwrap();
            for ((w, v), g) in w.iter_mut().zip(&mut vel).zip(g) {
                *v = mu * *v + (g + wd * *w);
                *w -= lr * *v;
            }
            assert_close(&values(&ours), &w);
        }
    }
}
