//! Recipe validation that reports every problem at once. Each section is checked key by key
//! against its typed struct (unknown keys get the list of valid ones and a "did you mean"),
//! nested sections recursively, so one bad value never hides the next.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::node::{Node, NodeKind, Origin};
use super::schema::*;

/// One problem in a recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// Dotted key path (`train.optimizer.lr`).
    pub path: String,
    pub origin: Origin,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    pub fn push(&mut self, path: &str, origin: &Origin, message: impl Into<String>) {
        self.0.push(Issue {
            path: path.to_string(),
            origin: origin.clone(),
            message: message.into(),
        });
    }
}

/// A typed recipe section: its field names and which of them are sections themselves.
pub trait Section: DeserializeOwned + Serialize + Default {
    const FIELDS: &'static [&'static str];
    const REQUIRED: &'static [&'static str] = &[];
    /// Check a nested field; returns false when the field is a plain value.
    fn check_child(_field: &str, _node: &Node, _path: &str, _issues: &mut Issues) -> bool {
        false
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Levenshtein distance, for "did you mean" hints.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

pub fn suggestion(word: &str, options: &[&str]) -> Option<String> {
    options
        .iter()
        .map(|o| (edit_distance(word, o), *o))
        .filter(|(d, o)| *d <= 2.max(o.len() / 3))
        .min()
        .map(|(_, o)| o.to_string())
}

/// Serde's messages name Rust types; say it in recipe terms (and suggest the closest name of
/// an unknown choice).
fn friendly(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some((value, options)) = rest.split_once("`, expected ")
    {
        let names: Vec<&str> = options.split('`').skip(1).step_by(2).collect();
        let hint = suggestion(value, &names)
            .map(|s| format!(" (did you mean '{s}'?)"))
            .unwrap_or_default();
        return format!("'{value}' is not one of {}{hint}", names.join(", "));
    }
    message
        .replace("expected f64", "expected a number")
        .replace("expected usize", "expected a non-negative integer")
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected a string", "expected text")
        .replace("expected a boolean", "expected true or false")
}

pub fn check_section<S: Section>(node: &Node, path: &str, issues: &mut Issues) -> Option<S> {
    let before = issues.0.len();
    let entries = match &node.kind {
        NodeKind::Null => &Vec::new(),
        NodeKind::Map(m) => m,
        _ => {
            let what = if path.is_empty() { "the recipe" } else { path };
            issues.push(
                path,
                &node.origin,
                format!("{what} must be a mapping of keys to values"),
            );
            return None;
        }
    };
    for (key, key_origin, value) in entries {
        let key_path = join(path, key);
        if !S::FIELDS.contains(&key.as_str()) {
            let hint = suggestion(key, S::FIELDS)
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            issues.push(
                &key_path,
                key_origin,
                format!(
                    "unknown field '{key}'{hint}; expected one of {}",
                    S::FIELDS.join(", ")
                ),
            );
            continue;
        }
        if S::check_child(key, value, &key_path, issues) {
            continue;
        }
        let mut probe = Map::new();
        probe.insert(key.clone(), value.to_json());
        if let Err(e) = serde_json::from_value::<S>(Value::Object(probe)) {
            issues.push(&key_path, &value.origin, friendly(&e.to_string()));
        }
    }
    for required in S::REQUIRED {
        let present = entries
            .iter()
            .any(|(k, _, v)| k == required && !matches!(v.kind, NodeKind::Null));
        if !present {
            issues.push(
                &join(path, required),
                &node.origin,
                format!("'{required}' is required"),
            );
        }
    }
    if issues.0.len() > before {
        return None;
    }
    match serde_json::from_value::<S>(node.to_json()) {
        Ok(s) => Some(s),
        Err(e) => {
            issues.push(path, &node.origin, friendly(&e.to_string()));
            None
        }
    }
}

fn check_list<S: Section>(node: &Node, path: &str, issues: &mut Issues) -> bool {
    match &node.kind {
        NodeKind::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                check_section::<S>(item, &format!("{path}.{i}"), issues);
            }
        }
        // A single source written without the list is accepted too.
        NodeKind::Map(_) => {
            check_section::<S>(node, path, issues);
        }
        _ => issues.push(path, &node.origin, "expected a list of sources"),
    }
    true
}

