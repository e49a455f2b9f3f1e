//! Checks on values beyond their types: ranges, names, files that must exist, combinations.

use std::path::Path;

mod preference;

use super::check::{Issues, suggestion};
use super::node::{Node, Origin};
use super::schema::*;
use crate::data::formats::Format;
use crate::hub::is_repo_id;
use crate::lora::TargetSpec;
use crate::model::params::LINEAR_MODULES;

struct Ctx<'a> {
    tree: &'a Node,
    issues: &'a mut Issues,
}

impl Ctx<'_> {
    fn origin(&self, path: &str) -> Origin {
        if let Some(n) = self.tree.at_path(path) {
            return n.origin.clone();
        }
        // Defaults have no location; point at the closest written parent.
        let mut p = path;
        while let Some((parent, _)) = p.rsplit_once('.') {
            if let Some(n) = self.tree.at_path(parent) {
                return n.origin.clone();
            }
            p = parent;
        }
        Origin::Unknown
    }

    fn bad(&mut self, path: &str, message: impl Into<String>) {
        let origin = self.origin(path);
        self.issues.push(path, &origin, message);
    }

    fn one_of(&mut self, path: &str, value: &str, options: &[&str]) {
        if !options.contains(&value) {
            let hint = suggestion(value, options)
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            self.bad(
                path,
                format!("'{value}' is not one of {}{hint}", options.join(", ")),
            );
        }
    }
}

