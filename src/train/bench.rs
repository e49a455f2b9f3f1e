//! The benchmark harness: LoRA training steps (forward, backward, AdamW) on synthetic data at
//! fixed shapes, timed after warm-up. Reports the median step time, tokens/s, peak memory and
//! whether memory keeps growing after warm-up (a leak from autodiff graphs or caches would).

use crate::backend::TrainBackend;
use std::time::Instant;

use burn::tensor::DType;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use super::memory::{Device, Workload, estimate};
use super::optimizer::{AdamW, AdamWConfig};
use super::signals::StopFlag;
use super::step::{StepSettings, take_step};
use super::sync::SingleProcess;
use crate::data::PackedRow;
use crate::data::batch::TokenizedExample;
use crate::lora::attach::{attach, factor_shapes, init_factors};
use crate::lora::settings::trainable_parameters;
use crate::lora::{InitKind, LoraSettings, TargetSpec};
use crate::model::config::SlidingWindow;
use crate::model::kernels::profile;
use crate::model::load::RandomWeights;
use crate::model::loss::loss_chunk_rows;
use crate::model::quant::QuantSpec;
use crate::model::{Model, ModelConfig, load_for_training};

/// The shapes the harness knows.
pub fn shape_config(name: &str) -> Option<ModelConfig> {
    let json = match name {
        "small" => {
            json!({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 32000, "tie_word_embeddings": true, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0})
        }
        "qwen2.5-0.5b" => {
            json!({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": true, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0})
        }
        "qwen2.5-1.5b" => {
            json!({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
            "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": true, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0})
        }
        "qwen2.5-7b" => {
            json!({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": false, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0})
        }
        // google/gemma-3-270m's config.json: a 262k vocabulary, head_dim 256, one full-attention
        // layer in six, the others sliding over 512 keys.
        "gemma-3-270m" => {
            json!({"architectures": ["Gemma3ForCausalLM"], "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144, "tie_word_embeddings": true,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": 256,
            "sliding_window": 512, "sliding_window_pattern": 6, "max_position_embeddings": 32768})
        }
        // google/gemma-2-2b's config.json: a 256k vocabulary, head_dim 256, every other layer
        // sliding over 4,096 keys, attention soft-capped at 50 and logits at 30.
        "gemma-2-2b" => {
            json!({"architectures": ["Gemma2ForCausalLM"], "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 256000, "tie_word_embeddings": true,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "query_pre_attn_scalar": 256, "sliding_window": 4096,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "max_position_embeddings": 8192})
        }
        _ => return None,
    };
    ModelConfig::from_json(&json.to_string()).ok()
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub shape: String,
    pub device: String,
    pub dtype: String,
    pub batch: usize,
    pub seq_len: usize,
    pub rank: usize,
    /// `int4/64`-style, or `none`.
    pub quantize: String,
    pub gradient_checkpointing: bool,
    /// LoRA dropout probability.
    pub dropout: f64,
    /// DoRA adapters (`lora.dora`).
    pub dora: bool,
    /// Keys each query sees in every layer (`--sliding-window`); `None`: full causal attention.
    pub sliding_window: Option<usize>,
    pub steps: usize,
    pub median_step_s: f64,
    pub tokens_per_s: f64,
    pub step_times_s: Vec<f64>,
    /// Peak resident memory of the process (CPU).
    pub peak_rss_bytes: u64,
    /// `plan`'s estimate of the peak for this run (the same function, this shape and batch).
    pub estimated_peak_bytes: u64,
    /// Resident memory after warm-up and at the end: flat means no leak.
    pub rss_after_warmup_bytes: u64,
    pub rss_end_bytes: u64,
    pub loss_first: f64,
    pub loss_last: f64,
    /// Per-step time in each host kernel (`--profile`, CPU only), largest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<ProfileRow>,
}

/// One kernel's share of a timed step.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileRow {
    pub region: String,
    /// Part of the time of the row above it (not to be added to the total again).
    pub nested: bool,
    pub ms_per_step: f64,
    pub calls_per_step: f64,
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn peak_rss() -> u64 {
    status_kb("VmHWM:") * 1024
}

pub fn current_rss() -> u64 {
    status_kb("VmRSS:") * 1024
}

pub struct BenchSpec {
    pub shape: String,
    pub batch: usize,
    pub seq_len: usize,
    pub rank: usize,
    pub warmup: usize,
    pub steps: usize,
    pub dtype: DType,
    /// QLoRA: the projections quantized.
    pub quantize: Option<QuantSpec>,
    /// Recompute each layer in the backward pass instead of keeping its activations.
    pub gradient_checkpointing: bool,
    /// LoRA dropout probability.
    pub dropout: f64,
    /// DoRA adapters (`lora.dora`).
    pub dora: bool,
    /// Sliding-window attention of this width in every layer (as Mistral 7B v0.1's 4096).
    pub sliding_window: Option<usize>,
    /// Time each host kernel over the timed steps (see `kernels::profile`).
    pub profile: bool,
}

/// Run the benchmark on backend `B`.
pub fn run<B: TrainBackend>(
    spec: &BenchSpec,
    device: &B::Device,
    device_name: &str,
) -> anyhow::Result<BenchResult> {
    let mut config = shape_config(&spec.shape).ok_or_else(|| {
        crate::error::user(format!(
            "unknown shape '{}' (small, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-7b, gemma-3-270m, gemma-2-2b)",
            spec.shape
        ))
    })?;
    config.sliding_window = spec.sliding_window.map(|width| SlidingWindow {
        width,
        layers: vec![true; config.num_layers],
    });
    // The loader and the step are train's own; only the weights and the rows are synthetic.
    let source = RandomWeights { seed: 1, std: 0.02 };
    let net = load_for_training::<B>(&config, &source, spec.dtype, spec.quantize.as_ref(), device)?;
    let mut model = Model::new(net, config.clone(), spec.dtype, device.clone());
    model.net.gradient_checkpointing = spec.gradient_checkpointing;
    let settings = LoraSettings {
        r: spec.rank,
        alpha: 2.0 * spec.rank as f64,
        dropout: spec.dropout,
        targets: TargetSpec::One("all-linear".into()),
        init: InitKind::Default,
        dora: spec.dora,
        ..Default::default()
    };
    let targets = settings.resolve(&config)?;
    for t in &targets {
        let mut f = init_factors(t, InitKind::Default, 7);
        // Non-zero B so every factor gets a gradient from the first step.
        f.b.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = ((i % 7) as f32 - 3.0) * 1e-3);
        attach(&mut model.net, t, &f, spec.dropout, true, device);
    }
    let shapes = factor_shapes(&targets);
    let mut opt = AdamW::<B::InnerBackend>::new(
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        &shapes,
        device,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let rows: Vec<PackedRow> = (0..spec.batch)
        .map(|_| {
            let ids: Vec<u32> = (0..spec.seq_len)
                .map(|_| rng.random_range(0..config.vocab_size as u32))
                .collect();
            PackedRow::single(&TokenizedExample {
                labels: ids.iter().map(|&x| x as i64).collect(),
                ids,
            })
        })
        .collect();
    let micro_batch = vec![rows.iter().collect::<Vec<&PackedRow>>()];
    let step_settings = StepSettings {
        pad_id: 0,
        chunk: loss_chunk_rows(config.vocab_size),
        seed: 5,
        max_grad_norm: Some(1.0),
        seq_len: usize::MAX,
    };
    let stop = StopFlag::none();
    let mut times = Vec::new();
    let (mut loss_first, mut loss_last) = (f64::NAN, f64::NAN);
    let mut rss_after_warmup = 0;
    for step in 0..spec.warmup + spec.steps {
        if step == spec.warmup {
            rss_after_warmup = current_rss();
            profile::reset();
            profile::set_enabled(spec.profile);
        }
        let t = Instant::now();
        // The step reads its loss back from the device, so it is timed end to end.
        let r = take_step(
            &mut model,
            &targets,
            &mut opt,
            &micro_batch,
            step,
            1e-4,
            &step_settings,
            &mut SingleProcess,
            &stop,
        )?;
        let elapsed = t.elapsed().as_secs_f64();
        if step == 0 {
            loss_first = r.loss;
        }
        loss_last = r.loss;
        if step >= spec.warmup {
            times.push(elapsed);
        }
        tracing::info!("step {}: {:.3}s", step + 1, elapsed);
    }
    let estimated = estimate(&Workload {
        config: &config,
        device: if device_name == "cuda" {
            Device::Cuda
        } else {
            Device::Cpu
        },
        trainable: trainable_parameters(&targets),
        dtype_bytes: if spec.dtype == DType::F32 { 4 } else { 2 },
        micro_batch: spec.batch,
        seq_len: spec.seq_len,
        loss_chunk_rows: loss_chunk_rows(config.vocab_size),
        rank: spec.rank,
        quant: spec.quantize.as_ref(),
        dora: spec.dora,
        gradient_checkpointing: spec.gradient_checkpointing,
        threads: rayon::current_num_threads(),
    });
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    profile::set_enabled(false);
    let timed = spec.steps.max(1) as f64;
    let profile_rows = if spec.profile {
        profile_rows(timed)
    } else {
        Vec::new()
    };
    Ok(BenchResult {
        shape: spec.shape.clone(),
        device: device_name.into(),
        dtype: format!("{:?}", spec.dtype).to_lowercase(),
        batch: spec.batch,
        seq_len: spec.seq_len,
        quantize: spec.quantize.map_or_else(
            || "none".into(),
            |q| format!("int{}/{}", q.bits, q.block_size),
        ),
        gradient_checkpointing: spec.gradient_checkpointing,
        dropout: spec.dropout,
        dora: spec.dora,
        sliding_window: spec.sliding_window,
        rank: spec.rank,
        steps: spec.steps,
        median_step_s: median,
        tokens_per_s: (spec.batch * spec.seq_len) as f64 / median,
        step_times_s: times,
        peak_rss_bytes: peak_rss(),
        estimated_peak_bytes: estimated.total_bytes,
        rss_after_warmup_bytes: rss_after_warmup,
        rss_end_bytes: current_rss(),
        loss_first,
        loss_last,
        profile: profile_rows,
    })
}

/// The kernel totals per timed step, largest first, each nested region right after the one
/// it is part of.
fn profile_rows(timed: f64) -> Vec<ProfileRow> {
    let totals = profile::totals();
    let row = |r: profile::Region, secs: f64, calls: u64| ProfileRow {
        region: r.name().into(),
        nested: r.parent().is_some(),
        ms_per_step: secs * 1e3 / timed,
        calls_per_step: calls as f64 / timed,
    };
    let mut top: Vec<_> = totals.iter().filter(|t| t.0.parent().is_none()).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut rows = Vec::new();
    for &(r, secs, calls) in top {
        rows.push(row(r, secs, calls));
        for &(c, secs, calls) in totals.iter().filter(|t| t.0.parent() == Some(r)) {
            rows.push(row(c, secs, calls));
        }
    }
    rows
}
