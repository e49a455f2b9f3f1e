//! SentencePiece tokenizers (`tokenizer.model`, the `ModelProto` of sentencepiece_model.proto,
//! as Llama 2 and Mistral 7B ship them) as llama.cpp's `llama` tokenizer: pieces, scores and
//! types, following convert_hf_to_gguf.py's `_create_vocab_sentencepiece`, with the added tokens
//! of `added_tokens.json` and `tokenizer_config.json` on top.

use std::path::Path;

use prost::Message;
use serde_json::Value as Json;

use super::error::ExportError;
use super::gguf::Value;

/// `sentencepiece_model.proto`: only the pieces are needed (other fields are skipped).
#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<Piece>,
}

#[derive(Clone, PartialEq, Message)]
struct Piece {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
    /// NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6.
    #[prost(int32, optional, tag = "3")]
    kind: Option<i32>,
}

/// `llama_token_type` values used here.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// `tokenizer.ggml.{model,pre,tokens,scores,token_type}` from `dir/tokenizer.model`, padded to
/// `vocab_size` with `[PAD<i>]` (score -10000, unused) as the converter does.
pub fn vocab_keys(
    dir: &Path,
    vocab_size: usize,
    tokenizer_config: &Json,
    looks_special: fn(&str) -> bool,
) -> Result<Vec<(String, Value)>, ExportError> {
    let path = dir.join("tokenizer.model");
    let bytes = std::fs::read(&path).map_err(|source| ExportError::Io {
        path: path.clone(),
        source,
    })?;
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| ExportError::Tokenizer {
        path: path.clone(),
        message: format!("not a SentencePiece model ({e})"),
    })?;
    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; vocab_size];
    let mut types = vec![UNUSED; vocab_size];
    for (i, p) in model.pieces.iter().enumerate().take(vocab_size) {
        tokens[i] = p.piece.clone().unwrap_or_default();
        scores[i] = p.score.unwrap_or(0.0);
        // sentencepiece's user-defined pieces count as normal here, as in the converter.
        types[i] = match p.kind.unwrap_or(NORMAL) {
            k @ (2 | 3 | 5 | 6) => k,
            _ => NORMAL,
        };
    }
    let added_path = dir.join("added_tokens.json");
    if added_path.is_file() {
        let text = std::fs::read_to_string(&added_path).map_err(|source| ExportError::Io {
            path: added_path.clone(),
            source,
        })?;
        let added: serde_json::Map<String, Json> =
            serde_json::from_str(&text).map_err(|e| ExportError::Tokenizer {
                path: added_path.clone(),
                message: format!("invalid JSON: {e}"),
            })?;
        for (content, id) in &added {
            if let Some(id) = id.as_u64().map(|i| i as usize).filter(|&i| i < vocab_size) {
                tokens[id] = content.clone();
                scores[id] = -1000.0;
                types[id] = USER_DEFINED;
            }
        }
    }
    // tokenizer_config.json added_tokens_decoder: special (or special-looking) tokens are
    // control tokens, the rest user-defined, all with score -1000.
    let mut set = |id: usize, content: &str, special: bool| {
        if id >= vocab_size {
            return;
        }
        if special || looks_special(content) {
            tokens[id] = content.to_string();
            types[id] = CONTROL;
        } else {
            tokens[id] = content.replace('\u{2581}', " ");
            types[id] = USER_DEFINED;
        }
        scores[id] = -1000.0;
    };
    if let Some(decoder) = tokenizer_config["added_tokens_decoder"].as_object() {
        for (id, entry) in decoder {
            if let (Ok(id), Some(content)) = (id.parse::<usize>(), entry["content"].as_str()) {
                set(id, content, entry["special"] == true);
            }
        }
    }
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::Str("llama".into())),
        ("tokenizer.ggml.pre".into(), Value::Str("default".into())),
        ("tokenizer.ggml.tokens".into(), Value::StrArray(tokens)),
        ("tokenizer.ggml.scores".into(), Value::F32Array(scores)),
        ("tokenizer.ggml.token_type".into(), Value::I32Array(types)),
    ])
}
