//! Safetensors weights of a Hugging Face model folder: a single `model.safetensors` or shards
//! listed in `model.safetensors.index.json`. Files are memory-mapped and tensors are read one
//! at a time, so loading never holds a second copy of the model.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};
use serde::Deserialize;

use super::config::ModelConfig;
use super::error::ModelError;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Buffers that some checkpoints carry and transformers recomputes; never an error.
const IGNORED_SUFFIXES: &[&str] = &["rotary_emb.inv_freq"];

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The weight files of a model folder, memory-mapped.
pub struct WeightFiles {
    pub dir: PathBuf,
    shards: Vec<(PathBuf, Mmap)>,
    entries: BTreeMap<String, Entry>,
}

/// Where a tensor lives: shard index, dtype, shape and byte range in the mapped file.
struct Entry {
    shard: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// One tensor's raw bytes as stored, borrowed from the mapped file.
pub struct RawTensor<'a> {
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

/// The shard files a folder's weights live in, in order (without opening them).
pub fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index_path = dir.join(INDEX_FILE);
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|source| ModelError::Io {
            path: index_path.clone(),
            source,
        })?;
        let index: ShardIndex = serde_json::from_str(&text).map_err(|e| ModelError::BadIndex {
            path: index_path.clone(),
            reason: e.to_string(),
        })?;
        let mut names: Vec<&String> = index.weight_map.values().collect();
        names.sort();
        names.dedup();
        let mut paths = Vec::new();
        for name in names {
            if name.contains('/') || name.contains("..") {
                return Err(ModelError::BadIndex {
                    path: index_path.clone(),
                    reason: format!("shard name '{name}' is not a plain file name"),
                });
            }
            let path = dir.join(name);
            if !path.is_file() {
                return Err(ModelError::MissingShard {
                    index: index_path.clone(),
                    shard: name.clone(),
                });
            }
            paths.push(path);
        }
        return Ok(paths);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let hint = if dir.join("pytorch_model.bin").exists() || dir.join("model.bin").exists() {
        "; this folder has PyTorch .bin weights: convert them to safetensors (transformers: model.save_pretrained(dir, safe_serialization=True))".to_string()
    } else {
        String::new()
    };
    Err(ModelError::NoWeights {
        dir: dir.to_path_buf(),
        hint,
    })
}

impl WeightFiles {
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let mut shards = Vec::new();
        let mut entries = BTreeMap::new();
        for path in shard_paths(dir)? {
            let file = File::open(&path).map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the mapping is read-only; a concurrent writer to a model file would be a
            // user error that at worst yields wrong values, as it would for any reader.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
            let parsed =
                SafeTensors::deserialize(&mmap).map_err(|e| ModelError::BadSafetensors {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            for (name, view) in parsed.tensors() {
                let start = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
                let entry = Entry {
                    shard: shards.len(),
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    start,
                    end: start + view.data().len(),
                };
                entries.insert(name, entry);
            }
            drop(parsed);
            shards.push((path, mmap));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            entries,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The dtype most tensors are stored in (what `inspect` reports).
    pub fn dominant_dtype(&self) -> Option<StDtype> {
        let mut counts: HashMap<String, (usize, StDtype)> = HashMap::new();
        for e in self.entries.values() {
            let n: usize = e.shape.iter().product();
            let c = counts
                .entry(format!("{:?}", e.dtype))
                .or_insert((0, e.dtype));
            c.0 += n;
        }
        counts.into_values().max_by_key(|(n, _)| *n).map(|(_, d)| d)
    }

    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>, ModelError> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::WeightMismatch {
                dir: self.dir.clone(),
                problems: vec![format!("missing tensor {name}")],
            })?;
        Ok(RawTensor {
            dtype: e.dtype,
            shape: e.shape.clone(),
            bytes: &self.shards[e.shard].1[e.start..e.end],
        })
    }

    /// The shard file holding tensor `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.entries
            .get(name)
            .map(|e| self.shards[e.shard].0.as_path())
    }

    /// An error naming the tensor and its file when `raw` holds NaN or infinite values: a
    /// model with them trains to garbage without a visible failure.
    pub fn check_finite(&self, name: &str, raw: &RawTensor<'_>) -> Result<(), ModelError> {
        match raw.non_finite() {
            None => Ok(()),
            Some((count, first)) => Err(ModelError::NonFinite {
                path: self.file_of(name).unwrap_or(&self.dir).to_path_buf(),
                name: name.to_string(),
                count,
                first,
            }),
        }
    }

