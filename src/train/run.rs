//! The training loop, top to bottom: set up the output folder, model, adapters, optimizer and
//! schedule (fresh or from a checkpoint); then for each optimizer step: forward and backward
//! over the step's micro-batches, sum gradients, normalise by the step's trained tokens, clip,
//! AdamW, log, evaluate, checkpoint; at the end: evaluate, save the adapter, merge.
//!
//! Everything a step consumes (its rows, its dropout masks) is a pure function of the seed and
//! the step index, so a run resumed from a checkpoint continues bit for bit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::Param;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};

use super::checkpoint::{self, CheckpointContents, moment_names};
use super::evaluate::{EvalResult, evaluate};
use super::optimizer::{AdamW, AdamWConfig, Moments, clip, global_norm};
use super::schedule::Schedule;
use super::setup::RunSetup;
use super::signals::StopFlag;
use super::state::{TrainerState, changed_fields, fingerprint, fingerprint_hash};
use super::sync::{GradientSync, StepContribution};
use crate::backend::WeightDtype;
use crate::data::order::{epoch_order, micro_batches, shard};
use crate::data::{PackedRow, collate};
use crate::error::user;
use crate::lora::attach::{attach, extract, fnv1a, init_factors};
use crate::lora::peft::{HostFactors, peft_key, read_adapter, write_adapter};
use crate::model::Model;
use crate::model::kernels::Kernels;
use crate::model::loss::{cross_entropy_sum, loss_chunk_rows};
use crate::observe::metrics::{EvalRecord, StepRecord};
use crate::observe::observer::{RunInfo, RunObserver};
use crate::observe::tensorboard::HParam;

/// Where to start from.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// A new run (the output folder must not hold checkpoints).
    No,
    /// The newest complete checkpoint of the output folder.
    Latest,
    /// A given checkpoint folder.
    From(PathBuf),
}

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
    pub final_eval: Option<EvalResult>,
    pub last_checkpoint: Option<PathBuf>,
}

/// Files and folders a run writes in its output folder (removed by `--overwrite`).
const RUN_ARTIFACTS: &[&str] = &[
    "checkpoints",
    "adapter",
    "merged",
    "metrics.jsonl",
    "tensorboard",
    "loss.svg",
    "README.md",
];

fn prepare_output(
    out: &Path,
    opts: &TrainOptions,
) -> anyhow::Result<Option<checkpoint::Checkpoint>> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating output.dir {}", out.display()))?;
    if opts.overwrite {
        for name in RUN_ARTIFACTS {
            let p = out.join(name);
            if p.is_dir() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            } else if p.is_file() {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    match &opts.resume {
        Resume::No => {
            if checkpoint::any(out) {
                let newest = checkpoint::newest_complete(out).map(|c| c.state.global_step);
                return Err(user(format!(
                    "output.dir {} already holds checkpoints{}; pass --resume to continue that run or --overwrite to start over",
                    out.display(),
                    newest
                        .map(|s| format!(" (newest complete: step {s})"))
                        .unwrap_or_default()
                )));
            }
            Ok(None)
        }
        Resume::Latest => match checkpoint::newest_complete(out) {
            Some(c) => Ok(Some(c)),
            None => Err(user(format!(
                "--resume: {} has no complete checkpoint to resume from",
                out.display()
            ))),
        },
        Resume::From(dir) => Ok(Some(
            checkpoint::open(dir).map_err(|e| user(e.to_string()))?,
        )),
    }
}

/// The rows of micro-batch `micro` of window `window` in epoch order `order`, this rank's share.
fn window_batches<'a>(
    rows: &'a [PackedRow],
    order: &[usize],
    window: usize,
    setup: &RunSetup,
    rank: usize,
    world: usize,
) -> Vec<Vec<&'a PackedRow>> {
    let t = &setup.recipe().train;
    let all = micro_batches(order, t.micro_batch_size);
    let start = window * t.grad_accum;
    let end = (start + t.grad_accum).min(all.len());
    all[start.min(end)..end]
        .iter()
        .map(|mb| {
            shard(mb, rank, world)
                .into_iter()
                .map(|i| &rows[i])
                .collect()
        })
        .collect()
}

/// LoRA parameters in a fixed order: (A, B) of each target.
fn lora_params<B: Backend>(model: &Model<B>, setup: &RunSetup) -> Vec<Tensor<B, 2>> {
    let mut out = Vec::with_capacity(setup.targets.len() * 2);
    for t in &setup.targets {
        if let Some(l) = model
            .net
            .projection(t.layer, t.module)
            .and_then(|p| p.lora.as_ref())
        {
            out.push(l.a.val());
            out.push(l.b.val());
        }
    }
    out
}

