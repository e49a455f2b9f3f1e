//! `W += scaling * (B @ A)`: folding an adapter into its base to make an ordinary HF model
//! folder. Shards are streamed one at a time (peak memory about one tensor plus the adapter),
//! the base's shard layout and names are kept, untouched tensors are copied bit for bit, and
//! the result is written to a temporary sibling folder that is renamed into place only when
//! complete.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors, View};
use serde_json::{Value, json};

use super::error::LoraError;
use super::peft::{AdapterFiles, HostFactors};
use crate::backend::Cpu;
use crate::model::quant::{QuantSpec, dense};
use crate::model::weights::{INDEX_FILE, RawTensor, shard_paths};
use crate::model::{ModelConfig, ModelError};

/// Files copied from the base folder besides config and weights.
const COPIED_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
];

/// Output precision of merged weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputDtype {
    F32,
    Bf16,
    F16,
}

impl std::str::FromStr for OutputDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(OutputDtype::F32),
            "bf16" | "bfloat16" => Ok(OutputDtype::Bf16),
            "f16" | "float16" => Ok(OutputDtype::F16),
            other => Err(format!(
                "unknown dtype '{other}' (expected f32, bf16 or f16)"
            )),
        }
    }
}

impl OutputDtype {
    fn st(self) -> StDtype {
        match self {
            OutputDtype::F32 => StDtype::F32,
            OutputDtype::Bf16 => StDtype::BF16,
            OutputDtype::F16 => StDtype::F16,
        }
    }

    /// The name transformers writes in `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            OutputDtype::F32 => "float32",
            OutputDtype::Bf16 => "bfloat16",
            OutputDtype::F16 => "float16",
        }
    }

    fn from_st(d: StDtype) -> Option<Self> {
        match d {
            StDtype::F32 => Some(OutputDtype::F32),
            StDtype::BF16 => Some(OutputDtype::Bf16),
            StDtype::F16 => Some(OutputDtype::F16),
            _ => None,
        }
    }
}

/// What a merge wrote.
#[derive(Debug, Clone)]
pub struct MergeReport {
    pub out_dir: PathBuf,
    pub merged_tensors: usize,
    pub copied_tensors: usize,
    pub shards: usize,
    pub total_size: u64,
}

/// A tensor of the output shard: either the base bytes as they are, or computed on write.
struct OutTensor<'a> {
    dtype: StDtype,
    shape: Vec<usize>,
    source: Source<'a>,
}

enum Source<'a> {
    Bytes(&'a [u8]),
    Convert(RawTensor<'a>),
    /// A decoder projection: plus its adapter's delta (if any), after a quantization round trip
    /// (when merging into the dequantized weights a QLoRA adapter was trained on).
    Merge(RawTensor<'a>, Option<&'a HostFactors>, Option<QuantSpec>),
}

impl View for &OutTensor<'_> {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match &self.source {
            Source::Bytes(b) => Cow::Borrowed(b),
            // Errors were ruled out before writing (dtypes validated), so these only encode.
            Source::Convert(raw) => {
                Cow::Owned(encode(&raw.to_f32().unwrap_or_default(), self.dtype))
            }
            Source::Merge(raw, f, q) => {
                Cow::Owned(encode(&projection_weight(raw, *f, q.as_ref()), self.dtype))
            }
        }
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// What a tensor with NaN or infinite values is told (base or adapter, merge or load).
pub fn non_finite_message(name: &str, count: usize, first: usize) -> String {
    format!(
        "tensor {name} holds {count} NaN or infinite value(s) (the first at flat index {first}); \
         the file is damaged or was saved after training diverged: use another checkpoint"
    )
}

/// `Q(W) + scaling * B @ A` in f32, where `Q` is the quantization round trip of `quant` (the
/// identity without one) and the delta is left out without an adapter. With DoRA's magnitude
/// `m` each row is rescaled to it, `m / ||Q(W) + s B A||_row * (Q(W) + s B A)`, as PEFT's
/// merge does.
pub fn projection_weight(
    raw: &RawTensor<'_>,
    f: Option<&HostFactors>,
    quant: Option<&QuantSpec>,
) -> Vec<f32> {
    let w = raw.to_f32().unwrap_or_default();
    let device = Default::default();
    let shape = [raw.shape[0], raw.shape.get(1).copied().unwrap_or(1)];
    let mut w = Tensor::<Cpu, 2>::from_data(TensorData::new(w, shape), &device);
    if let Some(q) = quant {
        w = dense(w.quantize_dynamic(&q.scheme()), DType::F32);
    }
    let Some(f) = f else {
        return w.into_data().to_vec::<f32>().unwrap_or_default();
    };
    let a =
        Tensor::<Cpu, 2>::from_data(TensorData::new(f.a.clone(), [f.r, f.in_features]), &device);
    let b =
        Tensor::<Cpu, 2>::from_data(TensorData::new(f.b.clone(), [f.out_features, f.r]), &device);
    let merged = w + b.matmul(a).mul_scalar(f.scaling);
    let merged = match &f.magnitude {
        Some(m) => {
            let m = Tensor::<Cpu, 2>::from_data(
                TensorData::new(m.clone(), [f.out_features, 1]),
                &device,
            );
            let norm = merged.clone().powi_scalar(2).sum_dim(1).sqrt();
            merged * (m / norm)
        }
        None => merged,
    };
    merged.into_data().to_vec::<f32>().unwrap_or_default()
}

