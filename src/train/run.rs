//! The training flow, top to bottom: prepare the output folder and find the resume point, load
//! the model and attach the adapters, restore the optimizer, then for each optimizer step take
//! the step (`step.rs`), log, evaluate, checkpoint; at the end evaluate, save the adapter, and
//! merge and publish (`publish.rs`).
//!
//! Everything a step consumes (its rows, its dropout masks) is a pure function of the seed and
//! the step index, so a run resumed from a checkpoint continues bit for bit.

use crate::backend::TrainBackend;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;

use super::best::{EvalRule, EvalWatch, Verdict, best_checkpoint, copy_adapter, restore_watch};
use super::checkpoint::output::{self, replace_folder};
use super::checkpoint::{self, Checkpoint, CheckpointContents};
use super::evaluate::{EvalResult, evaluate};
use super::optimizer::{AdamW, AdamWConfig};
use super::preference::{EvalBatches, evaluate_pairs, load_reference, take_preference_step};
use super::schedule::Schedule;
use super::setup::RunSetup;
use super::signals::StopFlag;
use super::state::{TrainerState, changed_fields, fingerprint, fingerprint_hash};
use super::step::{StepError, StepSettings, take_step};
use super::sync::GradientSync;
use super::window::{pair_window, shards, window_micro_batches};
use crate::data::order::epoch_order;
use crate::error::user;
use crate::lora::attach::{
    attach, extract, factor_names, factor_shapes, init_factors, loraplus_scales,
};
use crate::lora::peft::{HostFactors, read_adapter, write_adapter};
use crate::model::Model;
use crate::model::loss::loss_chunk_rows;
use crate::observe::metrics::{self, EvalRecord, ObjectiveMetrics, Record, StepRecord};
use crate::observe::observer::{RunInfo, RunObserver};
use crate::observe::tensorboard::HParam;

pub use super::checkpoint::output::Resume;

pub struct TrainOptions {
    pub resume: Resume,
    /// Start over, deleting the previous run's checkpoints, adapter, metrics and plots.
    pub overwrite: bool,
    /// Merge the adapter into the base at the end (besides `output.merge`).
    pub merge: bool,
    pub stop: StopFlag,
}

#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub global_step: usize,
    /// The signal that interrupted the run (its checkpoint was saved).
    pub interrupted_by: Option<i32>,
    pub adapter_dir: Option<PathBuf>,
    pub merged_dir: Option<PathBuf>,
    /// The evaluation of the weights in `adapter/`: the final one, or the best one with
    /// `load_best_model_at_end`.
    pub final_eval: Option<EvalResult>,
    pub last_checkpoint: Option<PathBuf>,
    /// The step whose weights `adapter/` holds when that is not the last step
    /// (`load_best_model_at_end`).
    pub best_step: Option<usize>,
    /// The run ended before its last step because its patience ran out.
    pub stopped_early: bool,
}

/// Where the run stands: what a checkpoint records besides the weights.
struct Progress {
    step: usize,
    tokens_seen: u64,
    best_eval_loss: Option<f64>,
    watch: EvalWatch,
    /// Patience ran out (`early_stopping_patience`): the run ends at this step.
    stopped_early: bool,
    last_lr: f64,
    elapsed_before: f64,
    started: Instant,
    last_checkpoint: Option<PathBuf>,
    last_eval: Option<EvalResult>,
}

impl Progress {
    fn from(resume: Option<&Checkpoint>, rule: &EvalRule) -> Self {
        Self {
            step: resume.map_or(0, |c| c.state.global_step),
            tokens_seen: resume.map_or(0, |c| c.state.tokens_seen),
            best_eval_loss: resume.and_then(|c| c.state.best_eval_loss),
            watch: resume.map_or_else(EvalWatch::default, |c| restore_watch(c, rule)),
            stopped_early: resume.is_some_and(|c| c.state.stopped_early),
            last_lr: resume.map_or(0.0, |c| c.state.last_lr),
            elapsed_before: resume.map_or(0.0, |c| c.state.elapsed_s),
            started: Instant::now(),
            last_checkpoint: resume.map(|c| c.dir.clone()),
            last_eval: None,
        }
    }

    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }
}

