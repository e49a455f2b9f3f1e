//! What happens after the last step: merge the adapter into the base (when asked), write model
//! cards with the loss plot, and publish to the Hub (when the recipe names a repo).

use std::path::{Path, PathBuf};

use super::run::TrainOutcome;
use super::setup::RunSetup;
use super::signals::StopFlag;
use crate::hub::HubEnv;
use crate::hub::card::{self, CardInfo, CardKind, RunSummary};
use crate::hub::upload::{HubClient, PushOptions, folder_files};
use crate::lora::LoraError;
use crate::lora::merge::{MergeRequest, OutputDtype, merge};
use crate::lora::peft::read_adapter;
use crate::observe::metrics::{self, Record};
use crate::recipe::{MergeDtype, PushWhat};

fn summary(setup: &RunSetup, outcome: &TrainOutcome, out: &Path) -> RunSummary {
    let records = metrics::read(&out.join(metrics::FILE)).unwrap_or_default();
    let last_train = records.iter().rev().find_map(|r| match r {
        Record::Step(s) => Some(s.loss),
        _ => None,
    });
    // The last step's preference metrics, then the final evaluation's.
    let last_step = records.iter().rev().find_map(|r| match r {
        Record::Step(s) => Some(s.objective.clone()),
        _ => None,
    });
    let last_eval = records.iter().rev().find_map(|r| match r {
        Record::Eval(e) => Some(e.objective.clone()),
        _ => None,
    });
    let preference_metrics = last_step.into_iter().chain(last_eval).flatten().collect();
    let objective = match setup.recipe().train.objective {
        crate::recipe::Objective::Sft => String::new(),
        other => other.to_string(),
    };
    RunSummary {
        objective,
        preference_metrics,
        recipe_yaml: serde_saphyr::to_string(setup.recipe()).unwrap_or_default(),
        steps: outcome.global_step,
        final_train_loss: last_train,
        final_eval_loss: outcome.final_eval.map(|e| e.loss),
        trainable_parameters: setup.trainable_parameters(),
        train_examples: setup.data.stats.train_examples,
        has_plot: out.join("loss.svg").is_file(),
    }
}

fn write_card(
    dir: &Path,
    kind: CardKind,
    setup: &RunSetup,
    summary: &RunSummary,
) -> anyhow::Result<()> {
    let plot = setup.output_dir.join("loss.svg");
    if plot.is_file() {
        std::fs::copy(&plot, dir.join("loss.svg"))?;
    }
    let info = CardInfo {
        kind,
        base_model: setup.recipe().model.base.clone(),
        license: card::license_of(&setup.folder.dir),
        datasets: hub_datasets(setup.recipe()),
        summary: Some(summary.clone()),
        gguf: card::gguf_files(dir),
        dora: setup.lora.dora,
    };
    std::fs::write(dir.join("README.md"), card::render(&info))?;
    Ok(())
}

/// The Hub datasets a recipe trains on (for the card's `datasets:`).
fn hub_datasets(recipe: &crate::recipe::Recipe) -> Vec<String> {
    let mut out: Vec<String> = recipe
        .data
        .train
        .iter()
        .filter_map(|s| s.hub.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The recipe's `output.merge_dtype`: `None` keeps the base's own dtype.
fn merge_dtype(d: MergeDtype) -> Option<OutputDtype> {
    match d {
        MergeDtype::Auto => None,
        MergeDtype::F32 => Some(OutputDtype::F32),
        MergeDtype::Bf16 => Some(OutputDtype::Bf16),
        MergeDtype::F16 => Some(OutputDtype::F16),
    }
}

/// How the end of a run went.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// Cards written, merged (the folder, when one was asked for) and published.
    Done(Option<PathBuf>),
    /// A signal arrived before the merge or publishing finished (the adapter is saved).
    Interrupted(i32),
}

/// Cards, merge, push. `fresh`: this invocation trained (false when a completed run was
/// resumed, which then only makes what is missing and publishes nothing again). A signal
/// stops between the phases, or inside the merge between shards.
pub fn finish(
    setup: &RunSetup,
    outcome: &TrainOutcome,
    force_merge: bool,
    fresh: bool,
    stop: &StopFlag,
) -> anyhow::Result<Finished> {
    let r = setup.recipe();
    let out = &setup.output_dir;
    let Some(adapter_dir) = outcome.adapter_dir.clone() else {
        return Ok(Finished::Done(None));
    };
    let summary = summary(setup, outcome, out);
    if fresh || !adapter_dir.join("README.md").is_file() {
        write_card(&adapter_dir, CardKind::Adapter, setup, &summary)?;
    }
    let wants_merged = r.output.merge
        || !r.output.gguf.is_empty()
        || force_merge
        || (r.hub.repo.is_some() && r.hub.push.contains(&PushWhat::Merged));
    let merged_dir = out.join("merged");
    let mut produced = fresh;
    let merged = if wants_merged && (fresh || !merged_dir.join("config.json").is_file()) {
        if let Some(sig) = stop.requested() {
            return Ok(Finished::Interrupted(sig));
        }
        let adapter = read_adapter(&adapter_dir, &setup.folder.config)?;
        let cancel = || stop.requested().is_some();
        let report = match merge(&MergeRequest {
            base_dir: &setup.folder.dir,
            config: &setup.folder.config,
            adapter: &adapter,
            out_dir: &merged_dir,
            dtype: merge_dtype(r.output.merge_dtype),
            force: true,
            dequantized: None,
            cancel: Some(&cancel),
        }) {
            Err(LoraError::Cancelled) => {
                return Ok(Finished::Interrupted(stop.requested().unwrap_or(2)));
            }
            other => other?,
        };
        tracing::info!(
            "merged model written to {} ({} projections merged)",
            merged_dir.display(),
            report.merged_tensors
        );
        crate::export::write_run_files(&merged_dir, &r.output.gguf, out)?;
        write_card(&merged_dir, CardKind::Merged, setup, &summary)?;
        produced = true;
        Some(merged_dir)
    } else if wants_merged {
        Some(merged_dir)
    } else {
        None
    };
    if let Some(sig) = stop.requested() {
        return Ok(Finished::Interrupted(sig));
    }
    if let (Some(repo), true) = (&r.hub.repo, produced) {
        let client = HubClient::new(HubEnv::from_env());
        let message = format!("burnish: {} steps", outcome.global_step);
        let opts = PushOptions {
            private: r.hub.private,
            revision: "main",
            message: &message,
            description: "",
        };
        if r.hub.push.contains(&PushWhat::Adapter) {
            let report = client.push(repo, "model", &folder_files(&adapter_dir)?, &opts)?;
            tracing::info!("adapter published: {}", report.commit_url);
        }
        if let (true, Some(dir)) = (r.hub.push.contains(&PushWhat::Merged), &merged) {
            let target = r
                .hub
                .merged_repo
                .clone()
                .unwrap_or_else(|| format!("{repo}-merged"));
            let report = client.push(&target, "model", &folder_files(dir)?, &opts)?;
            tracing::info!("merged model published: {}", report.commit_url);
        }
    }
    Ok(Finished::Done(merged))
}
