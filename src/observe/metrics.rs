//! `<output.dir>/metrics.jsonl`: one JSON object per optimizer step and one per evaluation,
//! appended and flushed as they happen. A resumed run first drops records past its checkpoint
//! (and any torn last line), so the file reads as one uninterrupted run.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// An objective's own metrics under TRL's names (`rewards/chosen`, ...; `eval_` before them
/// in evaluation records), in the order they are logged. Empty for SFT.
pub type ObjectiveMetrics = IndexMap<String, f64>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_sec: f64,
    pub elapsed_s: f64,
    #[serde(flatten, default, skip_serializing_if = "IndexMap::is_empty")]
    pub objective: ObjectiveMetrics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    pub eval_loss: f64,
    pub eval_perplexity: f64,
    #[serde(flatten, default, skip_serializing_if = "IndexMap::is_empty")]
    pub objective: ObjectiveMetrics,
}

/// One line of metrics.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Step(StepRecord),
    Eval(EvalRecord),
}

impl Record {
    pub fn step(&self) -> usize {
        match self {
            Record::Step(s) => s.step,
            Record::Eval(e) => e.step,
        }
    }
}

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

pub const FILE: &str = "metrics.jsonl";

/// Every complete record of a metrics file (a torn last line is ignored).
pub fn read(path: &Path) -> std::io::Result<Vec<Record>> {
    let file = File::open(path)?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        if let Ok(r) = serde_json::from_str::<Record>(&line) {
            out.push(r);
        }
    }
    Ok(out)
}

impl MetricsLog {
    /// Open for appending; records after `keep_through_step` (from an interrupted run) are
    /// removed first. `None` starts a new file.
    pub fn open(output: &Path, keep_through_step: Option<usize>) -> std::io::Result<Self> {
        let path = output.join(FILE);
        match keep_through_step {
            Some(step) if path.exists() => {
                // Kept lines are copied as written: parsing and printing a float again can
                // change its last digit.
                let text = std::fs::read_to_string(&path)?;
                let tmp = output.join(format!(".{FILE}.tmp"));
                let mut f = File::create(&tmp)?;
                for line in text.lines() {
                    if let Ok(r) = serde_json::from_str::<Record>(line)
                        && r.step() <= step
                    {
                        writeln!(f, "{line}")?;
                    }
                }
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
            }
            _ => {
                File::create(&path)?;
            }
        }
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(Self { path, file })
    }

    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        writeln!(
            self.file,
            "{}",
            serde_json::to_string(record).unwrap_or_default()
        )?;
        self.file.flush()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
