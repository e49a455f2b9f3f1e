//! Export to GGUF, the single-file format of llama.cpp, Ollama and LM Studio: a merged model
//! folder (or a base plus a LoRA adapter, merged tensor by tensor in memory) becomes one `.gguf`
//! with llama.cpp's architecture names, hyperparameters, tokenizer and tensor names, its Q/K
//! permutation for the `llama` architecture, and llama.cpp's quantization types and per-tensor
//! type rules.
//!
//! Tensors are streamed: the header (with every tensor's offset, known from its shape and
//! type) is written first, then each tensor is read, merged, permuted, quantized across the
//! rayon pool and written before the next is read, so memory stays near one tensor. The file is
//! written beside its destination and renamed into place only when complete.

pub mod error;
pub mod gguf;
pub mod metadata;
pub mod names;
pub mod policy;
pub mod quant;
pub mod spm;
pub mod types;
pub mod vocab;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use error::ExportError;
use gguf::{GgufWriter, TensorInfo};
pub use types::{EXPORT_TYPES, ExportType, GgmlType};

use crate::lora::merge::projection_weight;
use crate::lora::peft::{AdapterFiles, HostFactors};
use crate::model::{ModelConfig, ModelFolder, WeightFiles};

/// One export.
pub struct ExportRequest<'a> {
    /// A Hugging Face model folder: a merged model, or the base when `adapter` is given.
    pub model_dir: &'a Path,
    /// Folded into the base projections while exporting (`W + scaling * B @ A`, in f32).
    pub adapter: Option<&'a AdapterFiles>,
    pub out: &'a Path,
    pub ty: ExportType,
    /// `general.name`.
    pub name: &'a str,
    /// Replace an existing file.
    pub force: bool,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub tensors: usize,
    /// How many tensors got each ggml type.
    pub types: BTreeMap<&'static str, usize>,
    pub seconds: f64,
}

/// A tensor of the output: where its values come from and how it is stored.
struct Planned {
    /// The Hugging Face tensor, or None for `rope_freqs.weight` (computed).
    hf: Option<String>,
    info: TensorInfo,
    /// Q/K rows permuted for llama.cpp's `llama` rotation, over this many heads.
    permute_heads: Option<usize>,
}

/// Refuse an unusable output path before any work is done.
pub fn check_output(out: &Path, force: bool) -> Result<(), ExportError> {
    let problem = if out.is_dir() {
        Some("is a folder; give the file to write, such as model-Q4_K_M.gguf".to_string())
    } else if out.file_name().is_none() {
        Some("is not a file path".to_string())
    } else if out.exists() && !force {
        Some("exists; choose another path or pass --force to replace it".to_string())
    } else {
        None
    };
    match problem {
        Some(message) => Err(ExportError::Output {
            path: out.to_path_buf(),
            message,
        }),
        None => Ok(()),
    }
}

