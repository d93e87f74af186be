//! Optimizers: candle-nn's AdamW, and SGD with momentum written out as PyTorch computes it.

use candle_core::{Tensor, Var};
use candle_nn::Optimizer as _;

use super::{OptimizerKind, TrainConfig};

/// SGD with momentum and L2 weight decay, as PyTorch's `torch.optim.SGD`:
/// `v ← μ·v + (g + λ·w)`, `w ← w − lr·v`.
pub(super) struct MomentumSgd {
    vars: Vec<(Var, Option<Tensor>)>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
}

impl MomentumSgd {
    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> candle_core::Result<()> {
        for (var, velocity) in &mut self.vars {
            let Some(g) = grads.get(var) else { continue };
            let w = var.as_tensor();
            let g = if self.weight_decay > 0.0 {
                (g + (w * self.weight_decay)?)?
            } else {
                g.clone()
            };
            let v = match velocity.take() {
                Some(v) if self.momentum > 0.0 => ((v * self.momentum)? + g)?,
                _ => g,
            };
            var.set(&(w - (&v * self.lr)?)?)?;
            // The update is applied: keep the velocity off the graph.
            *velocity = Some(v.detach());
        }
        Ok(())
    }
}

pub(super) enum Optim {
    AdamW(candle_nn::AdamW),
    Sgd(MomentumSgd),
}

impl Optim {
    pub(super) fn new(vars: &[Var], cfg: &TrainConfig) -> candle_core::Result<Self> {
        Ok(match cfg.optimizer {
            OptimizerKind::AdamW => Optim::AdamW(candle_nn::AdamW::new(
                vars.to_vec(),
                candle_nn::ParamsAdamW {
                    lr: cfg.lr,
                    weight_decay: cfg.weight_decay,
                    ..Default::default()
                },
            )?),
            OptimizerKind::Sgd => Optim::Sgd(MomentumSgd {
                vars: vars.iter().map(|v| (v.clone(), None)).collect(),
                lr: cfg.lr,
                momentum: cfg.momentum,
                weight_decay: cfg.weight_decay,
            }),
        })
    }

    pub(super) fn set_lr(&mut self, lr: f64) {
        match self {
            Optim::AdamW(o) => o.set_learning_rate(lr),
            Optim::Sgd(o) => o.lr = lr,
        }
    }

    pub(super) fn backward_step(&mut self, loss: &Tensor) -> candle_core::Result<()> {
        let grads = loss.backward()?;
        match self {
            Optim::AdamW(o) => o.step(&grads),
            Optim::Sgd(o) => o.step(&grads),
        }
    }
}