pub fn check(r: &Recipe, tree: &Node, recipe_path: &Path, issues: &mut Issues) {
    let mut c = Ctx { tree, issues };

    // model
    let base = r.model.base.as_str();
    if base.is_empty() {
        c.bad(
            "model.base",
            "must name a Hub repo id, a local model folder or builtin:<preset>",
        );
    } else if let Some(name) = base.strip_prefix(crate::model::preset::PREFIX) {
        let names = crate::model::preset::names();
        if !names.contains(&name) {
            c.one_of("model.base", name, &names);
        }
    } else if !super::resolve_relative(recipe_path, base).exists() && !is_repo_id(base) {
        c.bad(
            "model.base",
            format!("'{base}' is not a local folder and not a Hub repo id (org/name)"),
        );
    }
    if let Some(q) = &r.model.quantize {
        if let Some(p) = q.bits_problem() {
            c.bad("model.quantize.bits", p);
        }
        if let Some(p) = q.block_size_problem() {
            c.bad("model.quantize.block_size", p);
        }
    }

    // lora
    let l = &r.lora;
    if l.r == 0 {
        c.bad("lora.r", "must be at least 1");
    }
    if !(l.alpha > 0.0 && l.alpha.is_finite()) {
        c.bad("lora.alpha", "must be a positive number");
    }
    if !(0.0..1.0).contains(&l.dropout) {
        c.bad("lora.dropout", format!("{} is not in [0, 1)", l.dropout));
    }
    match &l.targets {
        TargetSpec::List(names) => {
            if names.is_empty() {
                c.bad("lora.targets", "is empty; use all-linear or name modules");
            }
            for (i, n) in names.iter().enumerate() {
                let short = n.rsplit('.').next().unwrap_or(n);
                if !LINEAR_MODULES.contains(&short) {
                    let hint = suggestion(short, &LINEAR_MODULES)
                        .map(|s| format!(" (did you mean '{s}'?)"))
                        .unwrap_or_default();
                    c.bad(
                        &format!("lora.targets.{i}"),
                        format!(
                            "unknown module '{n}'{hint}; linear modules are {} (or use all-linear)",
                            LINEAR_MODULES.join(", ")
                        ),
                    );
                }
            }
        }
        TargetSpec::One(s) if s != "all-linear" => {
            if let Err(e) = regex::Regex::new(s) {
                c.bad(
                    "lora.targets",
                    format!("'{s}' is neither all-linear nor a valid regular expression: {e}"),
                );
            }
        }
        TargetSpec::One(_) => {}
    }
    for (k, v) in &l.rank_pattern {
        if *v == 0 {
            c.bad(&format!("lora.rank_pattern.{k}"), "rank must be at least 1");
        }
    }
    if let Some(dir) = &l.init_from {
        let p = super::resolve_relative(recipe_path, dir);
        if !p.join(crate::lora::peft::CONFIG_FILE).is_file() {
            c.bad(
                "lora.init_from",
                format!(
                    "{} is not an adapter folder (no adapter_config.json)",
                    p.display()
                ),
            );
        }
    }

    // data
    let d = &r.data;
    if d.train.is_empty() {
        c.bad("data.train", "needs at least one source");
    }
    check_sources(&mut c, "data.train", &d.train, recipe_path);
    match &d.validation {
        Some(ValidationSection::Split { split }) if !(*split > 0.0 && *split < 1.0) => {
            c.bad(
                "data.validation.split",
                format!("{split} is not a fraction in (0, 1)"),
            );
        }
        Some(ValidationSection::Split { .. }) => {}
        Some(ValidationSection::Sources(list)) => {
            check_sources(&mut c, "data.validation", list, recipe_path)
        }
        None => {}
    }
    if d.seq_len < 2 {
        c.bad("data.seq_len", "must be at least 2");
    }
    if let Some(t) = &d.chat_template
        && t.ends_with(".jinja")
        && !super::resolve_relative(recipe_path, t).is_file()
    {
        c.bad("data.chat_template", format!("template file {t} not found"));
    }

    // train
    let t = &r.train;
    match t.max_steps {
        Some(0) => c.bad("train.max_steps", "must be at least 1"),
        None if t.epochs == 0 => c.bad("train.epochs", "must be at least 1 (or set max_steps)"),
        _ => {}
    }
    if t.micro_batch_size == 0 {
        c.bad("train.micro_batch_size", "must be at least 1");
    }
    if t.grad_accum == 0 {
        c.bad("train.grad_accum", "must be at least 1");
    }
    let o = &t.optimizer;
    if !(o.lr > 0.0 && o.lr.is_finite()) {
        c.bad("train.optimizer.lr", "must be a positive number");
    }
    for (i, b) in o.betas.iter().enumerate() {
        if !(0.0..1.0).contains(b) {
            c.bad(
                &format!("train.optimizer.betas.{i}"),
                format!("{b} is not in [0, 1)"),
            );
        }
    }
    if o.eps.is_nan() || o.eps <= 0.0 {
        c.bad("train.optimizer.eps", "must be positive");
    }
    if o.weight_decay.is_nan() || o.weight_decay < 0.0 {
        c.bad("train.optimizer.weight_decay", "must be zero or positive");
    }
    if let Some(alpha) = t.neftune_noise_alpha
        && !(alpha >= 0.0 && alpha.is_finite())
    {
        c.bad(
            "train.neftune_noise_alpha",
            "must be zero or positive (5 in the NEFTune paper) or null",
        );
    }
    if let Some(ratio) = o.loraplus_lr_ratio
        && !(ratio > 0.0 && ratio.is_finite())
    {
        c.bad(
            "train.optimizer.loraplus_lr_ratio",
            "must be a positive number (16 in the LoRA+ paper) or null",
        );
    }
    let s = &t.scheduler;
    if !(0.0..1.0).contains(&s.warmup_ratio) {
        c.bad("train.scheduler.warmup_ratio", "must be in [0, 1)");
    }
    if !(s.min_lr >= 0.0 && (o.lr <= 0.0 || s.min_lr <= o.lr)) {
        c.bad(
            "train.scheduler.min_lr",
            format!("must be between 0 and the learning rate ({})", o.lr),
        );
    }
    check_schedule_keys(&mut c, s);
    if let Some(n) = t.max_grad_norm
        && (n.is_nan() || n <= 0.0)
    {
        c.bad(
            "train.max_grad_norm",
            "must be positive (or null for no clipping)",
        );
    }
    if let Some(list) = &t.devices
        && let Err(e) = list.check()
    {
        c.bad("train.devices", e);
    }
    if let Some(d) = &r.distributed {
        if d.nodes == Some(0) {
            c.bad("distributed.nodes", "must be at least 1");
        }
        if let Some(o) = &d.orchestrator
            && !o
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            c.bad(
                "distributed.orchestrator",
                format!("'{o}' must be host:port"),
            );
        }
        if d.timeout_s == 0 {
            c.bad("distributed.timeout_s", "must be at least 1 second");
        }
    }
    if t.keep_last == 0 {
        c.bad("train.keep_last", "must be at least 1");
    }
    check_eval_decisions(&mut c, r);
    preference::check_objective(&mut c, r, recipe_path);

    // output, logging, hub
    for (i, t) in r.output.gguf.iter().enumerate() {
        c.one_of(&format!("output.gguf.{i}"), t, crate::export::EXPORT_TYPES);
    }
    if r.logging.every == 0 {
        c.bad("logging.every", "must be at least 1");
    }
    if let Some(repo) = &r.hub.repo {
        if !is_repo_id(repo) {
            c.bad("hub.repo", format!("'{repo}' is not a repo id (org/name)"));
        }
        if let Some(m) = &r.hub.merged_repo
            && !is_repo_id(m)
        {
            c.bad(
                "hub.merged_repo",
                format!("'{m}' is not a repo id (org/name)"),
            );
        }
        if r.hub.push.is_empty() {
            c.bad(
                "hub.push",
                "is empty; say what to push: [adapter], [merged] or both",
            );
        }
    }
}

