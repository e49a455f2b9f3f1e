//! Which evaluation is the best so far, and when a run stops early: transformers'
//! `load_best_model_at_end`, `metric_for_best_model` and `EarlyStoppingCallback`. The rule is
//! transformers' own: the callback compares each evaluation with the best one *before* it, and
//! only an improvement larger than the threshold resets its count, while any improvement at
//! all makes a new best.

use std::path::Path;

use crate::recipe::{Objective, TrainSection};
use crate::train::checkpoint::{self, Checkpoint};
use crate::train::preference::{PreferenceMetrics, PreferenceObjective};

/// The evaluation metrics a run of this objective records, without their `eval_` prefix.
pub fn eval_metric_names(t: &TrainSection) -> Vec<&'static str> {
    let mut names = vec!["loss", "perplexity"];
    if let Some(obj) = PreferenceObjective::from_recipe(t, false) {
        names.extend(PreferenceMetrics::names(&obj));
    }
    debug_assert!(t.objective != Objective::Sft || names.len() == 2);
    names
}

/// What the recipe asks of evaluations besides recording them.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRule {
    /// `train.load_best_model_at_end`: each new best is checkpointed and becomes `adapter/`.
    pub keep_best: bool,
    /// `train.early_stopping_patience`.
    pub patience: Option<usize>,
    /// `train.early_stopping_threshold`.
    pub threshold: f64,
    /// `train.metric_for_best_model`, without its `eval_` prefix.
    pub metric: String,
    pub greater_is_better: bool,
}

impl EvalRule {
    pub fn from_recipe(t: &TrainSection) -> Self {
        let m = t.metric_for_best_model.as_str();
        let metric = m.strip_prefix("eval_").unwrap_or(m).to_string();
        // transformers' default, but for perplexity, which is never better higher.
        let greater_is_better = t
            .greater_is_better
            .unwrap_or(!metric.ends_with("loss") && metric != "perplexity");
        Self {
            keep_best: t.load_best_model_at_end,
            patience: t.early_stopping_patience,
            threshold: t.early_stopping_threshold,
            metric,
            greater_is_better,
        }
    }

    /// Whether `a` is better than `b` (false when either is NaN).
    fn better(&self, a: f64, b: f64) -> bool {
        match self.greater_is_better {
            true => a > b,
            false => a < b,
        }
    }

    /// Whether evaluations decide anything (then every replica must hear the decision).
    pub fn decides(&self) -> bool {
        self.keep_best || self.patience.is_some()
    }
}

/// Where a run stands in its evaluations; every checkpoint's trainer state carries it, so a
/// resumed run keeps its best and its patience count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalWatch {
    /// The best value of the rule's metric so far.
    pub best: Option<f64>,
    /// The step whose checkpoint holds the weights behind `best` (only with
    /// `load_best_model_at_end`).
    pub best_step: Option<usize>,
    /// Evaluations in a row that did not improve on the best by more than the threshold.
    pub without_improvement: usize,
}

/// What one evaluation decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    /// A new best to checkpoint now (`load_best_model_at_end`).
    pub save_best: bool,
    /// Patience ran out: the run ends after this step.
    pub stop: bool,
}

impl EvalWatch {
    /// Record the evaluation at `step` (`value`: its metric) and say what it decides.
    pub fn observe(&mut self, value: f64, step: usize, rule: &EvalRule) -> Verdict {
        // NaN compares false everywhere: never a best, always a non-improvement.
        let resets = match self.best {
            None => true,
            Some(best) => rule.better(value, best) && (value - best).abs() > rule.threshold,
        };
        // transformers starts the best at the worst value, so a NaN first evaluation is no best.
        let worst = match rule.greater_is_better {
            true => f64::NEG_INFINITY,
            false => f64::INFINITY,
        };
        let new_best = rule.better(value, self.best.unwrap_or(worst));
        self.without_improvement = if resets {
            0
        } else {
            self.without_improvement + 1
        };
        if new_best {
            self.best = Some(value);
            if rule.keep_best {
                self.best_step = Some(step);
            }
        }
        Verdict {
            save_best: new_best && rule.keep_best,
            stop: rule.patience.is_some_and(|p| self.without_improvement >= p),
        }
    }
}

/// Where a checkpoint left the evaluations, if it judged them by the rule's metric; a run
/// resumed with another `metric_for_best_model` starts its best and patience afresh.
pub fn restore_watch(c: &Checkpoint, rule: &EvalRule) -> EvalWatch {
    let s = &c.state;
    let recorded = s
        .metric_for_best_model
        .as_deref()
        .map(|m| m.strip_prefix("eval_").unwrap_or(m));
    if recorded != Some(rule.metric.as_str()) {
        if s.best_metric.is_some() {
            tracing::warn!(
                "{} judged evaluations by eval_{}; the recipe now says eval_{}: the best and the patience count start afresh",
                c.dir.display(),
                recorded.unwrap_or("?"),
                rule.metric
            );
        }
        return EvalWatch::default();
    }
    EvalWatch {
        best: s.best_metric,
        best_step: s.best_step,
        without_improvement: s.evals_without_improvement,
    }
}

