//! `burnish train <RECIPE>`: the main job.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::backend::{
    BackendJob, DeviceSpec, MultiDeviceJob, TrainBackend, device_specs, dispatch, dispatch_multi,
};
use crate::cli::inspect::group_digits;
use crate::error::user;
use crate::recipe::LoadedRecipe;
use crate::train::distributed::{CollectiveSync, Topology};
use crate::train::run::{Resume, TrainOptions, TrainOutcome, train};
use crate::train::setup::RunSetup;
use crate::train::signals::StopFlag;
use crate::train::sync::SingleProcess;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recipe (YAML).
    pub recipe: PathBuf,
    /// Continue from the newest complete checkpoint in output.dir, or from the given one.
    #[arg(long, num_args = 0..=1, value_name = "CHECKPOINT_DIR")]
    pub resume: Option<Option<PathBuf>>,
    /// Start over in an output.dir that holds an earlier run (its checkpoints are deleted).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Also merge the adapter into the base at the end (as output.merge: true).
    #[arg(long)]
    pub merge: bool,
    /// Override a value: `--set train.optimizer.lr=1e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// This machine's rank in a multi-machine run (default: the `RANK` environment variable,
    /// else 0).
    #[arg(long)]
    pub node_rank: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = LoadedRecipe::load(&args.recipe, &args.set)?;
    let device = loaded.recipe.train.device;
    let setup = RunSetup::new(loaded)?;
    let resume = match args.resume {
        None => Resume::No,
        Some(None) => Resume::Latest,
        Some(Some(dir)) => Resume::From(dir),
    };
    let opts = TrainOptions {
        resume,
        overwrite: args.overwrite,
        merge: args.merge,
        stop: StopFlag::install(),
    };
    let devices = match &setup.recipe().train.devices {
        Some(list) => Some(device_specs(list).map_err(|e| user(format!("train.devices {e}")))?),
        None => None,
    };
    let topology = Topology::resolve(
        setup.recipe().distributed.as_ref(),
        devices.as_ref().map_or(1, Vec::len),
        args.node_rank,
    )
    .map_err(user)?;
    let outcome = if topology.is_distributed() {
        let specs = match devices {
            Some(d) => d,
            None if device == DeviceSpec::Auto && crate::backend::cuda_available() => {
                vec![DeviceSpec::Cuda(0)]
            }
            None if device == DeviceSpec::Auto => vec![DeviceSpec::Cpu],
            None => vec![device],
        };
        if topology.nodes > 1 && topology.node_rank == 0 && topology.start_orchestrator {
            crate::train::distributed::spawn_orchestrator(topology.orchestrator_port);
        }
        tracing::info!(
            "data-parallel: node {} of {}, {} replica(s) here, {} in all",
            topology.node_rank,
            topology.nodes,
            topology.local_devices,
            topology.world_size()
        );
        dispatch_multi(
            &specs,
            ParallelJob {
                setup: &setup,
                opts: &opts,
                topology: &topology,
            },
        )
        .map_err(user)??
    } else {
        let device = match devices.as_deref() {
            Some([one]) => *one,
            _ => device,
        };
        dispatch(
            device,
            TrainJob {
                setup: &setup,
                opts: &opts,
            },
        )
        .map_err(user)??
    };
    if let Some(sig) = outcome.interrupted_by {
        eprintln!(
            "interrupted at step {}; checkpoint {} saved. Continue with: burnish train {} --resume",
            outcome.global_step,
            outcome
                .last_checkpoint
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            args.recipe.display()
        );
        return Ok(ExitCode::from(StopFlag::exit_code(sig)));
    }
    if topology.node_rank != 0 {
        // Rank 0's node writes the adapter, merges and publishes.
        println!(
            "node {} finished step {}; node 0 wrote the results to {}",
            topology.node_rank,
            outcome.global_step,
            setup.output_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if outcome.stopped_early {
        println!(
            "stopped early at step {} (train.early_stopping_patience)",
            outcome.global_step
        );
    }
    let metric = crate::train::best::EvalRule::from_recipe(&setup.recipe().train).metric;
    let (which, whose) = match (outcome.best_step, metric.as_str()) {
        (Some(step), "loss") => (
            "best eval loss",
            format!("; step {step}'s weights are in adapter/"),
        ),
        (Some(step), m) => (
            "eval loss",
            format!(" at the best eval_{m}; step {step}'s weights are in adapter/"),
        ),
        (None, _) => ("final eval loss", String::new()),
    };
    if let Some(e) = &outcome.final_eval {
        // A recorded evaluation (a resumed run's, or the best one's) keeps no token count.
        let over = match e.tokens {
            0 => String::new(),
            n => format!(" over {n} tokens"),
        };
        match setup
            .preference_objective()
            .map(|_| setup.recipe().train.objective)
        {
            // exp of a preference loss means nothing; the perplexity is the chosen (KTO:
            // desirable) completions'. The count is of pairs (KTO: rows), not tokens.
            Some(obj) => {
                let (side, unit) = match obj {
                    crate::recipe::Objective::Kto => ("desirable", "rows"),
                    _ => ("chosen", "pairs"),
                };
                let over = match e.tokens {
                    0 => String::new(),
                    n => format!(" over {n} {unit}"),
                };
                println!(
                    "{which} {:.4} ({obj}); {side} completions' perplexity {:.2}{over}{whose}",
                    e.loss, e.perplexity
                )
            }
            None => println!(
                "{which} {:.4} (perplexity {:.2}){over}{whose}",
                e.loss, e.perplexity
            ),
        }
    }
    println!("{}", setup.output_dir.display());
    // Last, for the person at the terminal (stdout's last line stays the folder, for scripts).
    if let Some(adapter) = &outcome.adapter_dir {
        eprintln!("{}", next_step(setup.recipe(), adapter, args.merge));
    }
    Ok(ExitCode::SUCCESS)
}

struct TrainJob<'a> {
    setup: &'a RunSetup,
    opts: &'a TrainOptions,
}