const NEEDS_VALIDATION: &str =
    "needs evaluations: set data.validation (a split such as {split: 0.05} or sources)";

/// `load_best_model_at_end` and early stopping decide from evaluations, so they need some.
fn check_eval_decisions(c: &mut Ctx<'_>, r: &Recipe) {
    let t = &r.train;
    // A count per epoch replaces the step interval: both set is a contradiction.
    for (per_epoch, value, every) in [
        ("evals_per_epoch", t.evals_per_epoch, "eval_every"),
        ("saves_per_epoch", t.saves_per_epoch, "save_every"),
    ] {
        let key = format!("train.{per_epoch}");
        match value {
            Some(0) => c.bad(&key, "must be at least 1 (or null, to use the step interval)"),
            Some(_) if c.tree.at_path(&format!("train.{every}")).is_some() => c.bad(
                &key,
                format!("and train.{every} are both set; keep one (a count per epoch, or a number of steps)"),
            ),
            _ => {}
        }
    }
    if t.evals_per_epoch.is_some() && r.data.validation.is_none() {
        c.bad("train.evals_per_epoch", NEEDS_VALIDATION);
    }
    let no_validation = r.data.validation.is_none();
    if t.eval_on_start && no_validation {
        c.bad("train.eval_on_start", NEEDS_VALIDATION);
    }
    if t.load_best_model_at_end && no_validation {
        c.bad("train.load_best_model_at_end", NEEDS_VALIDATION);
    }
    if let Some(p) = t.early_stopping_patience {
        if p == 0 {
            c.bad(
                "train.early_stopping_patience",
                "must be at least 1 (evaluations without improvement before stopping), or null",
            );
        }
        if no_validation {
            c.bad("train.early_stopping_patience", NEEDS_VALIDATION);
        }
        if t.eval_every == 0 && t.evals_per_epoch.is_none() {
            c.bad(
                "train.early_stopping_patience",
                "needs evaluations during training: set train.eval_every to a number of steps (or train.evals_per_epoch)",
            );
        }
    }
    if !(t.early_stopping_threshold >= 0.0 && t.early_stopping_threshold.is_finite()) {
        c.bad(
            "train.early_stopping_threshold",
            "must be zero or a positive difference of the metric",
        );
    }
    let metric = t.metric_for_best_model.as_str();
    let names = crate::train::best::eval_metric_names(t);
    c.one_of(
        "train.metric_for_best_model",
        metric.strip_prefix("eval_").unwrap_or(metric),
        &names,
    );
}