    /// Compare the files against what `config` expects; every problem is reported at once.
    pub fn validate(&self, config: &ModelConfig) -> Result<(), ModelError> {
        let mut problems = Vec::new();
        let expected = config.expected_tensors();
        for spec in &expected {
            match self.entries.get(&spec.name) {
                None => problems.push(format!(
                    "  missing tensor {} (expected shape {:?})",
                    spec.name, spec.shape
                )),
                Some(e) => {
                    if e.shape != spec.shape {
                        problems.push(format!(
                            "  tensor {} has shape {:?}, expected {:?} (in {})",
                            spec.name,
                            e.shape,
                            spec.shape,
                            self.shards[e.shard].0.display()
                        ));
                    }
                    if !matches!(e.dtype, StDtype::F32 | StDtype::BF16 | StDtype::F16) {
                        problems.push(format!(
                            "  tensor {} has dtype {:?}; supported: F32, BF16, F16",
                            spec.name, e.dtype
                        ));
                    }
                }
            }
        }
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|s| s.name.as_str()).collect();
        for name in self.entries.keys() {
            let tolerated = IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s))
                || (config.tie_word_embeddings && name == "lm_head.weight");
            if !known.contains(name.as_str()) && !tolerated {
                problems.push(format!("  unexpected tensor {name}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::WeightMismatch {
                dir: self.dir.clone(),
                problems,
            })
        }
    }

    /// One tensor's host data as `dtype` (F32 or BF16), checked to be finite.
    pub fn load_data(&self, name: &str, dtype: DType) -> Result<TensorData, ModelError> {
        let raw = self.raw(name)?;
        self.check_finite(name, &raw)?;
        raw.to_tensor_data(dtype)
            .map_err(|dtype| ModelError::UnsupportedDtype {
                path: self.dir.clone(),
                name: name.to_string(),
                dtype,
            })
    }

    /// Load one tensor onto `device` as `dtype` (F32 or BF16), converting on the host.
    pub fn load<B: Backend, const D: usize>(
        &self,
        name: &str,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Tensor<B, D>, ModelError> {
        Ok(Tensor::from_data(
            self.load_data(name, dtype)?,
            (device, dtype),
        ))
    }
}

impl RawTensor<'_> {
    /// How many stored values are NaN or infinite, and the flat index of the first one
    /// (`None` when all are finite). Read from the raw bits (an all-ones exponent), so no
    /// conversion is needed; chunks are scanned in parallel.
    pub fn non_finite(&self) -> Option<(usize, usize)> {
        use rayon::prelude::*;
        let (width, bad): (usize, fn(&[u8]) -> bool) = match self.dtype {
            StDtype::F32 => (4, |b| {
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
            }),
            StDtype::BF16 => (2, |b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
            StDtype::F16 => (2, |b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
            _ => return None,
        };
        const CHUNK: usize = 1 << 16;
        let per_chunk: Vec<(usize, Option<usize>)> = self
            .bytes
            .par_chunks(CHUNK * width)
            .enumerate()
            .map(|(c, bytes)| {
                let mut count = 0;
                let mut first = None;
                for (i, v) in bytes.chunks_exact(width).enumerate() {
                    if bad(v) {
                        count += 1;
                        first.get_or_insert(c * CHUNK + i);
                    }
                }
                (count, first)
            })
            .collect();
        let count: usize = per_chunk.iter().map(|(n, _)| n).sum();
        let first = per_chunk.iter().find_map(|(_, f)| *f)?;
        Some((count, first))
    }

    /// Host tensor data in `dtype` (F32, BF16 or F16); `Err(stored dtype)` if unsupported.
    pub fn to_tensor_data(&self, dtype: DType) -> Result<TensorData, String> {
        let stored = match self.dtype {
            StDtype::F32 => DType::F32,
            StDtype::BF16 => DType::BF16,
            StDtype::F16 => DType::F16,
            other => return Err(format!("{other:?}")),
        };
        let data = TensorData::from_bytes_vec(self.bytes.to_vec(), self.shape.clone(), stored);
        Ok(if stored == dtype {
            data
        } else {
            data.convert_dtype(dtype)
        })
    }

    /// The values as f32 (for merging and comparisons).
    pub fn to_f32(&self) -> Result<Vec<f32>, String> {
        let data = self.to_tensor_data(DType::F32)?;
        data.into_vec::<f32>().map_err(|e| format!("{e:?}"))
    }
}
