//! Preference pairs for DPO and ORPO: rows of `prompt`, `chosen` and `rejected`, each a string
//! or a list of chat messages, or the Hub layouts where `chosen` and `rejected` are whole
//! conversations (or texts) sharing the prompt as their prefix (UltraFeedback-binarized,
//! HH-RLHF); or pretokenized, each field a list of token ids. Tokenized as TRL's `DPOTrainer` does: the prompt alone and the prompt followed by
//! each completion are tokenized, and the completion is what follows their common prefix;
//! plain-text completions get the EOS token appended, conversations end as the template ends
//! them. Sequences longer than `seq_len` keep the prompt's end and the completions' start.

use serde_json::Value;

use super::error::DataError;
use super::formats::{FieldMap, Message, RoleMap, parse_messages};
use super::source::Row;
use super::tokenize::Tokenization;

/// One side of a pair (or the prompt) as the row gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Side {
    Text(String),
    Messages(Vec<Message>),
    /// Token ids, used as they are (no EOS appended).
    Tokens(Vec<u32>),
}

impl Side {
    /// No text, no tokens, or no message with content or other fields (a tool call's message
    /// may have empty content).
    pub fn is_empty(&self) -> bool {
        match self {
            Side::Text(t) => t.is_empty(),
            Side::Messages(m) => {
                m.is_empty() || m.iter().all(|m| m.content.is_empty() && m.extra.is_empty())
            }
            Side::Tokens(t) => t.is_empty(),
        }
    }
}

/// A parsed preference row: the prompt made explicit.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceExample {
    pub prompt: Side,
    pub chosen: Side,
    pub rejected: Side,
    /// The row's tool definitions (conversations only).
    pub tools: Option<Value>,
}

/// A tokenized pair: the shared prompt and the two completions (the tokens that are scored).
/// An unpaired row (KTO) is one too: its completion in `chosen`, `rejected` empty, and its
/// label set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferencePair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    /// `None` for a pair; for an unpaired row, whether its completion is desirable.
    pub label: Option<bool>,
}

impl PreferencePair {
    /// Tokens of the longer of the two sequences.
    pub fn longest(&self) -> usize {
        self.prompt.len() + self.chosen.len().max(self.rejected.len())
    }

    /// Tokens of both sequences.
    pub fn tokens(&self) -> usize {
        2 * self.prompt.len() + self.chosen.len() + self.rejected.len()
    }

    /// Completion tokens of both sequences (what the log-probabilities sum over).
    pub fn completion_tokens(&self) -> usize {
        self.chosen.len() + self.rejected.len()
    }

    /// Cut a pair longer than `seq_len`: the prompt keeps its last tokens, as many as the
    /// longer completion leaves room for but at least half of `seq_len` (all of itself when
    /// shorter), and each completion keeps its first tokens up to `seq_len` with that prompt.
    /// This is TRL's rule before 1.0 (`max_prompt_length` = half of `max_length`, prompt
    /// truncation `keep_end`) without cutting the prompt further than needed. Returns whether
    /// anything was cut.
    pub fn truncate(&mut self, seq_len: usize) -> bool {
        let longer = self.chosen.len().max(self.rejected.len());
        if self.prompt.len() + longer <= seq_len {
            return false;
        }
        let keep_prompt = self
            .prompt
            .len()
            .min(seq_len.saturating_sub(longer).max(seq_len / 2));
        self.prompt.drain(..self.prompt.len() - keep_prompt);
        let room = seq_len - keep_prompt;
        self.chosen.truncate(room);
        self.rejected.truncate(room);
        true
    }
}

/// The canonical column names of the `preference` format (what `fields` may remap).
pub const FIELDS: [&str; 6] = ["prompt", "chosen", "rejected", "role", "content", "tools"];