/// The checkpoint whose adapter becomes `adapter/` instead of the last step's weights: the
/// best evaluation's, with `load_best_model_at_end`, when that is not `last_step`. A best
/// checkpoint that is gone or damaged is reported, and the last step's weights are used.
pub fn best_checkpoint(
    output_dir: &Path,
    rule: &EvalRule,
    watch: &EvalWatch,
    last_step: usize,
) -> Option<Checkpoint> {
    let step = watch
        .best_step
        .filter(|&s| rule.keep_best && s != last_step)?;
    let dir = checkpoint::step_dir(output_dir, step);
    match checkpoint::open(&dir) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(
                "train.load_best_model_at_end: the best evaluation's checkpoint cannot be used ({e}); adapter/ holds the last step's weights instead"
            );
            None
        }
    }
}

/// Copy a checkpoint's adapter files (checked against their checksums when it was opened).
pub fn copy_adapter(from: &Path, to: &Path) -> Result<(), String> {
    for name in [
        crate::lora::peft::CONFIG_FILE,
        crate::lora::peft::WEIGHTS_FILE,
    ] {
        std::fs::copy(from.join(name), to.join(name))
            .map_err(|e| format!("copying {}: {e}", from.join(name).display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(patience: Option<usize>, threshold: f64) -> EvalRule {
        EvalRule {
            keep_best: true,
            patience,
            threshold,
            metric: "loss".into(),
            greater_is_better: false,
        }
    }

    fn run(losses: &[f64], rule: &EvalRule) -> (EvalWatch, Vec<Verdict>) {
        let mut w = EvalWatch::default();
        let v = losses
            .iter()
            .enumerate()
            .map(|(i, &l)| w.observe(l, (i + 1) * 10, rule))
            .collect();
        (w, v)
    }

    #[test]
    fn the_first_evaluation_is_the_best_and_resets_the_count() {
        let (w, v) = run(&[3.0], &rule(Some(1), 0.0));
        assert_eq!(w.best, Some(3.0));
        assert_eq!(w.best_step, Some(10));
        assert_eq!(
            v,
            [Verdict {
                save_best: true,
                stop: false
            }]
        );
    }

    #[test]
    fn patience_counts_evaluations_in_a_row_without_improvement() {
        let (w, v) = run(&[3.0, 3.5, 2.0, 2.5, 2.0, 2.1], &rule(Some(3), 0.0));
        let stops: Vec<bool> = v.iter().map(|v| v.stop).collect();
        assert_eq!(stops, [false, false, false, false, false, true]);
        assert_eq!(w.best_step, Some(30));
        // An equal loss is no improvement (strictly lower only).
        assert_eq!(w.without_improvement, 3);
    }

    #[test]
    fn a_small_improvement_is_a_new_best_but_does_not_reset_the_count() {
        let (w, v) = run(&[3.0, 2.95, 2.9], &rule(Some(2), 0.1));
        assert_eq!(w.best, Some(2.9));
        assert_eq!(w.best_step, Some(30));
        assert!(v.iter().all(|v| v.save_best));
        assert!(v[2].stop);
    }

    #[test]
    fn nan_is_never_the_best() {
        let (w, v) = run(&[3.0, f64::NAN], &rule(Some(1), 0.0));
        assert_eq!(w.best, Some(3.0));
        assert!(!v[1].save_best && v[1].stop);
        // First, it resets the count (there is no best to compare with) but is no best.
        let (w, v) = run(&[f64::NAN, 4.0], &rule(Some(1), 0.0));
        assert_eq!((w.best, w.best_step), (Some(4.0), Some(20)));
        assert_eq!((v[0].save_best, v[0].stop), (false, false));
        assert_eq!((v[1].save_best, v[1].stop), (true, false));
    }

    #[test]
    fn without_load_best_no_step_is_kept() {
        let r = EvalRule {
            keep_best: false,
            ..rule(None, 0.0)
        };
        let (w, v) = run(&[3.0, 2.0], &r);
        assert_eq!((w.best, w.best_step), (Some(2.0), None));
        assert!(v.iter().all(|v| *v == Verdict::default()));
    }

    #[test]
    fn accuracies_are_better_higher_and_perplexity_lower() {
        let mut t = TrainSection {
            load_best_model_at_end: true,
            metric_for_best_model: "eval_rewards/accuracies".into(),
            ..TrainSection::default()
        };
        let r = EvalRule::from_recipe(&t);
        assert_eq!(
            (r.metric.as_str(), r.greater_is_better),
            ("rewards/accuracies", true)
        );
        let (w, v) = run(
            &[0.5, 0.75, 0.6],
            &EvalRule {
                patience: Some(1),
                ..r
            },
        );
        assert_eq!((w.best, w.best_step), (Some(0.75), Some(20)));
        assert!(v[2].stop);
        for (name, greater) in [("perplexity", false), ("nll_loss", false), ("loss", false)] {
            t.metric_for_best_model = name.into();
            assert_eq!(
                EvalRule::from_recipe(&t).greater_is_better,
                greater,
                "{name}"
            );
        }
        t.greater_is_better = Some(true);
        assert!(EvalRule::from_recipe(&t).greater_is_better);
    }

    #[test]
    fn each_objective_names_its_metrics() {
        let mut t = TrainSection::default();
        assert_eq!(eval_metric_names(&t), ["loss", "perplexity"]);
        t.objective = Objective::Orpo;
        let names = eval_metric_names(&t);
        for n in [
            "rewards/accuracies",
            "rewards/margins",
            "nll_loss",
            "log_odds_ratio",
        ] {
            assert!(names.contains(&n), "{names:?}");
        }
    }
}
