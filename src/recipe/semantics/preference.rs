//! The preference objectives' settings: each section only under its objective, the DPO loss
//! list and the settings only some losses read, and what the objectives need of the data.

use std::path::Path;

use super::Ctx;
use crate::data::formats::Format;
use crate::recipe::dpo_loss::{DpoLoss, DpoLosses, FDivergence};
use crate::recipe::schema::*;

/// A preference section's `label_smoothing`: a flip probability in [0, 0.5), set (above 0)
/// only where the loss uses it (`loss_ok`: `Err` says which losses do).
fn check_label_smoothing(c: &mut Ctx<'_>, key: &str, value: f64, loss_ok: Result<(), String>) {
    if !(0.0..0.5).contains(&value) {
        c.bad(
            key,
            format!("{value} is not in [0, 0.5) (the probability that a preference is flipped)"),
        );
    } else if value > 0.0
        && let Err(which) = loss_ok
    {
        c.bad(key, format!("applies to loss_type {which}"));
    }
}

/// `train.dpo.loss_type`, its weights, and the settings that only some losses read.
fn check_dpo_losses(c: &mut Ctx<'_>, d: &DpoSection) {
    let losses = &d.loss_type;
    for (i, l) in losses.0.iter().enumerate() {
        if losses.0[..i].contains(l) {
            c.bad("train.dpo.loss_type", format!("lists {l} twice"));
        }
    }
    if losses.0.len() > DpoLosses::MAX {
        c.bad(
            "train.dpo.loss_type",
            format!(
                "lists {} losses; at most {} can be summed",
                losses.0.len(),
                DpoLosses::MAX
            ),
        );
    }
    if losses.0.iter().all(|&l| l == DpoLoss::Sft) {
        c.bad(
            "train.dpo.loss_type",
            "sft alone is supervised fine-tuning on the chosen completions: use train.objective: sft, or add a pairwise loss (e.g. [sigmoid, sft])",
        );
    }
    if let Some(w) = &d.loss_weights {
        if w.len() != losses.0.len() {
            c.bad(
                "train.dpo.loss_weights",
                format!(
                    "has {} weight{} for {} loss{} ({losses}); give one per loss_type",
                    w.len(),
                    if w.len() == 1 { "" } else { "s" },
                    losses.0.len(),
                    if losses.0.len() == 1 { "" } else { "es" }
                ),
            );
        }
        if let Some(bad) = w.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
            c.bad(
                "train.dpo.loss_weights",
                format!("{bad} is not a number >= 0"),
            );
        }
    }
    let smoothed = losses.0.iter().any(|l| l.uses_label_smoothing());
    check_label_smoothing(
        c,
        "train.dpo.label_smoothing",
        d.label_smoothing,
        match smoothed {
            true => Ok(()),
            false => Err(format!(
                "sigmoid (conservative DPO), robust and exo_pair only, not {losses}"
            )),
        },
    );
    if losses.contains(DpoLoss::ExoPair) && d.label_smoothing == 0.0 {
        c.bad(
            "train.dpo.label_smoothing",
            "must be above 0 for loss_type exo_pair (its epsilon: log 0 is infinite); the EXO paper suggests 0.001",
        );
    }
    if d.f_divergence_type != FDivergence::ReverseKl {
        let other: Vec<String> = losses
            .0
            .iter()
            .filter(|l| !l.takes_f_divergence())
            .map(ToString::to_string)
            .collect();
        if !other.is_empty() {
            c.bad(
                "train.dpo.f_divergence_type",
                format!(
                    "{} applies to the losses that compare chosen and rejected scores (sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop, sft), not {}; use reverse_kl with them",
                    d.f_divergence_type,
                    other.join(", ")
                ),
            );
        }
    }
    let alpha = d.f_alpha_divergence_coef;
    if !alpha.is_finite() {
        c.bad(
            "train.dpo.f_alpha_divergence_coef",
            format!("{alpha} is not a finite number"),
        );
    } else if alpha != DpoSection::default().f_alpha_divergence_coef
        && d.f_divergence_type != FDivergence::AlphaDivergence
    {
        c.bad(
            "train.dpo.f_alpha_divergence_coef",
            format!(
                "applies to f_divergence_type alpha_divergence only, not {}; remove it",
                d.f_divergence_type
            ),
        );
    }
    if let Some(a) = d.ld_alpha
        && !(0.0..=1.0).contains(&a)
    {
        c.bad(
            "train.dpo.ld_alpha",
            format!("{a} is not in [0, 1] (the weight of the tokens past the shorter completion)"),
        );
    }
    if !(d.discopop_tau > 0.0 && d.discopop_tau.is_finite()) {
        c.bad(
            "train.dpo.discopop_tau",
            format!("{} is not a positive number", d.discopop_tau),
        );
    } else if d.discopop_tau != DpoSection::default().discopop_tau
        && !losses.contains(DpoLoss::Discopop)
    {
        c.bad(
            "train.dpo.discopop_tau",
            format!("applies to loss_type discopop only, not {losses}; remove it"),
        );
    }
}

