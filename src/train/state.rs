//! `trainer_state.json`: where a run stands (step, epoch, position in the epoch's data order,
//! schedule), what must not change on resume (the recipe's fingerprint), and checksums of the
//! checkpoint's files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::recipe::Recipe;
use crate::rng::fnv1a;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub burnish_version: String,
    /// Optimizer steps completed.
    pub global_step: usize,
    /// 0-based epoch of the next step and its window index within that epoch's order.
    pub epoch: usize,
    pub window_in_epoch: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    /// Learning rate of the last step taken.
    pub last_lr: f64,
    /// The data order and dropout masks are pure functions of this seed and the step.
    pub seed: u64,
    /// Seconds of training before this checkpoint, over all earlier runs.
    pub elapsed_s: f64,
    /// Training tokens processed so far.
    pub tokens_seen: u64,
    pub best_eval_loss: Option<f64>,
    /// The best value so far of `metric_for_best_model` (named here), and the checkpoint
    /// holding its weights (`load_best_model_at_end`).
    #[serde(default)]
    pub metric_for_best_model: Option<String>,
    #[serde(default)]
    pub best_metric: Option<f64>,
    #[serde(default)]
    pub best_step: Option<usize>,
    /// Evaluations in a row without enough improvement (`early_stopping_patience`).
    #[serde(default)]
    pub evals_without_improvement: usize,
    /// The run ended here because its patience ran out: nothing is left to train.
    #[serde(default)]
    pub stopped_early: bool,
    /// Recipe values that must not change when resuming, by dotted key.
    pub fingerprint: BTreeMap<String, Value>,
    pub fingerprint_hash: String,
    /// sha256 of each other file in the checkpoint.
    pub files: BTreeMap<String, String>,
}

/// Values that define the run's math: changing any of them makes a resumed run a different run.
/// `epochs`/`max_steps`, `save_every`, `eval_every`, `keep_last`, `load_best_model_at_end`, early
/// stopping, logging, output and hub may change.
pub fn fingerprint(r: &Recipe) -> BTreeMap<String, Value> {
    let mut f = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        f.insert(k.to_string(), v);
    };
    put("model.base", json!(r.model.base));
    put("model.revision", json!(r.model.revision));
    put("model.dtype", json!(r.model.dtype));
    // Only when set, so checkpoints written before quantization existed still resume.
    if let Some(q) = &r.model.quantize {
        put("model.quantize", json!(q));
    }
    put("lora.r", json!(r.lora.r));
    put("lora.alpha", json!(r.lora.alpha));
    put("lora.dropout", json!(r.lora.dropout));
    put("lora.targets", json!(r.lora.targets));
    put("lora.rslora", json!(r.lora.rslora));
    // Only when on, so checkpoints written before DoRA existed still resume.
    if r.lora.dora {
        put("lora.dora", json!(true));
    }
    put("lora.init", json!(r.lora.init));
    put("lora.init_from", json!(r.lora.init_from));
    put(
        "lora.layers_to_transform",
        json!(r.lora.layers_to_transform),
    );
    put("lora.rank_pattern", json!(r.lora.rank_pattern));
    put("lora.alpha_pattern", json!(r.lora.alpha_pattern));
    put("data.train", json!(r.data.train));
    put("data.validation", json!(r.data.validation));
    put("data.seq_len", json!(r.data.seq_len));
    put("data.packing", json!(r.data.packing));
    put("data.train_on_inputs", json!(r.data.train_on_inputs));
    put("data.shuffle", json!(r.data.shuffle));
    put("data.truncation", json!(r.data.truncation));
    put("data.chat_template", json!(r.data.chat_template));
    put("data.system_prompt", json!(r.data.system_prompt));
    put("train.seed", json!(r.train.seed));
    put("train.micro_batch_size", json!(r.train.micro_batch_size));
    put("train.grad_accum", json!(r.train.grad_accum));
    // Without LoRA+ the section reads as it did before the key existed, so older checkpoints
    // still resume.
    let mut optimizer = json!(r.train.optimizer);
    if r.train.optimizer.loraplus_lr_ratio.is_none()
        && let Some(o) = optimizer.as_object_mut()
    {
        o.remove("loraplus_lr_ratio");
    }
    put("train.optimizer", optimizer);
    // The keys of the newer schedules only when set, so older checkpoints still resume.
    let mut scheduler = json!(r.train.scheduler);
    if let Some(o) = scheduler.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    put("train.scheduler", scheduler);
    put("train.max_grad_norm", json!(r.train.max_grad_norm));
    // Only when set, so checkpoints written before the key existed resume.
    if let Some(alpha) = r.train.neftune_noise_alpha {
        put("train.neftune_noise_alpha", json!(alpha));
    }
    // Only for preference runs, so SFT checkpoints written before objectives existed resume.
    match r.train.objective {
        crate::recipe::Objective::Sft => {}
        crate::recipe::Objective::Dpo => {
            put("train.objective", json!(r.train.objective));
            put("train.dpo", dpo_fingerprint(&r.train.dpo));
        }
        crate::recipe::Objective::Orpo => {
            put("train.objective", json!(r.train.objective));
            put("train.orpo", json!(r.train.orpo));
        }
        crate::recipe::Objective::Simpo => {
            put("train.objective", json!(r.train.objective));
            put("train.simpo", json!(r.train.simpo));
        }
        crate::recipe::Objective::Cpo => {
            put("train.objective", json!(r.train.objective));
            put("train.cpo", json!(r.train.cpo));
        }
        crate::recipe::Objective::Kto => {
            put("train.objective", json!(r.train.objective));
            put("train.kto", json!(r.train.kto));
        }
    }
    f
}

