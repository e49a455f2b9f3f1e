//! `burnish generate` and `burnish chat`: talk to a model, a model plus adapter, or a merged
//! folder, with the tokenizer's chat template and the model's own stop tokens.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::backend::{BackendJob, DeviceSpec, TrainBackend, WeightDtype, dispatch};
use crate::cli::quant::QuantArgs;
use crate::data::formats::Message;
use crate::data::tokenize::Tokenization;
use crate::error::user;
use crate::generate::{GenerationStats, Sampler, SamplingParams, generate};
use crate::model::{Model, ModelFolder, TokenizerBundle};

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder, Hub repo id or builtin:PRESET (a merged folder works too).
    #[arg(long)]
    pub model: String,
    /// A PEFT adapter folder to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Frozen-weight precision: auto (f32 on CPU, bf16 on CUDA), f32 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: WeightDtype,
    #[command(flatten)]
    pub quant: QuantArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// System prompt (chat mode).
    #[arg(long)]
    pub system: Option<String>,
    /// Maximum new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 = greedy. Default: generation_config.json's, else 0.7.
    #[arg(long, value_parser = super::flags::non_negative)]
    pub temperature: Option<f64>,
    /// Keep the k most likely tokens (0 = off). Default: generation_config.json's.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling mass (1 = off). Default: generation_config.json's.
    #[arg(long, value_parser = super::flags::mass)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Render the prompt as a user turn with the chat template (default when the tokenizer has one).
    #[arg(long, conflicts_with = "raw")]
    pub chat: bool,
    /// Use the prompt text as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print {"text", "token_ids", "prompt_tokens", "generated_tokens"} instead of streaming.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

fn sampling_params(args: &SamplingArgs, tok: &TokenizerBundle) -> SamplingParams {
    let g = tok.generation.clone().unwrap_or_default();
    let greedy_default = g.do_sample == Some(false);
    let temperature = args.temperature.unwrap_or(if greedy_default {
        0.0
    } else {
        g.temperature.unwrap_or(0.7)
    });
    SamplingParams {
        temperature,
        top_k: args.top_k.unwrap_or(g.top_k.unwrap_or(0)),
        top_p: args.top_p.unwrap_or(g.top_p.unwrap_or(1.0)),
    }
}

/// Prints decoded text as tokens arrive, holding back incomplete UTF-8 sequences.
struct Streamer<'a> {
    tok: &'a TokenizerBundle,
    ids: Vec<u32>,
    printed: usize,
    enabled: bool,
}

impl Streamer<'_> {
    fn push(&mut self, id: u32) {
        self.ids.push(id);
        if !self.enabled {
            return;
        }
        let text = self.tok.decode(&self.ids).unwrap_or_default();
        let stable = text.trim_end_matches('\u{FFFD}');
        if stable.len() > self.printed && stable.is_char_boundary(self.printed) {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&stable.as_bytes()[self.printed..]);
            let _ = out.flush();
            self.printed = stable.len();
        }
    }
}

fn report(stats: &GenerationStats) {
    eprintln!(
        "[prompt {} tokens, {:.1} tokens/s; generated {} tokens, {:.1} tokens/s]",
        stats.prompt_tokens,
        stats.prompt_tokens_per_sec(),
        stats.generated_tokens,
        stats.generation_tokens_per_sec()
    );
}

fn load<B: crate::model::kernels::Kernels>(
    args: &ModelArgs,
    on_gpu: bool,
    device: &B::Device,
) -> anyhow::Result<(Model<B>, TokenizerBundle)> {
    let dir = crate::hub::resolve_model(&args.model)?;
    let folder = ModelFolder::open(&dir)?;
    let tok = folder
        .tokenizer()
        .context("generation needs the model's tokenizer")?;
    let quant = args.quant.spec()?;
    let mut model = folder
        .load_quantized::<B>(args.dtype.resolve(on_gpu), quant.as_ref(), device)
        .with_context(|| format!("loading {}", dir.display()))?;
    if let Some(a) = &args.adapter {
        crate::lora::apply_adapter(&mut model, a, false)
            .with_context(|| format!("applying adapter {}", a.display()))?;
    }
    Ok((model, tok))
}

struct GenerateJob<'a>(&'a GenerateArgs);