/// Parse a `preference` row. Missing sides, identical completions and empty completions or
/// prompts are errors naming the row.
pub fn parse(
    row: &Row,
    fields: &FieldMap,
    roles: &RoleMap,
) -> Result<PreferenceExample, DataError> {
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
    let tools = super::tools::tools_of(row, fields).map_err(bad)?;
    let side = |canonical: &str, required: bool| -> Result<Option<Side>, DataError> {
        let found = side_of(row, &name(canonical), fields, roles).map_err(bad)?;
        if found.is_none() && required {
            return Err(bad(format!(
                "missing field '{}': a preference pair needs a prompt (or a shared prefix), a chosen and a rejected completion (map columns with `fields:` in the recipe)",
                name(canonical)
            )));
        }
        Ok(found)
    };
    let chosen = side("chosen", true)?.unwrap_or(Side::Text(String::new()));
    let rejected = side("rejected", true)?.unwrap_or(Side::Text(String::new()));
    let prompt = side("prompt", false)?;
    let empty = Side::is_empty;
    let empty_completion = |which: &str| {
        bad(format!(
            "the {which} completion ('{}') is empty",
            name(which)
        ))
    };
    // An empty list is of no kind: name it before the kinds are compared.
    for (which, s) in [("chosen", &chosen), ("rejected", &rejected)] {
        if empty(s) {
            return Err(empty_completion(which));
        }
    }
    let mut example = explicit_prompt(prompt, chosen, rejected).map_err(bad)?;
    let conversation = matches!(example.prompt, Side::Messages(_));
    super::tools::check_rendered(&tools, conversation, fields).map_err(bad)?;
    example.tools = tools;
    if empty(&example.prompt) {
        return Err(bad(format!(
            "the prompt is empty (no '{}' and no shared beginning of '{}' and '{}'): both completions must answer a prompt",
            name("prompt"),
            name("chosen"),
            name("rejected")
        )));
    }
    for (which, s) in [("chosen", &example.chosen), ("rejected", &example.rejected)] {
        if empty(s) {
            return Err(empty_completion(which));
        }
    }
    if example.chosen == example.rejected {
        return Err(bad(format!(
            "'{}' and '{}' are identical: the pair prefers nothing",
            name("chosen"),
            name("rejected")
        )));
    }
    Ok(example)
}

/// A completion as the prompt's kind: a text reply to a conversation becomes the assistant's
/// message.
pub fn as_reply(prompt: &Side, completion: Side) -> Side {
    match (prompt, completion) {
        (Side::Messages(_), Side::Text(content)) => Side::Messages(vec![Message {
            role: "assistant".into(),
            content,
            extra: Default::default(),
        }]),
        (_, c) => c,
    }
}

/// Field `key` of a row as one side of an example: a string, token ids or chat messages;
/// `None` when missing or null.
pub fn side_of(
    row: &Row,
    key: &str,
    fields: &FieldMap,
    roles: &RoleMap,
) -> Result<Option<Side>, String> {
    match row.value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(Side::Text(s.clone()))),
        Some(Value::Array(list)) if list.first().is_some_and(Value::is_number) => list
            .iter()
            .map(|v| v.as_u64().and_then(|i| u32::try_from(i).ok()))
            .collect::<Option<Vec<u32>>>()
            .map(|ids| Some(Side::Tokens(ids)))
            .ok_or_else(|| format!("'{key}' must hold token ids (non-negative integers)")),
        Some(Value::Array(list)) => {
            messages(list, key, fields, roles).map(|m| Some(Side::Messages(m)))
        }
        Some(other) => Err(format!(
            "field '{key}' must be a string or a list of messages, found {}",
            super::formats::type_name(other)
        )),
    }
}

fn messages(
    list: &[Value],
    key: &str,
    fields: &FieldMap,
    roles: &RoleMap,
) -> Result<Vec<Message>, String> {
    let role_key = fields.get("role").map_or("role", String::as_str);
    let content_key = fields.get("content").map_or("content", String::as_str);
    parse_messages(list, key, role_key, content_key, roles)
}

