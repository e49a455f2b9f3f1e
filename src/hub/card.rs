//! Model cards (`README.md` with YAML front matter) for adapters and merged models, as the Hub
//! and PEFT expect them: `base_model`, `library_name`, tags including
//! `base_model:adapter:<id>` / `base_model:finetune:<id>`, `datasets`, `license`,
//! `pipeline_tag`; then what was trained and the loss plot.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardKind {
    Adapter,
    Merged,
}

/// What a card says about its training run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub recipe_yaml: String,
    pub steps: usize,
    pub final_train_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub trainable_parameters: u64,
    pub train_examples: usize,
    pub has_plot: bool,
    /// `dpo`, `orpo`, `simpo`, `cpo` or `kto` for preference tuning (empty: supervised
    /// fine-tuning).
    pub objective: String,
    /// The last step's and the final evaluation's preference metrics (TRL's names).
    pub preference_metrics: Vec<(String, f64)>,
}

#[derive(Debug, Clone)]
pub struct CardInfo {
    pub kind: CardKind,
    /// The base model as written (Hub id, local path or preset).
    pub base_model: String,
    pub license: Option<String>,
    pub datasets: Vec<String>,
    pub summary: Option<RunSummary>,
    /// GGUF files published beside a merged model.
    pub gguf: Vec<GgufFile>,
    /// The adapter is DoRA (PEFT's `use_dora`), not plain LoRA.
    pub dora: bool,
}

/// A `.gguf` file of the folder: name, llama.cpp type label (`Q4_K_M`) and size.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufFile {
    pub name: String,
    pub label: String,
    pub size: u64,
}

/// The `.gguf` files directly in `dir`, sorted by name; the type label is the file name's last
/// `-` part when it is written like one (`run-Q8_0.gguf`).
pub fn gguf_files(dir: &Path) -> Vec<GgufFile> {
    let mut out: Vec<GgufFile> = std::fs::read_dir(dir)
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".gguf")?;
            let size = e.metadata().ok().filter(|m| m.is_file())?.len();
            // `run-Q4_K_M.gguf`: the type label as `burnish export` names its files.
            let label = stem
                .rsplit_once('-')
                .map(|(_, l)| l)
                .filter(|l| {
                    l.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                })
                .unwrap_or_default()
                .to_string();
            Some(GgufFile { name, label, size })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The card section that lists GGUF files and how to run them in llama.cpp and Ollama.
fn gguf_section(files: &[GgufFile]) -> String {
    let mut s = String::from(
        "## GGUF\n\nFor llama.cpp, Ollama and LM Studio (written by `burnish export`):\n\n\
         | File | Type | Size |\n| --- | --- | --- |\n",
    );
    for f in files {
        s.push_str(&format!(
            "| `{}` | {} | {} |\n",
            f.name,
            f.label,
            crate::observe::human_bytes(f.size)
        ));
    }
    let f = &files[0];
    let tag = if f.label.is_empty() {
        "latest"
    } else {
        &f.label
    };
    s.push_str(&format!(
        "\n```sh\n# llama.cpp, from a download or straight from the Hub\nllama-cli -m {} -cnv\n\
         llama-cli -hf <this repo>:{tag} -cnv\n# Ollama\nollama run hf.co/<this repo>:{tag}\n```\n\n",
        f.name
    ));
    s
}

/// Whether a model reference is a Hub repo id (only those go into `base_model`).
fn hub_id(base: &str) -> Option<&str> {
    (super::is_repo_id(base) && !Path::new(base).exists()).then_some(base)
}

