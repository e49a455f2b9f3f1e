//! The one place gradients pass through between backward and the optimizer step. A single
//! process passes them on; data-parallel replicas sum gradient sums, trained-token counts, loss
//! and metric sums across ranks here, so every replica takes the same step.

use burn::tensor::{Tensor, backend::Backend};

use super::best::Verdict;

/// What one replica contributes to an optimizer step.
pub struct StepContribution<B: Backend> {
    /// Gradients of the *summed* token loss (not yet divided by the token count).
    pub grad_sums: Vec<Tensor<B, 2>>,
    /// Trained tokens behind those sums.
    pub trained_tokens: usize,
    /// Summed token loss.
    pub loss_sum: f64,
    /// Input tokens processed (for throughput).
    pub input_tokens: usize,
    /// This replica was asked to stop (a signal); after the exchange: any replica was.
    pub stop: bool,
    /// The optimizer step this contribution is for (replicas must agree on it).
    pub step: usize,
    /// Sums behind an objective's metrics (preference rewards, log-probabilities, ...); empty
    /// for plain SFT. Summed like the rest.
    pub metric_sums: Vec<f64>,
}

pub trait GradientSync<B: Backend> {
    /// Combine every replica's contribution; all replicas receive the same totals.
    fn all_reduce(&mut self, local: StepContribution<B>) -> anyhow::Result<StepContribution<B>>;
    /// Wait until every replica gets here (after rank 0 wrote a checkpoint).
    fn barrier(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Give every replica rank 0's verdict: only rank 0 evaluates, and its evaluation decides
    /// whether all of them checkpoint or stop. The others pass the default (no).
    fn share_verdict(&mut self, verdict: Verdict) -> anyhow::Result<Verdict> {
        Ok(verdict)
    }
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
}

/// Training in one process: nothing to combine.
pub struct SingleProcess;

impl<B: Backend> GradientSync<B> for SingleProcess {
    fn all_reduce(&mut self, local: StepContribution<B>) -> anyhow::Result<StepContribution<B>> {
        Ok(local)
    }
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
}