/// `train.objective` and its sections, and what preference objectives need of the data.
pub(super) fn check_objective(c: &mut Ctx<'_>, r: &Recipe, recipe_path: &Path) {
    let t = &r.train;
    let preference = t.objective != Objective::Sft;
    // A section for another objective is a mistake worth naming (its values would be ignored).
    for (key, used) in [
        ("dpo", t.objective == Objective::Dpo),
        ("orpo", t.objective == Objective::Orpo),
        ("simpo", t.objective == Objective::Simpo),
        ("cpo", t.objective == Objective::Cpo),
        ("kto", t.objective == Objective::Kto),
    ] {
        if !used && c.tree.at_path(&format!("train.{key}")).is_some() {
            c.bad(
                &format!("train.{key}"),
                format!(
                    "is set but train.objective is {}; set objective: {key} or remove the section",
                    t.objective
                ),
            );
        }
    }
    let beta_ok = |b: f64| b > 0.0 && b.is_finite();
    if t.objective == Objective::Dpo {
        let d = &t.dpo;
        if !beta_ok(d.beta) {
            c.bad(
                "train.dpo.beta",
                format!("{} is not a positive number", d.beta),
            );
        }
        check_dpo_losses(c, d);
        check_reference(c, "train.dpo.reference", &d.reference, recipe_path);
        if r.data.train_on_inputs {
            c.bad(
                "data.train_on_inputs",
                "has no meaning for objective dpo (its log-ratios cover the completions only); remove it",
            );
        }
    }
    if t.objective == Objective::Orpo && !beta_ok(t.orpo.beta) {
        c.bad(
            "train.orpo.beta",
            format!("{} is not a positive number", t.orpo.beta),
        );
    }
    if t.objective == Objective::Simpo {
        let sp = &t.simpo;
        if !beta_ok(sp.beta) {
            c.bad(
                "train.simpo.beta",
                format!("{} is not a positive number", sp.beta),
            );
        }
        if !sp.gamma.is_finite() || sp.gamma < 0.0 {
            c.bad(
                "train.simpo.gamma",
                format!(
                    "{} is not a number >= 0 (the target reward margin)",
                    sp.gamma
                ),
            );
        }
        if !sp.cpo_alpha.is_finite() || sp.cpo_alpha < 0.0 {
            c.bad(
                "train.simpo.cpo_alpha",
                format!(
                    "{} is not a number >= 0 (the NLL term's weight)",
                    sp.cpo_alpha
                ),
            );
        }
        if r.data.train_on_inputs {
            c.bad(
                "data.train_on_inputs",
                "has no meaning for objective simpo (its terms cover the completions only, as TRL's CPOTrainer); remove it",
            );
        }
    }
    if t.objective == Objective::Cpo {
        let cp = &t.cpo;
        if !beta_ok(cp.beta) {
            c.bad(
                "train.cpo.beta",
                format!("{} is not a positive number", cp.beta),
            );
        }
        check_label_smoothing(
            c,
            "train.cpo.label_smoothing",
            cp.label_smoothing,
            match cp.loss_type {
                CpoLoss::Sigmoid => Ok(()),
                other => Err(format!("sigmoid only, not {other}")),
            },
        );
        if !cp.cpo_alpha.is_finite() || cp.cpo_alpha < 0.0 {
            c.bad(
                "train.cpo.cpo_alpha",
                format!(
                    "{} is not a number >= 0 (the NLL term's weight)",
                    cp.cpo_alpha
                ),
            );
        }
        if r.data.train_on_inputs {
            c.bad(
                "data.train_on_inputs",
                "has no meaning for objective cpo (its terms cover the completions only, as TRL's CPOTrainer); remove it",
            );
        }
    }
    if t.objective == Objective::Kto {
        check_kto(c, r, recipe_path);
    }
    if preference && r.data.packing {
        c.bad(
            "data.packing",
            format!(
                "objective {} compares whole sequences pair by pair, which burnish does not pack; set packing: false",
                t.objective
            ),
        );
    }
    // Explicit formats must fit the objective (detected ones are checked when read).
    let mut lists = vec![("data.train", &r.data.train)];
    if let Some(ValidationSection::Sources(list)) = &r.data.validation {
        lists.push(("data.validation", list));
    }
    for (path, list) in lists {
        for (i, s) in list.iter().enumerate() {
            match s.format {
                Some(Format::Preference) if !preference => c.bad(
                    &format!("{path}.{i}.format"),
                    "preference pairs train with train.objective dpo, orpo, simpo, cpo or kto (the objective is sft)",
                ),
                Some(Format::Unpaired) if t.objective != Objective::Kto => c.bad(
                    &format!("{path}.{i}.format"),
                    format!(
                        "unpaired rows (one completion and a label each) train with train.objective: kto (the objective is {})",
                        t.objective
                    ),
                ),
                Some(Format::Unpaired) => {}
                Some(f) if preference && f != Format::Preference => c.bad(
                    &format!("{path}.{i}.format"),
                    format!(
                        "objective {} trains on preference pairs (format: preference), not {f}",
                        t.objective
                    ),
                ),
                _ => {}
            }
        }
    }
}

