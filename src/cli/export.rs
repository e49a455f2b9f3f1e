//! `burnish export [MODEL] --gguf OUT.gguf --type q4_k_m`: write a GGUF file from a merged model
//! folder, or from `--adapter` (and its `--base`) merged in memory while exporting.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::error::user;
use crate::export::{ExportRequest, ExportType, check_output, export};
use crate::lora::peft::read_adapter;
use crate::model::ModelFolder;
use crate::observe::human_bytes;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model folder (a merged model), Hub id or builtin:PRESET. Leave out with --adapter.
    pub model: Option<String>,
    /// The GGUF file to write; a folder gets `<name>-<TYPE>.gguf` inside it.
    #[arg(long, value_name = "OUT.gguf")]
    pub gguf: PathBuf,
    /// Tensor types: f16, bf16, q8_0, q4_0, q4_k_m or q6_k (llama.cpp's file types).
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: ExportType,
    /// A PEFT adapter folder to merge into the base while exporting.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Base model for --adapter; defaults to the adapter's base_model_name_or_path.
    #[arg(long)]
    pub base: Option<String>,
    /// `general.name` in the file (default: the model or run folder's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// A folder's name, or its parent's for the `merged` / `adapter` folders a run writes.
fn default_name(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match name(dir).as_deref() {
        Some("merged" | "adapter") => dir.parent().and_then(name),
        _ => name(dir),
    }
    .unwrap_or_else(|| "model".into())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let source = match (&args.model, &args.adapter, &args.base) {
        (Some(_), Some(_), _) => {
            return Err(user(
                "give either a model folder or --adapter (with --base), not both; for a merged \
                 folder pass it alone",
            ));
        }
        (Some(_), None, Some(_)) => return Err(user("--base is only used with --adapter")),
        (None, None, _) => {
            return Err(user(
                "nothing to export: give a merged model folder, or --adapter DIR [--base MODEL]",
            ));
        }
        (Some(m), None, None) => m.clone(),
        (None, Some(adapter), Some(b)) => {
            if !adapter.is_dir() {
                return Err(user(format!(
                    "--adapter {} is not a folder",
                    adapter.display()
                )));
            }
            b.clone()
        }
        (None, Some(adapter), None) => base_from_adapter(adapter)?,
    };
    let model_dir = crate::hub::resolve_model(&source)?;
    let folder = ModelFolder::open(&model_dir)
        .with_context(|| format!("opening model {}", model_dir.display()))?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(args.adapter.as_deref().unwrap_or(Path::new(&source))));
    let out = if args.gguf.is_dir() {
        args.gguf.join(format!("{name}-{}.gguf", args.ty.label()))
    } else {
        args.gguf.clone()
    };
    check_output(&out, args.force)?;
    if out.extension().and_then(|e| e.to_str()) != Some("gguf") {
        tracing::warn!(
            "{} does not end in .gguf; llama.cpp and Ollama expect that extension",
            out.display()
        );
    }
    let adapter = match &args.adapter {
        Some(dir) => Some(
            read_adapter(dir, &folder.config)
                .with_context(|| format!("reading adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let report = export(&ExportRequest {
        model_dir: &model_dir,
        adapter: adapter.as_ref(),
        out: &out,
        ty: args.ty,
        name: &name,
        force: args.force,
    })?;
    let types: Vec<String> = report
        .types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    tracing::info!(
        "wrote {} ({}, {} tensors: {}) in {:.1}s",
        report.path.display(),
        human_bytes(report.bytes),
        report.tensors,
        types.join(", "),
        report.seconds
    );
    println!("{}", report.path.display());
    Ok(ExitCode::SUCCESS)
}

fn base_from_adapter(adapter: &Path) -> anyhow::Result<String> {
    let path = adapter.join(crate::lora::peft::CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is --adapter a PEFT adapter folder?)",
            path.display()
        )
    })?;
    let cfg: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    cfg.get("base_model_name_or_path")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(String::from)
        .ok_or_else(|| {
            user(format!(
                "{} names no base_model_name_or_path; pass --base",
                path.display()
            ))
        })
}