/// Make the prompt explicit: given, or the shared beginning of the two completions (TRL's
/// `extract_prompt`: whole messages of conversations, characters of texts, a space before the
/// split going to the completions).
fn explicit_prompt(
    prompt: Option<Side>,
    chosen: Side,
    rejected: Side,
) -> Result<PreferenceExample, String> {
    match (prompt, chosen, rejected) {
        (prompt, Side::Messages(c), Side::Messages(r)) => {
            let shared = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
            let prompt = match prompt {
                Some(Side::Messages(p)) => {
                    let strip = |m: Vec<Message>| {
                        if m.starts_with(&p) {
                            m[p.len()..].to_vec()
                        } else {
                            m
                        }
                    };
                    return Ok(PreferenceExample {
                tools: None,
                        chosen: Side::Messages(strip(c)),
                        rejected: Side::Messages(strip(r)),
                        prompt: Side::Messages(p),
                    });
                }
                // UltraFeedback-binarized: a text prompt beside whole conversations.
                Some(Side::Text(text)) if shared == 0 => vec![Message {
                    role: "user".into(),
                    content: text,
                    extra: Default::default(),
                }],
                _ => c[..shared].to_vec(),
            };
            Ok(PreferenceExample {
                tools: None,
                prompt: Side::Messages(prompt),
                chosen: Side::Messages(c[shared..].to_vec()),
                rejected: Side::Messages(r[shared..].to_vec()),
            })
        }
        (Some(Side::Messages(p)), Side::Text(c), Side::Text(r)) => {
            let reply = |content: String| {
                Side::Messages(vec![Message {
                    role: "assistant".into(),
                    content,
                    extra: Default::default(),
                }])
            };
            Ok(PreferenceExample {
                tools: None,
                prompt: Side::Messages(p),
                chosen: reply(c),
                rejected: reply(r),
            })
        }
        (Some(Side::Tokens(p)), Side::Tokens(c), Side::Tokens(r)) => Ok(PreferenceExample {
                tools: None,
            prompt: Side::Tokens(p),
            chosen: Side::Tokens(c),
            rejected: Side::Tokens(r),
        }),
        (None, Side::Tokens(c), Side::Tokens(r)) => {
            let shared = common_prefix(&c, &r);
            Ok(PreferenceExample {
                tools: None,
                prompt: Side::Tokens(c[..shared].to_vec()),
                chosen: Side::Tokens(c[shared..].to_vec()),
                rejected: Side::Tokens(r[shared..].to_vec()),
            })
        }
        (Some(Side::Text(p)), Side::Text(c), Side::Text(r)) => Ok(PreferenceExample {
                tools: None,
            prompt: Side::Text(p),
            chosen: Side::Text(c),
            rejected: Side::Text(r),
        }),
        (None, Side::Text(c), Side::Text(r)) => {
            let mut idx = c
                .char_indices()
                .zip(r.chars())
                .find(|((_, a), b)| a != b)
                .map_or(c.len().min(r.len()), |((i, _), _)| i);
            // Never split inside a character of the shorter text.
            while !r.is_char_boundary(idx) || !c.is_char_boundary(idx) {
                idx -= 1;
            }
            if idx > 0 && c[..idx].ends_with(' ') {
                idx -= 1;
            }
            Ok(PreferenceExample {
                tools: None,
                prompt: Side::Text(c[..idx].to_string()),
                chosen: Side::Text(c[idx..].to_string()),
                rejected: Side::Text(r[idx..].to_string()),
            })
        }
        _ => Err(
            "prompt, chosen and rejected must be of one kind: strings (a prompt may be messages), lists of messages, or lists of token ids".into(),
        ),
    }
}

/// Tokenize a pair: `prompt` and `prompt + completion` tokenized separately, the completion
/// being what follows their common prefix (shorter than the prompt only when tokens merge
/// across the boundary, or a template renders the prompt alone differently; as TRL does).
pub fn tokenize(tok: &Tokenization<'_>, e: &PreferenceExample) -> Result<PreferencePair, String> {
    let (prompt, chosen) = encode(tok, &e.prompt, &e.chosen, e.tools.as_ref())?;
    let (_, rejected) = encode(tok, &e.prompt, &e.rejected, e.tools.as_ref())?;
    let shared = common_prefix(&prompt, &chosen).min(common_prefix(&prompt, &rejected));
    let pair = PreferencePair {
        prompt: prompt[..shared].to_vec(),
        chosen: chosen[shared..].to_vec(),
        rejected: rejected[shared..].to_vec(),
        label: None,
    };
    if pair.prompt.is_empty() {
        return Err("the prompt tokenizes to nothing".into());
    }
    if pair.chosen.is_empty() || pair.rejected.is_empty() {
        return Err("a completion tokenizes to nothing".into());
    }
    if pair.chosen == pair.rejected {
        return Err("chosen and rejected tokenize to the same tokens".into());
    }
    Ok(pair)
}

