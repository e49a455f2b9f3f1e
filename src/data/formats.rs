//! Dataset row formats and their parsing into [`Example`]s: `text`, `alpaca`, `messages`
//! (OpenAI-style `role`/`content`), `sharegpt` (`from`/`value`) and `pretokenized`
//! (`input_ids`, optional `labels`). Column names can be remapped per source.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::DataError;
use super::source::Row;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `{"text": ...}`: every token trained, EOS appended.
    Text,
    /// `instruction`, optional `input`, `output`: only the response is trained.
    #[default]
    Alpaca,
    /// `messages: [{role, content}]`: only assistant turns are trained.
    Messages,
    /// `conversations: [{from, value}]` with `human`/`gpt`/`system`.
    Sharegpt,
    /// `input_ids` and optional `labels` (-100 = not trained).
    Pretokenized,
    /// `prompt`, `chosen`, `rejected` pairs for `dpo`/`orpo` (see `data::preference`).
    Preference,
    /// `prompt`, `completion`, `label` rows for `kto`: one completion each, desirable or not
    /// (TRL's unpaired preference type; see `data::unpaired`).
    Unpaired,
    /// `prompt` and `completion` (TRL's prompt-completion type): texts or messages; only the
    /// completion is trained.
    #[serde(rename = "prompt_completion")]
    PromptCompletion,
}

impl Format {
    pub const ALL: [Format; 8] = [
        Format::Text,
        Format::Alpaca,
        Format::Messages,
        Format::Sharegpt,
        Format::Pretokenized,
        Format::Preference,
        Format::Unpaired,
        Format::PromptCompletion,
    ];

    /// The canonical column names of this format (what `fields` may remap).
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Format::Text => &["text"],
            Format::Alpaca => &["instruction", "input", "output", "system"],
            Format::Messages => &["messages", "role", "content", "tools"],
            Format::Sharegpt => &["conversations", "from", "value", "tools"],
            Format::Pretokenized => &["input_ids", "labels"],
            Format::Preference => &super::preference::FIELDS,
            Format::Unpaired => &super::unpaired::FIELDS,
            Format::PromptCompletion => &["prompt", "completion", "role", "content", "tools"],
        }
    }

    /// Guess the format from a row's keys (used by `eval` without `--format`).
    pub fn detect(row: &Value) -> Option<Format> {
        let has = |k: &str| row.get(k).is_some();
        if has("chosen") && has("rejected") {
            Some(Format::Preference)
        } else if has("completion") && has("label") {
            Some(Format::Unpaired)
        } else if has("prompt") && has("completion") {
            Some(Format::PromptCompletion)
        } else if has("input_ids") {
            Some(Format::Pretokenized)
        } else if has("messages") {
            Some(Format::Messages)
        } else if has("conversations") {
            Some(Format::Sharegpt)
        } else if has("instruction") && has("output") {
            Some(Format::Alpaca)
        } else if has("text") {
            Some(Format::Text)
        } else {
            None
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Text => "text",
            Format::Alpaca => "alpaca",
            Format::Messages => "messages",
            Format::Sharegpt => "sharegpt",
            Format::Pretokenized => "pretokenized",
            Format::Preference => "preference",
            Format::Unpaired => "unpaired",
            Format::PromptCompletion => "prompt_completion",
        })
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.to_string() == s)
            .ok_or_else(|| format!("unknown format '{s}' (expected text, alpaca, messages, sharegpt, pretokenized, preference, unpaired or prompt_completion)"))
    }
}

/// One chat message, its role normalised to `system`, `user`, `assistant` or `tool`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// Other fields of the message (tool calls, reasoning content, ...), passed to templates.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// A parsed dataset row.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    Text(String),
    Alpaca {
        instruction: String,
        input: String,
        output: String,
        system: Option<String>,
    },
    /// A conversation, with the tool definitions its template renders (a `tools` column:
    /// JSON schemas, as a list or a JSON string, as TRL reads it).
    Chat(Vec<Message>, Option<Value>),
    Tokens {
        input_ids: Vec<u32>,
        labels: Option<Vec<i64>>,
    },
    /// A prompt and its completion, both texts or both conversations (a text completion to a
    /// conversation is the assistant's reply).
    PromptCompletion {
        prompt: super::preference::Side,
        completion: super::preference::Side,
        tools: Option<Value>,
    },
}

/// Column renames: canonical field name -> the dataset's column name.
pub type FieldMap = BTreeMap<String, String>;

/// Role renames of conversation rows: the dataset's role name -> `system`, `user`, `assistant`
/// or `tool`.
pub type RoleMap = BTreeMap<String, String>;

/// The roles chat templates render.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

