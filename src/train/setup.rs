//! From a validated recipe to everything a run needs before any weight is loaded: the model
//! folder, config and tokenizer, the prepared data, the adapter targets and the step counts.
//! `validate`, `plan` and `train` all start here.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use crate::data::dataset::{DataPlan, LocalSource, PreparedData, TooLong, Validation, prepare};
use crate::lora::LoraSettings;
use crate::lora::settings::{TargetModule, trainable_parameters};
use crate::model::{ModelConfig, ModelFolder, TokenizerBundle};
use crate::recipe::{
    LoadedRecipe, Objective, Recipe, SourceSection, Truncation, ValidationSection,
};
use crate::train::preference::PreferenceObjective;

/// How many micro-batches and optimizer steps a run has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepCounts {
    pub rows: usize,
    pub micro_batches_per_epoch: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    /// Epochs needed for `total_steps` (fractional epochs round up).
    pub epochs: usize,
    pub effective_batch_rows: usize,
}

pub fn step_counts(
    rows: usize,
    micro_batch: usize,
    grad_accum: usize,
    epochs: usize,
    max_steps: Option<usize>,
) -> StepCounts {
    let micro = rows.div_ceil(micro_batch.max(1));
    let per_epoch = micro.div_ceil(grad_accum.max(1)).max(1);
    let total = max_steps.unwrap_or(per_epoch * epochs.max(1));
    StepCounts {
        rows,
        micro_batches_per_epoch: micro,
        steps_per_epoch: per_epoch,
        total_steps: total,
        epochs: total.div_ceil(per_epoch),
        effective_batch_rows: micro_batch * grad_accum,
    }
}

pub fn lora_settings(r: &Recipe) -> LoraSettings {
    LoraSettings {
        r: r.lora.r,
        alpha: r.lora.alpha,
        dropout: r.lora.dropout,
        targets: r.lora.targets.clone(),
        rslora: r.lora.rslora,
        dora: r.lora.dora,
        init: r.lora.init,
        layers_to_transform: r.lora.layers_to_transform.clone(),
        rank_pattern: r.lora.rank_pattern.clone(),
        alpha_pattern: r.lora.alpha_pattern.clone(),
    }
}

/// The model folder of the recipe (downloading into the Hub cache if it is a repo id).
pub fn model_folder(loaded: &LoadedRecipe) -> anyhow::Result<ModelFolder> {
    let base = &loaded.recipe.model.base;
    let local = crate::recipe::resolve_relative(&loaded.path, base);
    let dir = if local.exists() {
        local
    } else {
        crate::hub::resolve_model_revision(base, &loaded.recipe.model.revision)?
    };
    ModelFolder::open(&dir).with_context(|| format!("model.base '{base}'"))
}

fn local_sources(
    loaded: &LoadedRecipe,
    list: &[SourceSection],
) -> anyhow::Result<Vec<LocalSource>> {
    list.iter()
        .map(|s| {
            let files = match (&s.path, &s.hub) {
                (Some(p), _) => vec![loaded.resolve_path(p)],
                (None, Some(repo)) => crate::hub::dataset_files(
                    repo,
                    s.split.as_deref(),
                    s.files.as_deref(),
                    s.revision.as_deref(),
                )?,
                (None, None) => vec![],
            };
            Ok(LocalSource {
                files,
                format: s.format,
                fields: s
                    .fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                roles: s
                    .roles
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                max_rows: s.max_rows,
            })
        })
        .collect()
}

pub fn data_plan(loaded: &LoadedRecipe, config: &ModelConfig) -> anyhow::Result<DataPlan> {
    let r = &loaded.recipe;
    let d = &r.data;
    let chat_template = match &d.chat_template {
        Some(t) if t.ends_with(".jinja") => {
            let path = loaded.resolve_path(t);
            Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading chat template {}", path.display()))?,
            )
        }
        other => other.clone(),
    };
    Ok(DataPlan {
        train: local_sources(loaded, &d.train)?,
        validation: match &d.validation {
            None => Validation::None,
            Some(ValidationSection::Split { split }) => Validation::Split(*split),
            Some(ValidationSection::Sources(list)) => {
                Validation::Sources(local_sources(loaded, list)?)
            }
        },
        seq_len: d.seq_len,
        packing: d.packing,
        train_on_inputs: d.train_on_inputs,
        too_long: match d.truncation {
            Truncation::Truncate => TooLong::Truncate,
            Truncation::Drop => TooLong::Drop,
        },
        chat_template,
        system_prompt: d.system_prompt.clone(),
        seed: r.train.seed,
        vocab_size: config.vocab_size,
        unpair: r.train.objective == crate::recipe::Objective::Kto,
    })
}