impl BackendJob for TrainJob<'_> {
    type Output = anyhow::Result<TrainOutcome>;

    fn run<B: TrainBackend>(self, device: B::Device, on_gpu: bool) -> Self::Output {
        let s = self.setup;
        log_plan(s, on_gpu)?;
        train::<B>(s, self.opts, &mut SingleProcess, device, on_gpu)
    }
}

/// Data-parallel replicas of this process, one thread per device. Returns the outcome of the
/// first local replica (rank 0 on node 0, the writer) or the first error of any.
struct ParallelJob<'a> {
    setup: &'a RunSetup,
    opts: &'a TrainOptions,
    topology: &'a Topology,
}

impl MultiDeviceJob for ParallelJob<'_> {
    type Output = anyhow::Result<TrainOutcome>;

    fn run<B: TrainBackend>(self, devices: Vec<B::Device>, on_gpu: bool) -> Self::Output {
        log_plan(self.setup, on_gpu)?;
        let results: Vec<anyhow::Result<TrainOutcome>> = std::thread::scope(|scope| {
            let handles: Vec<_> = devices
                .into_iter()
                .enumerate()
                .map(|(i, device)| {
                    scope.spawn(move || -> anyhow::Result<TrainOutcome> {
                        let mut sync = CollectiveSync::<B::InnerBackend>::new(
                            self.topology,
                            i,
                            device.clone(),
                        )
                        .map_err(user)?;
                        train::<B>(self.setup, self.opts, &mut sync, device, on_gpu)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a training replica panicked")))
                })
                .collect()
        });
        let mut first = None;
        for r in results {
            match r {
                Err(e) => return Err(e),
                Ok(o) if first.is_none() => first = Some(o),
                Ok(_) => {}
            }
        }
        first.ok_or_else(|| anyhow::anyhow!("no training replica ran"))
    }
}

/// What the run will do, logged before it starts.
fn log_plan(s: &RunSetup, on_gpu: bool) -> anyhow::Result<()> {
    let r = s.recipe();
    let dtype = r.model.dtype.resolve(on_gpu);
    let d = &s.data.stats;
    tracing::info!(
        "model {} ({}, {} parameters) on {} ({:?} frozen weights, f32 adapters)",
        r.model.base,
        s.folder.config.architecture,
        group_digits(s.folder.config.parameter_count()),
        if on_gpu { "cuda" } else { "cpu" },
        dtype
    );
    tracing::info!(
        "adapter r={} alpha={} on {} modules: {} trainable parameters ({:.3}% of {})",
        s.lora.r,
        s.lora.alpha,
        s.targets.len(),
        group_digits(s.trainable_parameters()),
        100.0 * s.trainable_parameters() as f64 / s.folder.config.parameter_count() as f64,
        group_digits(s.folder.config.parameter_count())
    );
    tracing::info!(
        "data: {} train / {} validation {}, {} rows, {} tokens ({} trained), objective {}",
        d.train_examples,
        d.validation_examples,
        if s.data
            .train_pairs
            .first()
            .is_some_and(|p| p.label.is_some())
        {
            "unpaired rows"
        } else if s.data.is_preference() {
            "pairs"
        } else {
            "examples"
        },
        d.train_rows,
        d.train_tokens,
        d.trained_tokens,
        r.train.objective
    );
    if d.truncated + d.dropped_too_long + d.dropped_untrained > 0 {
        tracing::warn!(
            "data: {} examples truncated to data.seq_len {}, {} dropped as too long, {} dropped with nothing to train (see `burnish plan`)",
            d.truncated,
            r.data.seq_len,
            d.dropped_too_long,
            d.dropped_untrained
        );
    }
    tracing::info!(
        "{} optimizer steps ({} per epoch), effective batch {} rows ({} x {} accumulation), output {}",
        s.counts.total_steps,
        s.counts.steps_per_epoch,
        s.counts.effective_batch_rows,
        r.train.micro_batch_size,
        r.train.grad_accum,
        s.output_dir.display()
    );
    Ok(())
}

/// The run's one-line "what next": talk to the merged model when the run wrote one, else to
/// the base plus the adapter (quantized as in training), and to the base alone to compare.
/// The program is named as it was invoked, so the line pastes as is (`target/release/burnish`
/// after `cargo run --release`).
fn next_step(r: &crate::recipe::Recipe, adapter: &std::path::Path, force_merge: bool) -> String {
    let exe = std::env::args()
        .next()
        .filter(|a| !a.is_empty() && !a.contains(char::is_whitespace))
        .unwrap_or_else(|| "burnish".into());
    let base = shell_word(&r.model.base);
    let merged = adapter.with_file_name("merged");
    let wants_merged = r.output.merge || force_merge;
    let tuned = if wants_merged && merged.join("config.json").is_file() {
        format!("--model {}", shell_word(&merged.display().to_string()))
    } else {
        let quant = r
            .model
            .quantize
            .map(|q| {
                format!(
                    " --quant-bits {} --quant-block-size {}",
                    q.bits, q.block_size
                )
            })
            .unwrap_or_default();
        let adapter = shell_word(&adapter.display().to_string());
        format!("--model {base} --adapter {adapter}{quant}")
    };
    format!(
        "next: talk to the fine-tuned model with `{exe} chat {tuned} --temperature 0` \
         (and to the base alone with `{exe} chat --model {base} --temperature 0`)"
    )
}

/// `s` quoted for a POSIX shell where it needs to be.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:@+=,".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
