//! `burnish inspect <ADAPTER_DIR>`: what a PEFT adapter folder holds: its settings, the base it
//! names, its tensors and trained parameters, and (when that base is a local folder) whether
//! every tensor fits it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use super::inspect::group_digits;
use crate::lora::TargetSpec;
use crate::lora::peft::{Part, WEIGHTS_FILE, parse_peft_key, read_adapter, read_adapter_config};
use crate::model::ModelConfig;

pub fn run(dir: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let what = || format!("inspecting {}", dir.display());
    let (settings, base) = read_adapter_config(dir).with_context(what)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path)
        .with_context(|| format!("reading {}", weights_path.display()))
        .with_context(what)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| {
            crate::error::user(format!(
                "{}: not a valid safetensors file ({e}); it may be truncated or corrupt",
                weights_path.display()
            ))
        })
        .with_context(what)?;
    let (mut parameters, mut dtypes, mut layers, mut modules) =
        (0u64, BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut magnitudes = 0usize;
    for (name, view) in st.tensors() {
        parameters += view.shape().iter().product::<usize>() as u64;
        dtypes.insert(format!("{:?}", view.dtype()).to_lowercase());
        if let Some((layer, module, part)) = parse_peft_key(&name) {
            layers.insert(layer);
            modules.insert((layer, module));
            magnitudes += usize::from(part == Part::Magnitude);
        }
    }
    // Shapes are checked against the base when it is a local model folder.
    let local_base = base
        .as_deref()
        .map(Path::new)
        .filter(|p| p.join("config.json").is_file());
    let checked = match local_base {
        Some(b) => {
            let config = ModelConfig::from_file(&b.join("config.json")).with_context(what)?;
            read_adapter(dir, &config).with_context(what)?;
            Some(b.display().to_string())
        }
        None => None,
    };
    let targets = match &settings.targets {
        TargetSpec::One(s) => s.clone(),
        TargetSpec::List(l) => l.join(", "),
    };
    let method = if settings.dora { "DoRA" } else { "LoRA" };
    if as_json {
        let v = json!({
            "method": method,
            "base_model": base,
            "r": settings.r,
            "alpha": settings.alpha,
            "dropout": settings.dropout,
            "rslora": settings.rslora,
            "dora": settings.dora,
            "targets": settings.targets,
            "layers_to_transform": settings.layers_to_transform,
            "rank_pattern": settings.rank_pattern,
            "alpha_pattern": settings.alpha_pattern,
            "tensors": st.len(),
            "adapted_modules": modules.len(),
            "adapted_layers": layers.len(),
            "magnitude_vectors": magnitudes,
            "parameters": parameters,
            "dtypes": dtypes,
            "checked_against_base": checked,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("adapter          PEFT {method}");
    println!(
        "base model       {}",
        base.as_deref()
            .unwrap_or("(not named in adapter_config.json)")
    );
    println!(
        "rank             r={} alpha={} ({}scaling {}), dropout {}",
        settings.r,
        settings.alpha,
        if settings.rslora { "rsLoRA " } else { "" },
        settings.scaling(settings.r, settings.alpha),
        settings.dropout
    );
    if !settings.rank_pattern.is_empty() || !settings.alpha_pattern.is_empty() {
        println!(
            "patterns         rank {:?}, alpha {:?}",
            settings.rank_pattern, settings.alpha_pattern
        );
    }
    println!("targets          {targets}");
    println!(
        "modules          {} in {} layer(s){}",
        modules.len(),
        layers.len(),
        if magnitudes > 0 {
            format!(", {magnitudes} with DoRA magnitudes")
        } else {
            String::new()
        }
    );
    println!(
        "tensors          {} ({}), {} parameters",
        st.len(),
        dtypes.into_iter().collect::<Vec<_>>().join(", "),
        group_digits(parameters)
    );
    match checked {
        Some(b) => println!("checked          every tensor fits {b}"),
        None => println!("checked          not against a base (it is not a local model folder)"),
    }
    Ok(ExitCode::SUCCESS)
}