impl Section for Recipe {
    const FIELDS: &'static [&'static str] = &[
        "model",
        "lora",
        "data",
        "train",
        "output",
        "logging",
        "hub",
        "distributed",
    ];
    const REQUIRED: &'static [&'static str] = &["model", "data"];
    fn check_child(field: &str, node: &Node, path: &str, issues: &mut Issues) -> bool {
        match field {
            "model" => check_section::<ModelSection>(node, path, issues).is_some(),
            "lora" => check_section::<LoraSection>(node, path, issues).is_some(),
            "data" => check_section::<DataSection>(node, path, issues).is_some(),
            "train" => check_section::<TrainSection>(node, path, issues).is_some(),
            "output" => check_section::<OutputSection>(node, path, issues).is_some(),
            "logging" => check_section::<LoggingSection>(node, path, issues).is_some(),
            "hub" => check_section::<HubSection>(node, path, issues).is_some(),
            "distributed" => {
                matches!(node.kind, NodeKind::Null)
                    || check_section::<DistributedSection>(node, path, issues).is_some()
            }
            _ => return false,
        };
        true
    }
}

impl Section for ModelSection {
    const FIELDS: &'static [&'static str] = &["base", "revision", "dtype", "quantize"];
    const REQUIRED: &'static [&'static str] = &["base"];
    fn check_child(field: &str, node: &Node, path: &str, issues: &mut Issues) -> bool {
        match field {
            "quantize" => {
                if !matches!(node.kind, NodeKind::Null) {
                    check_section::<crate::model::quant::QuantSpec>(node, path, issues);
                }
                true
            }
            _ => false,
        }
    }
}

impl Section for crate::model::quant::QuantSpec {
    const FIELDS: &'static [&'static str] = &["bits", "block_size"];
    const REQUIRED: &'static [&'static str] = &["bits"];
}

impl Section for LoraSection {
    const FIELDS: &'static [&'static str] = &[
        "r",
        "alpha",
        "dropout",
        "targets",
        "rslora",
        "dora",
        "init",
        "init_from",
        "layers_to_transform",
        "rank_pattern",
        "alpha_pattern",
    ];
}

impl Section for SourceSection {
    const FIELDS: &'static [&'static str] = &[
        "path", "hub", "split", "files", "revision", "format", "fields", "roles", "max_rows",
    ];
}

impl Section for DataSection {
    const FIELDS: &'static [&'static str] = &[
        "train",
        "validation",
        "seq_len",
        "packing",
        "train_on_inputs",
        "shuffle",
        "truncation",
        "chat_template",
        "system_prompt",
    ];
    const REQUIRED: &'static [&'static str] = &["train"];
    fn check_child(field: &str, node: &Node, path: &str, issues: &mut Issues) -> bool {
        match field {
            "train" => check_list::<SourceSection>(node, path, issues),
            "validation" => match &node.kind {
                NodeKind::Null => true,
                NodeKind::Seq(_) => check_list::<SourceSection>(node, path, issues),
                NodeKind::Map(m) => {
                    let is_split = m.iter().all(|(k, _, _)| k == "split")
                        && matches!(
                            m.first().map(|(_, _, v)| &v.kind),
                            Some(NodeKind::Float(_) | NodeKind::Int(_))
                        );
                    if !is_split {
                        issues.push(
                            path,
                            &node.origin,
                            "expected {split: <fraction of the training data>} or a list of sources",
                        );
                    }
                    true
                }
                _ => {
                    issues.push(
                        path,
                        &node.origin,
                        "expected {split: <fraction>} or a list of sources",
                    );
                    true
                }
            },
            _ => false,
        }
    }
}

impl Section for OptimizerSection {
    const FIELDS: &'static [&'static str] = &[
        "name",
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "loraplus_lr_ratio",
    ];
}

impl Section for SchedulerSection {
    const FIELDS: &'static [&'static str] = &[
        "name",
        "warmup_steps",
        "warmup_ratio",
        "min_lr",
        "num_cycles",
        "power",
        "timescale",
        "decay_steps",
        "decay_ratio",
        "decay_type",
    ];
}