/// Preference objectives train on preference pairs, SFT on single examples.
/// Positions past `max_position_embeddings` without rope scaling are extrapolated, which
/// transformers allows silently; the user should hear of it before a long run.
pub fn warn_past_context(config: &ModelConfig, data: &PreparedData) {
    let longest = data.longest_example();
    let trained = config.max_position_embeddings;
    if longest > trained && config.rope_scaling == crate::model::config::RopeScaling::None {
        tracing::warn!(
            "the longest example has {longest} tokens, more than the {trained} positions the \
             model was made for (max_position_embeddings in its config.json), which sets no \
             rope_scaling: positions past {trained} are extrapolated. To extend the context, \
             train from a copy of the model folder whose config.json sets rope_scaling as the \
             model card says (Qwen2.5: {{\"type\": \"yarn\", \"factor\": 4.0, \
             \"original_max_position_embeddings\": 32768}}); else lower data.seq_len"
        );
    }
}

fn check_objective_data(loaded: &LoadedRecipe, data: &PreparedData) -> anyhow::Result<()> {
    let objective = loaded.recipe.train.objective;
    let preference = objective != Objective::Sft;
    if preference != data.is_preference() {
        let found = data
            .formats
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let message = if preference {
            format!(
                "{}: train.objective {objective} trains on preference pairs (rows with prompt, chosen and rejected; format: preference), but data.train is {found}",
                loaded.path.display()
            )
        } else {
            format!(
                "{}: data.train holds preference pairs; train them with train.objective: dpo, orpo, simpo, cpo or kto",
                loaded.path.display()
            )
        };
        anyhow::bail!(crate::error::user(message));
    }
    let unpaired = data
        .train_pairs
        .iter()
        .chain(&data.validation_pairs)
        .any(|p| p.label.is_some());
    if unpaired && objective != Objective::Kto {
        anyhow::bail!(crate::error::user(format!(
            "{}: the data holds unpaired rows (prompt, completion and label; format: unpaired), which train with train.objective: kto, not {objective}",
            loaded.path.display()
        )));
    }
    Ok(())
}

/// The folder's tokenizer; a folder without `tokenizer.json` can still train on pretokenized data.
pub fn load_tokenizer(folder: &ModelFolder) -> anyhow::Result<Option<TokenizerBundle>> {
    if folder.dir.join("tokenizer.json").is_file() {
        Ok(Some(folder.tokenizer()?))
    } else {
        Ok(None)
    }
}

/// Everything known about a run before weights are loaded.
pub struct RunSetup {
    pub loaded: LoadedRecipe,
    pub folder: ModelFolder,
    /// None when the model folder has no tokenizer files (pretokenized data only).
    pub tokenizer: Option<TokenizerBundle>,
    pub data: PreparedData,
    pub lora: LoraSettings,
    pub targets: Vec<TargetModule>,
    pub counts: StepCounts,
    pub output_dir: PathBuf,
}

impl RunSetup {
    pub fn new(loaded: LoadedRecipe) -> anyhow::Result<Self> {
        let folder = model_folder(&loaded)?;
        let tokenizer = load_tokenizer(&folder)?;
        let lora = lora_settings(&loaded.recipe);
        let targets = lora.resolve(&folder.config).context("lora")?;
        let plan = data_plan(&loaded, &folder.config)?;
        let data = prepare(&plan, tokenizer.as_ref()).context("preparing the dataset")?;
        let t = &loaded.recipe.train;
        check_objective_data(&loaded, &data)?;
        warn_past_context(&folder.config, &data);
        let counts = step_counts(
            data.train_len(),
            t.micro_batch_size,
            t.grad_accum,
            t.epochs,
            t.max_steps,
        );
        let output_dir = PathBuf::from(&loaded.recipe.output.dir);
        Ok(Self {
            loaded,
            folder,
            tokenizer,
            data,
            lora,
            targets,
            counts,
            output_dir,
        })
    }

    pub fn recipe(&self) -> &Recipe {
        &self.loaded.recipe
    }

    /// Padding id (masked by the attention mask, so any valid id works).
    pub fn pad_id(&self) -> u32 {
        self.tokenizer
            .as_ref()
            .and_then(TokenizerBundle::eos_token_id)
            .unwrap_or(0)
    }

    /// The preference objective of a DPO, ORPO, SimPO or CPO run; `None` for SFT.
    pub fn preference_objective(&self) -> Option<PreferenceObjective> {
        let r = self.recipe();
        PreferenceObjective::from_recipe(&r.train, r.data.train_on_inputs)
    }

    /// Model rows per micro-batch: two per pair for preference objectives.
    pub fn rows_per_micro_batch(&self) -> usize {
        let mb = self.recipe().train.micro_batch_size;
        if self.data.is_preference() {
            2 * mb
        } else {
            mb
        }
    }

    pub fn trainable_parameters(&self) -> u64 {
        trainable_parameters(&self.targets)
    }
}