pub fn train<B: TrainBackend>(
    setup: &RunSetup,
    opts: &TrainOptions,
    sync: &mut dyn GradientSync<B::InnerBackend>,
    device: B::Device,
    on_gpu: bool,
) -> anyhow::Result<TrainOutcome> {
    let recipe = setup.recipe();
    let t = &recipe.train;
    let out = &setup.output_dir;
    let writer = sync.rank() == 0;
    let counts = setup.counts;

    let resume_from = if writer {
        output::prepare(out, &opts.resume, opts.overwrite)?
    } else {
        output::resume_point(out, &opts.resume)?
    };
    check_fingerprint(resume_from.as_ref(), setup)?;
    let rule = EvalRule::from_recipe(t);
    let mut progress = Progress::from(resume_from.as_ref(), &rule);
    // A run resumed after it completed (its final evaluation recorded) or stopped early has
    // nothing left to do but what is missing of its outputs.
    let end_step = match progress.stopped_early {
        true => progress.step,
        false => counts.total_steps,
    };
    let recorded_final_eval = eval_recorded_at(setup, end_step);
    let finished_before = progress.stopped_early
        || (progress.step >= counts.total_steps
            && (!setup.data.has_validation() || recorded_final_eval.is_some()));
    if progress.stopped_early {
        tracing::info!(
            "this run stopped early at step {} (train.early_stopping_patience): nothing is left to train",
            progress.step
        );
    }
    let (mut model, mut optimizer) =
        load_trainable::<B>(setup, resume_from.as_ref(), &device, on_gpu)?;
    let objective = setup.preference_objective();
    let reference = load_reference(setup, &model, objective.as_ref())?;
    let schedule = Schedule::from_recipe(&t.scheduler, t.optimizer.lr, counts.total_steps);
    // A finished run that is resumed writes nothing more to its logs.
    let mut observer = match writer && !finished_before {
        true => Some(open_observer(setup, resume_from.as_ref())?),
        false => None,
    };
    let settings = StepSettings {
        pad_id: setup.pad_id(),
        chunk: loss_chunk_rows(model.config.vocab_size),
        seed: t.seed,
        max_grad_norm: t.max_grad_norm,
        seq_len: setup.recipe().data.seq_len,
    };
    let items = setup.data.train_len();
    let mut order: Option<(usize, Vec<usize>)> = None;
    let mut interrupted_by = None;
    // The baseline before any training; a run resumed from a checkpoint recorded it already.
    if t.eval_on_start && progress.step == 0 && writer && !finished_before {
        run_eval(
            &model,
            reference.as_ref(),
            setup,
            &rule,
            &mut progress,
            observer.as_mut(),
            false,
        )?;
    }

    while progress.step < counts.total_steps && !progress.stopped_early {
        let step = progress.step;
        let step_started = Instant::now();
        let epoch = step / counts.steps_per_epoch;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((
                epoch,
                epoch_order(items, t.seed, epoch, recipe.data.shuffle),
            ));
        }
        let epoch_rows = order.as_ref().map(|(_, o)| o.as_slice()).unwrap_or(&[]);
        let global = window_micro_batches(epoch_rows, step % counts.steps_per_epoch, setup);
        let lr = schedule.lr(step);
        let (result, extra) = match &objective {
            None => {
                let batches = shards(&setup.data.train, &global, &*sync);
                let r = take_step(
                    &mut model,
                    &setup.targets,
                    &mut optimizer,
                    &batches,
                    step,
                    lr,
                    &settings,
                    sync,
                    &opts.stop,
                );
                (r, ObjectiveMetrics::new())
            }
            Some(obj) => {
                let window = pair_window(setup, obj, &global, &*sync);
                match take_preference_step(
                    &mut model,
                    reference.as_ref(),
                    &setup.targets,
                    &mut optimizer,
                    &window,
                    obj,
                    step,
                    lr,
                    &settings,
                    sync,
                    &opts.stop,
                ) {
                    Ok((r, sums)) => (Ok(r), sums.metrics(obj).with_prefix("")),
                    Err(e) => (Err(e), ObjectiveMetrics::new()),
                }
            }
        };
        let result = result.map_err(|e| with_last_checkpoint(e, &progress))?;
        progress.step += 1;
        progress.last_lr = lr;
        progress.tokens_seen += result.input_tokens as u64;
        let secs = step_started.elapsed().as_secs_f64().max(1e-9);
        if let Some(o) = observer.as_mut() {
            o.step(&StepRecord {
                step: progress.step,
                epoch: progress.step as f64 / counts.steps_per_epoch as f64,
                loss: result.loss,
                lr,
                grad_norm: result.grad_norm,
                tokens: result.input_tokens,
                tokens_per_sec: result.input_tokens as f64 / secs,
                elapsed_s: progress.elapsed(),
                objective: extra,
            })?;
        }
        let at_end = progress.step == counts.total_steps;
        let mut verdict = Verdict::default();
        let eval_every = t.eval_interval(counts.steps_per_epoch);
        if eval_every > 0 && progress.step.is_multiple_of(eval_every) && !at_end {
            if writer {
                verdict = run_eval(
                    &model,
                    reference.as_ref(),
                    setup,
                    &rule,
                    &mut progress,
                    observer.as_mut(),
                    true,
                )?;
            }
            if rule.decides() {
                verdict = sync.share_verdict(verdict)?;
            }
        }
        if verdict.stop {
            tracing::info!(
                "stopping early after step {}: {} evaluations in a row without improving on the best eval_{} by more than {} (train.early_stopping_patience)",
                progress.step,
                progress.watch.without_improvement,
                rule.metric,
                t.early_stopping_threshold
            );
            progress.stopped_early = true;
        }
        let save_every = t.save_interval(counts.steps_per_epoch);
        let due = save_every > 0 && progress.step.is_multiple_of(save_every) && !at_end;
        if due || verdict.save_best || verdict.stop || result.stop.is_some() {
            if writer {
                save(setup, &model, &optimizer, &mut progress)?;
            }
            // Every replica waits for the checkpoint before going on.
            sync.barrier()?;
        }
        if let Some(sig) = result.stop {
            tracing::warn!(
                "stopped by signal {sig} after step {}; resume with --resume",
                progress.step
            );
            interrupted_by = Some(sig);
            break;
        }
        if progress.stopped_early {
            break;
        }
    }

    let mut outcome = TrainOutcome {
        global_step: progress.step,
        interrupted_by,
        adapter_dir: None,
        merged_dir: None,
        final_eval: None,
        last_checkpoint: progress.last_checkpoint.clone(),
        best_step: None,
        stopped_early: progress.stopped_early,
    };
    if interrupted_by.is_some() {
        if let Some(o) = observer.as_mut() {
            o.finish(false);
        }
        return Ok(outcome);
    }
    if !writer {
        // Rank 0 evaluates and writes the final checkpoint and adapter; wait for it.
        sync.barrier()?;
        return Ok(outcome);
    }
    if finished_before {
        progress.last_eval = recorded_final_eval;
    } else {
        // A run that stopped early evaluated at its last step already.
        if !progress.stopped_early {
            run_eval(
                &model,
                reference.as_ref(),
                setup,
                &rule,
                &mut progress,
                observer.as_mut(),
                true,
            )?;
        }
        if let Some(o) = observer.as_mut() {
            o.finish(true);
        }
        match crate::observe::plot::plot_run(out) {
            Ok(p) => tracing::info!("loss plot written to {}", p.display()),
            Err(e) => tracing::warn!("no loss plot: {e}"),
        }
    }
    // A run that stopped early in this invocation saved its last step already.
    if (!finished_before && !progress.stopped_early) || progress.last_checkpoint.is_none() {
        save(setup, &model, &optimizer, &mut progress)?;
    }
    let adapter_dir = out.join("adapter");
    let best = best_checkpoint(&setup.output_dir, &rule, &progress.watch, progress.step);
    if !finished_before || !adapter_dir.join(crate::lora::peft::WEIGHTS_FILE).is_file() {
        match &best {
            Some(c) => {
                replace_folder(out, "adapter", &|dir| copy_adapter(&c.dir, dir))?;
                tracing::info!(
                    "adapter written to {} from {}: the best evaluation (eval_{} {:.4}) was at step {} (train.load_best_model_at_end)",
                    adapter_dir.display(),
                    c.dir.display(),
                    rule.metric,
                    progress.watch.best.unwrap_or(f64::NAN),
                    c.state.global_step
                );
            }
            None => {
                let factors = extract(&model.net, &setup.targets);
                replace_folder(out, "adapter", &|dir| {
                    write_adapter(
                        dir,
                        &setup.lora,
                        &setup.targets,
                        &factors,
                        &recipe.model.base,
                    )
                    .map_err(|e| e.to_string())
                })?;
                tracing::info!("adapter written to {}", adapter_dir.display());
            }
        }
    }
    sync.barrier()?;
    outcome.last_checkpoint = progress.last_checkpoint.clone();
    outcome.adapter_dir = Some(adapter_dir);
    outcome.final_eval = progress.last_eval;
    if let Some(c) = &best {
        outcome.best_step = Some(c.state.global_step);
        outcome.final_eval = eval_recorded_at(setup, c.state.global_step).or(outcome.final_eval);
    }
    // A signal during the final evaluation or save stops here, everything saved.
    if let Some(sig) = opts.stop.requested() {
        outcome.interrupted_by = Some(sig);
        return Ok(outcome);
    }
    match super::publish::finish(setup, &outcome, opts.merge, !finished_before, &opts.stop)? {
        super::publish::Finished::Done(merged) => outcome.merged_dir = merged,
        super::publish::Finished::Interrupted(sig) => outcome.interrupted_by = Some(sig),
    }
    Ok(outcome)
}

