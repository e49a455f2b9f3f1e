//! Unpaired preference rows for KTO (TRL's "unpaired preference" type): a `prompt`, one
//! `completion` and a boolean `label` (desirable or not), each side a string, a list of chat
//! messages or token ids. Tokenized as TRL's `KTOTrainer` does: the prompt alone and the prompt
//! followed by the completion, the completion being what follows their common prefix;
//! plain-text completions get the EOS token appended. Preference pairs become two unpaired
//! rows, as TRL's `unpair_preference_dataset` makes them.

use serde_json::Value;

use super::error::DataError;
use super::formats::{FieldMap, RoleMap};
use super::preference::{
    PreferenceExample, PreferencePair, Side, as_reply, common_prefix, encode, side_of,
};
use super::source::Row;
use super::tokenize::Tokenization;

/// The canonical column names of the `unpaired` format (what `fields` may remap).
pub const FIELDS: [&str; 6] = ["prompt", "completion", "label", "role", "content", "tools"];

/// Pairs unpaired together: TRL's `unpair_preference_dataset` maps batches of this many rows,
/// each to its chosen completions, then its rejected ones.
pub const UNPAIR_BLOCK: usize = 1000;

/// A parsed unpaired row.
#[derive(Debug, Clone, PartialEq)]
pub struct UnpairedExample {
    pub prompt: Side,
    pub completion: Side,
    pub desirable: bool,
    /// The row's tool definitions (conversations only).
    pub tools: Option<Value>,
}

/// Parse an `unpaired` row. A missing or empty prompt or completion, or a label that is not
/// true or false, is an error naming the row.
pub fn parse(row: &Row, fields: &FieldMap, roles: &RoleMap) -> Result<UnpairedExample, DataError> {
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
    let side = |canonical: &str| -> Result<Side, DataError> {
        let key = name(canonical);
        match side_of(row, &key, fields, roles).map_err(bad)? {
            None => Err(bad(format!(
                "missing field '{key}': an unpaired row needs a prompt, a completion and a label (map columns with `fields:` in the recipe)"
            ))),
            Some(s) if s.is_empty() => Err(bad(format!("the {canonical} ('{key}') is empty"))),
            Some(s) => Ok(s),
        }
    };
    let tools = super::tools::tools_of(row, fields).map_err(bad)?;
    let prompt = side("prompt")?;
    let completion = side("completion")?;
    let conversation = matches!(prompt, Side::Messages(_));
    super::tools::check_rendered(&tools, conversation, fields).map_err(bad)?;
    let key = name("label");
    let desirable = match row.value.get(&key) {
        Some(Value::Bool(b)) => *b,
        None | Some(Value::Null) => {
            return Err(bad(format!(
                "missing field '{key}': each completion needs a label, true (desirable) or false (undesirable)"
            )));
        }
        Some(other) => {
            return Err(bad(format!(
                "'{key}' must be true (desirable) or false (undesirable), found {other}"
            )));
        }
    };
    let completion = as_reply(&prompt, completion);
    Ok(UnpairedExample {
        prompt,
        completion,
        desirable,
        tools,
    })
}

/// A pair's two completions as unpaired rows: the chosen one desirable, the rejected one not.
pub fn unpair(e: PreferenceExample) -> [UnpairedExample; 2] {
    [
        UnpairedExample {
            prompt: e.prompt.clone(),
            completion: e.chosen,
            desirable: true,
            tools: e.tools.clone(),
        },
        UnpairedExample {
            prompt: e.prompt,
            completion: e.rejected,
            desirable: false,
            tools: e.tools,
        },
    ]
}

/// Tokenize an unpaired row: the completion is what follows the common prefix of the prompt's
/// ids and the prompt + completion's. It is held as a [`PreferencePair`] with the completion
/// in `chosen`, `rejected` empty and the label set.
pub fn tokenize(tok: &Tokenization<'_>, e: &UnpairedExample) -> Result<PreferencePair, String> {
    let (prompt, full) = encode(tok, &e.prompt, &e.completion, e.tools.as_ref())?;
    let shared = common_prefix(&prompt, &full);
    let row = PreferencePair {
        prompt: prompt[..shared].to_vec(),
        chosen: full[shared..].to_vec(),
        rejected: Vec::new(),
        label: Some(e.desirable),
    };
    if row.prompt.is_empty() {
        return Err("the prompt tokenizes to nothing".into());
    }
    if row.chosen.is_empty() {
        return Err("the completion tokenizes to nothing".into());
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::error::{LocationKind, RowLocation};

    fn row(v: serde_json::Value) -> Row {
        Row {
            value: v,
            at: RowLocation {
                file: "rows.jsonl".into(),
                kind: LocationKind::Line,
                index: 3,
            },
        }
    }

    #[test]
    fn parses_sides_and_labels() {
        let (f, r) = (FieldMap::default(), RoleMap::default());
        let e = parse(
            &row(serde_json::json!({"prompt": [1, 2], "completion": [3], "label": false})),
            &f,
            &r,
        )
        .unwrap();
        assert_eq!(e.prompt, Side::Tokens(vec![1, 2]));
        assert!(!e.desirable);
        // A text reply to a conversation is the assistant's message.
        let e = parse(
            &row(serde_json::json!({
                "prompt": [{"role": "user", "content": "hi"}], "completion": "hello", "label": true
            })),
            &f,
            &r,
        )
        .unwrap();
        assert!(matches!(&e.completion, Side::Messages(m) if m[0].role == "assistant"));
        for (v, says) in [
            (
                serde_json::json!({"prompt": "a", "completion": "b"}),
                "missing field 'label'",
            ),
            (
                serde_json::json!({"prompt": "a", "completion": "b", "label": 1}),
                "must be true",
            ),
            (
                serde_json::json!({"prompt": "", "completion": "b", "label": true}),
                "prompt ('prompt') is empty",
            ),
            (
                serde_json::json!({"completion": "b", "label": true}),
                "missing field 'prompt'",
            ),
        ] {
            let err = parse(&row(v), &f, &r).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }
}
