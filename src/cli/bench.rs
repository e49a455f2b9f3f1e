//! `burnish bench`: time LoRA training steps at a fixed shape (see BENCHMARKS.md).

use std::process::ExitCode;

use crate::backend::{BackendJob, DeviceSpec, TrainBackend, WeightDtype, dispatch};
use crate::cli::quant::QuantArgs;
use crate::error::user;
use crate::train::bench::{BenchResult, BenchSpec, run};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// small, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, gemma-3-270m or gemma-2-2b (random
    /// weights).
    #[arg(long, default_value = "small")]
    pub shape: String,
    #[arg(long, default_value_t = 1, value_parser = super::flags::positive)]
    pub batch: usize,
    #[arg(long, default_value_t = 512, value_parser = super::flags::positive)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 16, value_parser = super::flags::positive)]
    pub rank: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5, value_parser = super::flags::positive)]
    pub steps: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Frozen-weight precision: auto (f32 on CPU, bf16 on CUDA), f32 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: WeightDtype,
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Recompute each layer in the backward pass instead of keeping its activations.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// LoRA dropout probability on the adapters' inputs (as `lora.dropout`).
    #[arg(long, default_value_t = 0.0, value_parser = super::flags::probability)]
    pub dropout: f64,
    /// DoRA adapters instead of plain LoRA (as `lora.dora: true`).
    #[arg(long)]
    pub dora: bool,
    /// Sliding-window attention of this many keys in every layer (Mistral 7B v0.1: 4096).
    #[arg(long, value_parser = super::flags::positive)]
    pub sliding_window: Option<usize>,
    /// Also report the time per step spent in each CPU kernel (forward, backward, loss).
    #[arg(long)]
    pub profile: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

struct Job<'a>(&'a Args);

impl BackendJob for Job<'_> {
    type Output = anyhow::Result<BenchResult>;
    fn run<B: TrainBackend>(self, device: B::Device, on_gpu: bool) -> Self::Output {
        let a = self.0;
        let spec = BenchSpec {
            shape: a.shape.clone(),
            batch: a.batch,
            seq_len: a.seq_len,
            rank: a.rank,
            warmup: a.warmup,
            steps: a.steps,
            dtype: a.dtype.resolve(on_gpu),
            quantize: a.quant.spec()?,
            gradient_checkpointing: a.gradient_checkpointing,
            dropout: a.dropout,
            dora: a.dora,
            sliding_window: a.sliding_window,
            profile: a.profile,
        };
        run::<B>(&spec, &device, if on_gpu { "cuda" } else { "cpu" })
    }
}

pub fn run_cli(args: Args) -> anyhow::Result<ExitCode> {
    let r = dispatch(args.device, Job(&args)).map_err(user)??;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} {} {}x{} r={} quantize={} dropout={} checkpointing={}{}: median {:.3} s/step, {:.0} tokens/s, peak RSS {:.2} GB (estimate {:.2} GB), RSS after warm-up {:.2} GB -> end {:.2} GB",
            r.shape,
            r.device,
            r.batch,
            r.seq_len,
            r.rank,
            r.quantize,
            r.dropout,
            r.gradient_checkpointing,
            r.sliding_window
                .map_or(String::new(), |w| format!(" window={w}")),
            r.median_step_s,
            r.tokens_per_s,
            r.peak_rss_bytes as f64 / 1e9,
            r.estimated_peak_bytes as f64 / 1e9,
            r.rss_after_warmup_bytes as f64 / 1e9,
            r.rss_end_bytes as f64 / 1e9
        );
        print_profile(&r);
    }
    Ok(ExitCode::SUCCESS)
}

/// The kernel table of `--profile`, with the remainder (autodiff bookkeeping, optimizer,
/// allocation) as its last row.
fn print_profile(r: &BenchResult) {
    if r.profile.is_empty() {
        return;
    }
    // The kernel totals are means over the timed steps, so the remainder is taken from the
    // mean step time too.
    let step_ms = 1e3 * r.step_times_s.iter().sum::<f64>() / r.step_times_s.len().max(1) as f64;
    let mut listed = 0.0;
    for p in &r.profile {
        let indent = if p.nested {
            "  "
        } else {
            listed += p.ms_per_step;
            ""
        };
        println!(
            "  {:<28} {:>9.1} ms/step {:>5.1}%  ({} calls)",
            format!("{indent}{}", p.region),
            p.ms_per_step,
            100.0 * p.ms_per_step / step_ms,
            p.calls_per_step.round()
        );
    }
    let other = step_ms - listed;
    println!(
        "  {:<28} {:>9.1} ms/step {:>5.1}%",
        "other",
        other,
        100.0 * other / step_ms
    );
}