/// `license:` from a model folder's README front matter.
pub fn license_of(model_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(model_dir.join("README.md")).ok()?;
    let front = text.strip_prefix("---")?.split("\n---").next()?;
    front
        .lines()
        .find_map(|l| l.strip_prefix("license:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

pub fn render(info: &CardInfo) -> String {
    let mut fm = vec!["---".to_string()];
    let base = hub_id(&info.base_model);
    if let Some(b) = base {
        fm.push(format!("base_model: {b}"));
    }
    fm.push(format!(
        "library_name: {}",
        if info.kind == CardKind::Adapter {
            "peft"
        } else {
            "transformers"
        }
    ));
    if let Some(l) = &info.license {
        fm.push(format!("license: {l}"));
    }
    fm.push("pipeline_tag: text-generation".into());
    fm.push("tags:".into());
    fm.push("- burnish".into());
    fm.push("- lora".into());
    if let Some(b) = base {
        fm.push(format!(
            "- base_model:{}:{b}",
            if info.kind == CardKind::Adapter {
                "adapter"
            } else {
                "finetune"
            }
        ));
    }
    if info.kind == CardKind::Adapter {
        fm.push("- peft".into());
    }
    if info.dora {
        fm.push("- dora".into());
    }
    if !info.gguf.is_empty() {
        fm.push("- gguf".into());
    }
    // The objective's tag, as TRL's trainers tag their cards (`dpo`, `kto`, ...).
    if let Some(s) = info.summary.as_ref().filter(|s| !s.objective.is_empty()) {
        fm.push(format!("- {}", s.objective));
    }
    if !info.datasets.is_empty() {
        fm.push("datasets:".into());
        for d in &info.datasets {
            fm.push(format!("- {d}"));
        }
    }
    fm.push("---".into());
    let mut body = fm.join("\n");
    body.push_str("\n\n");
    let method = if info.dora { "DoRA" } else { "LoRA" };
    let what = match info.kind {
        CardKind::Adapter => format!(
            "A {method} adapter for `{}`, trained with [burnish](https://github.com/burnish-rs/burnish).",
            info.base_model
        ),
        CardKind::Merged => format!(
            "`{}` with a {method} adapter trained by [burnish](https://github.com/burnish-rs/burnish) merged into its weights.",
            info.base_model
        ),
    };
    body.push_str(&format!(
        "# {}\n\n{what}\n\n",
        if info.kind == CardKind::Adapter {
            format!("{method} adapter")
        } else {
            "Merged model".to_string()
        }
    ));
    body.push_str("## Use\n\n```python\n");
    match info.kind {
        CardKind::Adapter => body.push_str(&format!(
            "from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(\"<this repo>\")  # base: {}\n",
            info.base_model
        )),
        CardKind::Merged => body.push_str("from transformers import AutoModelForCausalLM, AutoTokenizer\nmodel = AutoModelForCausalLM.from_pretrained(\"<this repo>\")\ntokenizer = AutoTokenizer.from_pretrained(\"<this repo>\")\n"),
    }
    body.push_str("```\n\n");
    if !info.gguf.is_empty() {
        body.push_str(&gguf_section(&info.gguf));
    }
    if let Some(s) = &info.summary {
        body.push_str("## Training\n\n");
        if !s.objective.is_empty() {
            let data = match s.objective.as_str() {
                "kto" => "labelled completions",
                _ => "preference pairs",
            };
            body.push_str(&format!("- objective: {} ({data})\n", s.objective));
        }
        body.push_str(&format!("- optimizer steps: {}\n", s.steps));
        body.push_str(&format!("- training examples: {}\n", s.train_examples));
        body.push_str(&format!(
            "- trainable parameters: {}\n",
            s.trainable_parameters
        ));
        if let Some(l) = s.final_train_loss {
            body.push_str(&format!("- final training loss: {l:.4}\n"));
        }
        match s.final_eval_loss {
            // A preference loss has no perplexity: exp(loss) would mislead.
            Some(l) if !s.preference_metrics.is_empty() => {
                body.push_str(&format!("- final evaluation loss: {l:.4}\n"));
            }
            Some(l) => body.push_str(&format!(
                "- final evaluation loss: {l:.4} (perplexity {:.2})\n",
                l.exp()
            )),
            None => {}
        }
        for (name, v) in &s.preference_metrics {
            body.push_str(&format!("- {name}: {v:.4}\n"));
        }
        if s.has_plot {
            body.push_str("\n![training and evaluation loss](loss.svg)\n");
        }
        body.push_str("\n### Recipe\n\n```yaml\n");
        body.push_str(s.recipe_yaml.trim_end());
        body.push_str("\n```\n");
    }
    body
}

/// Write `README.md` into `dir` unless it already has one.
pub fn ensure(dir: &Path, info: &CardInfo) -> std::io::Result<bool> {
    let path = dir.join("README.md");
    if path.exists() {
        return Ok(false);
    }
    std::fs::write(path, render(info))?;
    Ok(true)
}

/// A card for a folder that has none, from what the folder itself says.
pub fn infer(dir: &Path) -> Option<CardInfo> {
    let read = |f: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).ok()?).ok()
    };
    if let Some(cfg) = read("adapter_config.json") {
        return Some(CardInfo {
            kind: CardKind::Adapter,
            base_model: cfg["base_model_name_or_path"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            license: None,
            datasets: vec![],
            summary: None,
            gguf: vec![],
            dora: cfg["use_dora"].as_bool().unwrap_or(false),
        });
    }
    let cfg = read("config.json")?;
    Some(CardInfo {
        kind: CardKind::Merged,
        base_model: cfg["_name_or_path"]
            .as_str()
            .unwrap_or("unknown")
            .to_string(),
        license: None,
        datasets: vec![],
        summary: None,
        gguf: gguf_files(dir),
        dora: false,
    })
}
