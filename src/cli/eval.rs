//! `burnish eval --model <MODEL> --data <FILE> [--json]`: loss, perplexity and token count.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;

use crate::backend::{BackendJob, DeviceSpec, WeightDtype, dispatch};
use crate::data::formats::{Example, FieldMap, parse_example};
use crate::data::source::read_rows;
use crate::data::{Format, PackedRow, TokenizedExample};
use crate::error::user;
use crate::model::ModelFolder;
use crate::train::evaluate::{EvalResult, evaluate};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model folder, Hub repo id or builtin:<preset>.
    #[arg(long)]
    pub model: String,
    /// A PEFT adapter folder to apply on top of the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Dataset file (.jsonl, .json, .parquet).
    #[arg(long)]
    pub data: PathBuf,
    /// Row format; detected from the first row when omitted.
    #[arg(long)]
    pub format: Option<Format>,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Precision of the frozen weights: auto (f32 on CPU, bf16 on CUDA), f32 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: WeightDtype,
    /// Print `{"loss", "perplexity", "tokens"}` as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let folder = ModelFolder::open(&crate::hub::resolve_model(&args.model)?)?;
    let rows = read_rows(&args.data)?;
    let format = match args.format {
        Some(f) => f,
        None => Format::detect(&rows[0].value).ok_or_else(|| {
            user(format!(
                "{}: cannot tell the dataset format from its first row; pass --format",
                rows[0].at
            ))
        })?,
    };
    let fields = FieldMap::new();
    let mut examples = Vec::with_capacity(rows.len());
    for row in &rows {
        match parse_example(row, format, &fields)? {
            Example::Tokens { input_ids, labels } => {
                let vocab = folder.config.vocab_size as u32;
                if let Some(bad) = input_ids.iter().find(|&&id| id >= vocab) {
                    return Err(user(format!(
                        "{}: token id {bad} is outside the model's vocabulary ({vocab})",
                        row.at
                    )));
                }
                let labels =
                    labels.unwrap_or_else(|| input_ids.iter().map(|&i| i as i64).collect());
                examples.push(TokenizedExample {
                    ids: input_ids,
                    labels,
                });
            }
            _ => {
                return Err(user(format!(
                    "format {format} needs the tokenizer pipeline; this build evaluates pretokenized rows"
                )));
            }
        }
    }
    let packed: Vec<PackedRow> = examples.iter().map(PackedRow::single).collect();
    let job = EvalJob {
        folder,
        adapter: args.adapter,
        rows: packed,
        batch_size: args.batch_size,
        dtype: args.dtype,
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
}

impl BackendJob for EvalJob {
    type Output = anyhow::Result<EvalResult>;

    fn run<B: AutodiffBackend>(self, device: B::Device, on_gpu: bool) -> Self::Output {
        let mut model = self
            .folder
            .load::<B::InnerBackend>(self.dtype.resolve(on_gpu), &device)
            .with_context(|| format!("loading {}", self.folder.dir.display()))?;
        if let Some(dir) = &self.adapter {
            crate::lora::apply_adapter(&mut model, dir, false)
                .with_context(|| format!("applying adapter {}", dir.display()))?;
        }
        Ok(evaluate(&model, &self.rows, self.batch_size, 0))
    }
}