/// A resumed run must be the same run: the recipe values that define its math are unchanged.
fn check_fingerprint(resume: Option<&Checkpoint>, setup: &RunSetup) -> anyhow::Result<()> {
    let Some(c) = resume else {
        return Ok(());
    };
    let changed = changed_fields(&c.state.fingerprint, &fingerprint(setup.recipe()));
    if !changed.is_empty() {
        bail!(user(format!(
            "cannot resume from {}: the recipe changed in ways that make it a different run:\n  {}\n(only epochs/max_steps, save_every, eval_every, keep_last, load_best_model_at_end, early stopping, logging, output and hub may change; start a new run with --overwrite or another output.dir)",
            c.dir.display(),
            changed.join("\n  ")
        )));
    }
    Ok(())
}

/// The model with its adapters attached (fresh, from `lora.init_from`, or from the checkpoint)
/// and the optimizer (restored with its moments and step count when resuming).
fn load_trainable<B: TrainBackend>(
    setup: &RunSetup,
    resume: Option<&Checkpoint>,
    device: &B::Device,
    on_gpu: bool,
) -> anyhow::Result<(Model<B>, AdamW<B::InnerBackend>)> {
    let recipe = setup.recipe();
    let t = &recipe.train;
    let dtype = recipe.model.dtype.resolve(on_gpu);
    let mut model = setup
        .folder
        .load_quantized::<B>(dtype, recipe.model.quantize.as_ref(), device)
        .with_context(|| format!("loading {}", setup.folder.dir.display()))?;
    let factors: Vec<HostFactors> = match (resume, &recipe.lora.init_from) {
        (Some(c), _) => factors_for(
            setup,
            &read_adapter(&c.dir, &model.config)?,
            "the checkpoint's adapter",
        )?,
        (None, Some(dir)) => {
            let dir = setup.loaded.resolve_path(dir);
            let files = read_adapter(&dir, &model.config)
                .with_context(|| format!("lora.init_from {}", dir.display()))?;
            factors_for(setup, &files, "lora.init_from")?
        }
        (None, None) => setup
            .targets
            .iter()
            .map(|tm| init_factors(tm, setup.lora.init, t.seed))
            .collect(),
    };
    for (tm, f) in setup.targets.iter().zip(&factors) {
        attach(&mut model.net, tm, f, setup.lora.dropout, true, device);
    }
    model.net.gradient_checkpointing = t.gradient_checkpointing;
    model.net.neftune_alpha = t.neftune_noise_alpha.filter(|&a| a > 0.0);

    let o = &t.optimizer;
    let config = AdamWConfig {
        beta1: o.betas[0],
        beta2: o.betas[1],
        eps: o.eps,
        weight_decay: o.weight_decay,
    };
    let mut optimizer = AdamW::new(config, &factor_shapes(&setup.targets), device);
    if let Some(ratio) = o.loraplus_lr_ratio {
        optimizer.lr_scales = loraplus_scales(&setup.targets, ratio);
    }
    if let Some(c) = resume {
        let state = checkpoint::read_optimizer(&c.dir)?;
        optimizer
            .restore(&state, &factor_names(&setup.targets), device)
            .map_err(|e| user(format!("{}: optimizer state: {e}", c.dir.display())))?;
    }
    Ok((model, optimizer))
}

