//! Everything a training run reports, in one place: `metrics.jsonl` (every step), TensorBoard
//! scalars (every `logging.every` steps and at each evaluation), the progress bar on a terminal
//! or a plain log line off one.

use std::collections::BTreeMap;
use std::path::Path;

use indicatif::ProgressBar;

use super::metrics::{EvalRecord, MetricsLog, Record, StepRecord};
use super::progress;
use super::tensorboard::{EventWriter, HParam, truncate_after};

/// What the observer needs to know about the run at start.
pub struct RunInfo<'a> {
    pub output: &'a Path,
    /// Step of the checkpoint being resumed (records past it are dropped), or None.
    pub resumed_at: Option<usize>,
    pub start_step: usize,
    pub total_steps: usize,
    pub log_every: usize,
    pub tensorboard: bool,
    /// The recipe as YAML, for TensorBoard's text tab.
    pub recipe_text: &'a str,
    pub hparams: BTreeMap<String, HParam>,
}

pub struct RunObserver {
    metrics: MetricsLog,
    tb: Option<EventWriter>,
    bar: ProgressBar,
    every: usize,
    total: usize,
    ema: f64,
    ema_n: i32,
}

impl RunObserver {
    pub fn open(info: RunInfo<'_>) -> std::io::Result<Self> {
        let metrics = MetricsLog::open(info.output, info.resumed_at)?;
        let tb_dir = info.output.join("tensorboard");
        let tb = if info.tensorboard {
            if let Some(step) = info.resumed_at
                && let Err(e) = truncate_after(&tb_dir, step)
            {
                tracing::warn!("TensorBoard: cannot tidy earlier event files: {e}");
            }
            match EventWriter::create(&tb_dir) {
                Ok(mut w) => {
                    match info.resumed_at {
                        Some(step) => w.session_start(step),
                        None => {
                            w.text("recipe", 0, &format!("```yaml\n{}\n```", info.recipe_text));
                            w.hparams(&info.hparams, &["eval/loss", "train/loss"]);
                        }
                    }
                    w.flush();
                    Some(w)
                }
                Err(e) => {
                    tracing::warn!(
                        "TensorBoard: cannot create an event file in {}: {e}; training continues without it",
                        tb_dir.display()
                    );
                    None
                }
            }
        } else {
            None
        };
        Ok(Self {
            metrics,
            tb,
            bar: progress::training(info.total_steps as u64, info.start_step as u64),
            every: info.log_every.max(1),
            total: info.total_steps,
            ema: 0.0,
            ema_n: 0,
        })
    }

    pub fn step(&mut self, r: &StepRecord) -> std::io::Result<()> {
        self.metrics.write(&Record::Step(r.clone()))?;
        self.ema = 0.9 * self.ema + 0.1 * r.loss;
        self.ema_n += 1;
        let smoothed = self.ema / (1.0 - 0.9f64.powi(self.ema_n));
        self.bar.set_position(r.step as u64);
        let rewards = preference_summary(&r.objective, "");
        self.bar.set_message(format!(
            "epoch {:.2} loss {:.4}{rewards} lr {:.2e} {:.0} tok/s",
            r.epoch, smoothed, r.lr, r.tokens_per_sec
        ));
        let due = r.step.is_multiple_of(self.every) || r.step == self.total;
        if due {
            if let Some(tb) = self.tb.as_mut() {
                tb.scalar("train/loss", r.step, r.loss);
                tb.scalar("train/lr", r.step, r.lr);
                tb.scalar("train/grad_norm", r.step, r.grad_norm);
                tb.scalar("train/tokens_per_sec", r.step, r.tokens_per_sec);
                tb.scalar("train/epoch", r.step, r.epoch);
                for (name, v) in &r.objective {
                    tb.scalar(&format!("train/{name}"), r.step, *v);
                }
                tb.flush();
            }
            if !progress::interactive() {
                tracing::info!(
                    "step {}/{} epoch {:.2} loss {:.4} (smoothed {:.4}){rewards} lr {:.3e} grad_norm {:.3} {:.0} tok/s",
                    r.step,
                    self.total,
                    r.epoch,
                    r.loss,
                    smoothed,
                    r.lr,
                    r.grad_norm,
                    r.tokens_per_sec
                );
            }
        }
        Ok(())
    }

    pub fn eval(&mut self, r: &EvalRecord) -> std::io::Result<()> {
        self.metrics.write(&Record::Eval(r.clone()))?;
        if let Some(tb) = self.tb.as_mut() {
            tb.scalar("eval/loss", r.step, r.eval_loss);
            tb.scalar("eval/perplexity", r.step, r.eval_perplexity);
            for (name, v) in &r.objective {
                let name = name.strip_prefix("eval_").unwrap_or(name);
                tb.scalar(&format!("eval/{name}"), r.step, *v);
            }
            tb.flush();
        }
        // For preference pairs the perplexity is the chosen completions', not exp(loss).
        let ppl = if r.objective.is_empty() {
            "perplexity"
        } else {
            "chosen perplexity"
        };
        tracing::info!(
            "eval at step {}: loss {:.4} {ppl} {:.2}{}",
            r.step,
            r.eval_loss,
            r.eval_perplexity,
            preference_summary(&r.objective, "eval_")
        );
        Ok(())
    }

    /// End of the run (or of this process's part of it).
    pub fn finish(&mut self, completed: bool) {
        self.bar.finish_and_clear();
        if let Some(tb) = self.tb.as_mut() {
            if completed {
                tb.hparams_end(true);
            }
            tb.flush();
        }
    }
}

/// ` margin x acc y` from preference metrics (`prefix` is `eval_` for evaluations); empty
/// without them.
fn preference_summary(m: &super::metrics::ObjectiveMetrics, prefix: &str) -> String {
    match (
        m.get(&format!("{prefix}rewards/margins")),
        m.get(&format!("{prefix}rewards/accuracies")),
    ) {
        (Some(margin), Some(acc)) => format!(" margin {margin:.4} acc {acc:.2}"),
        _ => String::new(),
    }
}
