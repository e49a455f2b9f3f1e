//! The recipe: what a user writes in `recipes/<name>.yaml`. Every default lives here, next to
//! the field it belongs to; `burnish validate --defaults` prints them as YAML.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::dpo_loss::{DpoLosses, FDivergence};
use super::values::{
    DecayType, DeviceList, DeviceSpec, MergeDtype, OptimizerKind, SchedulerKind, WeightDtype,
};
use crate::data::formats::Format;
use crate::lora::{InitKind, TargetSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    pub model: ModelSection,
    pub lora: LoraSection,
    pub data: DataSection,
    pub train: TrainSection,
    pub output: OutputSection,
    pub logging: LoggingSection,
    pub hub: HubSection,
    /// Data-parallel training across machines (absent: one machine).
    pub distributed: Option<DistributedSection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face repo id (`Qwen/Qwen2.5-0.5B-Instruct`), a local model folder, or a built-in
    /// preset (`builtin:tiny-qwen2`). Required.
    pub base: String,
    /// Hub revision (branch, tag or commit) when `base` is a repo id.
    pub revision: String,
    /// Precision of the frozen base: `auto` (f32 on CPU, bf16 on CUDA), `f32` or `bf16`.
    pub dtype: WeightDtype,
    /// QLoRA: quantize the decoder projections of the frozen base at load time,
    /// `{bits: 4|8, block_size: 16|32|64|128}` (block_size defaults to 64). Null: no quantization.
    pub quantize: Option<crate::model::quant::QuantSpec>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            base: String::new(),
            revision: "main".into(),
            dtype: WeightDtype::Auto,
            quantize: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSection {
    /// Rank of every adapter (unless `rank_pattern` says otherwise).
    pub r: usize,
    /// Scaling numerator: the update is scaled by `alpha / r` (`alpha / sqrt(r)` with rslora).
    pub alpha: f64,
    /// Dropout on the adapter input while training.
    pub dropout: f64,
    /// `all-linear`, a list of module names (`[q_proj, v_proj]`), or a regex on full names.
    pub targets: TargetSpec,
    /// rsLoRA scaling (Kalajdzievski 2023).
    pub rslora: bool,
    /// DoRA (Liu et al. 2024, PEFT's `use_dora`): the adapted weight is renormalised per
    /// output row and scaled by a trained magnitude vector.
    pub dora: bool,
    /// `default` (PEFT's kaiming-uniform A) or `gaussian` (A ~ N(0, 1/r)); B starts at zero.
    pub init: InitKind,
    /// Start from an existing PEFT adapter folder instead.
    pub init_from: Option<String>,
    /// Only adapt these layer indices.
    pub layers_to_transform: Option<Vec<usize>>,
    /// Per-module ranks: regex on module names -> rank (PEFT semantics).
    pub rank_pattern: IndexMap<String, usize>,
    /// Per-module alphas: regex on module names -> alpha (PEFT semantics).
    pub alpha_pattern: IndexMap<String, f64>,
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: TargetSpec::default(),
            rslora: false,
            dora: false,
            init: InitKind::Default,
            init_from: None,
            layers_to_transform: None,
            rank_pattern: IndexMap::new(),
            alpha_pattern: IndexMap::new(),
        }
    }
}

/// One dataset: a local file or a Hub dataset repo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SourceSection {
    /// A local `.jsonl`, `.json` or `.parquet` file.
    pub path: Option<String>,
    /// A Hub dataset repo id (`org/name`).
    pub hub: Option<String>,
    /// Split of a Hub dataset.
    pub split: Option<String>,
    /// Files of a Hub dataset to use (overrides the split's own files).
    pub files: Option<Vec<String>>,
    /// Hub revision of a dataset.
    pub revision: Option<String>,
    /// Row format; detected from the first row when omitted.
    pub format: Option<Format>,
    /// Column renames: canonical field -> the dataset's column (`{instruction: prompt}`).
    pub fields: IndexMap<String, String>,
    /// Role renames for `messages`/`sharegpt` rows: the dataset's role -> system, user,
    /// assistant or tool (`{robot: assistant}`). human, gpt, bot and model are known already.
    pub roles: IndexMap<String, String>,
    /// Use only the first N rows.
    pub max_rows: Option<usize>,
}