/// The tensors of the file, in order, with their types.
fn plan(config: &ModelConfig, ty: ExportType) -> Result<Vec<Planned>, ExportError> {
    let mut out = Vec::new();
    if let Some(f) = metadata::rope_freq_factors(config) {
        out.push(Planned {
            hf: None,
            info: TensorInfo {
                name: "rope_freqs.weight".into(),
                dims: vec![f.len() as u64],
                ty: GgmlType::F32,
            },
            permute_heads: None,
        });
    }
    let permute = names::permutes_qk(config.architecture);
    for spec in config.expected_tensors() {
        let name = names::gguf_name(&spec.name, config.architecture).ok_or_else(|| {
            ExportError::Unsupported {
                what: format!("tensor {}", spec.name),
                why: "it has no llama.cpp name".into(),
            }
        })?;
        let cols = spec.shape.last().copied().unwrap_or(1);
        let kind = policy::TensorKind {
            name: &name,
            n_dims: spec.shape.len(),
            cols,
            layer: names::layer_of(&name),
        };
        let tensor_ty =
            policy::tensor_type(ty, &kind, config.num_layers, config.tie_word_embeddings);
        let permute_heads = match spec.name.rsplit('.').nth(1) {
            Some("q_proj") if permute => Some(config.num_heads),
            Some("k_proj") if permute => Some(config.num_kv_heads),
            _ => None,
        };
        out.push(Planned {
            hf: Some(spec.name),
            info: TensorInfo {
                name,
                dims: spec.shape.iter().rev().map(|&d| d as u64).collect(),
                ty: tensor_ty,
            },
            permute_heads,
        });
    }
    Ok(out)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write the GGUF file `req` describes.
pub fn export(req: &ExportRequest<'_>) -> Result<ExportReport, ExportError> {
    check_output(req.out, req.force)?;
    let start = Instant::now();
    let folder = ModelFolder::open(req.model_dir)?;
    let config = &folder.config;
    metadata::check_llama_cpp_can_run(config)?;
    let files = folder.weights()?;
    files.validate(config)?;
    let tokenizer = vocab::tokenizer_keys(req.model_dir, config)?;
    let planned = plan(config, req.ty)?;
    let factors = adapter_factors(req, &files)?;
    let license = crate::hub::card::license_of(req.model_dir);
    let info = metadata::Describe {
        name: req.name,
        license: license.as_deref(),
        parameters: planned.iter().map(|p| p.info.n_values()).sum(),
    };
    let mut kv = metadata::model_keys(config, req.ty, &info)?;
    kv.extend(tokenizer);

    let parent = req
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let file_name = req
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{file_name}.partial-{}", std::process::id()));
    let written = write_file(&tmp, &kv, &planned, &files, &factors, config);
    let bytes = match written {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, req.out).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(req.out)(e)
    })?;
    let mut types = BTreeMap::new();
    for p in &planned {
        *types.entry(p.info.ty.name()).or_insert(0) += 1;
    }
    Ok(ExportReport {
        path: req.out.to_path_buf(),
        bytes,
        tensors: planned.len(),
        types,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The adapter's factors by base tensor name, checked against the base before anything is
/// written.
fn adapter_factors<'a>(
    req: &ExportRequest<'a>,
    files: &WeightFiles,
) -> Result<HashMap<String, &'a HostFactors>, ExportError> {
    let mut out = HashMap::new();
    let Some(adapter) = req.adapter else {
        return Ok(out);
    };
    let mut problems = Vec::new();
    for ((layer, module), f) in &adapter.factors {
        let name = format!(
            "{}.weight",
            crate::lora::settings::module_name(*layer, module)
        );
        match files.shape(&name) {
            Some(s) if s == [f.out_features, f.in_features] => {
                out.insert(name, f);
            }
            Some(s) => problems.push(format!(
                "base tensor {name} has shape {s:?}, the adapter expects [{}, {}]",
                f.out_features, f.in_features
            )),
            None => problems.push(format!("the base model has no tensor {name}")),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(crate::lora::LoraError::TensorMismatch {
            path: adapter.dir.clone(),
            problems,
        }
        .into())
    }
}

/// The f32 values of one planned tensor, merged and permuted as it is stored.
fn tensor_values(
    p: &Planned,
    files: &WeightFiles,
    factors: &HashMap<String, &HostFactors>,
    config: &ModelConfig,
) -> Result<Vec<f32>, ExportError> {
    let Some(hf) = &p.hf else {
        return Ok(metadata::rope_freq_factors(config).unwrap_or_default());
    };
    let raw = files.raw(hf)?;
    let values = match factors.get(hf) {
        Some(f) => projection_weight(&raw, Some(f), None),
        None => to_f32(&raw).ok_or_else(|| crate::model::ModelError::UnsupportedDtype {
            path: files.dir.clone(),
            name: hf.clone(),
            dtype: format!("{:?}", raw.dtype),
        })?,
    };
    let mut values = match p.permute_heads {
        Some(heads) => {
            let rows = raw.shape[0];
            let cols = raw.shape.get(1).copied().unwrap_or(1);
            names::permute_rows(&values, rows, cols, heads)
        }
        None => values,
    };
    // Gemma's norms scale by `1 + w`; llama.cpp's graph multiplies by the stored weight, so the
    // converter stores `w + 1` (its `norm_shift`).
    if config.norm_weight_offset != 0.0 && hf.ends_with("norm.weight") {
        let shift = config.norm_weight_offset as f32;
        values.iter_mut().for_each(|v| *v += shift);
    }
    Ok(values)
}

/// A stored tensor widened to f32 in parallel (exact for f16 and bf16).
fn to_f32(raw: &crate::model::weights::RawTensor<'_>) -> Option<Vec<f32>> {
    use rayon::prelude::*;
    use safetensors::Dtype;
    let width = match raw.dtype {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        _ => return None,
    };
    let n = raw.bytes.len() / width;
    let mut out = vec![0.0f32; n];
    out.par_chunks_mut(1 << 16)
        .zip(raw.bytes.par_chunks(width << 16))
        .for_each(|(o, b)| {
            for (v, c) in o.iter_mut().zip(b.chunks_exact(width)) {
                *v = match raw.dtype {
                    Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    Dtype::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
                    _ => f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16),
                };
            }
        });
    Some(out)
}

fn write_file(
    path: &Path,
    kv: &[(String, gguf::Value)],
    planned: &[Planned],
    files: &WeightFiles,
    factors: &HashMap<String, &HostFactors>,
    config: &ModelConfig,
) -> Result<u64, ExportError> {
    let file = File::create(path).map_err(io(path))?;
    let mut w = GgufWriter::new(BufWriter::with_capacity(1 << 20, file));
    let infos: Vec<TensorInfo> = planned.iter().map(|p| p.info.clone()).collect();
    w.header(kv, &infos).map_err(io(path))?;
    let bar = crate::observe::progress::items(planned.len() as u64, "export");
    for p in planned {
        bar.set_message(format!("{} {}", p.info.name, p.info.ty));
        let values = tensor_values(p, files, factors, config)?;
        let cols = p.info.dims[0] as usize;
        let bytes = quant::encode(&values, cols, p.info.ty);
        debug_assert_eq!(bytes.len() as u64, p.info.n_bytes());
        w.tensor_data(&bytes).map_err(io(path))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let size = w.position();
    let mut out = w.into_inner();
    out.flush().map_err(io(path))?;
    out.get_ref().sync_all().map_err(io(path))?;
    Ok(size)
}

/// The GGUF files a recipe's `output.gguf` asks for, written from the run's merged folder into
/// it as `<run>-<TYPE>.gguf` (so pushing the folder publishes them).
pub fn write_run_files(
    merged: &Path,
    types: &[String],
    run_dir: &Path,
) -> Result<Vec<ExportReport>, ExportError> {
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let mut seen = Vec::new();
    let mut reports = Vec::new();
    for t in types {
        let ty: ExportType = t.parse().map_err(|why| ExportError::Unsupported {
            what: format!("output.gguf entry '{t}'"),
            why,
        })?;
        if seen.contains(&ty) {
            continue;
        }
        seen.push(ty);
        let out = merged.join(format!("{name}-{}.gguf", ty.label()));
        let report = export(&ExportRequest {
            model_dir: merged,
            adapter: None,
            out: &out,
            ty,
            name: &name,
            force: true,
        })?;
        tracing::info!(
            "GGUF written to {} ({}, {:.1}s)",
            report.path.display(),
            crate::observe::human_bytes(report.bytes),
            report.seconds
        );
        reports.push(report);
    }
    Ok(reports)
}
