//! Learning-rate schedules as transformers defines them (`get_*_schedule_with_warmup`): a linear
//! warmup from 0, then constant, linear decay or half-cosine decay to `min_lr`, evaluated at the
//! 0-based index of the optimizer step about to be taken.

use std::f64::consts::PI;

pub use crate::recipe::values::SchedulerKind as ScheduleKind;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// `warmup_ratio` applies when `warmup_steps` is 0, rounded up as transformers does.
    pub fn new(
        kind: ScheduleKind,
        peak_lr: f64,
        min_lr: f64,
        warmup_steps: usize,
        warmup_ratio: f64,
        total_steps: usize,
    ) -> Self {
        let warmup = if warmup_steps > 0 {
            warmup_steps
        } else {
            (warmup_ratio * total_steps as f64).ceil() as usize
        };
        Self {
            kind,
            peak_lr,
            min_lr,
            warmup_steps: warmup,
            total_steps,
        }
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = (step - self.warmup_steps) as f64 / decay;
        let factor = match self.kind {
            ScheduleKind::Constant => return self.peak_lr,
            ScheduleKind::Linear => ((self.total_steps as f64 - step as f64) / decay).max(0.0),
            ScheduleKind::Cosine => (0.5 * (1.0 + (PI * progress).cos())).max(0.0),
        };
        self.min_lr + (self.peak_lr - self.min_lr) * factor
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