/// `validation:` is a held-out fraction of the training data or its own list of sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ValidationSection {
    Split { split: f64 },
    Sources(Vec<SourceSection>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Keep the first `seq_len` tokens.
    #[default]
    Truncate,
    /// Leave the example out.
    Drop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Training sources. Required.
    pub train: Vec<SourceSection>,
    /// Held-out data for evaluation (`null` for none).
    pub validation: Option<ValidationSection>,
    /// Maximum tokens per row.
    pub seq_len: usize,
    /// Pack several examples per row (attention and positions stay per example).
    pub packing: bool,
    /// Also train on prompts (system/user turns, alpaca instruction and input).
    pub train_on_inputs: bool,
    /// Shuffle rows each epoch (a pure function of seed and epoch).
    pub shuffle: bool,
    /// What to do with examples longer than `seq_len`: `truncate` or `drop`.
    pub truncation: Truncation,
    /// A Jinja chat template (inline text or a path to a `.jinja` file) replacing the tokenizer's.
    pub chat_template: Option<String>,
    /// System prompt for alpaca rows rendered through a chat template.
    pub system_prompt: Option<String>,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            train: Vec::new(),
            validation: Some(ValidationSection::Split { split: 0.05 }),
            seq_len: 1024,
            packing: true,
            train_on_inputs: false,
            shuffle: true,
            truncation: Truncation::Truncate,
            chat_template: None,
            system_prompt: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerSection {
    /// `adamw` (PyTorch semantics: decoupled weight decay).
    pub name: OptimizerKind,
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// LoRA+ (Hayou et al. 2024; PEFT's `create_loraplus_optimizer`): the `lora_B` factors
    /// learn at `lr * loraplus_lr_ratio` (16 in the paper), the `lora_A` factors at `lr`.
    /// Null: one learning rate for both.
    pub loraplus_lr_ratio: Option<f64>,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        Self {
            name: OptimizerKind::Adamw,
            lr: 2.0e-4,
            betas: [0.9, 0.999],
            eps: 1.0e-8,
            weight_decay: 0.0,
            loraplus_lr_ratio: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSection {
    /// `cosine`, `linear`, `constant`, `cosine_with_restarts`, `polynomial`, `inverse_sqrt` or
    /// `warmup_stable_decay`, each after a linear warmup (from 0; from `min_lr` for WSD).
    pub name: SchedulerKind,
    pub warmup_steps: usize,
    /// Warmup as a fraction of all steps (used when `warmup_steps` is 0).
    pub warmup_ratio: f64,
    /// Learning rate at the end of the decay (polynomial's `lr_end`; WSD's `min_lr_ratio`
    /// times the peak).
    pub min_lr: f64,
    /// Cosine waves: the restarts of `cosine_with_restarts` (1), WSD's cosine decay (0.5).
    pub num_cycles: Option<f64>,
    /// `polynomial`'s exponent (1).
    pub power: Option<f64>,
    /// `inverse_sqrt`'s timescale in steps (the warmup steps, or 10,000 without warmup).
    pub timescale: Option<usize>,
    /// WSD's decay stage, in steps or as a fraction of all steps (one of the two).
    pub decay_steps: Option<usize>,
    pub decay_ratio: Option<f64>,
    /// WSD's decay shape: `cosine`, `linear` or `1-sqrt`.
    pub decay_type: Option<DecayType>,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        Self {
            name: SchedulerKind::Cosine,
            warmup_steps: 10,
            warmup_ratio: 0.0,
            min_lr: 0.0,
            num_cycles: None,
            power: None,
            timescale: None,
            decay_steps: None,
            decay_ratio: None,
            decay_type: None,
        }
    }
}

/// What a run optimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Supervised fine-tuning: cross-entropy on the trained tokens.
    #[default]
    Sft,
    /// Direct preference optimisation (Rafailov et al. 2023) on `preference` pairs, against a
    /// reference policy: the base with the adapter switched off, or `dpo.reference`.
    Dpo,
    /// Odds-ratio preference optimisation (Hong et al. 2024): the chosen completions' NLL
    /// minus `orpo.beta` times the log-sigmoid of the log odds ratio; no reference policy.
    Orpo,
    /// Simple preference optimisation (Meng et al. 2024): `-log sigmoid(beta * (mean token
    /// log-probability of chosen - of rejected) - gamma)`, plus `simpo.cpo_alpha` times the
    /// chosen completions' NLL (CPO's term); no reference policy.
    Simpo,
    /// Contrastive preference optimisation (Xu et al. 2024): `-log sigmoid(beta * (log
    /// pi(chosen) - log pi(rejected)))` (or `cpo.loss_type` hinge / ipo) plus `cpo.cpo_alpha`
    /// times the chosen completions' NLL; no reference policy.
    Cpo,
    /// Kahneman-Tversky optimisation (Ethayarajh et al. 2024) on `unpaired` rows, each one
    /// completion labelled desirable or not (or on `preference` pairs, unpaired as TRL does),
    /// against a reference policy and a batch estimate of their KL divergence.
    Kto,
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Objective::Sft => "sft",
            Objective::Dpo => "dpo",
            Objective::Orpo => "orpo",
            Objective::Simpo => "simpo",
            Objective::Cpo => "cpo",
            Objective::Kto => "kto",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoSection {
    /// Strength of the pull towards the reference policy (TRL's `beta`; IPO's tau).
    pub beta: f64,
    /// `sigmoid` (DPO), `ipo`, `hinge` (SLiC-HF), `robust`, `exo_pair`, `nca_pair`,
    /// `bco_pair`, `sppo_hard`, `apo_zero`, `apo_down`, `discopop`, `sigmoid_norm`, or a list
    /// of them (and `sft`) whose losses are summed.
    pub loss_type: DpoLosses,
    /// The weight of each `loss_type` in the sum (1 each by default; TRL's `loss_weights`).
    pub loss_weights: Option<Vec<f64>>,
    /// Probability that a pair's preference is flipped: conservative DPO with `sigmoid`, the
    /// noise rate `robust` corrects for, EXO's epsilon; no meaning for the other losses.
    pub label_smoothing: f64,
    /// DiscoPOP's temperature (TRL's `discopop_tau`; the paper's 0.05).
    pub discopop_tau: f64,
    /// The f-divergence regularizer (f-DPO): `reverse_kl` (DPO), `forward_kl`,
    /// `js_divergence` or `alpha_divergence`.
    pub f_divergence_type: FDivergence,
    /// The alpha of `alpha_divergence` (TRL's `f_alpha_divergence_coef`).
    pub f_alpha_divergence_coef: f64,
    /// LD-DPO (Liu et al. 2024): the weight, in [0, 1], of each completion's tokens past the
    /// length of the pair's shorter completion (TRL's `ld_alpha`); unset: 1.
    pub ld_alpha: Option<f64>,
    /// The reference policy: `base` (the base model, adapter off) or a PEFT adapter folder on
    /// the base (e.g. the SFT adapter this run starts from with `lora.init_from`).
    pub reference: String,
}

impl Default for DpoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: DpoLosses::default(),
            loss_weights: None,
            label_smoothing: 0.0,
            discopop_tau: 0.05,
            f_divergence_type: FDivergence::ReverseKl,
            f_alpha_divergence_coef: 0.5,
            ld_alpha: None,
            reference: "base".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrpoSection {
    /// Weight of the odds-ratio term against the chosen completions' NLL (TRL's `beta`, the
    /// paper's lambda).
    pub beta: f64,
}

impl Default for OrpoSection {
    fn default() -> Self {
        Self { beta: 0.1 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimpoSection {
    /// Scale of the length-normalised log-probability margin (the paper's beta: 2.0-2.5).
    pub beta: f64,
    /// Target reward margin subtracted inside the sigmoid (TRL's `simpo_gamma`; the paper's
    /// gamma, about half of beta).
    pub gamma: f64,
    /// Weight of the chosen completions' NLL (TRL's `cpo_alpha`); 0 is SimPO alone.
    pub cpo_alpha: f64,
}

impl Default for SimpoSection {
    fn default() -> Self {
        Self {
            beta: 2.0,
            gamma: 1.0,
            cpo_alpha: 0.0,
        }
    }
}

/// The CPO loss on the policy's log-probability difference `h` (TRL's CPOTrainer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpoLoss {
    /// `-log sigmoid(beta * h)` on summed log-probabilities (with `label_smoothing` e:
    /// `-(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)`).
    #[default]
    Sigmoid,
    /// `max(0, 1 - beta * h)` on summed log-probabilities.
    Hinge,
    /// `(h - 1 / (2 beta))^2` on log-probabilities averaged per completion token.
    Ipo,
}

impl std::fmt::Display for CpoLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpoLoss::Sigmoid => "sigmoid",
            CpoLoss::Hinge => "hinge",
            CpoLoss::Ipo => "ipo",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpoSection {
    /// Scale of the log-probability difference (TRL's `beta`).
    pub beta: f64,
    /// `sigmoid` (CPO), `hinge` or `ipo`.
    pub loss_type: CpoLoss,
    /// Probability that a pair's preference is flipped; sigmoid loss only.
    pub label_smoothing: f64,
    /// Weight of the chosen completions' NLL (TRL's `cpo_alpha`).
    pub cpo_alpha: f64,
}

impl Default for CpoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: CpoLoss::Sigmoid,
            label_smoothing: 0.0,
            cpo_alpha: 1.0,
        }
    }
}

/// KTO's loss on each completion's log-ratio `r` against the policies' KL estimate `z`
/// (TRL's KTOTrainer `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KtoLoss {
    /// `1 - sigmoid(beta * (r - z))` for desirable completions, `1 - sigmoid(beta * (z - r))`
    /// for undesirable ones (the paper's eq. 7).
    #[default]
    Kto,
    /// APO-zero unpaired (D'Oosterlinck et al. 2024): `1 - sigmoid(beta * r)` and
    /// `sigmoid(beta * r)`; no KL estimate.
    ApoZeroUnpaired,
}