fn factors_for(
    setup: &RunSetup,
    files: &crate::lora::peft::AdapterFiles,
    what: &str,
) -> anyhow::Result<Vec<HostFactors>> {
    setup
        .targets
        .iter()
        .map(|t| {
            let mut f = files
                .factors
                .get(&(t.layer, t.module))
                .cloned()
                .ok_or_else(|| {
                    user(format!(
                        "{what} has no factors for {} (its targets differ from the recipe's)",
                        t.full_name()
                    ))
                })?;
            if f.magnitude.is_some() && !t.dora {
                return Err(user(format!(
                    "{what} is a DoRA adapter (it has lora_magnitude_vector tensors): set lora.dora: true in the recipe to continue training it"
                )));
            }
            f.scaling = t.scaling;
            Ok(f)
        })
        .collect()
}

/// A diverged step names the checkpoint to go back to.
fn with_last_checkpoint(e: anyhow::Error, progress: &Progress) -> anyhow::Error {
    if !e.is::<StepError>() {
        return e;
    }
    let hint = match &progress.last_checkpoint {
        Some(dir) => format!(
            "the last good checkpoint is {} (continue from it with --resume after changing the recipe's lr or data, or start over with --overwrite)",
            dir.display()
        ),
        None => "no checkpoint was written before it".into(),
    };
    e.context(hint)
}

