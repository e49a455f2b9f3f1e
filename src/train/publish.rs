//! What happens after the last step: merge the adapter into the base (when asked), write model
//! cards with the loss plot, and publish to the Hub (when the recipe names a repo).

use std::path::{Path, PathBuf};

use super::run::TrainOutcome;
use super::setup::RunSetup;
use crate::error::user;
use crate::hub::HubEnv;
use crate::hub::card::{self, CardInfo, CardKind, RunSummary};
use crate::hub::upload::{HubClient, PushOptions, folder_files};
use crate::lora::merge::{MergeRequest, OutputDtype, merge};
use crate::lora::peft::read_adapter;
use crate::observe::metrics::{self, Record};
use crate::recipe::PushWhat;

fn summary(setup: &RunSetup, outcome: &TrainOutcome, out: &Path) -> RunSummary {
    let records = metrics::read(&out.join(metrics::FILE)).unwrap_or_default();
    let last_train = records.iter().rev().find_map(|r| match r {
        Record::Step(s) => Some(s.loss),
        _ => None,
    });
    RunSummary {
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
        datasets: card::datasets_of(setup.recipe()),
        summary: Some(summary.clone()),
        gguf: card::gguf_files(dir),
    };
    std::fs::write(dir.join("README.md"), card::render(&info))?;
    Ok(())
}

/// Merge, cards, push. Returns the merged folder when one was written.
pub fn finish(
    setup: &RunSetup,
    outcome: &TrainOutcome,
    force_merge: bool,
) -> anyhow::Result<Option<PathBuf>> {
    let r = setup.recipe();
    let out = &setup.output_dir;
    let Some(adapter_dir) = outcome.adapter_dir.clone() else {
        return Ok(None);
    };
    let summary = summary(setup, outcome, out);
    write_card(&adapter_dir, CardKind::Adapter, setup, &summary)?;
    let wants_merged = r.output.merge
        || !r.output.gguf.is_empty()
        || force_merge
        || (r.hub.repo.is_some() && r.hub.push.contains(&PushWhat::Merged));
    let merged = if wants_merged {
        let dir = out.join("merged");
        let adapter = read_adapter(&adapter_dir, &setup.folder.config)?;
        let dtype = match r.output.merge_dtype.as_str() {
            "auto" => None,
            other => Some(other.parse::<OutputDtype>().map_err(user)?),
        };
        let report = merge(&MergeRequest {
            base_dir: &setup.folder.dir,
            config: &setup.folder.config,
            adapter: &adapter,
            out_dir: &dir,
            dtype,
            force: true,
            dequantized: None,
        })?;
        tracing::info!(
            "merged model written to {} ({} projections merged)",
            dir.display(),
            report.merged_tensors
        );
        crate::export::write_run_files(&dir, &r.output.gguf, out)?;
        write_card(&dir, CardKind::Merged, setup, &summary)?;
        Some(dir)
    } else {
        None
    };
    if let Some(repo) = &r.hub.repo {
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
    Ok(merged)
}