/// The ids of `prompt` alone and of `prompt` followed by `completion`: token ids as they
/// are, texts with the EOS appended to the completion, conversations rendered with the chat
/// template (the prompt with the generation prompt).
pub fn encode(
    tok: &Tokenization<'_>,
    prompt: &Side,
    completion: &Side,
    tools: Option<&Value>,
) -> Result<(Vec<u32>, Vec<u32>), String> {
    match (prompt, completion) {
        (Side::Tokens(p), Side::Tokens(c)) => Ok((p.clone(), p.iter().chain(c).copied().collect())),
        (Side::Text(p), Side::Text(c)) => {
            let eos = tok.eos_text().ok_or_else(|| {
                "the tokenizer has no EOS token to end plain-text completions with".to_string()
            })?;
            let c = if c.ends_with(eos) {
                c.clone()
            } else {
                format!("{c}{eos}")
            };
            Ok((tok.encode_text(p)?, tok.encode_text(&format!("{p}{c}"))?))
        }
        (Side::Messages(p), Side::Messages(c)) => {
            let all: Vec<Message> = p.iter().chain(c).cloned().collect();
            Ok((
                tok.encode_rendered(&tok.render_messages(p, true, tools)?)?,
                tok.encode_rendered(&tok.render_messages(&all, false, tools)?)?,
            ))
        }
        _ => Err("prompt and completions mix text, messages and token ids".into()),
    }
}

pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(p: usize, c: usize, r: usize) -> PreferencePair {
        PreferencePair {
            label: None,
            prompt: (0..p as u32).collect(),
            chosen: (100..100 + c as u32).collect(),
            rejected: (200..200 + r as u32).collect(),
        }
    }

    #[test]
    fn truncation_keeps_prompt_end_and_completion_start() {
        // Fits: unchanged.
        let mut a = pair(4, 3, 2);
        assert!(!a.truncate(7));
        assert_eq!(a, pair(4, 3, 2));
        // Short completions: only the prompt is cut, from its start.
        let mut b = pair(10, 2, 3);
        assert!(b.truncate(8));
        assert_eq!(b.prompt, (5..10).collect::<Vec<u32>>());
        assert_eq!((b.chosen.len(), b.rejected.len()), (2, 3));
        // Long completions: the prompt keeps half, the completions keep their start.
        let mut c = pair(10, 9, 3);
        assert!(c.truncate(8));
        assert_eq!(c.prompt, (6..10).collect::<Vec<u32>>());
        assert_eq!(c.chosen, (100..104).collect::<Vec<u32>>());
        assert_eq!(c.rejected.len(), 3);
        // A short prompt stays whole; the completions take the rest.
        let mut d = pair(2, 20, 20);
        assert!(d.truncate(8));
        assert_eq!(
            (d.prompt.len(), d.chosen.len(), d.rejected.len()),
            (2, 6, 6)
        );
    }

    fn example(p: Option<Side>, c: Side, r: Side) -> Result<PreferenceExample, String> {
        explicit_prompt(p, c, r)
    }

    fn m(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            extra: Default::default(),
        }
    }

    #[test]
    fn implicit_prompts_are_the_shared_prefix() {
        let t = |s: &str| Side::Text(s.into());
        let e = example(
            None,
            t("\n\nHuman: hi\n\nAssistant: hello there"),
            t("\n\nHuman: hi\n\nAssistant: go away"),
        )
        .unwrap();
        assert_eq!(e.prompt, t("\n\nHuman: hi\n\nAssistant:"));
        assert_eq!(e.chosen, t(" hello there"));
        assert_eq!(e.rejected, t(" go away"));
        let conv = |a: &str| Side::Messages(vec![m("user", "q"), m("assistant", a)]);
        let e = example(Some(t("q")), conv("yes"), conv("no")).unwrap();
        assert_eq!(e.prompt, Side::Messages(vec![m("user", "q")]));
        assert_eq!(e.chosen, Side::Messages(vec![m("assistant", "yes")]));
        let e = example(
            Some(Side::Messages(vec![m("user", "q")])),
            t("yes"),
            t("no"),
        )
        .unwrap();
        assert_eq!(e.rejected, Side::Messages(vec![m("assistant", "no")]));
        assert!(example(None, t("a"), conv("b")).is_err());
    }
}
