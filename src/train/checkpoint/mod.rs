//! Step checkpoints: `<output.dir>/checkpoints/step-000120/` with the adapter (PEFT format),
//! `optimizer.safetensors` (both AdamW moments under the PEFT tensor names, plus the step
//! count) and `trainer_state.json`. Written to a temporary folder, fsynced, then renamed, so a
//! crash at any moment leaves either the old set or the new one; a folder that fails its checks
//! is skipped with a warning, never loaded.

pub mod output;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::optimizer::{NamedMoments, OptimizerState};
use super::state::TrainerState;
use crate::lora::peft::{self, CONFIG_FILE, WEIGHTS_FILE};
use crate::model::safetensors_out::{F32Tensor, write_f32};

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";
const PREFIX: &str = "step-";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is unusable: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("output.dir {path} {message}")]
    OutputDir { path: PathBuf, message: String },
}

impl CheckpointError {
    /// A damaged checkpoint is the user's to fix; failing to write one (disk full) is not.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            CheckpointError::Invalid { .. } | CheckpointError::OutputDir { .. }
        )
    }
}

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn checkpoints_dir(output: &Path) -> PathBuf {
    output.join("checkpoints")
}

pub fn step_dir(output: &Path, step: usize) -> PathBuf {
    checkpoints_dir(output).join(format!("{PREFIX}{step:06}"))
}

pub fn sha256_file(path: &Path) -> Result<String, CheckpointError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

pub(crate) fn fsync(path: &Path) -> Result<(), CheckpointError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

/// What goes into a checkpoint besides the trainer state.
pub struct CheckpointContents<'a> {
    /// Writes the adapter files into the given folder.
    pub write_adapter: &'a dyn Fn(&Path) -> Result<(), String>,
    pub optimizer: &'a OptimizerState,
}

/// Write `step-NNNNNN` atomically and prune old checkpoints beyond `keep_last`, except the
/// one holding the best evaluation (`state.best_step`).
pub fn save(
    output: &Path,
    mut state: TrainerState,
    contents: &CheckpointContents<'_>,
    keep_last: usize,
) -> Result<PathBuf, CheckpointError> {
    let root = checkpoints_dir(output);
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let final_dir = step_dir(output, state.global_step);
    let tmp = root.join(format!(
        ".{PREFIX}{:06}.partial-{}",
        state.global_step,
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    (contents.write_adapter)(&tmp).map_err(|reason| CheckpointError::Invalid {
        path: tmp.clone(),
        reason,
    })?;
    write_optimizer(&tmp.join(OPTIMIZER_FILE), contents.optimizer)?;
    state.files.clear();
    for name in [CONFIG_FILE, WEIGHTS_FILE, OPTIMIZER_FILE] {
        let p = tmp.join(name);
        fsync(&p)?;
        state.files.insert(name.to_string(), sha256_file(&p)?);
    }
    let state_path = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(&state).unwrap_or_default();
    std::fs::write(&state_path, text + "\n").map_err(io(&state_path))?;
    fsync(&state_path)?;
    fsync(&tmp)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    fsync(&root)?;
    prune(output, keep_last, state.best_step);
    Ok(final_dir)
}

/// Steps of every `step-N` folder (complete or not), ascending.
fn listed(output: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(checkpoints_dir(output)) else {
        return Vec::new();
    };
    let mut out: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix(PREFIX)?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// A checkpoint that passed its checks.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainerState,
}

/// Read and check one checkpoint folder: every file present and matching its checksum.
pub fn open(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let invalid = |reason: String| CheckpointError::Invalid {
        path: dir.to_path_buf(),
        reason,
    };
    let state_path = dir.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&state_path).map_err(|e| invalid(format!("{STATE_FILE}: {e}")))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| invalid(format!("{STATE_FILE}: {e}")))?;
    for name in [CONFIG_FILE, WEIGHTS_FILE, OPTIMIZER_FILE] {
        let want = state
            .files
            .get(name)
            .ok_or_else(|| invalid(format!("{STATE_FILE} lists no checksum for {name}")))?;
        let p = dir.join(name);
        if !p.is_file() {
            return Err(invalid(format!("{name} is missing")));
        }
        if &sha256_file(&p)? != want {
            return Err(invalid(format!(
                "{name} does not match its checksum (damaged or modified)"
            )));
        }
    }
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        state,
    })
}

