//! `burnish validate <RECIPE>`: check a recipe, its model reference and its data (a sample of
//! rows is parsed and tokenized) without loading weights or downloading anything.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::data::dataset::prepare;
use crate::recipe::LoadedRecipe;
use crate::train::setup::{data_plan, lora_settings, model_folder};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recipe (YAML).
    pub recipe: PathBuf,
    /// Override a value: `--set train.optimizer.lr=1e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Rows to parse and tokenize per source.
    #[arg(long, default_value_t = 64)]
    pub sample: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = LoadedRecipe::load(&args.recipe, &args.set)?;
    let r = &loaded.recipe;
    let base = &r.model.base;
    let is_local = crate::recipe::resolve_relative(&loaded.path, base).exists()
        || base.starts_with(crate::model::preset::PREFIX);
    if !is_local && !crate::hub::is_cached(base, &r.model.revision) {
        println!(
            "ok: {} (model {base} is a Hub repo id; not downloaded, so its files were not checked)",
            args.recipe.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let folder = model_folder(&loaded)?;
    // Headers and shapes only: nothing is read beyond the safetensors headers.
    folder.weights()?.validate(&folder.config)?;
    lora_settings(r).resolve(&folder.config).context("lora")?;
    let tokenizer = crate::train::setup::load_tokenizer(&folder)?;
    let mut plan = data_plan(&loaded, &folder.config)?;
    for s in plan.train.iter_mut() {
        s.max_rows = Some(s.max_rows.map_or(args.sample, |m| m.min(args.sample)));
    }
    if let crate::data::dataset::Validation::Sources(list) = &mut plan.validation {
        for s in list.iter_mut() {
            s.max_rows = Some(args.sample);
        }
    }
    let data = prepare(&plan, tokenizer.as_ref()).context("checking the dataset sample")?;
    crate::train::setup::warn_past_context(&folder.config, &data);
    println!(
        "ok: {} (model {}, {} sample rows tokenized: {} examples, {} trained tokens)",
        args.recipe.display(),
        folder.config.architecture,
        data.stats.rows_read,
        data.stats.examples,
        data.stats.trained_tokens
    );
    Ok(ExitCode::SUCCESS)
}
