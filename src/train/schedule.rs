//! Pruning schedules: when masks change during fine-tuning and to which sparsity.
//!
//! - one-shot: the recipe's masks from the first step;
//! - AGP (Zhu & Gupta, "To prune, or not to prune", 2017): every `Δt` steps from `t0`, `n`
//!   times, the masks are recomputed by magnitude at
//!   `s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³` (here `s_i = 0`), then held at `s_f`;
//! - iterative (Han et al., "Learning both Weights and Connections", 2015): `k` rounds of
//!   prune → retrain; round `r` keeps `(1 − s_f)^(r/k)` of the weights, so every round removes
//!   the same fraction of what is left.

use serde::Serialize;

/// How masks reach the recipe's sparsity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum PruneSchedule {
    OneShot,
    /// Gradual pruning. `interval` (Δt, steps) defaults to a quarter of an epoch; `end` is the
    /// fraction of the pruning phase's steps by which the final sparsity is reached
    /// (`t0 + nΔt`), the rest recovers at it.
    Agp {
        interval: Option<usize>,
        end: f64,
    },
    /// `rounds` rounds of prune → retrain, the pruning phase's epochs split evenly between them.
    Iterative {
        rounds: usize,
    },
}

impl PruneSchedule {
    /// Gradual pruning with its defaults: Δt a quarter of an epoch, final sparsity at two
    /// thirds of the pruning phase.
    pub const AGP: PruneSchedule = PruneSchedule::Agp {
        interval: None,
        end: 2.0 / 3.0,
    };
    /// Three rounds of prune → retrain.
    pub const ITERATIVE: PruneSchedule = PruneSchedule::Iterative { rounds: 3 };

    pub fn name(self) -> &'static str {
        match self {
            PruneSchedule::OneShot => "oneshot",
            PruneSchedule::Agp { .. } => "agp",
            PruneSchedule::Iterative { .. } => "iterative",
        }
    }
}

/// Zhu & Gupta's schedule with `s_i = 0`: mask updates at `t0, t0 + Δt, …, t0 + nΔt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Agp {
    pub t0: usize,
    /// Δt, at least 1.
    pub interval: usize,
    /// Number of updates after `t0`, at least 1.
    pub n: usize,
}

impl Agp {
    /// The schedule for a pruning phase of `steps` steps whose ramp ends by the `end`
    /// fraction of them (and before the last step, so that one step at least trains with the
    /// final masks), with updates every `interval` steps (fewer when the ramp is shorter).
    pub fn over(steps: usize, interval: usize, end: f64) -> Agp {
        let ramp = ((steps as f64 * end.clamp(0.0, 1.0)).round() as usize)
            .min(steps.saturating_sub(1))
            .max(1);
        let interval = interval.clamp(1, ramp);
        Agp {
            t0: 0,
            interval,
            n: (ramp / interval).max(1),
        }
    }

    /// Whether step `t` (0-based, counted from the start of the pruning phase) recomputes the
    /// masks.
    pub fn updates_at(&self, t: usize) -> bool {
        t >= self.t0
            && (t - self.t0).is_multiple_of(self.interval)
            && (t - self.t0) / self.interval <= self.n
    }

    /// The last update step `t_k = t0 + kΔt ≤ t` (`None` before `t0`).
    pub fn last_update(&self, t: usize) -> Option<usize> {
        let k = (t.checked_sub(self.t0)? / self.interval).min(self.n);
        Some(self.t0 + k * self.interval)
    }

    /// The sparsity in force at step `t` for a final sparsity `s_f`: Zhu & Gupta's
    /// `s_f + (s_i − s_f)(1 − (t_k − t0)/(nΔt))³` with `s_i = 0` at the last update `t_k ≤ t`
    /// (0 before `t0`).
    pub fn sparsity(&self, t: usize, s_f: f64) -> f64 {
        let Some(tk) = self.last_update(t) else {
            return 0.0;
        };
        let s_i = 0.0;
        let span = (self.n * self.interval) as f64;
        s_f + (s_i - s_f) * (1.0 - (tk - self.t0) as f64 / span).powi(3)
    }

    /// The first step at which the final sparsity holds.
    pub fn end(&self) -> usize {
        self.t0 + self.n * self.interval
    }
}

/// The sparsity round `round` (1-based) of `rounds` prunes to, for a final sparsity `s_f`:
/// `1 − (1 − s_f)^(round/rounds)`.
pub fn iterative_sparsity(round: usize, rounds: usize, s_f: f64) -> f64 {
    if round >= rounds {
        return s_f;
    }
    1.0 - (1.0 - s_f).powf(round as f64 / rounds.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterative_rounds_remove_the_same_fraction_of_what_is_left() {
        let s: Vec<f64> = (1..=3).map(|r| iterative_sparsity(r, 3, 0.875)).collect();
        assert!((s[0] - 0.5).abs() < 1e-12 && (s[1] - 0.75).abs() < 1e-12);
        assert_eq!(s[2], 0.875);
    }

    #[test]
    fn agp_ends_at_the_final_sparsity() {
        let a = Agp::over(1000, 100, 0.5);
        assert_eq!(a.n, 5);
        assert_eq!(a.sparsity(0, 0.9), 0.0);
        assert_eq!(a.last_update(250), Some(200));
        assert_eq!(a.sparsity(499, 0.9), a.sparsity(400, 0.9));
        assert!((a.sparsity(500, 0.9) - 0.9).abs() < 1e-12);
        assert!((a.sparsity(999, 0.9) - 0.9).abs() < 1e-12);
        assert!(a.updates_at(500) && !a.updates_at(600) && !a.updates_at(450));
    }
}
