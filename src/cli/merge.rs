//! `burnish merge --adapter <DIR> [--base <MODEL>] --out <DIR>`: fold an adapter into its base
//! and write a normal Hugging Face model folder.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use burn::tensor::DType;

use crate::backend::Cpu;
use crate::error::user;
use crate::lora::merge::{MergeRequest, OutputDtype, check_output, merge};
use crate::lora::peft::read_adapter;
use crate::model::quant::QuantSpec;
use crate::model::{HostBatch, ModelFolder};
use crate::train::checkpoint::STATE_FILE;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Base model folder; defaults to the adapter's base_model_name_or_path.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Output folder (written to a temporary sibling, renamed when complete).
    #[arg(long)]
    pub out: PathBuf,
    /// Output precision: f32, bf16 or f16 (default: the base's own).
    #[arg(long)]
    pub dtype: Option<OutputDtype>,
    /// Replace a non-empty --out.
    #[arg(long)]
    pub force: bool,
    /// After writing, compare logits of base+adapter with the merged folder.
    #[arg(long)]
    pub verify: bool,
    /// For a QLoRA adapter: merge into the `original` full-precision base weights (default, as
    /// unsloth and axolotl do) or into their `dequantized` quantization round trip, the
    /// weights the adapter was trained against.
    #[arg(long, value_enum, default_value = "original")]
    pub merge_into: MergeInto,
    /// Bits of that quantization (4 or 8) for `--merge-into dequantized`; read from the
    /// adapter's run (`burnish_run.json` or the checkpoint state) when not given.
    #[arg(long)]
    pub quant_bits: Option<u8>,
    /// Block size of that quantization (default 64 or the run's).
    #[arg(long)]
    pub quant_block_size: Option<usize>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeInto {
    Original,
    Dequantized,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    check_output(&args.out, args.force)?;
    let base_dir = match &args.base {
        Some(b) => b.clone(),
        None => base_from_adapter(&args.adapter)?,
    };
    let base_dir = crate::hub::resolve_model(&base_dir.to_string_lossy())?;
    let folder = ModelFolder::open(&base_dir)
        .with_context(|| format!("opening base model {}", base_dir.display()))?;
    let adapter = read_adapter(&args.adapter, &folder.config)
        .with_context(|| format!("reading adapter {}", args.adapter.display()))?;
    let dequantized = match args.merge_into {
        MergeInto::Original => None,
        MergeInto::Dequantized => Some(quant_of(&args)?),
    };
    let report = merge(&MergeRequest {
        cancel: None,
        base_dir: &base_dir,
        config: &folder.config,
        adapter: &adapter,
        out_dir: &args.out,
        dtype: args.dtype,
        force: args.force,
        dequantized,
    })?;
    tracing::info!(
        "merged {} projections ({} tensors copied) into {} ({} shard{}, {} bytes of weights)",
        report.merged_tensors,
        report.copied_tensors,
        report.out_dir.display(),
        report.shards,
        if report.shards == 1 { "" } else { "s" },
        report.total_size
    );
    // A model card, unless the folder already has one (the base's own README is not copied).
    let card = crate::hub::card::CardInfo {
        kind: crate::hub::card::CardKind::Merged,
        base_model: adapter
            .base_model
            .clone()
            .unwrap_or_else(|| base_dir.display().to_string()),
        license: crate::hub::card::license_of(&base_dir),
        datasets: vec![],
        summary: None,
        gguf: vec![],
        dora: adapter.settings.dora,
    };
    crate::hub::card::ensure(&args.out, &card)?;
    if args.verify {
        verify(&base_dir, &args.adapter, &args.out, dequantized.as_ref())?;
    }
    println!("{}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn base_from_adapter(adapter: &Path) -> anyhow::Result<PathBuf> {
    let path = adapter.join(crate::lora::peft::CONFIG_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    cfg.get("base_model_name_or_path")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            user(format!(
                "{} names no base_model_name_or_path; pass --base",
                path.display()
            ))
        })
}

