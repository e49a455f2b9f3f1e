//! Tokenizer metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`) from a model folder's
//! `tokenizer.json`, `tokenizer_config.json` and `config.json`, following convert_hf_to_gguf.py
//! for byte-level BPE tokenizers (`_set_vocab_gpt2`, `get_vocab_base`; SentencePiece models
//! with a `tokenizer.model` are in [`super::spm`]) and gguf-py's `SpecialVocab` for the special
//! tokens, add-BOS flag and chat template.
//!
//! The pre-tokenizer is named the way llama.cpp selects its splitting regex
//! (`tokenizer.ggml.pre`); burnish recognises it from the regex in `tokenizer.json` rather than
//! from a hash of sample encodings, so a tokenizer whose regex llama.cpp does not implement is
//! refused instead of being split wrongly.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;

use super::error::ExportError;
use super::gguf::Value;
use crate::model::{ModelConfig, TokenizerBundle};

/// `llama_token_type`.
mod token_type {
    pub const NORMAL: i32 = 1;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
}

/// Split regexes of tokenizer.json and the llama.cpp pre-tokenizer that implements each.
const PRE_TOKENIZERS: &[(&str, &str)] = &[
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        "qwen2",
    ),
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        "llama-bpe",
    ),
    (
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        "tekken",
    ),
];

fn bad(path: &Path, message: impl Into<String>) -> ExportError {
    ExportError::Tokenizer {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_json(path: &Path) -> Result<Option<Json>, ExportError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| bad(path, format!("invalid JSON: {e}")))
}

/// gguf-py's guess that an added token is a control token although not marked special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// The pre-tokenizer name for `tokenizer.json`'s `pre_tokenizer`.
fn pre_tokenizer(path: &Path, tok: &Json) -> Result<&'static str, ExportError> {
    let pre = &tok["pre_tokenizer"];
    let parts: Vec<&Json> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        _ => vec![pre],
    };
    let regex = parts.iter().find_map(|p| {
        (p["type"] == "Split")
            .then(|| p["pattern"]["Regex"].as_str())
            .flatten()
    });
    match regex {
        Some(r) => PRE_TOKENIZERS
            .iter()
            .find(|(re, _)| *re == r)
            .map(|(_, name)| *name)
            .ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "its pre-tokenizer regex is not one llama.cpp implements as burnish knows it \
                         (known: the Qwen2, Llama 3 and Tekken regexes); found {r:?}"
                    ),
                )
            }),
        // GPT-2's own ByteLevel splitting.
        None if parts
            .iter()
            .any(|p| p["type"] == "ByteLevel" && p["use_regex"] != false) =>
        {
            Ok("gpt-2")
        }
        None => Err(bad(path, "it has no byte-level pre-tokenizer llama.cpp knows")),
    }
}

/// `tokenizer.json` merges as llama.cpp stores them: "a b", spaces inside a part encoded as
/// U+0120 (the pair form of tokenizers >= 0.20 allows them).
fn merges(path: &Path, tok: &Json) -> Result<Vec<String>, ExportError> {
    let Some(list) = tok["model"]["merges"].as_array() else {
        return Err(bad(path, "model.merges is missing"));
    };
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                let enc = |p: &Json| {
                    p.as_str()
                        .map(|s| s.replace(' ', "\u{120}"))
                        .ok_or_else(|| bad(path, "a merge is not a pair of strings"))
                };
                Ok(format!("{} {}", enc(&pair[0])?, enc(&pair[1])?))
            }
            _ => Err(bad(path, "a merge is neither \"a b\" nor [a, b]")),
        })
        .collect()
}

fn added_tokens(tok: &Json) -> Vec<Json> {
    tok["added_tokens"].as_array().cloned().unwrap_or_default()
}

/// The special-token content of a `tokenizer_config.json` entry (string or AddedToken).
fn token_content(v: &Json) -> Option<&str> {
    v.as_str().or_else(|| v["content"].as_str())
}