impl std::fmt::Display for KtoLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KtoLoss::Kto => "kto",
            KtoLoss::ApoZeroUnpaired => "apo_zero_unpaired",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KtoSection {
    /// Scale of the log-ratios inside the sigmoid (TRL's `beta`).
    pub beta: f64,
    /// `kto` or `apo_zero_unpaired`.
    pub loss_type: KtoLoss,
    /// Weight of the desirable completions' losses (TRL's `desirable_weight`).
    pub desirable_weight: f64,
    /// Weight of the undesirable completions' losses (TRL's `undesirable_weight`).
    pub undesirable_weight: f64,
    /// The reference policy: `base` (the base model, adapter off) or a PEFT adapter folder on
    /// the base, as `dpo.reference`.
    pub reference: String,
}

impl Default for KtoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: KtoLoss::Kto,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
            reference: "base".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// `sft` (default), `dpo`, `orpo`, `simpo`, `cpo` or `kto`; all but `sft` train on
    /// `preference` data (`kto` on `unpaired` rows too).
    pub objective: Objective,
    /// DPO settings (`objective: dpo`).
    pub dpo: DpoSection,
    /// ORPO settings (`objective: orpo`).
    pub orpo: OrpoSection,
    /// SimPO settings (`objective: simpo`).
    pub simpo: SimpoSection,
    /// CPO settings (`objective: cpo`).
    pub cpo: CpoSection,
    /// KTO settings (`objective: kto`).
    pub kto: KtoSection,
    /// Passes over the training data (ignored when `max_steps` is set).
    pub epochs: usize,
    /// Total optimizer steps; overrides `epochs` (the data repeats as needed).
    pub max_steps: Option<usize>,
    /// Rows per forward/backward pass (preference pairs with `dpo`/`orpo`: each pair is two
    /// rows, chosen and rejected).
    pub micro_batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub optimizer: OptimizerSection,
    pub scheduler: SchedulerSection,
    /// Global gradient-norm clipping (`null` = none).
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceSpec,
    /// Data-parallel replicas on this machine, one per device: `[cuda:0, cuda:1]`, `cuda:all`,
    /// or `[cpu, cpu]`. Replaces `device` when set. `micro_batch_size` stays the global
    /// micro-batch, split across all replicas.
    pub devices: Option<DeviceList>,
    /// Evaluate every N optimizer steps (and at the end); 0 = only at the end.
    pub eval_every: usize,
    /// Evaluate this many times per epoch instead, every `ceil(steps per epoch / N)` steps
    /// (axolotl's `evals_per_epoch`; 1 is transformers' `eval_strategy: epoch`).
    pub evals_per_epoch: Option<usize>,
    /// Also evaluate before the first step, recorded at step 0: the baseline the run improves
    /// on (transformers' `eval_on_start`; it neither counts for the best checkpoint nor for
    /// early stopping).
    pub eval_on_start: bool,
    /// Keep only each decoder layer's input for the backward pass and recompute the rest there:
    /// much less activation memory for about a third more compute (LoRA dropout included: the
    /// recomputed layers draw the same masks).
    pub gradient_checkpointing: bool,
    /// NEFTune (Jain et al. 2023; TRL's `neftune_noise_alpha`): in training, uniform noise of
    /// magnitude `alpha / sqrt(seq_len * hidden_size)` on the token embeddings (5 in the paper).
    /// Null: none.
    pub neftune_noise_alpha: Option<f64>,
    /// Save a checkpoint every N optimizer steps (and at the end); 0 = only at the end.
    pub save_every: usize,
    /// Save this many times per epoch instead, every `ceil(steps per epoch / N)` steps
    /// (axolotl's `saves_per_epoch`; 1 is transformers' `save_strategy: epoch`).
    pub saves_per_epoch: Option<usize>,
    /// Complete checkpoints to keep (the newest is never deleted, nor the best one with
    /// `load_best_model_at_end`).
    pub keep_last: usize,
    /// Make `adapter/` (and the merged model, GGUF files and Hub uploads made from it) the
    /// weights with the lowest evaluation loss rather than the last step's, as transformers'
    /// `load_best_model_at_end`. Each evaluation that lowers the best loss writes a checkpoint,
    /// which `keep_last` never deletes. Needs `data.validation`.
    pub load_best_model_at_end: bool,
    /// Stop after this many evaluations in a row that do not lower the best evaluation loss
    /// by more than `early_stopping_threshold` (transformers' `EarlyStoppingCallback`). Needs
    /// `data.validation` and `eval_every`. Null: train to the end.
    pub early_stopping_patience: Option<usize>,
    /// How much an evaluation must improve on the best to reset the patience count.
    pub early_stopping_threshold: f64,
    /// What "best" means for `load_best_model_at_end` and early stopping, as transformers'
    /// `metric_for_best_model`: `loss` (default), `perplexity`, or a preference objective's
    /// evaluation metric (`rewards/accuracies`, `rewards/margins`, ...); `eval_` optional.
    pub metric_for_best_model: String,
    /// Whether a larger `metric_for_best_model` is better. Null: transformers' rule (names
    /// ending in `loss` are better lower, others higher), with perplexity better lower.
    pub greater_is_better: Option<bool>,
}