/// Logits of base + adapter against the merged folder on a fixed token sequence, both computed
/// in f32 so the difference is only the merged weights' rounding to their stored dtype.
/// `quant`: the base+adapter side runs on the quantized base (a `--merge-into dequantized`
/// merge must equal exactly that).
fn verify(
    base_dir: &Path,
    adapter: &Path,
    merged: &Path,
    quant: Option<&QuantSpec>,
) -> anyhow::Result<()> {
    let device = Default::default();
    let base = ModelFolder::open(base_dir)?;
    let mut with_adapter = base.load_quantized::<Cpu>(DType::F32, quant, &device)?;
    crate::lora::apply_adapter(&mut with_adapter, adapter, false)?;
    let merged_folder = ModelFolder::open(merged)?;
    let merged_model = merged_folder.load::<Cpu>(DType::F32, &device)?;
    let vocab = base.config.vocab_size as u32;
    let ids: Vec<u32> = (0..16u32).map(|i| (i * 7919 + 11) % vocab).collect();
    let batch = HostBatch::from_rows(&[ids], 0);
    let host = |t: burn::tensor::Tensor<Cpu, 3>, what: &str| -> anyhow::Result<Vec<f32>> {
        let v = t
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("verify: reading the {what} logits: {e:?}"))?;
        if v.is_empty() {
            anyhow::bail!("verify: the {what} model produced no logits");
        }
        // f32::max skips NaN, so the largest difference below would not see them.
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            anyhow::bail!("verify: the {what} model produced a non-finite logit ({bad})");
        }
        Ok(v)
    };
    let a = host(with_adapter.logits(&batch), "base + adapter")?;
    let b = host(merged_model.logits(&batch), "merged")?;
    if a.len() != b.len() {
        anyhow::bail!(
            "verify: base + adapter gave {} logits, the merged model {}; the merged folder does not match the base",
            a.len(),
            b.len()
        );
    }
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let scale = a.iter().map(|x| x.abs()).fold(1.0f32, f32::max);
    let dtype = crate::model::weights::WeightFiles::open(merged)?
        .dominant_dtype()
        .map(|d| format!("{d:?}"))
        .unwrap_or_default();
    // Relative to the largest logit: f32 weights only differ by summation order; bf16/f16 weights
    // carry one rounding each (2^-9 / 2^-12 relative), which a forward pass accumulates.
    let tolerance = match dtype.as_str() {
        "BF16" => 0.03,
        "F16" => 0.005,
        _ => 1e-4,
    } * scale;
    println!(
        "verify: max |logit difference| = {diff:.3e} (tolerance {tolerance:.1e}, weights {dtype})"
    );
    if !diff.is_finite() || diff > tolerance {
        anyhow::bail!(
            "merged model differs from base + adapter by {diff} (> {tolerance}); the merge is wrong"
        );
    }
    Ok(())
}

/// The quantization a QLoRA adapter was trained with: from the flags, else from the
/// `trainer_state.json` of the adapter's checkpoint (or of its run's newest checkpoint).
fn quant_of(args: &Args) -> anyhow::Result<QuantSpec> {
    let spec = match args.quant_bits {
        Some(bits) => QuantSpec {
            bits,
            block_size: args
                .quant_block_size
                .unwrap_or(QuantSpec::default().block_size),
        },
        None => {
            let mut states = vec![args.adapter.join(STATE_FILE)];
            if let Some(run) = args.adapter.parent() {
                let mut steps: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
                    .map(|d| d.flatten().map(|e| e.path().join(STATE_FILE)).collect())
                    .unwrap_or_default();
                steps.sort();
                states.extend(steps.into_iter().rev());
            }
            let found = states.iter().filter(|p| p.is_file()).find_map(|p| {
                let text = std::fs::read_to_string(p).ok()?;
                let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                serde_json::from_value::<QuantSpec>(v["fingerprint"]["model.quantize"].clone()).ok()
            });
            let Some(mut spec) = found else {
                return Err(user(format!(
                    "--merge-into dequantized: {} records no quantization (no {STATE_FILE} with \
                     model.quantize next to it); pass --quant-bits 4|8 [--quant-block-size N]",
                    args.adapter.display()
                )));
            };
            if let Some(b) = args.quant_block_size {
                spec.block_size = b;
            }
            spec
        }
    };
    if let Some(problem) = spec.problem() {
        return Err(user(format!("--merge-into dequantized: {problem}")));
    }
    Ok(spec)
}