pub fn parse_example(
    row: &Row,
    format: Format,
    fields: &FieldMap,
    roles: &RoleMap,
) -> Result<Example, DataError> {
    let name = |canonical: &str| -> String {
        fields
            .get(canonical)
            .cloned()
            .unwrap_or_else(|| canonical.to_string())
    };
    let bad = |message: String| DataError::BadRow {
        at: row.at.clone(),
        message,
    };
    let get = |canonical: &str| row.value.get(name(canonical));
    let text = |canonical: &str, required: bool| -> Result<Option<String>, DataError> {
        match get(canonical) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Null) | None if !required => Ok(None),
            None | Some(Value::Null) => Err(bad(format!(
                "missing field '{}' (format {format}; map columns with `fields:` in the recipe)",
                name(canonical)
            ))),
            Some(other) => Err(bad(format!(
                "field '{}' must be a string, found {}",
                name(canonical),
                type_name(other)
            ))),
        }
    };
    match format {
        Format::Preference | Format::Unpaired => Err(bad(format!(
            "{format} rows train with a preference objective (train.objective dpo, orpo, simpo, cpo or kto), not as single examples"
        ))),
        Format::PromptCompletion => {
            let side = |canonical: &str| -> Result<super::preference::Side, DataError> {
                let key = name(canonical);
                match super::preference::side_of(row, &key, fields, roles).map_err(bad)? {
                    None => Err(bad(format!(
                        "missing field '{key}' (format {format}; map columns with `fields:` in the recipe)"
                    ))),
                    Some(s) if s.is_empty() => {
                        Err(bad(format!("the {canonical} ('{key}') is empty")))
                    }
                    Some(s) => Ok(s),
                }
            };
            let tools = super::tools::tools_of(row, fields).map_err(bad)?;
            let prompt = side("prompt")?;
            let completion = super::preference::as_reply(&prompt, side("completion")?);
            let conversation = matches!(prompt, super::preference::Side::Messages(_));
            super::tools::check_rendered(&tools, conversation, fields).map_err(bad)?;
            Ok(Example::PromptCompletion {
                prompt,
                completion,
                tools,
            })
        }
        Format::Text => Ok(Example::Text(text("text", true)?.unwrap_or_default())),
        Format::Alpaca => Ok(Example::Alpaca {
            instruction: text("instruction", true)?.unwrap_or_default(),
            input: text("input", false)?.unwrap_or_default(),
            output: text("output", true)?.unwrap_or_default(),
            system: text("system", false)?,
        }),
        Format::Messages | Format::Sharegpt => {
            let (list_key, role_key, content_key) = if format == Format::Messages {
                ("messages", "role", "content")
            } else {
                ("conversations", "from", "value")
            };
            let list = match get(list_key) {
                Some(Value::Array(list)) => list,
                None | Some(Value::Null) => {
                    return Err(bad(format!(
                        "missing field '{}' (format {format})",
                        name(list_key)
                    )));
                }
                Some(other) => {
                    return Err(bad(format!(
                        "field '{}' must be a list of messages, found {}",
                        name(list_key),
                        type_name(other)
                    )));
                }
            };
            let messages = parse_messages(
                list,
                &name(list_key),
                &name(role_key),
                &name(content_key),
                roles,
            )
            .map_err(bad)?;
            if !messages.iter().any(|m| m.role == "assistant") {
                return Err(bad(
                    "conversation has no assistant message to train on".into()
                ));
            }
            let tools = super::tools::tools_of(row, fields).map_err(bad)?;
            Ok(Example::Chat(messages, tools))
        }
        Format::Pretokenized => {
            let ints = |canonical: &str, required: bool| -> Result<Option<Vec<i64>>, DataError> {
                match get(canonical) {
                    Some(Value::Array(list)) => list
                        .iter()
                        .map(|v| {
                            v.as_i64().ok_or_else(|| {
                                bad(format!(
                                    "'{}' must hold integers, found {v}",
                                    name(canonical)
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Some),
                    None | Some(Value::Null) if !required => Ok(None),
                    None | Some(Value::Null) => {
                        Err(bad(format!("missing field '{}'", name(canonical))))
                    }
                    Some(other) => Err(bad(format!(
                        "field '{}' must be a list of integers, found {}",
                        name(canonical),
                        type_name(other)
                    ))),
                }
            };
            let ids = ints("input_ids", true)?.unwrap_or_default();
            if ids.is_empty() {
                return Err(bad("'input_ids' is empty".into()));
            }
            let input_ids = ids
                .iter()
                .map(|&i| {
                    u32::try_from(i)
                        .map_err(|_| bad(format!("token id {i} is negative or too large")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let labels = ints("labels", false)?;
            if let Some(l) = &labels
                && l.len() != input_ids.len()
            {
                return Err(bad(format!(
                    "'labels' has {} entries but 'input_ids' has {}",
                    l.len(),
                    input_ids.len()
                )));
            }
            Ok(Example::Tokens { input_ids, labels })
        }
    }
}

/// A list of chat messages from a row: `list_key`, `role_key` and `content_key` are the
/// row's own names (after `fields`). A role no chat template renders is an error naming the
/// allowed ones; other fields of a message (tool calls, ...) are kept for the template.
pub(super) fn parse_messages(
    list: &[Value],
    list_key: &str,
    role_key: &str,
    content_key: &str,
    roles: &RoleMap,
) -> Result<Vec<Message>, String> {
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let field = |key: &str| -> Result<String, String> {
            match m.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(format!("message {i} of '{list_key}' has no string '{key}'")),
            }
        };
        let given = field(role_key)?;
        let role = normalise_role(&given, roles).ok_or_else(|| {
            format!(
                "message {i} of '{list_key}' has {role_key} '{given}', which no chat template \
                 renders; allowed: {} (also human, gpt, bot, model); map other names in the \
                 source with `roles: {{{given}: assistant}}`",
                ROLES.join(", ")
            )
        })?;
        let extra = m
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| *k != role_key && *k != content_key)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        messages.push(Message {
            role,
            content: field(content_key)?,
            extra,
        });
    }
    Ok(messages)
}

/// The canonical role of a dataset's role name: the source's own `roles` mapping first, then
/// the names ShareGPT and other common layouts use. `None` for anything else: a template
/// silently renders nothing for a role it does not know, and the turn would vanish from the
/// training text.
pub(super) fn normalise_role(role: &str, roles: &RoleMap) -> Option<String> {
    let role = roles.get(role).map_or(role, String::as_str);
    match role {
        "human" | "user" => Some("user".into()),
        "gpt" | "assistant" | "bot" | "model" => Some("assistant".into()),
        "system" => Some("system".into()),
        "tool" => Some("tool".into()),
        _ => None,
    }
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