impl TrainSection {
    /// The steps between evaluations (0: only at the end) in a run of `steps_per_epoch`.
    pub fn eval_interval(&self, steps_per_epoch: usize) -> usize {
        per_epoch_interval(self.eval_every, self.evals_per_epoch, steps_per_epoch)
    }

    /// The steps between checkpoints (0: only at the end) in a run of `steps_per_epoch`.
    pub fn save_interval(&self, steps_per_epoch: usize) -> usize {
        per_epoch_interval(self.save_every, self.saves_per_epoch, steps_per_epoch)
    }
}

/// `every` steps, or `per_epoch` times an epoch: `ceil(steps_per_epoch / per_epoch)` steps,
/// as transformers reads axolotl's ratio (`eval_steps = 1 / (evals_per_epoch * epochs)` of
/// all steps, rounded up).
fn per_epoch_interval(every: usize, per_epoch: Option<usize>, steps_per_epoch: usize) -> usize {
    match per_epoch {
        Some(n) => steps_per_epoch.div_ceil(n.max(1)).max(1),
        None => every,
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            objective: Objective::Sft,
            dpo: DpoSection::default(),
            orpo: OrpoSection::default(),
            simpo: SimpoSection::default(),
            cpo: CpoSection::default(),
            kto: KtoSection::default(),
            epochs: 3,
            max_steps: None,
            micro_batch_size: 4,
            grad_accum: 4,
            optimizer: OptimizerSection::default(),
            scheduler: SchedulerSection::default(),
            max_grad_norm: Some(1.0),
            seed: 42,
            device: DeviceSpec::Auto,
            devices: None,
            gradient_checkpointing: false,
            neftune_noise_alpha: None,
            eval_every: 100,
            evals_per_epoch: None,
            eval_on_start: false,
            save_every: 100,
            saves_per_epoch: None,
            keep_last: 3,
            load_best_model_at_end: false,
            early_stopping_patience: None,
            early_stopping_threshold: 0.0,
            metric_for_best_model: "loss".into(),
            greater_is_better: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSection {
    /// Run folder: checkpoints, adapter, merged model, metrics, TensorBoard, loss plot.
    pub dir: String,
    /// Also write `<dir>/merged/`, the adapter folded into the base.
    pub merge: bool,
    /// Precision of the merged model: `auto` (the base's on-disk dtype), `f32`, `bf16`, `f16`.
    pub merge_dtype: MergeDtype,
    /// GGUF files to write from the merged model (implies `merge`): any of f16, bf16, q8_0,
    /// q4_0, q4_k_m, q6_k, written as `<dir>/merged/<run>-<TYPE>.gguf`.
    pub gguf: Vec<String>,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            dir: String::new(),
            merge: false,
            merge_dtype: MergeDtype::Auto,
            gguf: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingSection {
    /// Write TensorBoard event files to `<output.dir>/tensorboard/`.
    pub tensorboard: bool,
    /// Log (and write scalars) every N optimizer steps.
    pub every: usize,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            tensorboard: true,
            every: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushWhat {
    Adapter,
    Merged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubSection {
    /// Repo the adapter is published to at the end of training (`null` = don't publish).
    pub repo: Option<String>,
    /// What to push: `adapter`, `merged` or both (`merged` implies `output.merge`).
    pub push: Vec<PushWhat>,
    /// Repo for the merged model (default: `<repo>-merged`).
    pub merged_repo: Option<String>,
    /// Create new repos as private.
    pub private: bool,
}

impl Default for HubSection {
    fn default() -> Self {
        Self {
            repo: None,
            push: vec![PushWhat::Adapter],
            merged_repo: None,
            private: true,
        }
    }
}

/// `distributed`: one process per machine, coordinated by an orchestrator. Each value can also
/// come from the torchrun-style environment (`WORLD_SIZE` nodes, `MASTER_ADDR`/`MASTER_PORT`);
/// a node's own rank comes from `--node-rank` or `RANK`, so every node runs the same recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributedSection {
    /// Machines (processes) in the run.
    pub nodes: Option<usize>,
    /// `host:port` of the orchestrator (default `MASTER_ADDR:MASTER_PORT`, or 127.0.0.1:29500).
    pub orchestrator: Option<String>,
    /// First port nodes serve tensors on; node i uses `data_port + i` (default: the
    /// orchestrator's port + 1).
    pub data_port: Option<u16>,
    /// The address other nodes reach this one at (default: this machine's address on the
    /// route to the orchestrator).
    pub node_host: Option<String>,
    /// Seconds to wait for the other replicas at each exchange before stopping with an error.
    pub timeout_s: u64,
    /// Seconds to wait for every replica at the first exchange (nodes load their model and
    /// data at their own pace).
    pub startup_timeout_s: u64,
    /// Node 0 runs the orchestrator in-process (false: start `burnish orchestrator` yourself).
    pub start_orchestrator: bool,
}

impl Default for DistributedSection {
    fn default() -> Self {
        Self {
            nodes: None,
            orchestrator: None,
            data_port: None,
            node_host: None,
            timeout_s: 300,
            startup_timeout_s: 900,
            start_orchestrator: true,
        }
    }
}