fn set_lora_params<B: AutodiffBackend>(
    model: &mut Model<B>,
    setup: &RunSetup,
    values: Vec<Tensor<B::InnerBackend, 2>>,
) {
    let mut it = values.into_iter();
    for t in &setup.targets {
        if let Some(l) = model
            .net
            .projection_mut(t.layer, t.module)
            .and_then(|p| p.lora.as_mut())
            && let (Some(a), Some(b)) = (it.next(), it.next())
        {
            l.a = Param::initialized(l.a.id, Tensor::from_inner(a).require_grad());
            l.b = Param::initialized(l.b.id, Tensor::from_inner(b).require_grad());
        }
    }
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
            files
                .factors
                .get(&(t.layer, t.module))
                .cloned()
                .map(|mut f| {
                    f.scaling = t.scaling;
                    f
                })
                .ok_or_else(|| {
                    user(format!(
                        "{what} has no factors for {} (its targets differ from the recipe's)",
                        t.full_name()
                    ))
                })
        })
        .collect()
}

fn f32_vec<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

pub fn train<B: AutodiffBackend + Kernels>(
    setup: &RunSetup,
    opts: &TrainOptions,
    sync: &mut dyn GradientSync<B::InnerBackend>,
    device: B::Device,
    on_gpu: bool,
) -> anyhow::Result<TrainOutcome>
where
    B::InnerBackend: Kernels,
{
    let recipe = setup.recipe();
    let t = &recipe.train;
    let out = setup.output_dir.clone();
    let rank = sync.rank();
    let world = sync.world_size();
    let writer = rank == 0;

    // Output folder and checkpoint to start from.
    let resume_from = if writer {
        prepare_output(&out, opts)?
    } else {
        match &opts.resume {
            Resume::No => None,
            Resume::Latest => checkpoint::newest_complete(&out),
            Resume::From(d) => Some(checkpoint::open(d).map_err(|e| user(e.to_string()))?),
        }
    };
    let fp = fingerprint(recipe);
    if let Some(c) = &resume_from {
        let changed = changed_fields(&c.state.fingerprint, &fp);
        if !changed.is_empty() {
            bail!(user(format!(
                "cannot resume from {}: the recipe changed in ways that make it a different run:\n  {}\n(only epochs/max_steps, save_every, eval_every, keep_last, logging, output and hub may change; start a new run with --overwrite or another output.dir)",
                c.dir.display(),
                changed.join("\n  ")
            )));
        }
    }
    let start_step = resume_from.as_ref().map_or(0, |c| c.state.global_step);

    // Model and adapters.
    let dtype = recipe
        .model
        .dtype
        .parse::<WeightDtype>()
        .map_err(user)?
        .resolve(on_gpu);
    let mut model = setup
        .folder
        .load_quantized::<B>(dtype, recipe.model.quantize.as_ref(), &device)
        .with_context(|| format!("loading {}", setup.folder.dir.display()))?;
    let factors: Vec<HostFactors> = match (&resume_from, &recipe.lora.init_from) {
        (Some(c), _) => factors_for(
            setup,
            &read_adapter(&c.dir, &model.config)?,
            "the checkpoint's adapter",
        )?,
        (None, Some(dir)) => {
            let dir = setup.loaded.resolve_path(dir);
            factors_for(
                setup,
                &read_adapter(&dir, &model.config)
                    .with_context(|| format!("lora.init_from {}", dir.display()))?,
                "lora.init_from",
            )?
        }
        (None, None) => setup
            .targets
            .iter()
            .map(|tm| init_factors(tm, setup.lora.init, t.seed))
            .collect(),
    };
    for (tm, f) in setup.targets.iter().zip(&factors) {
        attach(&mut model.net, tm, f, setup.lora.dropout, true, &device);
    }
    model.net.gradient_checkpointing = t.gradient_checkpointing;

    // Optimizer, restored with its moments and step count when resuming.
    let o = &t.optimizer;
    let adamw = AdamWConfig {
        beta1: o.betas[0],
        beta2: o.betas[1],
        eps: o.eps,
        weight_decay: o.weight_decay,
    };
    let shapes: Vec<[usize; 2]> = setup
        .targets
        .iter()
        .flat_map(|tm| [[tm.r, tm.in_features], [tm.out_features, tm.r]])
        .collect();
    let mut optimizer = AdamW::<B::InnerBackend>::new(adamw, &shapes, &device);
    if let Some(c) = &resume_from {
        let (tensors, step) = checkpoint::read_optimizer(&c.dir)?;
        let mut moments = Vec::with_capacity(shapes.len());
        for tm in &setup.targets {
            for is_a in [true, false] {
                let (m_name, v_name) = moment_names(&peft_key(tm.layer, tm.module, is_a));
                let load = |name: &str| -> anyhow::Result<Tensor<B::InnerBackend, 2>> {
                    let (shape, values) = tensors.get(name).ok_or_else(|| {
                        user(format!("{}: optimizer state lacks {name}", c.dir.display()))
                    })?;
                    Ok(Tensor::from_data(
                        TensorData::new(values.clone(), [shape[0], shape[1]]),
                        (&device, DType::F32),
                    ))
                };
                moments.push(Moments {
                    exp_avg: load(&m_name)?,
                    exp_avg_sq: load(&v_name)?,
                });
            }
        }
        optimizer.moments = moments;
        optimizer.step = step;
    }

    let counts = setup.counts;
    let schedule = Schedule::new(
        &t.scheduler.name,
        o.lr,
        t.scheduler.min_lr,
        t.scheduler.warmup_steps,
        t.scheduler.warmup_ratio,
        counts.total_steps,
    );
    // The effective recipe (defaults and --set overrides applied), for TensorBoard's text tab.
    let recipe_text = serde_saphyr::to_string(recipe)
        .unwrap_or_else(|_| std::fs::read_to_string(&setup.loaded.path).unwrap_or_default());
    let mut observer = if writer {
        Some(RunObserver::open(RunInfo {
            output: &out,
            resumed_at: resume_from.as_ref().map(|c| c.state.global_step),
            start_step,
            total_steps: counts.total_steps,
            log_every: recipe.logging.every,
            tensorboard: recipe.logging.tensorboard,
            recipe_text: &recipe_text,
            hparams: hparams(setup),
        })?)
    } else {
        None
    };
    let chunk = loss_chunk_rows(model.config.vocab_size);
    let pad_id = setup.pad_id();
    let rows = &setup.data.train;

    let started = Instant::now();
    let prev_elapsed = resume_from.as_ref().map_or(0.0, |c| c.state.elapsed_s);
    let mut tokens_seen = resume_from.as_ref().map_or(0, |c| c.state.tokens_seen);
    let mut best_eval = resume_from.as_ref().and_then(|c| c.state.best_eval_loss);
    let mut last_lr = resume_from.as_ref().map_or(0.0, |c| c.state.last_lr);
    let mut last_checkpoint = resume_from.as_ref().map(|c| c.dir.clone());
    let mut last_eval: Option<EvalResult> = None;
    let mut order_cache: Option<(usize, Vec<usize>)> = None;

    let save = |model: &Model<B>,
                optimizer: &AdamW<B::InnerBackend>,
                step: usize,
                lr: f64,
                tokens_seen: u64,
                best: Option<f64>|
     -> anyhow::Result<PathBuf> {
        let factors = extract(&model.net, &setup.targets);
        let write = |dir: &Path| {
            write_adapter(
                dir,
                &setup.lora,
                &setup.targets,
                &factors,
                &recipe.model.base,
            )
            .map_err(|e| e.to_string())
        };
        let mut tensors = Vec::with_capacity(optimizer.moments.len() * 2);
        let mut i = 0;
        for tm in &setup.targets {
            for is_a in [true, false] {
                let (m_name, v_name) = moment_names(&peft_key(tm.layer, tm.module, is_a));
                let m = &optimizer.moments[i];
                let shape = m.exp_avg.dims().to_vec();
                let bytes = |t: &Tensor<B::InnerBackend, 2>| {
                    f32_vec(t.clone())
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect::<Vec<u8>>()
                };
                tensors.push((m_name, shape.clone(), bytes(&m.exp_avg)));
                tensors.push((v_name, shape, bytes(&m.exp_avg_sq)));
                i += 1;
            }
        }
        let state = TrainerState {
            burnish_version: env!("CARGO_PKG_VERSION").into(),
            global_step: step,
            epoch: step / counts.steps_per_epoch,
            window_in_epoch: step % counts.steps_per_epoch,
            steps_per_epoch: counts.steps_per_epoch,
            total_steps: counts.total_steps,
            last_lr: lr,
            seed: t.seed,
            elapsed_s: prev_elapsed + started.elapsed().as_secs_f64(),
            tokens_seen,
            best_eval_loss: best,
            fingerprint: fp.clone(),
            fingerprint_hash: fingerprint_hash(&fp),
            files: Default::default(),
        };
        let contents = CheckpointContents {
            write_adapter: &write,
            optimizer: tensors,
            optimizer_step: optimizer.step,
        };
        let dir = checkpoint::save(&out, state, &contents, t.keep_last)?;
        tracing::info!("saved checkpoint {}", dir.display());
        Ok(dir)
    };

    let mut step = start_step;
    let mut interrupted_by = None;
    while step < counts.total_steps {
        let step_started = Instant::now();
        let epoch = step / counts.steps_per_epoch;
        let window = step % counts.steps_per_epoch;
        if order_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order_cache = Some((
                epoch,
                epoch_order(rows.len(), t.seed, epoch, recipe.data.shuffle),
            ));
        }
        let order = &order_cache
            .as_ref()
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        let batches = window_batches(rows, order, window, setup, rank, world);

        // Forward and backward over the step's micro-batches, summing loss-sum gradients.
        let params = lora_params(&model, setup);
        let mut grad_sums: Vec<Tensor<B::InnerBackend, 2>> = params
            .iter()
            .map(|p| Tensor::zeros(p.dims(), (&device, DType::F32)))
            .collect();
        let mut local_tokens = 0usize;
        let mut local_loss = 0.0f64;
        let mut input_tokens = 0usize;
        for (j, batch_rows) in batches.iter().enumerate() {
            if batch_rows.is_empty() {
                continue;
            }
            let (batch, targets) = collate(batch_rows, pad_id);
            input_tokens += batch_rows.iter().map(|r| r.len()).sum::<usize>();
            // Dropout masks come from the backend RNG, seeded per micro-batch.
            B::seed(
                &device,
                t.seed ^ fnv1a(format!("dropout-{step}-{j}-{rank}").as_bytes()),
            );
            let hidden = model.hidden_states(&batch, true);
            let (loss_sum, n) = cross_entropy_sum(&model.net, hidden, &targets, chunk);
            if n == 0 {
                continue;
            }
            local_tokens += n;
            local_loss += loss_sum.clone().into_scalar().elem_f64();
            let grads = loss_sum.backward();
            let params = lora_params(&model, setup);
            for (acc, p) in grad_sums.iter_mut().zip(&params) {
                if let Some(g) = p.grad(&grads) {
                    *acc = acc.clone() + g;
                }
            }
        }
        // The stop request travels with the step's exchange, so every replica stops after the
        // same step.
        let local_stop = opts.stop.requested();
        let total = sync.all_reduce(StepContribution {
            grad_sums,
            trained_tokens: local_tokens,
            loss_sum: local_loss,
            input_tokens,
            stop: local_stop.is_some(),
            step,
        })?;
        let stop = match local_stop {
            Some(sig) => Some(sig),
            // Another replica was signalled: stop as if interrupted (SIGINT) here too.
            None if total.stop => Some(2),
            None => None,
        };
        let step_tokens = total.input_tokens;
        if total.trained_tokens == 0 {
            bail!(
                "step {}: no trained tokens in the batch (every label masked)",
                step + 1
            );
        }
        let scale = 1.0 / total.trained_tokens as f64;
        let grads: Vec<Tensor<B::InnerBackend, 2>> =
            total.grad_sums.into_iter().map(|g| g * scale).collect();
        let grad_norm = global_norm(&grads);
        let grads = match t.max_grad_norm {
            Some(max) => clip(grads, grad_norm, max),
            None => grads,
        };
        let lr = schedule.lr(step);
        let inner: Vec<Tensor<B::InnerBackend, 2>> = lora_params(&model, setup)
            .into_iter()
            .map(|p| p.inner())
            .collect();
        let updated = optimizer.step(lr, inner, &grads);
        set_lora_params(&mut model, setup, updated);
        step += 1;
        last_lr = lr;
        tokens_seen += step_tokens as u64;
        let loss = total.loss_sum / total.trained_tokens as f64;
        if !loss.is_finite() {
            bail!("step {step}: the loss is {loss}; lower train.optimizer.lr or check the data");
        }
        let secs = step_started.elapsed().as_secs_f64().max(1e-9);
        let record = StepRecord {
            step,
            epoch: step as f64 / counts.steps_per_epoch as f64,
            loss,
            lr,
            grad_norm,
            tokens: step_tokens,
            tokens_per_sec: step_tokens as f64 / secs,
            elapsed_s: prev_elapsed + started.elapsed().as_secs_f64(),
        };
        if let Some(o) = observer.as_mut() {
            o.step(&record)?;
        }
        let at_end = step == counts.total_steps;
        if t.eval_every > 0
            && step % t.eval_every == 0
            && !at_end
            && !setup.data.validation.is_empty()
            && writer
        {
            let r = run_eval(&model, setup, pad_id);
            best_eval = Some(best_eval.map_or(r.loss, |b: f64| b.min(r.loss)));
            if let Some(o) = observer.as_mut() {
                o.eval(&EvalRecord {
                    step,
                    eval_loss: r.loss,
                    eval_perplexity: r.perplexity,
                })?;
            }
            last_eval = Some(r);
        }
        if (t.save_every > 0 && step % t.save_every == 0 && !at_end) || stop.is_some() {
            if writer {
                last_checkpoint = Some(save(
                    &model,
                    &optimizer,
                    step,
                    last_lr,
                    tokens_seen,
                    best_eval,
                )?);
            }
            // Every replica waits for the checkpoint before going on.
            sync.barrier()?;
        }
        if let Some(sig) = stop {
            tracing::warn!("stopped by signal {sig} after step {step}; resume with --resume");
            interrupted_by = Some(sig);
            break;
        }
    }

    let mut outcome = TrainOutcome {
        global_step: step,
        interrupted_by,
        adapter_dir: None,
        merged_dir: None,
        final_eval: None,
        last_checkpoint,
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
    if !setup.data.validation.is_empty() {
        let r = run_eval(&model, setup, pad_id);
        best_eval = Some(best_eval.map_or(r.loss, |b: f64| b.min(r.loss)));
        if let Some(o) = observer.as_mut() {
            o.eval(&EvalRecord {
                step,
                eval_loss: r.loss,
                eval_perplexity: r.perplexity,
            })?;
        }
        last_eval = Some(r);
    }
    if let Some(o) = observer.as_mut() {
        o.finish(true);
    }
    match crate::observe::plot::plot_run(&out) {
        Ok(p) => tracing::info!("loss plot written to {}", p.display()),
        Err(e) => tracing::warn!("no loss plot: {e}"),
    }
    // The final checkpoint (unless resuming a run that had already finished).
    if start_step < counts.total_steps || outcome.last_checkpoint.is_none() {
        outcome.last_checkpoint = Some(save(
            &model,
            &optimizer,
            step,
            last_lr,
            tokens_seen,
            best_eval,
        )?);
    }
    let adapter_dir = out.join("adapter");
    let factors = extract(&model.net, &setup.targets);
    write_adapter(
        &adapter_dir,
        &setup.lora,
        &setup.targets,
        &factors,
        &recipe.model.base,
    )?;
    tracing::info!("adapter written to {}", adapter_dir.display());
    sync.barrier()?;
    outcome.adapter_dir = Some(adapter_dir);
    outcome.final_eval = last_eval;
    Ok(outcome)
}

