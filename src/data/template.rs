//! Hugging Face chat templates rendered with minijinja the way transformers'
//! `apply_chat_template` renders them with Jinja2: `trim_blocks` and `lstrip_blocks` on,
//! `loopcontrols`, Python string methods, `raise_exception`, and a `tojson` that writes JSON as
//! Python's `json.dumps` does (", " and ": " separators, non-ASCII kept), not HTML-escaped.

use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, Error, ErrorKind, context};
use serde::Serialize;
use serde_json::Value;

use super::error::DataError;

/// One message as the template sees it: role and content, plus any other fields the dataset
/// carried (tool calls, reasoning content, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template refuses a system message (Gemma 2's raises "System role not supported"):
    /// a leading one is folded into the first user turn as `system + "\n\n" + user`, the
    /// form Gemma 3's own template renders and LLaMA-Factory's gemma template writes.
    folds_system: bool,
}

/// `json.dumps(value, ensure_ascii=False, indent=indent)`.
pub fn python_json(value: &Value, indent: Option<usize>) -> String {
    fn write(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
        let (item_sep, key_sep) = if indent.is_some() {
            (",", ": ")
        } else {
            (", ", ": ")
        };
        let newline = |out: &mut String, d: usize| {
            if let Some(n) = indent {
                out.push('\n');
                out.push_str(&" ".repeat(n * d));
            }
        };
        match v {
            Value::Array(items) if !items.is_empty() => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    newline(out, depth + 1);
                    write(item, indent, depth + 1, out);
                }
                newline(out, depth);
                out.push(']');
            }
            Value::Object(map) if !map.is_empty() => {
                out.push('{');
                for (i, (k, item)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    newline(out, depth + 1);
                    out.push_str(&serde_json::to_string(k).unwrap_or_default());
                    out.push_str(key_sep);
                    write(item, indent, depth + 1, out);
                }
                newline(out, depth);
                out.push('}');
            }
            Value::Number(n) => {
                // Python prints floats with a decimal point (1.0) and ints without.
                if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                    if f.fract() == 0.0 && f.abs() < 1e16 {
                        out.push_str(&format!("{f:.1}"));
                    } else {
                        out.push_str(&n.to_string());
                    }
                } else {
                    out.push_str(&n.to_string());
                }
            }
            other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
        }
    }
    let mut out = String::new();
    write(value, indent, 0, &mut out);
    out
}

fn tojson(value: JValue, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(python_json(&json, indent))
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, DataError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| DataError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use this for "today's date" in system prompts; a fixed, documented date
            // would be wrong, so render the real UTC date in the common formats.
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format_date(secs, &fmt)
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| DataError::Template(format!("chat template does not parse: {e}")))?;
        let mut template = Self {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
            folds_system: false,
        };
        let probe = |role: &str, content: &str| TemplateMessage {
            role: role.into(),
            content: content.into(),
            extra: Default::default(),
        };
        let (user, model) = (probe("user", "u"), probe("assistant", "a"));
        let plain = template.render_raw(&[user.clone(), model.clone()], false, None);
        let with_system = template.render_raw(&[probe("system", "s"), user, model], false, None);
        template.folds_system = plain.is_ok() && with_system.is_err();
        Ok(template)
    }

    /// Whether a leading system message is folded into the first user turn (the template
    /// refuses system messages).
    pub fn folds_system(&self) -> bool {
        self.folds_system
    }

    pub fn render(
        &self,
        messages: &[TemplateMessage],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        self.render_with_tools(messages, add_generation_prompt, None)
    }

    /// [`Self::render`] with the conversation's tool definitions (the JSON schemas
    /// transformers' `apply_chat_template(tools=...)` passes to the template as `tools`).
    pub fn render_with_tools(
        &self,
        messages: &[TemplateMessage],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, DataError> {
        match messages {
            [system, user, rest @ ..]
                if self.folds_system && system.role == "system" && user.role == "user" =>
            {
                let mut folded = Vec::with_capacity(rest.len() + 1);
                folded.push(TemplateMessage {
                    content: format!("{}\n\n{}", system.content, user.content),
                    ..user.clone()
                });
                folded.extend_from_slice(rest);
                self.render_raw(&folded, add_generation_prompt, tools)
            }
            _ => self.render_raw(messages, add_generation_prompt, tools),
        }
    }

    fn render_raw(
        &self,
        messages: &[TemplateMessage],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, DataError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| DataError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => JValue::from(minijinja::value::Serde(messages)),
                tools => tools.map(|t| JValue::from(minijinja::value::Serde(t))),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| {
                // Templates that refuse system messages (Gemma 2's) say only that they fail;
                // a leading one is folded, one later in the conversation is not.
                let hint = if messages.iter().any(|m| m.role == "system") {
                    "; the conversation has a system message, which some templates refuse \
                     (Gemma 2's; burnish folds only a leading one, followed by a user turn, into \
                     that turn): drop system messages from the data, or set data.chat_template \
                     to one that takes them"
                } else {
                    ""
                };
                DataError::Template(format!("chat template failed: {e}{hint}"))
            })
    }
}

/// `strftime` for the handful of directives chat templates use (`%d %b %Y`, `%Y-%m-%d`, ...).
fn format_date(unix_secs: u64, fmt: &str) -> String {
    let days = (unix_secs / 86_400) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    fmt.replace("%Y", &year.to_string())
        .replace("%m", &format!("{month:02}"))
        .replace("%d", &format!("{day:02}"))
        .replace("%B", name)
        .replace("%b", &name[..3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_matches_json_dumps() {
        let v: Value =
            serde_json::from_str(r#"{"a": 1, "b": [1.0, "é", null, true], "c": {}}"#).unwrap();
        assert_eq!(
            python_json(&v, None),
            r#"{"a": 1, "b": [1.0, "é", null, true], "c": {}}"#
        );
        assert_eq!(
            python_json(&v, Some(2)),
            "{\n  \"a\": 1,\n  \"b\": [\n    1.0,\n    \"é\",\n    null,\n    true\n  ],\n  \"c\": {}\n}"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(format_date(0, "%d %b %Y"), "01 Jan 1970");
        assert_eq!(format_date(1_732_752_000, "%Y-%m-%d"), "2024-11-28");
    }
}