fn open_observer(setup: &RunSetup, resume: Option<&Checkpoint>) -> anyhow::Result<RunObserver> {
    let recipe = setup.recipe();
    // The effective recipe (defaults and --set overrides applied), for TensorBoard's text tab.
    let recipe_text = serde_saphyr::to_string(recipe)
        .unwrap_or_else(|_| std::fs::read_to_string(&setup.loaded.path).unwrap_or_default());
    let resumed_at = resume.map(|c| c.state.global_step);
    Ok(RunObserver::open(RunInfo {
        output: &setup.output_dir,
        resumed_at,
        start_step: resumed_at.unwrap_or(0),
        total_steps: setup.counts.total_steps,
        log_every: recipe.logging.every,
        tensorboard: recipe.logging.tensorboard,
        recipe_text: &recipe_text,
        hparams: hparams(setup),
    })?)
}

/// Evaluate on the validation rows or pairs (when there are any), record it, and, when it
/// `decides` (every evaluation but `eval_on_start`'s), say what it decides (a new best to
/// keep, patience run out).
fn run_eval<B: TrainBackend>(
    model: &Model<B>,
    reference: Option<&Model<B::InnerBackend>>,
    setup: &RunSetup,
    rule: &EvalRule,
    progress: &mut Progress,
    observer: Option<&mut RunObserver>,
    decides: bool,
) -> anyhow::Result<Verdict> {
    if !setup.data.has_validation() {
        return Ok(Verdict::default());
    }
    let batch = setup.recipe().train.micro_batch_size;
    let (r, extra) = match setup.preference_objective() {
        None => (
            evaluate(
                &model.valid(),
                &setup.data.validation,
                batch,
                setup.pad_id(),
            ),
            ObjectiveMetrics::new(),
        ),
        Some(obj) => {
            let batches = EvalBatches::of_run(setup, loss_chunk_rows(model.config.vocab_size));
            let pairs = &setup.data.validation_pairs;
            let e = evaluate_pairs(&model.valid(), reference, pairs, &obj, &batches)?;
            let r = EvalResult {
                loss: e.loss,
                perplexity: e.perplexity,
                tokens: e.pairs,
            };
            (r, e.metrics.with_prefix("eval_"))
        }
    };
    let value = match rule.metric.as_str() {
        "loss" => Some(r.loss),
        "perplexity" => Some(r.perplexity),
        name => extra.get(&format!("eval_{name}")).copied(),
    };
    // The recipe check admits only the metrics this objective records.
    let verdict = match (decides, value) {
        (false, _) => Verdict::default(),
        (true, Some(v)) => {
            progress.best_eval_loss =
                Some(progress.best_eval_loss.map_or(r.loss, |b| b.min(r.loss)));
            progress.watch.observe(v, progress.step, rule)
        }
        // A KTO evaluation set without rows of one side records no metrics of that side:
        // such an evaluation is never the best, as a NaN one.
        (true, None) => {
            tracing::warn!(
                "no eval_{} in this evaluation (its validation rows have none of that side); it counts as no improvement",
                rule.metric
            );
            progress.watch.observe(f64::NAN, progress.step, rule)
        }
    };
    if let Some(o) = observer {
        o.eval(&EvalRecord {
            step: progress.step,
            eval_loss: r.loss,
            eval_perplexity: r.perplexity,
            objective: extra,
        })?;
    }
    progress.last_eval = Some(r);
    Ok(verdict)
}

