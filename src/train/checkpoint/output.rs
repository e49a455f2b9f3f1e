//! The run folder around the training loop: making sure `output.dir` can be one, clearing
//! what an earlier or killed run left behind, choosing the checkpoint a run resumes from, and
//! replacing a finished folder (the final `adapter/`) atomically.

use std::path::{Path, PathBuf};

use super::{Checkpoint, CheckpointError, checkpoints_dir, fsync, io};

/// Where to start from.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// A new run (the output folder must not hold checkpoints).
    No,
    /// The newest complete checkpoint of the output folder.
    Latest,
    /// A given checkpoint folder.
    From(PathBuf),
}

/// Files and folders a run writes in its output folder (removed by `--overwrite`).
pub const RUN_ARTIFACTS: &[&str] = &[
    "checkpoints",
    "adapter",
    "merged",
    "metrics.jsonl",
    "tensorboard",
    "loss.svg",
    "README.md",
];

fn output_error(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError::OutputDir {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Create `out` (and its parents) or say precisely why it cannot be a run folder: a file in
/// the way, no permission, a read-only folder.
pub fn ensure_writable_dir(out: &Path) -> Result<(), CheckpointError> {
    if let Some(file) = out.ancestors().find(|p| p.is_file()) {
        let what = if file == out {
            "is a file, not a folder".to_string()
        } else {
            format!("lies under {}, which is a file", file.display())
        };
        return Err(output_error(
            out,
            format!("{what}; set output.dir to a folder path"),
        ));
    }
    if let Err(e) = std::fs::create_dir_all(out) {
        return Err(output_error(
            out,
            format!("cannot be created ({e}); choose a location you can write to"),
        ));
    }
    // An existing folder may still be read-only: find out now, not at the first checkpoint.
    let probe = out.join(format!(".burnish-write-test-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(output_error(
            out,
            format!("is not writable ({e}); choose another output.dir or fix its permissions"),
        )),
    }
}

/// Whether process `pid` is a running burnish (whose temporary folders must be left alone).
fn burnish_running(pid: u32) -> bool {
    pid == std::process::id()
        || std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim_end().starts_with("burnish"))
}

/// Remove the temporary folders and files of writes that never finished (a killed save, merge
/// or final adapter): `.step-N.partial-PID`, `.merged.partial-PID`, `.adapter.partial-PID`,
/// `.adapter.old-PID`. A leftover merge is a whole model, many GB for a 7B one.
pub fn remove_leftovers(out: &Path) {
    for dir in [out.to_path_buf(), checkpoints_dir(out)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix('.')
                .and_then(|n| {
                    n.rsplit_once(".partial-")
                        .or_else(|| n.rsplit_once(".old-"))
                })
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if burnish_running(pid) && pid != std::process::id() {
                continue;
            }
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => tracing::info!("removed {} left by an interrupted run", path.display()),
                Err(e) => tracing::warn!("could not remove {}: {e}", path.display()),
            }
        }
    }
}