/// The settings only some schedules read: each is refused under another schedule, and
/// WSD needs the length of its decay.
fn check_schedule_keys(c: &mut Ctx<'_>, s: &SchedulerSection) {
    use crate::recipe::SchedulerKind as K;
    let set = [
        (
            "num_cycles",
            s.num_cycles.is_some(),
            &[K::CosineWithRestarts, K::WarmupStableDecay][..],
        ),
        ("power", s.power.is_some(), &[K::Polynomial][..]),
        ("timescale", s.timescale.is_some(), &[K::InverseSqrt][..]),
        (
            "decay_steps",
            s.decay_steps.is_some(),
            &[K::WarmupStableDecay][..],
        ),
        (
            "decay_ratio",
            s.decay_ratio.is_some(),
            &[K::WarmupStableDecay][..],
        ),
        (
            "decay_type",
            s.decay_type.is_some(),
            &[K::WarmupStableDecay][..],
        ),
    ];
    for (key, present, kinds) in set {
        if present && !kinds.contains(&s.name) {
            let names: Vec<String> = kinds.iter().map(ToString::to_string).collect();
            c.bad(
                &format!("train.scheduler.{key}"),
                format!(
                    "applies to name {} only, not {}; remove it",
                    names.join(" and "),
                    s.name
                ),
            );
        }
    }
    let positive = |x: f64| x > 0.0 && x.is_finite();
    if let Some(n) = s.num_cycles
        && !positive(n)
    {
        c.bad(
            "train.scheduler.num_cycles",
            format!("{n} is not a positive number"),
        );
    }
    if let Some(p) = s.power
        && !positive(p)
    {
        c.bad(
            "train.scheduler.power",
            format!("{p} is not a positive number"),
        );
    }
    if s.timescale == Some(0) {
        c.bad("train.scheduler.timescale", "must be at least 1 step");
    }
    if s.name == K::InverseSqrt && s.min_lr > 0.0 {
        c.bad(
            "train.scheduler.min_lr",
            "inverse_sqrt decays without a floor; remove min_lr or use another schedule",
        );
    }
    if s.name == K::WarmupStableDecay {
        match (s.decay_steps, s.decay_ratio) {
            (None, None) => c.bad(
                "train.scheduler.decay_steps",
                "warmup_stable_decay needs the length of its decay: set decay_steps or decay_ratio (e.g. 0.1 of the steps)",
            ),
            (Some(_), Some(_)) => c.bad(
                "train.scheduler.decay_ratio",
                "set decay_steps or decay_ratio, not both",
            ),
            (_, Some(r)) if !(r > 0.0 && r <= 1.0) => c.bad(
                "train.scheduler.decay_ratio",
                format!("{r} is not in (0, 1]"),
            ),
            (Some(0), _) => c.bad("train.scheduler.decay_steps", "must be at least 1 step"),
            _ => {}
        }
    }
}

fn check_sources(c: &mut Ctx<'_>, path: &str, sources: &[SourceSection], recipe_path: &Path) {
    for (i, s) in sources.iter().enumerate() {
        let p = format!("{path}.{i}");
        match (&s.path, &s.hub) {
            (Some(_), Some(_)) => c.bad(&p, "give either path or hub, not both"),
            (None, None) => c.bad(&p, "needs a path (local file) or hub (dataset repo id)"),
            (Some(file), None) => {
                let resolved = super::resolve_relative(recipe_path, file);
                if !resolved.is_file() {
                    c.bad(&format!("{p}.path"), format!("file {file} not found (looked in the working directory and beside the recipe)"));
                } else if !["jsonl", "json", "parquet", "ndjson"]
                    .contains(&resolved.extension().and_then(|e| e.to_str()).unwrap_or(""))
                {
                    c.bad(
                        &format!("{p}.path"),
                        "expected a .jsonl, .json or .parquet file",
                    );
                }
            }
            (None, Some(repo)) => {
                if !is_repo_id(repo) {
                    c.bad(
                        &format!("{p}.hub"),
                        format!("'{repo}' is not a dataset repo id (org/name)"),
                    );
                }
            }
        }
        for (from, to) in &s.roles {
            if !crate::data::formats::ROLES.contains(&to.as_str()) {
                c.bad(
                    &format!("{p}.roles.{from}"),
                    format!(
                        "'{to}' is not a role chat templates render; use one of {}",
                        crate::data::formats::ROLES.join(", ")
                    ),
                );
            }
        }
        if let Some(format) = s.format {
            let allowed: &[&str] = format.fields();
            for k in s.fields.keys() {
                if !allowed.contains(&k.as_str()) {
                    c.bad(
                        &format!("{p}.fields.{k}"),
                        format!(
                            "format {format} has no field '{k}'; its fields are {}",
                            allowed.join(", ")
                        ),
                    );
                }
            }
        } else if !s.fields.is_empty() {
            let all: Vec<&str> = Format::ALL
                .iter()
                .flat_map(|f| f.fields().iter().copied())
                .collect();
            for k in s.fields.keys() {
                if !all.contains(&k.as_str()) {
                    c.bad(
                        &format!("{p}.fields.{k}"),
                        format!("no format has a field '{k}'"),
                    );
                }
            }
        }
    }
}
