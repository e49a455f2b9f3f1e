//! Which modules get adapters, with which rank and alpha: PEFT's `target_modules`,
//! `layers_to_transform`, `rank_pattern` and `alpha_pattern` rules.

use indexmap::IndexMap;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::error::LoraError;
use crate::model::ModelConfig;
use crate::model::params::LINEAR_MODULES;

/// `targets:` in a recipe: `all-linear`, a list of module names, or (as in PEFT, when a single
/// string other than `all-linear`) a regular expression matched against full module names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetSpec {
    One(String),
    List(Vec<String>),
}

impl Default for TargetSpec {
    fn default() -> Self {
        TargetSpec::One("all-linear".into())
    }
}

/// How `lora_A` starts (`lora_B` always starts at zero, so training starts from the base).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InitKind {
    /// PEFT default: kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)).
    #[default]
    Default,
    /// A ~ N(0, 1/r).
    Gaussian,
}

/// Resolved LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: TargetSpec,
    pub rslora: bool,
    /// DoRA (Liu et al. 2024): a trained magnitude per output row on top of the low-rank
    /// direction update (PEFT's `use_dora`).
    pub dora: bool,
    pub init: InitKind,
    pub layers_to_transform: Option<Vec<usize>>,
    pub rank_pattern: IndexMap<String, usize>,
    pub alpha_pattern: IndexMap<String, f64>,
}

impl Default for LoraSettings {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: TargetSpec::default(),
            rslora: false,
            dora: false,
            init: InitKind::Default,
            layers_to_transform: None,
            rank_pattern: IndexMap::new(),
            alpha_pattern: IndexMap::new(),
        }
    }
}

/// One adapted module: where it is, its rank and scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetModule {
    pub layer: usize,
    /// `q_proj`, ..., `down_proj`.
    pub module: &'static str,
    pub r: usize,
    pub alpha: f64,
    pub scaling: f64,
    pub in_features: usize,
    pub out_features: usize,
    /// Whether the adapter has DoRA's magnitude vector.
    pub dora: bool,
}

impl TargetModule {
    /// The module's name in the base model, as PEFT matches patterns against it.
    pub fn full_name(&self) -> String {
        module_name(self.layer, self.module)
    }
}

/// `model.layers.{layer}.{self_attn|mlp}.{module}`.
pub fn module_name(layer: usize, module: &str) -> String {
    format!(
        "model.layers.{layer}.{}.{module}",
        ModelConfig::linear_parent(module)
    )
}

/// PEFT's `get_pattern_key`: the first pattern `p` (in the order given) with `^(.*\.)?(p)$`
/// matching the full module name.
fn pattern_lookup<'a, V>(compiled: &[(Regex, &'a V)], name: &str) -> Option<&'a V> {
    compiled
        .iter()
        .find(|(re, _)| re.is_match(name))
        .map(|(_, v)| *v)
}

fn compile_patterns<'a, V>(
    field: &str,
    patterns: &'a IndexMap<String, V>,
) -> Result<Vec<(Regex, &'a V)>, LoraError> {
    patterns
        .iter()
        .map(|(k, v)| {
            Regex::new(&format!(r"^(.*\.)?({k})$"))
                .map(|re| (re, v))
                .map_err(|e| LoraError::Invalid {
                    field: field.into(),
                    message: format!("pattern '{k}' is not a valid regular expression: {e}"),
                })
        })
        .collect()
}