/// f32 values to little-endian bytes of `dtype` (round-to-nearest-even, as torch casts).
pub fn encode(values: &[f32], dtype: StDtype) -> Vec<u8> {
    match dtype {
        StDtype::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        StDtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

pub struct MergeRequest<'a> {
    pub base_dir: &'a Path,
    pub config: &'a ModelConfig,
    pub adapter: &'a AdapterFiles,
    pub out_dir: &'a Path,
    pub dtype: Option<OutputDtype>,
    pub force: bool,
    /// Merge into the quantization round trip of the base projections (what a QLoRA adapter
    /// was trained on) instead of the original full-precision weights.
    pub dequantized: Option<QuantSpec>,
    /// Asked between shards: true abandons the merge (nothing is left behind).
    pub cancel: Option<&'a dyn Fn() -> bool>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LoraError + '_ {
    move |source| LoraError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Check `--out` before any work: refuse a non-empty folder unless forced.
pub fn check_output(out_dir: &Path, force: bool) -> Result<(), LoraError> {
    if out_dir.exists() {
        if !out_dir.is_dir() {
            return Err(LoraError::Output {
                path: out_dir.to_path_buf(),
                message: "exists and is not a folder".into(),
            });
        }
        let non_empty = std::fs::read_dir(out_dir)
            .map_err(io(out_dir))?
            .next()
            .is_some();
        if non_empty && !force {
            return Err(LoraError::Output {
                path: out_dir.to_path_buf(),
                message: "is not empty; choose another --out or pass --force to replace it".into(),
            });
        }
    }
    Ok(())
}

pub fn merge(req: &MergeRequest<'_>) -> Result<MergeReport, LoraError> {
    check_output(req.out_dir, req.force)?;
    let model_err = |e: ModelError| LoraError::BadAdapter {
        path: req.base_dir.to_path_buf(),
        message: e.to_string(),
    };
    let shards = shard_paths(req.base_dir).map_err(model_err)?;
    let parent = req
        .out_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = req
        .out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "merged".into());
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = write_all(req, &shards, &tmp);
    match result {
        Ok(mut report) => {
            if req.out_dir.exists() {
                std::fs::remove_dir_all(req.out_dir).map_err(io(req.out_dir))?;
            }
            std::fs::rename(&tmp, req.out_dir).map_err(io(req.out_dir))?;
            sync_dir(parent);
            report.out_dir = req.out_dir.to_path_buf();
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

fn write_all(
    req: &MergeRequest<'_>,
    shards: &[PathBuf],
    tmp: &Path,
) -> Result<MergeReport, LoraError> {
    let mut report = MergeReport {
        out_dir: tmp.to_path_buf(),
        merged_tensors: 0,
        copied_tensors: 0,
        shards: shards.len(),
        total_size: 0,
    };
    let mut weight_map: BTreeMap<String, String> = BTreeMap::new();
    let mut factors_by_name: HashMap<String, &HostFactors> = HashMap::new();
    for ((layer, module), f) in &req.adapter.factors {
        factors_by_name.insert(
            format!("{}.weight", super::settings::module_name(*layer, module)),
            f,
        );
    }
    let mut seen_dtype: Option<StDtype> = None;
    for shard in shards {
        if req.cancel.is_some_and(|stop| stop()) {
            return Err(LoraError::Cancelled);
        }
        let file = File::open(shard).map_err(io(shard))?;
        // SAFETY: read-only mapping of a base model file that this process does not modify.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io(shard))?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| LoraError::BadAdapter {
            path: shard.clone(),
            message: format!("not a valid safetensors file ({e})"),
        })?;
        let mut out: Vec<(String, OutTensor<'_>)> = Vec::new();
        for (tname, view) in st.tensors() {
            let stored = view.dtype();
            let stored_out = OutputDtype::from_st(stored).ok_or_else(|| LoraError::BadAdapter {
                path: shard.clone(),
                message: format!(
                    "tensor {tname} has dtype {stored:?}; merge supports F32, BF16, F16"
                ),
            })?;
            seen_dtype.get_or_insert(stored);
            let dtype = req.dtype.unwrap_or(stored_out).st();
            let raw = RawTensor {
                dtype: stored,
                shape: view.shape().to_vec(),
                bytes: view.data(),
            };
            if let Some((count, first)) = raw.non_finite() {
                return Err(LoraError::BadAdapter {
                    path: shard.clone(),
                    message: non_finite_message(&tname, count, first),
                });
            }
            let source = match factors_by_name.remove(&tname) {
                Some(f) => {
                    if raw.shape != [f.out_features, f.in_features] {
                        return Err(LoraError::TensorMismatch {
                            path: shard.clone(),
                            problems: vec![format!(
                                "base tensor {tname} has shape {:?}, the adapter expects [{}, {}]",
                                raw.shape, f.out_features, f.in_features
                            )],
                        });
                    }
                    report.merged_tensors += 1;
                    Source::Merge(raw, Some(f), req.dequantized)
                }
                None if req.dequantized.is_some() && is_projection(&tname) => {
                    Source::Merge(raw, None, req.dequantized)
                }
                None => {
                    report.copied_tensors += 1;
                    if dtype == stored {
                        Source::Bytes(view.data())
                    } else {
                        Source::Convert(raw)
                    }
                }
            };
            let shape = view.shape().to_vec();
            report.total_size += (shape.iter().product::<usize>() * dtype.bitsize() / 8) as u64;
            out.push((
                tname,
                OutTensor {
                    dtype,
                    shape,
                    source,
                },
            ));
        }
        let fname = shard
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (tname, _) in &out {
            weight_map.insert(tname.clone(), fname.clone());
        }
        let target = tmp.join(&fname);
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(
            out.iter().map(|(n, t)| (n.clone(), t)),
            Some(metadata),
            &target,
        )
        .map_err(|e| LoraError::Output {
            path: target.clone(),
            message: e.to_string(),
        })?;
        File::open(&target)
            .and_then(|f| f.sync_all())
            .map_err(io(&target))?;
    }
    if let Some(name) = factors_by_name.keys().next() {
        return Err(LoraError::TensorMismatch {
            path: req.base_dir.to_path_buf(),
            problems: vec![format!(
                "the base model has no tensor {name} for the adapter to merge into"
            )],
        });
    }
    if shards.len() > 1 || req.base_dir.join(INDEX_FILE).is_file() {
        let index = json!({
            "metadata": {"total_size": report.total_size},
            "weight_map": weight_map,
        });
        let path = tmp.join(INDEX_FILE);
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&index).unwrap_or_default() + "\n",
        )
        .map_err(io(&path))?;
    }
    write_config(req, seen_dtype, tmp)?;
    for f in COPIED_FILES {
        let src = req.base_dir.join(f);
        if src.is_file() {
            let dst = tmp.join(f);
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    sync_dir(tmp);
    Ok(report)
}

/// `config.json` of the base with the dtype fields describing the output.
fn write_config(
    req: &MergeRequest<'_>,
    stored: Option<StDtype>,
    tmp: &Path,
) -> Result<(), LoraError> {
    let src = req.base_dir.join("config.json");
    let text = std::fs::read_to_string(&src).map_err(io(&src))?;
    let mut cfg: Value = serde_json::from_str(&text).map_err(|e| LoraError::BadAdapter {
        path: src.clone(),
        message: e.to_string(),
    })?;
    let out_dtype = req.dtype.or_else(|| stored.and_then(OutputDtype::from_st));
    if let (Some(d), Some(obj)) = (out_dtype, cfg.as_object_mut()) {
        let name = json!(d.torch_name());
        let mut wrote = false;
        for key in ["torch_dtype", "dtype"] {
            if obj.contains_key(key) {
                obj.insert(key.into(), name.clone());
                wrote = true;
            }
        }
        if !wrote {
            obj.insert("torch_dtype".into(), name);
        }
    }
    let dst = tmp.join("config.json");
    std::fs::write(
        &dst,
        serde_json::to_string_pretty(&cfg).unwrap_or_default() + "\n",
    )
    .map_err(io(&dst))
}

/// Dtype of the merged folder's weights (for `--verify` tolerances).
/// `model.layers.{i}.{self_attn|mlp}.{x}_proj.weight`: what QLoRA quantizes.
fn is_projection(name: &str) -> bool {
    name.starts_with("model.layers.")
        && name
            .strip_suffix(".weight")
            .and_then(|n| n.rsplit('.').next())
            .is_some_and(|m| crate::model::params::LINEAR_MODULES.contains(&m))
}

pub fn dtype_of(d: OutputDtype) -> DType {
    match d {
        OutputDtype::F32 => DType::F32,
        OutputDtype::Bf16 => DType::BF16,
        OutputDtype::F16 => DType::F16,
    }
}