/// The main hyper-parameters, for TensorBoard's hparams tab.
fn hparams(setup: &RunSetup) -> std::collections::BTreeMap<String, HParam> {
    let r = setup.recipe();
    let mut h = std::collections::BTreeMap::new();
    h.insert("model".into(), HParam::Text(r.model.base.clone()));
    h.insert("lora.r".into(), HParam::Number(r.lora.r as f64));
    h.insert("lora.alpha".into(), HParam::Number(r.lora.alpha));
    h.insert("lora.dropout".into(), HParam::Number(r.lora.dropout));
    h.insert("lr".into(), HParam::Number(r.train.optimizer.lr));
    h.insert(
        "scheduler".into(),
        HParam::Text(r.train.scheduler.name.clone()),
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

fn run_eval<B: AutodiffBackend>(model: &Model<B>, setup: &RunSetup, pad_id: u32) -> EvalResult
where
    B::InnerBackend: Kernels,
{
    let valid = model.valid();
    evaluate(
        &valid,
        &setup.data.validation,
        setup.recipe().train.micro_batch_size,
        pad_id,
    )
}

trait ElemF64 {
    fn elem_f64(self) -> f64;
}

impl<E: burn::tensor::ElementConversion> ElemF64 for E {
    fn elem_f64(self) -> f64 {
        self.elem::<f64>()
    }
}