/// Everything `tokenizer.*` for a byte-level BPE tokenizer, padded to `config.vocab_size`.
pub fn tokenizer_keys(
    dir: &Path,
    config: &ModelConfig,
) -> Result<Vec<(String, Value)>, ExportError> {
    let path = dir.join("tokenizer.json");
    let Some(tok) = read_json(&path)? else {
        return Err(ExportError::Tokenizer {
            path,
            message: "not found; a GGUF file carries its tokenizer, so the model folder needs \
                      tokenizer.json (copy it from the base model)"
                .into(),
        });
    };
    // Also checks that the tokenizer loads at all, and gives the chat template burnish uses.
    let bundle = TokenizerBundle::from_dir(dir)?;
    let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    // A SentencePiece model is what the converter prefers when the folder has one.
    if dir.join("tokenizer.model").is_file() {
        let mut kv = Vec::new();
        // Gemma's SentencePiece model adds no dummy prefix; the converter always says so.
        let gemma = config.architecture.is_gemma();
        let prefix = if gemma {
            Some(false)
        } else {
            tc["add_prefix_space"].as_bool()
        };
        if let Some(b) = prefix {
            kv.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(b)));
        }
        kv.extend(super::spm::vocab_keys(
            dir,
            config.vocab_size,
            &tc,
            looks_special,
        )?);
        kv.extend(special_tokens(dir, &tok, &added_tokens(&tok), config)?);
        if let Some(t) = &bundle.chat_template {
            kv.push(("tokenizer.chat_template".into(), Value::Str(t.clone())));
        }
        return Ok(kv);
    }
    let model = &tok["model"];
    if model["type"] != "BPE" {
        return Err(bad(
            &path,
            format!(
                "tokenizer model {} is not supported for GGUF export (burnish exports byte-level BPE tokenizers)",
                model["type"]
            ),
        ));
    }
    if model["byte_fallback"] == true {
        return Err(bad(
            &path,
            "this is a SentencePiece-style tokenizer (BPE with byte fallback, as Llama 2 and \
             Mistral 7B use): put its tokenizer.model next to tokenizer.json (it is in the base \
             model's repo) and export again",
        ));
    }
    let pre = pre_tokenizer(&path, &tok)?;
    let mut by_id: HashMap<u64, String> = HashMap::new();
    if let Some(vocab) = model["vocab"].as_object() {
        for (t, id) in vocab {
            if let Some(id) = id.as_u64() {
                by_id.insert(id, t.clone());
            }
        }
    }
    // Added tokens: id -> (special, content).
    let mut added: HashMap<u64, (bool, String)> = HashMap::new();
    let added_list = added_tokens(&tok);
    for a in &added_list {
        if let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) {
            added.insert(id, (a["special"] == true, content.to_string()));
            by_id.insert(id, content.to_string());
        }
    }
    let n = config.vocab_size as u64;
    if let Some(max) = by_id.keys().max()
        && *max >= n
    {
        return Err(bad(
            &path,
            format!(
                "token id {max} is outside the model's vocabulary (config.json vocab_size {n})"
            ),
        ));
    }
    let mut tokens = Vec::with_capacity(n as usize);
    let mut types = Vec::with_capacity(n as usize);
    for i in 0..n {
        match (by_id.get(&i), added.get(&i)) {
            (None, _) => {
                tokens.push(format!("[PAD{i}]"));
                types.push(token_type::UNUSED);
            }
            (Some(_), Some((special, content))) => {
                if *special || looks_special(content) {
                    tokens.push(content.clone());
                    types.push(token_type::CONTROL);
                } else {
                    tokens.push(content.replace('\u{2581}', " "));
                    types.push(token_type::USER_DEFINED);
                }
            }
            (Some(t), None) => {
                tokens.push(t.clone());
                types.push(token_type::NORMAL);
            }
        }
    }
    let mut kv: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::Str(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::StrArray(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::I32Array(types)),
        (
            "tokenizer.ggml.merges".into(),
            Value::StrArray(merges(&path, &tok)?),
        ),
    ];
    kv.extend(special_tokens(dir, &tok, &added_list, config)?);
    if let Some(t) = &bundle.chat_template {
        kv.push(("tokenizer.chat_template".into(), Value::Str(t.clone())));
    }
    Ok(kv)
}

/// `SpecialVocab`: BOS/EOS/UNK/PAD ids from `tokenizer_config.json` (names looked up among the
/// added tokens), else from `config.json`; add-BOS/EOS flags from `tokenizer_config.json`, else
/// from a `TemplateProcessing` post-processor that starts with the BOS token.
fn special_tokens(
    dir: &Path,
    tok: &Json,
    added: &[Json],
    config: &ModelConfig,
) -> Result<Vec<(String, Value)>, ExportError> {
    let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let cfg = read_json(&dir.join("config.json"))?.unwrap_or(Json::Null);
    let kinds = [
        ("bos", "bos"),
        ("eos", "eos"),
        ("unk", "unknown"),
        ("pad", "padding"),
    ];
    let mut ids: Vec<(&str, u32)> = Vec::new();
    for (kind, _) in kinds {
        let from_tc = token_content(&tc[format!("{kind}_token")]).and_then(|content| {
            added
                .iter()
                .find(|a| a["content"] == content)
                .and_then(|a| a["id"].as_u64())
        });
        let from_cfg = || {
            let v = &cfg[format!("{kind}_token_id")];
            // A list (several EOS ids) is not an int: gguf-py skips it.
            v.as_u64()
        };
        if let Some(id) = from_tc.or_else(from_cfg)
            && id < config.vocab_size as u64
        {
            ids.push((kind, id as u32));
        }
    }
    let mut add_bos = tc["add_bos_token"].as_bool();
    let add_eos = tc["add_eos_token"].as_bool();
    if add_bos.is_none() {
        let post = &tok["post_processor"];
        let processors: Vec<&Json> = match post["processors"].as_array() {
            Some(list) => list.iter().collect(),
            None => vec![post],
        };
        let bos = token_content(&tc["bos_token"]);
        for p in processors {
            if p["type"] == "TemplateProcessing"
                && let Some(single) = p["single"].as_array()
                && single.len() > 1
                && let Some(first) = single[0]["SpecialToken"]["id"].as_str()
            {
                // Without a tokenizer_config.json the template's first token is the BOS.
                add_bos = Some(tc.is_null() || bos == Some(first));
            }
        }
    }
    let mut kv = Vec::new();
    for (kind, key) in kinds {
        if let Some((_, id)) = ids.iter().find(|(k, _)| *k == kind) {
            kv.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(*id)));
        }
    }
    if let Some(b) = add_bos {
        kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(b)));
    }
    if let Some(e) = add_eos {
        kv.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(e)));
    }
    Ok(kv)
}
