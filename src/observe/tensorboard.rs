//! A small TensorBoard event-file writer (TFRecord framing with masked CRC-32C, `Event` protos
//! declared here with prost): scalars, the text plugin and the hparams plugin.
//!
//! Files are named `events.out.tfevents.{secs}.{host}.{pid}.{unique}` so two writers never share
//! a file. Write errors (a full disk) are reported once as a warning and never stop training.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "EventWhat", tags = "3, 5, 6")]
    pub what: Option<EventWhat>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventWhat {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "6")]
    SessionLog(SessionLog),
}

/// `tensorflow.SessionLog`; START at a step tells readers to drop older events past it.
#[derive(Clone, PartialEq, Message)]
pub struct SessionLog {
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(string, tag = "2")]
    pub checkpoint_path: String,
    #[prost(string, tag = "3")]
    pub msg: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
    #[prost(string, tag = "2")]
    pub display_name: String,
    #[prost(string, tag = "3")]
    pub summary_description: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.TensorProto`, only what string tensors need.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<TensorDim>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorDim {
    #[prost(int64, tag = "1")]
    pub size: i64,
}

const DT_STRING: i32 = 7;

// --- hparams plugin (tensorboard/plugins/hparams/api.proto, plugin_data.proto) ---

#[derive(Clone, PartialEq, Message)]
pub struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    pub version: i32,
    #[prost(oneof = "HParamsData", tags = "2, 3, 4")]
    pub data: Option<HParamsData>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum HParamsData {
    #[prost(message, tag = "2")]
    Experiment(Experiment),
    #[prost(message, tag = "3")]
    SessionStartInfo(SessionStartInfo),
    #[prost(message, tag = "4")]
    SessionEndInfo(SessionEndInfo),
}

#[derive(Clone, PartialEq, Message)]
pub struct Experiment {
    #[prost(string, tag = "1")]
    pub description: String,
    #[prost(message, repeated, tag = "4")]
    pub hparam_infos: Vec<HParamInfo>,
    #[prost(message, repeated, tag = "5")]
    pub metric_infos: Vec<MetricInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct HParamInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    /// 1 string, 2 bool, 3 float64.
    #[prost(int32, tag = "4")]
    pub r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricInfo {
    #[prost(message, optional, tag = "1")]
    pub name: Option<MetricName>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricName {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(string, tag = "2")]
    pub tag: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct SessionStartInfo {
    #[prost(btree_map = "string, message", tag = "1")]
    pub hparams: BTreeMap<String, ProtoValue>,
    #[prost(double, tag = "5")]
    pub start_time_secs: f64,
}

#[derive(Clone, PartialEq, Message)]
pub struct SessionEndInfo {
    /// 1 = success, 3 = aborted.
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(double, tag = "2")]
    pub end_time_secs: f64,
}

/// `google.protobuf.Value` (number, string or bool).
#[derive(Clone, PartialEq, Message)]
pub struct ProtoValue {
    #[prost(oneof = "ProtoKind", tags = "2, 3, 4")]
    pub kind: Option<ProtoKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ProtoKind {
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    Text(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
}

/// An hparam value.
#[derive(Debug, Clone, PartialEq)]
pub enum HParam {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// TFRecord's masked CRC-32C.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One framed record: length, its masked CRC, data, the data's masked CRC.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Records of an event file, each checked against both CRCs.
pub fn read_records(path: &Path) -> Result<Vec<Event>, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        if bytes.len() - pos < 12 {
            return Err(format!("truncated record header at byte {pos}"));
        }
        let len_bytes = &bytes[pos..pos + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap_or_default());
        if crc != masked_crc(len_bytes) {
            return Err(format!("bad length CRC at byte {pos}"));
        }
        let start = pos + 12;
        if bytes.len() < start + len + 4 {
            return Err(format!("truncated record at byte {pos}"));
        }
        let data = &bytes[start..start + len];
        let dcrc = u32::from_le_bytes(
            bytes[start + len..start + len + 4]
                .try_into()
                .unwrap_or_default(),
        );
        if dcrc != masked_crc(data) {
            return Err(format!("bad data CRC at byte {pos}"));
        }
        out.push(Event::decode(data).map_err(|e| format!("record at byte {pos}: {e}"))?);
        pos = start + len + 4;
    }
    Ok(out)
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

pub struct EventWriter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    warned: bool,
}

impl EventWriter {
    /// A new event file in `dir`.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let unique = UNIQUE.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "events.out.tfevents.{}.{}.{}.{}",
            now() as u64,
            hostname(),
            std::process::id(),
            unique * 1_000_000_000 + nanos as u64
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        Ok(Self::from_file(path, file))
    }

    /// A writer on an already open file (starts with the file-version event).
    pub fn from_file(path: PathBuf, file: File) -> Self {
        let mut w = Self {
            path,
            out: Some(BufWriter::new(file)),
            warned: false,
        };
        w.write_event(Event {
            wall_time: now(),
            step: 0,
            what: Some(EventWhat::FileVersion("brain.Event:2".into())),
        });
        w.flush();
        w
    }

    /// Whether writing still works (false after an I/O error).
    pub fn healthy(&self) -> bool {
        self.out.is_some()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&mut self, e: std::io::Error) {
        if !self.warned {
            tracing::warn!(
                "TensorBoard: cannot write {}: {e}; training continues without it",
                self.path.display()
            );
            self.warned = true;
        }
        self.out = None;
    }

    fn write_event(&mut self, event: Event) {
        let Some(out) = self.out.as_mut() else { return };
        if let Err(e) = out.write_all(&frame(&event.encode_to_vec())) {
            self.fail(e);
        }
    }

    pub fn scalar(&mut self, tag: &str, step: usize, value: f64) {
        let v = SummaryValue {
            tag: tag.into(),
            simple_value: Some(value as f32),
            ..Default::default()
        };
        self.write_event(Event {
            wall_time: now(),
            step: step as i64,
            what: Some(EventWhat::Summary(Summary { value: vec![v] })),
        });
    }

    /// Markdown text for the text plugin.
    pub fn text(&mut self, tag: &str, step: usize, markdown: &str) {
        let v = SummaryValue {
            tag: tag.into(),
            simple_value: None,
            tensor: Some(TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShape { dim: vec![] }),
                string_val: vec![markdown.as_bytes().to_vec()],
            }),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: "text".into(),
                    content: vec![],
                }),
                ..Default::default()
            }),
        };
        self.write_event(Event {
            wall_time: now(),
            step: step as i64,
            what: Some(EventWhat::Summary(Summary { value: vec![v] })),
        });
    }

    fn hparams_summary(&mut self, tag: &str, data: HParamsData) {
        let content = HParamsPluginData {
            version: 0,
            data: Some(data),
        }
        .encode_to_vec();
        let v = SummaryValue {
            tag: tag.into(),
            simple_value: None,
            tensor: None,
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: "hparams".into(),
                    content,
                }),
                ..Default::default()
            }),
        };
        self.write_event(Event {
            wall_time: now(),
            step: 0,
            what: Some(EventWhat::Summary(Summary { value: vec![v] })),
        });
    }

    /// The hparams plugin's experiment and session start (metrics are scalar tags).
    pub fn hparams(&mut self, hparams: &BTreeMap<String, HParam>, metrics: &[&str]) {
        let infos = hparams
            .iter()
            .map(|(k, v)| HParamInfo {
                name: k.clone(),
                r#type: match v {
                    HParam::Text(_) => 1,
                    HParam::Bool(_) => 2,
                    HParam::Number(_) => 3,
                },
            })
            .collect();
        let metric_infos = metrics
            .iter()
            .map(|m| MetricInfo {
                name: Some(MetricName {
                    group: String::new(),
                    tag: m.to_string(),
                }),
            })
            .collect();
        self.hparams_summary(
            "_hparams_/experiment",
            HParamsData::Experiment(Experiment {
                description: String::new(),
                hparam_infos: infos,
                metric_infos,
            }),
        );
        let values = hparams
            .iter()
            .map(|(k, v)| {
                let kind = match v {
                    HParam::Number(x) => ProtoKind::Number(*x),
                    HParam::Text(s) => ProtoKind::Text(s.clone()),
                    HParam::Bool(b) => ProtoKind::Bool(*b),
                };
                (k.clone(), ProtoValue { kind: Some(kind) })
            })
            .collect();
        self.hparams_summary(
            "_hparams_/session_start_info",
            HParamsData::SessionStartInfo(SessionStartInfo {
                hparams: values,
                start_time_secs: now(),
            }),
        );
    }

    pub fn hparams_end(&mut self, success: bool) {
        self.hparams_summary(
            "_hparams_/session_end_info",
            HParamsData::SessionEndInfo(SessionEndInfo {
                status: if success { 1 } else { 3 },
                end_time_secs: now(),
            }),
        );
    }

    /// A resumed run restarts at `step`: readers drop older events past it.
    pub fn session_start(&mut self, step: usize) {
        self.write_event(Event {
            wall_time: now(),
            step: step as i64,
            what: Some(EventWhat::SessionLog(SessionLog {
                status: 1,
                ..Default::default()
            })),
        });
    }

    pub fn flush(&mut self) {
        if let Some(out) = self.out.as_mut()
            && let Err(e) = out.flush()
        {
            self.fail(e);
        }
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Before a resumed run writes: drop, from earlier event files, events past `step` that the
/// interrupted run wrote after its last checkpoint, so curves never go back or repeat.
pub fn truncate_after(dir: &Path, step: usize) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents."))
        {
            continue;
        }
        let events = match read_records(&path) {
            Ok(e) => e,
            // A torn last record from a killed run: keep what decodes.
            Err(_) => read_prefix(&path),
        };
        let keep: Vec<&Event> = events
            .iter()
            .filter(|e| {
                matches!(e.what, Some(EventWhat::FileVersion(_))) || e.step as usize <= step
            })
            .collect();
        let tmp = path.with_extension("rewrite");
        let mut out = BufWriter::new(File::create(&tmp)?);
        for e in keep {
            out.write_all(&frame(&e.encode_to_vec()))?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// The records of a file up to the first damaged one.
fn read_prefix(path: &Path) -> Vec<Event> {
    let mut bytes = Vec::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .is_err()
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while bytes.len() >= pos + 12 {
        let len = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap_or_default()) as usize;
        let start = pos + 12;
        if bytes.len() < start + len + 4
            || masked_crc(&bytes[start..start + len]).to_le_bytes()
                != bytes[start + len..start + len + 4]
        {
            break;
        }
        match Event::decode(&bytes[start..start + len]) {
            Ok(e) => out.push(e),
            Err(_) => break,
        }
        pos = start + len + 4;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // TensorFlow's masked CRC of an empty string and of the 8-byte length 0 (known values).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b""), 0xa282_ead8);
    }

    /// A full disk: the writer reports once and stops; nothing panics.
    #[test]
    fn disk_full_is_survivable() {
        let Ok(file) = OpenOptions::new().write(true).open("/dev/full") else {
            return;
        };
        let mut w = EventWriter::from_file(PathBuf::from("/dev/full"), file);
        for step in 0..2000 {
            w.scalar("train/loss", step, 1.0);
        }
        w.flush();
        assert!(!w.healthy());
        w.scalar("train/loss", 5, 1.0);
        w.flush();
    }
}