/// `train.dpo.reference` or `train.kto.reference`: `base` or an adapter folder.
fn check_reference(c: &mut Ctx<'_>, key: &str, reference: &str, recipe_path: &Path) {
    if reference == "base" {
        return;
    }
    let p = crate::recipe::resolve_relative(recipe_path, reference);
    if !p.join(crate::lora::peft::CONFIG_FILE).is_file() {
        c.bad(
            key,
            format!(
                "'{reference}' is neither base nor an adapter folder ({} has no adapter_config.json)",
                p.display()
            ),
        );
    }
}

/// KTO's settings, and the batch its KL estimate needs.
fn check_kto(c: &mut Ctx<'_>, r: &Recipe, recipe_path: &Path) {
    let k = &r.train.kto;
    if !(k.beta > 0.0 && k.beta.is_finite()) {
        c.bad(
            "train.kto.beta",
            format!("{} is not a positive number", k.beta),
        );
    }
    for (key, w) in [
        ("train.kto.desirable_weight", k.desirable_weight),
        ("train.kto.undesirable_weight", k.undesirable_weight),
    ] {
        if !(w > 0.0 && w.is_finite()) {
            c.bad(key, format!("{w} is not a positive number"));
        }
    }
    check_reference(c, "train.kto.reference", &k.reference, recipe_path);
    if k.loss_type == KtoLoss::Kto && r.train.micro_batch_size < 2 {
        c.bad(
            "train.micro_batch_size",
            "must be at least 2 for KTO: its KL estimate pairs each prompt with another row's completion of the same micro-batch (with 1 it would equal the reward); or use kto.loss_type: apo_zero_unpaired, which has none",
        );
    }
    if r.data.train_on_inputs {
        c.bad(
            "data.train_on_inputs",
            "has no meaning for objective kto (its log-ratios cover the completions only); remove it",
        );
    }
}