/// Get `out` ready for a run and return the checkpoint to resume from. `overwrite` deletes an
/// earlier run's artifacts first; a new run refuses a folder with checkpoints; a new run in a
/// folder whose run was killed before its first checkpoint drops that run's TensorBoard
/// events, which would otherwise repeat its steps.
pub fn prepare(
    out: &Path,
    resume: &Resume,
    overwrite: bool,
) -> Result<Option<Checkpoint>, CheckpointError> {
    ensure_writable_dir(out)?;
    remove_leftovers(out);
    if overwrite {
        for name in RUN_ARTIFACTS {
            let p = out.join(name);
            if p.is_dir() {
                std::fs::remove_dir_all(&p).map_err(io(&p))?;
            } else if p.is_file() {
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
    }
    match resume {
        Resume::No => {
            if super::any(out) {
                let newest = super::newest_complete(out).map(|c| c.state.global_step);
                return Err(output_error(
                    out,
                    format!(
                        "already holds checkpoints{}; pass --resume to continue that run or --overwrite to start over",
                        newest
                            .map(|s| format!(" (newest complete: step {s})"))
                            .unwrap_or_default()
                    ),
                ));
            }
            let tb = out.join("tensorboard");
            if tb.is_dir() {
                std::fs::remove_dir_all(&tb).map_err(io(&tb))?;
            }
            Ok(None)
        }
        Resume::Latest => match super::newest_complete(out) {
            Some(c) => Ok(Some(c)),
            None => Err(output_error(
                out,
                "has no complete checkpoint to resume from (--resume); start a new run without it",
            )),
        },
        Resume::From(dir) => super::open(dir).map(Some),
    }
}

/// The checkpoint a replica that does not write (rank > 0) resumes from.
pub fn resume_point(out: &Path, resume: &Resume) -> Result<Option<Checkpoint>, CheckpointError> {
    match resume {
        Resume::No => Ok(None),
        Resume::Latest => Ok(super::newest_complete(out)),
        Resume::From(d) => super::open(d).map(Some),
    }
}

/// Write the folder `out/<name>` as a whole or not at all: `write` fills a temporary sibling,
/// which is fsynced and renamed into place (an existing folder is moved aside first and removed
/// after). A kill at any moment leaves the old folder, the new one, or a leftover that the next
/// run removes.
pub fn replace_folder(
    out: &Path,
    name: &str,
    write: &dyn Fn(&Path) -> Result<(), String>,
) -> Result<PathBuf, CheckpointError> {
    let pid = std::process::id();
    let tmp = out.join(format!(".{name}.partial-{pid}"));
    let old = out.join(format!(".{name}.old-{pid}"));
    let dest = out.join(name);
    for p in [&tmp, &old] {
        if p.exists() {
            std::fs::remove_dir_all(p).map_err(io(p))?;
        }
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    write(&tmp).map_err(|reason| CheckpointError::Invalid {
        path: dest.clone(),
        reason,
    })?;
    for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
        if entry.path().is_file() {
            fsync(&entry.path())?;
        }
    }
    fsync(&tmp)?;
    if dest.exists() {
        std::fs::rename(&dest, &old).map_err(io(&dest))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    fsync(out)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_in_the_way_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let e = ensure_writable_dir(&file).unwrap_err().to_string();
        assert!(e.contains("is a file, not a folder"), "{e}");
        let under = file.join("run");
        let e = ensure_writable_dir(&under).unwrap_err().to_string();
        assert!(e.contains("which is a file") && e.contains("a-file"), "{e}");
        assert!(ensure_writable_dir(&dir.path().join("new/run")).is_ok());
    }

    #[test]
    fn leftovers_of_dead_processes_go() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        // PID 4194304 exceeds Linux's pid_max, so no process has it.
        let dead = [
            out.join(".merged.partial-4194304"),
            out.join(".adapter.old-4194304"),
            checkpoints_dir(out).join(".step-000004.partial-4194304"),
        ];
        for d in &dead {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("f"), b"x").unwrap();
        }
        let keep = [out.join("merged"), checkpoints_dir(out).join("step-000004")];
        for d in &keep {
            std::fs::create_dir_all(d).unwrap();
        }
        remove_leftovers(out);
        for d in &dead {
            assert!(!d.exists(), "{} should be gone", d.display());
        }
        for d in &keep {
            assert!(d.exists(), "{} must stay", d.display());
        }
    }

    #[test]
    fn replace_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let first = replace_folder(out, "adapter", &|d| {
            std::fs::write(d.join("a"), b"one").map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(std::fs::read(first.join("a")).unwrap(), b"one");
        let failed = replace_folder(out, "adapter", &|_| Err("disk full".into()));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(first.join("a")).unwrap(), b"one");
        replace_folder(out, "adapter", &|d| {
            std::fs::write(d.join("b"), b"two").map_err(|e| e.to_string())
        })
        .unwrap();
        assert!(!first.join("a").exists() && first.join("b").is_file());
    }
}
