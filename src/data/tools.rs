//! A row's tool definitions (a `tools` column): JSON schemas the chat template renders, as
//! transformers' `apply_chat_template(tools=...)` does. TRL reads the column as a list, or as
//! a JSON string of one (how some Hub datasets store it). Only conversations render them:
//! on a row of texts or token ids they would be dropped silently, so they are refused.

use serde_json::Value;

use super::formats::{FieldMap, type_name};
use super::source::Row;

/// The row's tool definitions (`None`: no `tools` column, or null).
pub fn tools_of(row: &Row, fields: &FieldMap) -> Result<Option<Value>, String> {
    let key = fields.get("tools").map_or("tools", String::as_str);
    match row.value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(list)) => Ok(Some(Value::Array(list.clone()))),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(v @ Value::Array(_)) => Ok(Some(v)),
            _ => Err(format!(
                "field '{key}' is a string but not a JSON list of tool definitions"
            )),
        },
        Some(other) => Err(format!(
            "field '{key}' must be a list of tool definitions (JSON schemas), found {}",
            type_name(other)
        )),
    }
}

/// Tools are rendered by chat templates only: `conversation` says whether the row is one.
pub fn check_rendered(
    tools: &Option<Value>,
    conversation: bool,
    fields: &FieldMap,
) -> Result<(), String> {
    let key = fields.get("tools").map_or("tools", String::as_str);
    match (tools, conversation) {
        (Some(_), false) => Err(format!(
            "'{key}': tool definitions are rendered by the chat template, for conversations (lists of messages) only; this row is text or token ids: drop the column, or write the row as messages"
        )),
        _ => Ok(()),
    }
}
