//! Learning-rate schedules as transformers defines them (`get_scheduler`): a linear warmup
//! from 0, then constant, linear decay, half-cosine decay to `min_lr`, cosine with hard
//! restarts, polynomial decay or inverse square root; or warmup-stable-decay (WSD), whose
//! warmup starts at `min_lr`. Evaluated at the 0-based index of the optimizer step about to be
//! taken.

use std::f64::consts::PI;

use crate::recipe::SchedulerSection;
pub use crate::recipe::values::DecayType;
pub use crate::recipe::values::SchedulerKind as ScheduleKind;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// Cosine waves (restarts; WSD's cosine decay).
    pub num_cycles: f64,
    /// Polynomial decay's exponent.
    pub power: f64,
    /// Inverse square root's timescale.
    pub timescale: f64,
    /// WSD's decay steps and shape.
    pub decay_steps: usize,
    pub decay_type: DecayType,
}

impl Schedule {
    /// `warmup_ratio` applies when `warmup_steps` is 0, rounded up as transformers does; the
    /// other settings take transformers' defaults.
    pub fn new(
        kind: ScheduleKind,
        peak_lr: f64,
        min_lr: f64,
        warmup_steps: usize,
        warmup_ratio: f64,
        total_steps: usize,
    ) -> Self {
        Self::from_recipe(
            &SchedulerSection {
                name: kind,
                warmup_steps,
                warmup_ratio,
                min_lr,
                ..SchedulerSection::default()
            },
            peak_lr,
            total_steps,
        )
    }

    /// The recipe's `train.scheduler` for a run of `total_steps` optimizer steps.
    pub fn from_recipe(s: &SchedulerSection, peak_lr: f64, total_steps: usize) -> Self {
        let ceil_of = |ratio: f64| (ratio * total_steps as f64).ceil() as usize;
        let warmup = if s.warmup_steps > 0 {
            s.warmup_steps
        } else {
            ceil_of(s.warmup_ratio)
        };
        let default_cycles = match s.name {
            ScheduleKind::WarmupStableDecay => 0.5,
            _ => 1.0,
        };
        // transformers' default timescale: the warmup, or 10,000 steps without one.
        let timescale = s
            .timescale
            .unwrap_or(if warmup > 0 { warmup } else { 10_000 });
        Self {
            kind: s.name,
            peak_lr,
            min_lr: s.min_lr,
            warmup_steps: warmup,
            total_steps,
            num_cycles: s.num_cycles.unwrap_or(default_cycles),
            power: s.power.unwrap_or(1.0),
            timescale: timescale as f64,
            decay_steps: s
                .decay_steps
                .unwrap_or_else(|| ceil_of(s.decay_ratio.unwrap_or(0.0))),
            decay_type: s.decay_type.unwrap_or_default(),
        }
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if self.kind == ScheduleKind::WarmupStableDecay {
            return self.peak_lr * self.wsd_factor(step);
        }
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = (step - self.warmup_steps) as f64 / decay;
        let factor = match self.kind {
            ScheduleKind::Constant => return self.peak_lr,
            ScheduleKind::Linear => ((self.total_steps as f64 - step as f64) / decay).max(0.0),
            ScheduleKind::Cosine => (0.5 * (1.0 + (PI * progress).cos())).max(0.0),
            ScheduleKind::CosineWithRestarts if progress >= 1.0 => 0.0,
            ScheduleKind::CosineWithRestarts => {
                (0.5 * (1.0 + (PI * ((self.num_cycles * progress) % 1.0)).cos())).max(0.0)
            }
            ScheduleKind::Polynomial if step > self.total_steps => 0.0,
            ScheduleKind::Polynomial => (1.0 - progress).powf(self.power),
            ScheduleKind::InverseSqrt => {
                let shift = self.timescale - self.warmup_steps as f64;
                return self.peak_lr / ((step as f64 + shift) / self.timescale).sqrt();
            }
            ScheduleKind::WarmupStableDecay => unreachable!("handled above"),
        };
        self.min_lr + (self.peak_lr - self.min_lr) * factor
    }

    /// WSD's multiple of the peak: warmup from `min_lr`, the stable stage, the decay back to
    /// `min_lr`, and `min_lr` after it.
    fn wsd_factor(&self, step: usize) -> f64 {
        let floor = if self.peak_lr > 0.0 {
            self.min_lr / self.peak_lr
        } else {
            0.0
        };
        let (warmup, decay) = (self.warmup_steps, self.decay_steps);
        let stable = self.total_steps.saturating_sub(warmup + decay);
        let lift = |factor: f64| (factor * (1.0 - floor) + floor).max(0.0);
        if step < warmup {
            return lift(step as f64 / warmup.max(1) as f64);
        }
        if step < warmup + stable {
            return 1.0;
        }
        if step < warmup + stable + decay {
            let progress = (step - warmup - stable) as f64 / decay.max(1) as f64;
            return lift(match self.decay_type {
                DecayType::Linear => 1.0 - progress,
                DecayType::Cosine => 0.5 * (1.0 + (PI * self.num_cycles * 2.0 * progress).cos()),
                DecayType::OneMinusSqrt => 1.0 - progress.sqrt(),
            });
        }
        floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of transformers' get_cosine_schedule_with_warmup / get_linear_schedule_with_warmup
    /// (lr 1.0, 2 warmup steps, 10 steps), written out from their lambda formulas.
    #[test]
    fn matches_transformers_formulas() {
        let cos = Schedule::new(ScheduleKind::Cosine, 1.0, 0.0, 2, 0.0, 10);
        let want = [
            0.0,
            0.5,
            1.0,
            0.9619397662556434,
            0.8535533905932737,
            0.6913417161825449,
            0.5,
            0.3086582838174551,
            0.14644660940672627,
            0.038060233744356624,
        ];
        for (s, w) in want.iter().enumerate() {
            assert!(
                (cos.lr(s) - w).abs() < 1e-12,
                "cosine step {s}: {}",
                cos.lr(s)
            );
        }
        let lin = Schedule::new(ScheduleKind::Linear, 1.0, 0.0, 2, 0.0, 10);
        let want = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (s, w) in want.iter().enumerate() {
            assert!((lin.lr(s) - w).abs() < 1e-12, "linear step {s}");
        }
        let c = Schedule::new(ScheduleKind::Constant, 0.1, 0.0, 0, 0.0, 10);
        assert_eq!(c.lr(0), 0.1);
        assert_eq!(
            Schedule::new(ScheduleKind::Cosine, 1.0, 0.0, 0, 0.25, 10).warmup_steps,
            3
        );
    }
}