/// The newest checkpoint that passes its checks; broken ones are reported and skipped.
pub fn newest_complete(output: &Path) -> Option<Checkpoint> {
    for (_, dir) in listed(output).into_iter().rev() {
        match open(&dir) {
            Ok(c) => return Some(c),
            Err(e) => tracing::warn!("skipping {e}"),
        }
    }
    None
}

/// Whether the run folder holds any checkpoint at all (complete or not).
pub fn any(output: &Path) -> bool {
    !listed(output).is_empty()
}

/// Keep the newest `keep_last` complete checkpoints and the `best` one (as transformers keeps
/// the best beyond `save_total_limit`); never delete the newest complete one, and leave
/// incomplete ones for the user to inspect only if they are newer than it.
fn prune(output: &Path, keep_last: usize, best: Option<usize>) {
    let all = listed(output);
    let complete: Vec<&(usize, PathBuf)> = all.iter().filter(|(_, d)| open(d).is_ok()).collect();
    let keep = keep_last.max(1);
    if complete.len() <= keep {
        return;
    }
    let cutoff = complete[complete.len() - keep].0;
    for (step, dir) in &all {
        if *step < cutoff
            && Some(*step) != best
            && let Err(e) = std::fs::remove_dir_all(dir)
        {
            tracing::warn!("could not remove old checkpoint {}: {e}", dir.display());
        }
    }
}

/// Write `optimizer.safetensors`: both moments of each parameter under
/// `<name>.exp_avg` / `<name>.exp_avg_sq`, the step count in the metadata.
pub fn write_optimizer(path: &Path, state: &OptimizerState) -> Result<(), CheckpointError> {
    let names: Vec<(String, String)> = state
        .moments
        .iter()
        .map(|m| moment_names(&m.name))
        .collect();
    let mut tensors = Vec::with_capacity(state.moments.len() * 2);
    for (m, (avg, avg_sq)) in state.moments.iter().zip(&names) {
        tensors.push(F32Tensor {
            name: avg,
            shape: m.shape.to_vec(),
            values: &m.exp_avg,
        });
        tensors.push(F32Tensor {
            name: avg_sq,
            shape: m.shape.to_vec(),
            values: &m.exp_avg_sq,
        });
    }
    let step = state.step.to_string();
    write_f32(path, &tensors, &[("format", "pt"), ("step", &step)]).map_err(|reason| {
        CheckpointError::Invalid {
            path: path.to_path_buf(),
            reason,
        }
    })
}

/// The optimizer state stored in a checkpoint folder.
pub fn read_optimizer(dir: &Path) -> Result<OptimizerState, CheckpointError> {
    let path = dir.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let invalid = |reason: String| CheckpointError::Invalid {
        path: path.clone(),
        reason,
    };
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
    let step = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("step"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no step count in the metadata".into()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| invalid(e.to_string()))?;
    let values = |name: &str| -> Result<(Vec<usize>, Vec<f32>), CheckpointError> {
        let view = st
            .tensor(name)
            .map_err(|_| invalid(format!("{name} is missing")))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(invalid(format!("{name} is not f32")));
        }
        let v = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((view.shape().to_vec(), v))
    };
    let mut names: Vec<String> = st
        .names()
        .into_iter()
        .filter_map(|n| n.strip_suffix(".exp_avg").map(str::to_string))
        .collect();
    names.sort();
    let mut moments = Vec::with_capacity(names.len());
    for name in names {
        let (avg_name, avg_sq_name) = moment_names(&name);
        let (shape, exp_avg) = values(&avg_name)?;
        let (shape_sq, exp_avg_sq) = values(&avg_sq_name)?;
        let shape: [usize; 2] = shape
            .try_into()
            .map_err(|_| invalid(format!("{avg_name} is not a matrix")))?;
        if shape_sq != shape {
            return Err(invalid(format!(
                "{avg_sq_name} differs in shape from {avg_name}"
            )));
        }
        moments.push(NamedMoments {
            name,
            shape,
            exp_avg,
            exp_avg_sq,
        });
    }
    Ok(OptimizerState { step, moments })
}

/// Names of the two moments of a LoRA factor in `optimizer.safetensors`.
pub fn moment_names(peft_key: &str) -> (String, String) {
    (
        format!("{peft_key}.exp_avg"),
        format!("{peft_key}.exp_avg_sq"),
    )
}

pub use peft::peft_key;