/// `train.dpo` without the keys added after DPO shipped while they hold their defaults, so
/// older DPO checkpoints still resume.
fn dpo_fingerprint(d: &crate::recipe::DpoSection) -> Value {
    let mut v = json!(d);
    let default = crate::recipe::DpoSection::default();
    if let Some(o) = v.as_object_mut() {
        if d.loss_weights.is_none() {
            o.remove("loss_weights");
        }
        if d.ld_alpha.is_none() {
            o.remove("ld_alpha");
        }
        if d.discopop_tau == default.discopop_tau {
            o.remove("discopop_tau");
        }
        if d.f_divergence_type == default.f_divergence_type {
            o.remove("f_divergence_type");
        }
        if d.f_alpha_divergence_coef == default.f_alpha_divergence_coef {
            o.remove("f_alpha_divergence_coef");
        }
    }
    v
}

pub fn fingerprint_hash(f: &BTreeMap<String, Value>) -> String {
    format!(
        "{:016x}",
        fnv1a(serde_json::to_string(f).unwrap_or_default().as_bytes())
    )
}

/// The dotted keys whose values differ between a checkpoint and the current recipe.
pub fn changed_fields(
    saved: &BTreeMap<String, Value>,
    now: &BTreeMap<String, Value>,
) -> Vec<String> {
    let mut keys: Vec<&String> = saved.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| saved.get(*k) != now.get(*k))
        .map(|k| {
            format!(
                "{k} (checkpoint: {}, recipe: {})",
                show(saved.get(k)),
                show(now.get(k))
            )
        })
        .collect()
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "absent".into(),
        Some(v) => {
            let s = v.to_string();
            if s.len() > 80 {
                format!("{}...", &s[..77])
            } else {
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{DpoLoss, DpoLosses, DpoSection};

    /// A DPO section without the newer keys fingerprints as it did before they existed
    /// (what older checkpoints recorded); with them, they count.
    #[test]
    fn dpo_fingerprints_keep_their_older_form() {
        assert_eq!(
            dpo_fingerprint(&DpoSection::default()),
            json!({"beta": 0.1, "loss_type": "sigmoid", "label_smoothing": 0.0, "reference": "base"})
        );
        let mpo = DpoSection {
            loss_type: DpoLosses(vec![DpoLoss::Sigmoid, DpoLoss::BcoPair, DpoLoss::Sft]),
            loss_weights: Some(vec![0.8, 0.2, 1.0]),
            discopop_tau: 0.1,
            ..DpoSection::default()
        };
        let f = dpo_fingerprint(&mpo);
        assert_eq!(f["loss_type"], json!(["sigmoid", "bco_pair", "sft"]));
        assert_eq!(f["loss_weights"], json!([0.8, 0.2, 1.0]));
        assert_eq!(f["discopop_tau"], json!(0.1));
    }
}