impl Section for TrainSection {
    const FIELDS: &'static [&'static str] = &[
        "objective",
        "dpo",
        "orpo",
        "simpo",
        "cpo",
        "kto",
        "epochs",
        "max_steps",
        "micro_batch_size",
        "grad_accum",
        "optimizer",
        "scheduler",
        "max_grad_norm",
        "seed",
        "device",
        "devices",
        "gradient_checkpointing",
        "neftune_noise_alpha",
        "eval_every",
        "evals_per_epoch",
        "eval_on_start",
        "save_every",
        "saves_per_epoch",
        "keep_last",
        "load_best_model_at_end",
        "early_stopping_patience",
        "early_stopping_threshold",
        "metric_for_best_model",
        "greater_is_better",
    ];
    fn check_child(field: &str, node: &Node, path: &str, issues: &mut Issues) -> bool {
        match field {
            "optimizer" => check_section::<OptimizerSection>(node, path, issues).is_some(),
            "scheduler" => check_section::<SchedulerSection>(node, path, issues).is_some(),
            "dpo" => check_section::<DpoSection>(node, path, issues).is_some(),
            "orpo" => check_section::<OrpoSection>(node, path, issues).is_some(),
            "simpo" => check_section::<SimpoSection>(node, path, issues).is_some(),
            "cpo" => check_section::<CpoSection>(node, path, issues).is_some(),
            "kto" => check_section::<KtoSection>(node, path, issues).is_some(),
            _ => return false,
        };
        true
    }
}

impl Section for DpoSection {
    const FIELDS: &'static [&'static str] = &[
        "beta",
        "loss_type",
        "loss_weights",
        "label_smoothing",
        "discopop_tau",
        "f_divergence_type",
        "f_alpha_divergence_coef",
        "ld_alpha",
        "reference",
    ];
}

impl Section for OrpoSection {
    const FIELDS: &'static [&'static str] = &["beta"];
}

impl Section for SimpoSection {
    const FIELDS: &'static [&'static str] = &["beta", "gamma", "cpo_alpha"];
}

impl Section for CpoSection {
    const FIELDS: &'static [&'static str] = &["beta", "loss_type", "label_smoothing", "cpo_alpha"];
}

impl Section for KtoSection {
    const FIELDS: &'static [&'static str] = &[
        "beta",
        "loss_type",
        "desirable_weight",
        "undesirable_weight",
        "reference",
    ];
}

impl Section for DistributedSection {
    const FIELDS: &'static [&'static str] = &[
        "nodes",
        "orchestrator",
        "data_port",
        "node_host",
        "timeout_s",
        "startup_timeout_s",
        "start_orchestrator",
    ];
}

impl Section for OutputSection {
    const FIELDS: &'static [&'static str] = &["dir", "merge", "merge_dtype", "gguf"];
}

impl Section for LoggingSection {
    const FIELDS: &'static [&'static str] = &["tensorboard", "every"];
}

impl Section for HubSection {
    const FIELDS: &'static [&'static str] = &["repo", "push", "merged_repo", "private"];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field lists above must name exactly the struct's fields.
    fn fields_match<S: Section>() {
        let v = serde_json::to_value(S::default()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut listed = S::FIELDS.to_vec();
        keys.sort_unstable();
        listed.sort_unstable();
        assert_eq!(keys, listed);
    }

    #[test]
    fn field_lists_are_complete() {
        fields_match::<Recipe>();
        fields_match::<ModelSection>();
        fields_match::<LoraSection>();
        fields_match::<SourceSection>();
        fields_match::<DataSection>();
        fields_match::<OptimizerSection>();
        fields_match::<SchedulerSection>();
        fields_match::<TrainSection>();
        fields_match::<DpoSection>();
        fields_match::<OrpoSection>();
        fields_match::<SimpoSection>();
        fields_match::<CpoSection>();
        fields_match::<OutputSection>();
        fields_match::<LoggingSection>();
        fields_match::<HubSection>();
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggestion("alpah", LoraSection::FIELDS).as_deref(),
            Some("alpha")
        );
        assert_eq!(suggestion("zzzzzz", LoraSection::FIELDS), None);
    }
}