/// The evaluation at `step` recorded in the run's metrics (the final one of a completed run,
/// or the best one).
fn eval_recorded_at(setup: &RunSetup, step: usize) -> Option<EvalResult> {
    let records = metrics::read(&setup.output_dir.join(metrics::FILE)).ok()?;
    records.iter().rev().find_map(|r| match r {
        Record::Eval(e) if e.step == step => Some(EvalResult {
            loss: e.eval_loss,
            perplexity: e.eval_perplexity,
            tokens: 0,
        }),
        _ => None,
    })
}

/// Write a checkpoint of the current step.
fn save<B: AutodiffBackend>(
    setup: &RunSetup,
    model: &Model<B>,
    optimizer: &AdamW<B::InnerBackend>,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let recipe = setup.recipe();
    let counts = setup.counts;
    let factors = extract(&model.net, &setup.targets);
    let write = |dir: &std::path::Path| {
        write_adapter(
            dir,
            &setup.lora,
            &setup.targets,
            &factors,
            &recipe.model.base,
        )
        .map_err(|e| e.to_string())
    };
    let fp = fingerprint(recipe);
    let step = progress.step;
    let state = TrainerState {
        burnish_version: env!("CARGO_PKG_VERSION").into(),
        global_step: step,
        epoch: step / counts.steps_per_epoch,
        window_in_epoch: step % counts.steps_per_epoch,
        steps_per_epoch: counts.steps_per_epoch,
        total_steps: counts.total_steps,
        last_lr: progress.last_lr,
        seed: recipe.train.seed,
        elapsed_s: progress.elapsed(),
        tokens_seen: progress.tokens_seen,
        best_eval_loss: progress.best_eval_loss,
        metric_for_best_model: Some(setup.recipe().train.metric_for_best_model.clone()),
        best_metric: progress.watch.best,
        best_step: progress.watch.best_step,
        evals_without_improvement: progress.watch.without_improvement,
        stopped_early: progress.stopped_early,
        fingerprint_hash: fingerprint_hash(&fp),
        fingerprint: fp,
        files: Default::default(),
    };
    let optimizer_state = optimizer.state(&factor_names(&setup.targets));
    let contents = CheckpointContents {
        write_adapter: &write,
        optimizer: &optimizer_state,
    };
    let dir = checkpoint::save(&setup.output_dir, state, &contents, recipe.train.keep_last)?;
    tracing::info!("saved checkpoint {}", dir.display());
    progress.last_checkpoint = Some(dir);
    Ok(())
}

/// The main hyper-parameters, for TensorBoard's hparams tab.
fn hparams(setup: &RunSetup) -> std::collections::BTreeMap<String, HParam> {
    let r = setup.recipe();
    let mut h = std::collections::BTreeMap::new();
    h.insert("model".into(), HParam::Text(r.model.base.clone()));
    h.insert(
        "objective".into(),
        HParam::Text(r.train.objective.to_string()),
    );
    h.insert("lora.r".into(), HParam::Number(r.lora.r as f64));
    h.insert("lora.alpha".into(), HParam::Number(r.lora.alpha));
    h.insert("lora.dropout".into(), HParam::Number(r.lora.dropout));
    h.insert("lr".into(), HParam::Number(r.train.optimizer.lr));
    h.insert(
        "scheduler".into(),
        HParam::Text(r.train.scheduler.name.to_string()),
    );
    h.insert(
        "effective_batch_rows".into(),
        HParam::Number(setup.counts.effective_batch_rows as f64),
    );
    h.insert("seq_len".into(), HParam::Number(r.data.seq_len as f64));
    h.insert("packing".into(), HParam::Bool(r.data.packing));
    h.insert("seed".into(), HParam::Number(r.train.seed as f64));
    h
}