impl BackendJob for GenerateJob<'_> {
    type Output = anyhow::Result<()>;
    fn run<B: TrainBackend>(self, device: B::Device, on_gpu: bool) -> Self::Output {
        let args = self.0;
        let (model, tok) = load::<B::InnerBackend>(&args.model, on_gpu, &device)?;
        let chat = !args.raw && (args.chat || tok.chat_template.is_some());
        let prompt_text = if chat {
            let tz = Tokenization::new(Some(&tok), None, false, None)?;
            if !tz.has_template() {
                return Err(user(
                    "--chat: this tokenizer has no chat template; use --raw",
                ));
            }
            let mut messages = Vec::new();
            if let Some(s) = &args.sampling.system {
                messages.push(Message {
                    role: "system".into(),
                    content: s.clone(),
                    extra: Default::default(),
                });
            }
            messages.push(Message {
                role: "user".into(),
                content: args.prompt.clone(),
                extra: Default::default(),
            });
            tz.prompt(&messages).map_err(user)?
        } else {
            args.prompt.clone()
        };
        let prompt = tok.encode(&prompt_text)?;
        let stop = tok.stop_ids(&model.config.eos_token_ids);
        let mut sampler = Sampler::new(sampling_params(&args.sampling, &tok), args.sampling.seed);
        let mut streamer = Streamer {
            tok: &tok,
            ids: Vec::new(),
            printed: 0,
            enabled: !args.json,
        };
        let (ids, stats) = generate(
            &model,
            &prompt,
            args.sampling.max_new_tokens,
            &stop,
            &mut sampler,
            |id| streamer.push(id),
        );
        let text = tok.decode(&ids)?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"text": text, "token_ids": ids, "prompt_tokens": stats.prompt_tokens, "generated_tokens": stats.generated_tokens})
            );
        } else {
            println!();
        }
        report(&stats);
        Ok(())
    }
}

pub fn run_generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    dispatch(args.model.device, GenerateJob(&args)).map_err(user)??;
    Ok(ExitCode::SUCCESS)
}

struct ChatJob<'a>(&'a ChatArgs);

impl BackendJob for ChatJob<'_> {
    type Output = anyhow::Result<()>;
    fn run<B: TrainBackend>(self, device: B::Device, on_gpu: bool) -> Self::Output {
        let args = self.0;
        let (model, tok) = load::<B::InnerBackend>(&args.model, on_gpu, &device)?;
        let tz = Tokenization::new(Some(&tok), None, false, None)?;
        if !tz.has_template() {
            return Err(user("chat needs a tokenizer with a chat template"));
        }
        let stop = tok.stop_ids(&model.config.eos_token_ids);
        let params = sampling_params(&args.sampling, &tok);
        let mut sampler = Sampler::new(params, args.sampling.seed);
        let system: Vec<Message> = args
            .sampling
            .system
            .iter()
            .map(|s| Message {
                role: "system".into(),
                content: s.clone(),
                extra: Default::default(),
            })
            .collect();
        let mut history = system.clone();
        let interactive = std::io::stdin().is_terminal();
        if interactive {
            eprintln!(
                "chat with {} (/reset clears the history, /exit quits)",
                args.model.model
            );
        }
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            if interactive {
                eprint!("> ");
                let _ = std::io::stderr().flush();
            }
            let Some(line) = lines.next() else { break };
            let line = line?;
            let input = line.trim();
            match input {
                "" => continue,
                "/exit" | "/quit" => break,
                "/reset" => {
                    history = system.clone();
                    eprintln!("[history cleared]");
                    continue;
                }
                _ => {}
            }
            history.push(Message {
                role: "user".into(),
                content: input.to_string(),
                extra: Default::default(),
            });
            let prompt_text = tz.prompt(&history).map_err(user)?;
            tracing::debug!("prompt: {prompt_text:?}");
            let prompt = tok.encode(&prompt_text)?;
            let mut streamer = Streamer {
                tok: &tok,
                ids: Vec::new(),
                printed: 0,
                enabled: true,
            };
            let (ids, stats) = generate(
                &model,
                &prompt,
                args.sampling.max_new_tokens,
                &stop,
                &mut sampler,
                |id| streamer.push(id),
            );
            println!();
            report(&stats);
            history.push(Message {
                role: "assistant".into(),
                content: tok.decode(&ids)?,
                extra: Default::default(),
            });
        }
        Ok(())
    }
}

pub fn run_chat(args: ChatArgs) -> anyhow::Result<ExitCode> {
    dispatch(args.model.device, ChatJob(&args)).map_err(user)??;
    Ok(ExitCode::SUCCESS)
}
