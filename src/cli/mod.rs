//! Subcommands, one file each. Each parses and validates its input before doing expensive work.

pub mod bench;
pub mod download;
pub mod eval;
pub mod exit;
pub mod export;
pub mod flags;
pub mod generate;
pub mod inspect;
pub mod inspect_adapter;
pub mod merge;
pub mod orchestrator;
pub mod plan;
pub mod plot;
pub mod push;
pub mod quant;
pub mod train;
pub mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "burnish",
    version,
    about = "Fine-tune open LLMs with LoRA: HF checkpoints in, PEFT adapters and merged HF models out"
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Publish an adapter or merged model folder to the Hugging Face Hub.
    Push(push::Args),
    /// Download a model (or dataset) into the Hub cache for offline use.
    Download(download::Args),
    /// Time LoRA training steps at a fixed shape on synthetic data.
    Bench(bench::Args),
    /// Show a model's architecture, sizes and exact parameter count (or an adapter's settings).
    Inspect(inspect::Args),
    /// Generate text from a prompt (streams tokens as they are produced).
    Generate(generate::GenerateArgs),
    /// Talk to a model interactively (or through lines on stdin).
    Chat(generate::ChatArgs),
    /// Loss and perplexity of a model (optionally with an adapter) on a dataset.
    Eval(eval::Args),
    /// Fine-tune a model with LoRA as a recipe describes.
    Train(train::Args),
    /// Check a recipe, its model and a sample of its data without loading weights.
    Validate(validate::Args),
    /// Show what a recipe's run will do: data, steps, trainable parameters, memory.
    Plan(plan::Args),
    /// Draw loss.svg (training and evaluation loss) from a run's metrics.jsonl.
    Plot(plot::Args),
    /// Fold a LoRA adapter into its base model and write a Hugging Face model folder.
    Merge(merge::Args),
    /// Write a GGUF file for llama.cpp, Ollama and LM Studio (from a merged folder or base + adapter).
    Export(export::Args),
    /// Coordinate the nodes of a multi-machine data-parallel run (runs until interrupted).
    Orchestrator(orchestrator::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Bench(args) => bench::run_cli(args),
        Command::Push(args) => push::run(args),
        Command::Download(args) => download::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Generate(args) => generate::run_generate(args),
        Command::Chat(args) => generate::run_chat(args),
        Command::Merge(args) => merge::run(args),
        Command::Export(args) => export::run(args),
        Command::Train(args) => train::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Orchestrator(args) => orchestrator::run(args),
    }
}

/// Logs go to stderr; `RUST_LOG` wins over `-v`/`-q`.
pub fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("burnish={default},warn")));
    crate::observe::progress::set_quiet(quiet);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::observe::progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