impl LoraSettings {
    pub fn validate(&self) -> Result<(), LoraError> {
        let invalid = |field: &str, message: String| LoraError::Invalid {
            field: field.into(),
            message,
        };
        if self.r == 0 {
            return Err(invalid("r", "must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid(
                "dropout",
                format!("{} is not in [0, 1)", self.dropout),
            ));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(invalid("alpha", format!("{} must be positive", self.alpha)));
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, r)| **r == 0) {
            return Err(invalid(
                "rank_pattern",
                format!("rank for '{k}' must be at least 1"),
            ));
        }
        Ok(())
    }

    pub fn scaling(&self, r: usize, alpha: f64) -> f64 {
        if self.rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// Resolve targets against a model, in model order (layer, then q,k,v,o,gate,up,down).
    pub fn resolve(&self, config: &ModelConfig) -> Result<Vec<TargetModule>, LoraError> {
        self.validate()?;
        let available = LINEAR_MODULES.join(", ");
        type Matcher = Box<dyn Fn(&str, &str) -> bool>;
        let matcher: Matcher = match &self.targets {
            TargetSpec::One(s) if s == "all-linear" => Box::new(|_, _| true),
            TargetSpec::One(pattern) => {
                let re =
                    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| LoraError::Invalid {
                        field: "targets".into(),
                        message: format!(
                            "'{pattern}' is neither all-linear nor a valid regular expression: {e}"
                        ),
                    })?;
                Box::new(move |full, _| re.is_match(full))
            }
            TargetSpec::List(names) => {
                for name in names {
                    let short = name.rsplit('.').next().unwrap_or(name);
                    if !LINEAR_MODULES.contains(&short) {
                        return Err(LoraError::UnknownTarget {
                            name: name.clone(),
                            available,
                        });
                    }
                }
                let names = names.clone();
                Box::new(move |full, _| {
                    names
                        .iter()
                        .any(|t| full == t || full.ends_with(&format!(".{t}")))
                })
            }
        };
        let ranks = compile_patterns("rank_pattern", &self.rank_pattern)?;
        let alphas = compile_patterns("alpha_pattern", &self.alpha_pattern)?;
        if let Some(layers) = &self.layers_to_transform
            && let Some(bad) = layers.iter().find(|&&l| l >= config.num_layers)
        {
            return Err(LoraError::Invalid {
                field: "layers_to_transform".into(),
                message: format!(
                    "layer {bad} does not exist (the model has {} layers)",
                    config.num_layers
                ),
            });
        }
        let mut out = Vec::new();
        for layer in 0..config.num_layers {
            if let Some(layers) = &self.layers_to_transform
                && !layers.contains(&layer)
            {
                continue;
            }
            for module in LINEAR_MODULES {
                let full = module_name(layer, module);
                if !matcher(&full, module) {
                    continue;
                }
                let Some(shape) = config.linear_shape(module) else {
                    continue;
                };
                let r = *pattern_lookup(&ranks, &full).unwrap_or(&self.r);
                let alpha = *pattern_lookup(&alphas, &full).unwrap_or(&self.alpha);
                out.push(TargetModule {
                    layer,
                    module,
                    r,
                    alpha,
                    scaling: self.scaling(r, alpha),
                    in_features: shape.in_features,
                    out_features: shape.out_features,
                    dora: self.dora,
                });
            }
        }
        if out.is_empty() {
            let pattern = match &self.targets {
                TargetSpec::One(s) => s.clone(),
                TargetSpec::List(l) => l.join(", "),
            };
            return Err(LoraError::NoTargets { pattern, available });
        }
        Ok(out)
    }

    /// The module names to write as PEFT's `target_modules` (all-linear is expanded, as PEFT
    /// saves it).
    pub fn target_module_names(&self, resolved: &[TargetModule]) -> serde_json::Value {
        match &self.targets {
            TargetSpec::One(s) if s != "all-linear" => serde_json::Value::String(s.clone()),
            _ => {
                let mut names: Vec<&str> = resolved.iter().map(|t| t.module).collect();
                names.sort_unstable();
                names.dedup();
                serde_json::json!(names)
            }
        }
    }
}

/// Trainable parameters of the resolved targets: `r * (in + out)` each (plus `out` for DoRA's
/// magnitude), as PEFT counts them.
pub fn trainable_parameters(targets: &[TargetModule]) -> u64 {
    targets
        .iter()
        .map(|t| {
            (t.r * (t.in_features + t.out_features) + usize::from(t.dora) * t.out_features) as u64
        })
        .sum()
}
