//! `burnish plan <RECIPE> [--json]`: what a run will do, before doing it.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use crate::backend::DeviceSpec;
use crate::cli::inspect::group_digits;
use crate::model::loss::loss_chunk_rows;
use crate::model::quant::QuantSpec;
use crate::observe::human_bytes;
use crate::recipe::LoadedRecipe;
use crate::train::memory::{ASSUMPTIONS, Device, Workload, estimate};
use crate::train::setup::RunSetup;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recipe (YAML).
    pub recipe: PathBuf,
    /// Override a value: `--set train.optimizer.lr=1e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = LoadedRecipe::load(&args.recipe, &args.set)?;
    let setup = RunSetup::new(loaded)?;
    let r = setup.recipe();
    let on_gpu = match r.train.device {
        DeviceSpec::Cuda(_) => true,
        DeviceSpec::Cpu => false,
        DeviceSpec::Auto => crate::backend::cuda_available(),
    };
    let dtype = r.model.dtype.resolve(on_gpu);
    let dtype_bytes = if dtype == burn::tensor::DType::F32 {
        4
    } else {
        2
    };
    let trainable = setup.trainable_parameters();
    let config = &setup.folder.config;
    let longest = setup.data.longest_row();
    let quant = r.model.quantize.as_ref();
    let mem_with = |quant: Option<&QuantSpec>| {
        estimate(&Workload {
            config,
            device: if on_gpu { Device::Cuda } else { Device::Cpu },
            trainable,
            dtype_bytes,
            micro_batch: setup.rows_per_micro_batch(),
            seq_len: longest,
            loss_chunk_rows: loss_chunk_rows(config.vocab_size),
            rank: r.lora.r,
            quant,
            dora: r.lora.dora,
            gradient_checkpointing: r.train.gradient_checkpointing,
            threads: rayon::current_num_threads(),
        })
    };
    let mem = mem_with(quant);
    // The other side of the comparison: unquantized when the recipe quantizes, else 4-bit.
    let other_spec = QuantSpec::default();
    let other = match quant {
        Some(_) => mem_with(None),
        None => mem_with(Some(&other_spec)),
    };
    let s = &setup.data.stats;
    let c = &setup.counts;
    if args.json {
        let v = json!({
            "model": {"dir": setup.folder.dir, "architecture": config.architecture.class_name(), "parameters": config.parameter_count()},
            "device": if on_gpu { "cuda" } else { "cpu" },
            "dtype": format!("{dtype:?}").to_lowercase(),
            "trainable_parameters": trainable,
            "objective": r.train.objective,
            "data": s,
            "longest_row": longest,
            "steps": c,
            "memory": mem,
            "memory_assumptions": ASSUMPTIONS,
            "gradient_checkpointing": r.train.gradient_checkpointing,
            "quantize": quant,
            "memory_unquantized": if quant.is_some() { Some(other) } else { None },
            "memory_4bit": if quant.is_none() { Some(other) } else { None },
            "output_dir": setup.output_dir,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "model        {} ({}, {} parameters)",
        setup.folder.dir.display(),
        config.architecture,
        group_digits(config.parameter_count())
    );
    println!(
        "device       {} ({:?} frozen weights, f32 adapters)",
        if on_gpu { "cuda" } else { "cpu" },
        dtype
    );
    println!(
        "adapter      r={} alpha={}{} on {} modules: {} trainable parameters",
        setup.lora.r,
        setup.lora.alpha,
        if setup.lora.dora { " DoRA" } else { "" },
        setup.targets.len(),
        group_digits(trainable)
    );
    println!(
        "data         {} rows read, {} {} ({} train / {} validation)",
        s.rows_read,
        s.examples,
        if setup.data.is_preference() {
            "preference pairs"
        } else {
            "examples"
        },
        s.train_examples,
        s.validation_examples
    );
    if let Some(obj) = setup.preference_objective() {
        println!("objective    {obj}; each pair is a chosen and a rejected row");
    }
    println!(
        "             {} truncated, {} dropped (too long), {} dropped (nothing to train)",
        s.truncated, s.dropped_too_long, s.dropped_untrained
    );
    println!(
        "             {} training rows (packing {}), {} tokens, {} trained",
        s.train_rows,
        if r.data.packing { "on" } else { "off" },
        s.train_tokens,
        s.trained_tokens
    );
    println!(
        "steps        {} per epoch x {} epoch(s) = {} optimizer steps ({} rows each: {} x {} accumulation)",
        c.steps_per_epoch,
        c.epochs,
        c.total_steps,
        c.effective_batch_rows,
        r.train.micro_batch_size,
        r.train.grad_accum
    );
    println!(
        "memory       ~{} total: weights {}, adapter+optimizer {}, activations {}{}, workspace {} (estimate)",
        human_bytes(mem.total_bytes),
        human_bytes(mem.weights_bytes),
        human_bytes(mem.adapter_optimizer_bytes),
        human_bytes(mem.activation_bytes),
        if r.train.gradient_checkpointing {
            " with gradient checkpointing"
        } else {
            ""
        },
        human_bytes(mem.workspace_bytes)
    );
    println!("             assumes {ASSUMPTIONS}");
    match quant {
        Some(q) => println!(
            "             base projections quantized to {} bits (blocks of {}); without \
             quantization: ~{} total, weights {}",
            q.bits,
            q.block_size,
            human_bytes(other.total_bytes),
            human_bytes(other.weights_bytes)
        ),
        None => println!(
            "             with a 4-bit base (model.quantize: {{bits: 4}}): ~{} total, weights {}",
            human_bytes(other.total_bytes),
            human_bytes(other.weights_bytes)
        ),
    }
    println!("output       {}", setup.output_dir.display());
    Ok(ExitCode::SUCCESS)
}
