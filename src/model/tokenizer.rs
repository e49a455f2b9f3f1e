//! The tokenizer of a model folder: `tokenizer.json` through the `tokenizers` crate, plus the
//! special tokens and chat template of `tokenizer_config.json` and the stop tokens and sampling
//! defaults of `generation_config.json`.

use std::path::{Path, PathBuf};

/// Token ids and the `(start, end)` byte span of each in the text.
pub type IdsAndOffsets = (Vec<u32>, Vec<(usize, usize)>);

use serde::Deserialize;
use tokenizers::Tokenizer;

use super::config::TokenIds;
use super::error::ModelError;

/// A special token in `tokenizer_config.json`: a plain string or an `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SpecialToken {
    Text(String),
    Added { content: String },
}

impl SpecialToken {
    pub fn content(&self) -> &str {
        match self {
            SpecialToken::Text(s) => s,
            SpecialToken::Added { content } => content,
        }
    }
}

/// A named chat template (`tokenizer_config.json` may hold a list of them).
#[derive(Debug, Clone, Deserialize)]
pub struct NamedTemplate {
    pub name: String,
    pub template: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChatTemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenizerConfig {
    pub bos_token: Option<SpecialToken>,
    pub eos_token: Option<SpecialToken>,
    pub pad_token: Option<SpecialToken>,
    pub chat_template: Option<ChatTemplateField>,
    #[serde(default)]
    pub add_bos_token: Option<bool>,
    pub model_max_length: Option<f64>,
}

/// `generation_config.json`: stop tokens and sampling defaults.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    pub eos_token_id: Option<TokenIds>,
    pub bos_token_id: Option<TokenIds>,
    pub pad_token_id: Option<TokenIds>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub max_new_tokens: Option<usize>,
}

/// Everything about text <-> ids for one model.
pub struct TokenizerBundle {
    pub tokenizer: Tokenizer,
    pub config: TokenizerConfig,
    pub generation: Option<GenerationConfig>,
    /// Chat template from `tokenizer_config.json` or a separate `chat_template.jinja`.
    pub chat_template: Option<String>,
    pub path: PathBuf,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ModelError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

impl TokenizerBundle {
    /// Load from a model folder (tokenizer.json is required; the rest is optional).
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::NotAModelFolder {
                dir: dir.to_path_buf(),
                missing: "tokenizer.json".into(),
            });
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let config: TokenizerConfig =
            read_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let generation = read_json(&dir.join("generation_config.json"))?;
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.is_file() {
            Some(
                std::fs::read_to_string(&jinja).map_err(|source| ModelError::Io {
                    path: jinja.clone(),
                    source,
                })?,
            )
        } else {
            match &config.chat_template {
                Some(ChatTemplateField::One(t)) => Some(t.clone()),
                Some(ChatTemplateField::Named(list)) => list
                    .iter()
                    .find(|t| t.name == "default")
                    .or(list.first())
                    .map(|t| t.template.clone()),
                None => None,
            }
        };
        Ok(Self {
            tokenizer,
            config,
            generation,
            chat_template,
            path,
        })
    }

    /// Token ids of `text` without special tokens added (chat templates carry their own).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Token ids and the byte offset where each token starts in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<IdsAndOffsets, ModelError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.config.eos_token.as_ref().map(SpecialToken::content)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.config.bos_token.as_ref().map(SpecialToken::content)
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token().and_then(|t| self.token_id(t))
    }

    /// Every id that ends generation: `generation_config.json`'s list, else the tokenizer's EOS.
    pub fn stop_ids(&self, model_eos: &[u32]) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .generation
            .as_ref()
            .and_then(|g| g.eos_token_id.as_ref())
            .map(TokenIds::to_vec)
            .unwrap_or_default();
        if ids.is_empty() {
            ids.extend(model_eos);
        }
        if let Some(id) = self.eos_token_id()
            && !ids.contains(&id)
        {
            ids.push(id);
        }
        ids
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}
