//! Knowledge distillation (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
//! Network", 2015): the student learns from the teacher's softened outputs as well as from the
//! labels.
//!
//! `loss = α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·CE(s, y)`, the KL divergence averaged
//! over the batch (PyTorch's `KLDivLoss(reduction="batchmean")`) and scaled by `T²` so its
//! gradients keep their size as the temperature changes.

use candle_core::{D, Result, Tensor};
use serde::Serialize;

/// The distillation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Distillation {
    /// `T`: softens both distributions (> 0).
    pub temperature: f64,
    /// `α` in [0, 1]: the weight of the teacher's term; 0 is training on labels alone.
    pub alpha: f64,
}

impl Default for Distillation {
    /// T = 4, α = 0.9: a common choice for image classifiers, where the soft targets carry most
    /// of the signal.
    fn default() -> Self {
        Distillation {
            temperature: 4.0,
            alpha: 0.9,
        }
    }
}

/// A distillation setting that cannot work, named by its option.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DistillError {
    #[error("--temperature must be a positive number, got {0}")]
    Temperature(f64),
    #[error("--alpha must be in [0, 1], got {0}")]
    Alpha(f64),
}

impl Distillation {
    /// Rejects a temperature or weight that cannot work, naming the option.
    pub fn validate(&self) -> std::result::Result<(), DistillError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(DistillError::Temperature(self.temperature));
        }
        if !(self.alpha.is_finite() && (0.0..=1.0).contains(&self.alpha)) {
            return Err(DistillError::Alpha(self.alpha));
        }
        Ok(())
    }
}

/// The distillation loss of `student` logits `[N, C]` against `teacher` logits `[N, C]` (held
/// constant: no gradient reaches them) and `labels` `[N]` (u32).
pub fn distillation_loss(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    d: Distillation,
) -> Result<Tensor> {
    let ce = super::ops::cross_entropy(student, labels)?;
    if d.alpha == 0.0 {
        return Ok(ce);
    }
    let t = d.temperature;
    let n = student.dim(0)? as f64;
    let log_s = candle_nn::ops::log_softmax(&(student / t)?, D::Minus1)?;
    let log_t = candle_nn::ops::log_softmax(&(teacher.detach() / t)?, D::Minus1)?;
    let p_t = log_t.exp()?;
    // Σ p_t (log p_t − log p_s) over classes and samples, divided by the batch size.
    let kl = (p_t * (log_t - log_s)?)?.sum_all()?.affine(1.0 / n, 0.0)?;
    let soft = kl.affine(d.alpha * t * t, 0.0)?;
    soft + ce.affine(1.0 - d.alpha, 0.0)?
}
