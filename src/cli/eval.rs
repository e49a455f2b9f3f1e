//! `burnish eval`: loss, perplexity and token count of a model (optionally with an adapter) on
//! any dataset the recipes accept (same templating and loss masks as training), or on a run's
//! validation set (`burnish eval <RECIPE> [--checkpoint DIR]`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::backend::{BackendJob, DeviceSpec, TrainBackend, WeightDtype, dispatch};
use crate::cli::quant::QuantArgs;
use crate::data::dataset::{DataPlan, LocalSource, TooLong, Validation, prepare};
use crate::data::{Format, PackedRow};
use crate::error::user;
use crate::model::ModelFolder;
use crate::model::quant::QuantSpec;
use crate::recipe::LoadedRecipe;
use crate::train::evaluate::{EvalResult, evaluate};
use crate::train::setup::{RunSetup, load_tokenizer};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A recipe: evaluate its run's validation set (with the run's adapter).
    pub recipe: Option<PathBuf>,
    /// With a recipe: the adapter or checkpoint folder to evaluate (default: the run's final
    /// adapter, else its newest checkpoint).
    #[arg(long, requires = "recipe")]
    pub checkpoint: Option<PathBuf>,
    /// Model folder, Hub repo id or builtin:PRESET.
    #[arg(long, conflicts_with = "recipe", required_unless_present = "recipe")]
    pub model: Option<String>,
    /// A PEFT adapter folder to apply on top of the model.
    #[arg(long, conflicts_with = "recipe")]
    pub adapter: Option<PathBuf>,
    /// Dataset file (.jsonl, .json, .parquet) or Hub dataset repo id.
    #[arg(long, conflicts_with = "recipe", required_unless_present = "recipe")]
    pub data: Option<String>,
    /// Row format; detected from the first row when omitted.
    #[arg(long)]
    pub format: Option<Format>,
    /// Split of a Hub dataset.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Longest sequence; longer examples are truncated.
    #[arg(long, default_value_t = 2048, value_parser = super::flags::positive)]
    pub seq_len: usize,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 8, value_parser = super::flags::positive)]
    pub batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Precision of the frozen weights: auto (f32 on CPU, bf16 on CUDA), f32 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: WeightDtype,
    /// Without a recipe (a recipe's `model.quantize` applies to its run).
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Override a recipe value (with a recipe).
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "recipe")]
    pub set: Vec<String>,
    /// Print `{"loss", "perplexity", "tokens"}` as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (folder, rows, adapter, pad, quantize) = match &args.recipe {
        Some(_) if args.quant.quant_bits.is_some() => {
            return Err(user(
                "--quant-bits cannot be used with a recipe: its model.quantize applies",
            ));
        }
        Some(recipe) => {
            let setup = RunSetup::new(LoadedRecipe::load(recipe, &args.set)?)?;
            if setup.data.is_preference() {
                return Err(user(format!(
                    "{}: preference recipes are evaluated during training (train.eval_every and at the end: eval_loss and eval_rewards/* in metrics.jsonl); `burnish eval` measures the token loss of single examples",
                    recipe.display()
                )));
            }
            if setup.data.validation.is_empty() {
                return Err(user(format!(
                    "{}: the recipe has no validation data (data.validation)",
                    recipe.display()
                )));
            }
            let adapter = match &args.checkpoint {
                Some(dir) => Some(dir.clone()),
                None => {
                    let final_adapter = setup.output_dir.join("adapter");
                    if final_adapter.join(crate::lora::peft::CONFIG_FILE).is_file() {
                        Some(final_adapter)
                    } else {
                        let c = crate::train::checkpoint::newest_complete(&setup.output_dir)
                            .ok_or_else(|| user(format!("{} has no adapter or checkpoint yet; train first or pass --checkpoint", setup.output_dir.display())))?;
                        Some(c.dir)
                    }
                }
            };
            let pad = setup.pad_id();
            (
                setup.folder.clone(),
                setup.data.validation.clone(),
                adapter,
                pad,
                setup.recipe().model.quantize,
            )
        }
        None => {
            let model = args.model.as_deref().unwrap_or_default();
            let data = args.data.as_deref().unwrap_or_default();
            let folder = ModelFolder::open(&crate::hub::resolve_model(model)?)?;
            let tokenizer = load_tokenizer(&folder)?;
            let files = if std::path::Path::new(data).exists() {
                vec![PathBuf::from(data)]
            } else if crate::hub::is_repo_id(data) {
                crate::hub::dataset_files(data, Some(&args.split), None, None)?
            } else {
                return Err(user(format!(
                    "--data {data}: no such file, and not a Hub dataset id"
                )));
            };
            let plan = DataPlan {
                train: vec![LocalSource {
                    files,
                    format: args.format,
                    fields: Default::default(),
                    max_rows: None,
                    ..Default::default()
                }],
                validation: Validation::None,
                seq_len: args.seq_len,
                packing: false,
                train_on_inputs: false,
                too_long: TooLong::Truncate,
                chat_template: None,
                system_prompt: None,
                seed: 0,
                vocab_size: folder.config.vocab_size,
                unpair: false,
            };
            let prepared =
                prepare(&plan, tokenizer.as_ref()).with_context(|| format!("reading {data}"))?;
            let pad = tokenizer
                .as_ref()
                .and_then(|t| t.eos_token_id())
                .unwrap_or(0);
            let quantize = args.quant.spec()?;
            (folder, prepared.train, args.adapter.clone(), pad, quantize)
        }
    };
    let job = EvalJob {
        folder,
        adapter,
        rows,
        batch_size: args.batch_size,
        dtype: args.dtype,
        pad,
        quantize,
    };
    let result = dispatch(args.device, job).map_err(user)??;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!("loss        {:.6}", result.loss);
        println!("perplexity  {:.4}", result.perplexity);
        println!("tokens      {}", result.tokens);
    }
    Ok(ExitCode::SUCCESS)
}

struct EvalJob {
    folder: ModelFolder,
    adapter: Option<PathBuf>,
    rows: Vec<PackedRow>,
    batch_size: usize,
    dtype: WeightDtype,
    pad: u32,
    quantize: Option<QuantSpec>,
}

impl BackendJob for EvalJob {
    type Output = anyhow::Result<EvalResult>;

    fn run<B: TrainBackend>(self, device: B::Device, on_gpu: bool) -> Self::Output {
        let mut model = self
            .folder
            .load_quantized::<B::InnerBackend>(
                self.dtype.resolve(on_gpu),
                self.quantize.as_ref(),
                &device,
            )
            .with_context(|| format!("loading {}", self.folder.dir.display()))?;
        if let Some(dir) = &self.adapter {
            crate::lora::apply_adapter(&mut model, dir, false)
                .with_context(|| format!("applying adapter {}", dir.display()))?;
        }
        Ok(evaluate(&model, &self.rows, self.batch_size, self.pad))
    }
}
