//! Examples to token ids and labels. What is trained (label = id) and what is not (-100):
//! - `text`: everything, with EOS appended;
//! - `alpaca`: the response and its end token (through the chat template when the tokenizer
//!   has one, else the classic Alpaca prompt);
//! - `messages`/`sharegpt`: each assistant turn, from right after its header through its end
//!   token (`<|im_end|>` for ChatML), found by rendering the conversation prefix with the
//!   generation prompt, as the model sees it at inference.
//!
//! With `train_on_inputs`, every token is trained. Labels follow token *positions*, never token
//! ids, so an EOS that equals the pad id is still trained.

use super::TokenizedExample;
use serde_json::Value;

use super::error::DataError;
use super::formats::{Example, Message};
use super::preference::Side;
use super::template::{ChatTemplate, TemplateMessage};
use crate::model::TokenizerBundle;
use crate::model::loss::IGNORE_INDEX;

const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
const ALPACA_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

/// Turns examples into ids and labels for one tokenizer and template.
pub struct Tokenization<'a> {
    /// None for a model folder without tokenizer files (pretokenized data only).
    tokenizer: Option<&'a TokenizerBundle>,
    template: Option<ChatTemplate>,
    /// End-of-turn text of the template (`<|im_end|>`), found by rendering a probe.
    end_of_turn: Option<String>,
    train_on_inputs: bool,
    system_prompt: Option<String>,
    eos_id: Option<u32>,
    bos_id: Option<u32>,
}

fn msg(role: &str, content: &str) -> TemplateMessage {
    TemplateMessage {
        role: role.into(),
        content: content.into(),
        extra: Default::default(),
    }
}

impl<'a> Tokenization<'a> {
    /// `template_override` replaces the tokenizer's chat template.
    pub fn new(
        tokenizer: Option<&'a TokenizerBundle>,
        template_override: Option<&str>,
        train_on_inputs: bool,
        system_prompt: Option<String>,
    ) -> Result<Self, DataError> {
        let source = template_override
            .map(str::to_string)
            .or_else(|| tokenizer.and_then(|t| t.chat_template.clone()));
        let template = match &source {
            Some(s) => Some(ChatTemplate::new(
                s,
                tokenizer.and_then(|t| t.bos_token()),
                tokenizer.and_then(|t| t.eos_token()),
            )?),
            None => None,
        };
        let end_of_turn = match &template {
            Some(t) => probe_end_of_turn(t)?,
            None => None,
        };
        if template.as_ref().is_some_and(ChatTemplate::folds_system) {
            tracing::info!(
                "the chat template refuses system messages; a leading system message is folded into the first user turn (system, blank line, user), as Gemma 3's template does"
            );
        }
        let add_bos = tokenizer.is_some_and(|t| t.config.add_bos_token.unwrap_or(false));
        Ok(Self {
            tokenizer,
            template,
            end_of_turn,
            train_on_inputs,
            system_prompt,
            eos_id: tokenizer.and_then(TokenizerBundle::eos_token_id),
            bos_id: if add_bos {
                tokenizer.and_then(|t| t.bos_token().and_then(|b| t.token_id(b)))
            } else {
                None
            },
        })
    }

    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    pub fn end_of_turn(&self) -> Option<&str> {
        self.end_of_turn.as_deref()
    }

    pub fn tokenize(&self, example: &Example) -> Result<TokenizedExample, String> {
        match example {
            Example::Text(text) => {
                let mut ids: Vec<u32> = self.bos_id.into_iter().collect();
                ids.extend(self.encode(text)?);
                ids.extend(self.eos_id);
                let labels = ids.iter().map(|&i| i as i64).collect();
                Ok(TokenizedExample { ids, labels })
            }
            Example::Alpaca {
                instruction,
                input,
                output,
                system,
            } => {
                if self.template.is_some() {
                    let mut messages = Vec::new();
                    if let Some(s) = system.as_ref().or(self.system_prompt.as_ref()) {
                        messages.push(Message {
                            role: "system".into(),
                            content: s.clone(),
                            extra: Default::default(),
                        });
                    }
                    let user = if input.is_empty() {
                        instruction.clone()
                    } else {
                        format!("{instruction}\n\n{input}")
                    };
                    messages.push(Message {
                        role: "user".into(),
                        content: user,
                        extra: Default::default(),
                    });
                    messages.push(Message {
                        role: "assistant".into(),
                        content: output.clone(),
                        extra: Default::default(),
                    });
                    self.chat(&messages, None)
                } else {
                    let prompt = if input.is_empty() {
                        ALPACA_NO_INPUT.replace("{instruction}", instruction)
                    } else {
                        ALPACA_WITH_INPUT
                            .replace("{instruction}", instruction)
                            .replace("{input}", input)
                    };
                    let text = format!("{prompt}{output}");
                    let (mut ids, offsets) = self.encode_offsets(&text)?;
                    let mut labels: Vec<i64> = ids
                        .iter()
                        .zip(&offsets)
                        .map(|(&id, &(start, _))| {
                            if self.train_on_inputs || start >= prompt.len() {
                                id as i64
                            } else {
                                IGNORE_INDEX
                            }
                        })
                        .collect();
                    if let Some(eos) = self.eos_id {
                        ids.push(eos);
                        labels.push(eos as i64);
                    }
                    if let Some(bos) = self.bos_id {
                        ids.insert(0, bos);
                        labels.insert(
                            0,
                            if self.train_on_inputs {
                                bos as i64
                            } else {
                                IGNORE_INDEX
                            },
                        );
                    }
                    Ok(TokenizedExample { ids, labels })
                }
            }
            Example::Chat(messages, tools) => self.chat(messages, tools.as_ref()),
            Example::PromptCompletion {
                prompt,
                completion,
                tools,
            } => self.prompt_completion(prompt, completion, tools.as_ref()),
            Example::Tokens { input_ids, labels } => Ok(TokenizedExample {
                ids: input_ids.clone(),
                labels: labels
                    .clone()
                    .unwrap_or_else(|| input_ids.iter().map(|&i| i as i64).collect()),
            }),
        }
    }

    fn tokenizer(&self) -> Result<&TokenizerBundle, String> {
        self.tokenizer.ok_or_else(|| {
            "the model folder has no tokenizer.json, so only pretokenized data can be used"
                .to_string()
        })
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer()?.encode(text).map_err(|e| e.to_string())
    }

    fn encode_offsets(&self, text: &str) -> Result<crate::model::tokenizer::IdsAndOffsets, String> {
        self.tokenizer()?
            .encode_with_offsets(text)
            .map_err(|e| e.to_string())
    }

    fn render(
        &self,
        messages: &[TemplateMessage],
        generation_prompt: bool,
    ) -> Result<String, String> {
        self.render_with_tools(messages, generation_prompt, None)
    }

    fn render_with_tools(
        &self,
        messages: &[TemplateMessage],
        generation_prompt: bool,
        tools: Option<&Value>,
    ) -> Result<String, String> {
        self.template
            .as_ref()
            .ok_or_else(|| {
                "this tokenizer has no chat template; set data.chat_template in the recipe"
                    .to_string()
            })?
            .render_with_tools(messages, generation_prompt, tools)
            .map_err(|e| e.to_string())
    }

    /// Byte spans of the rendered conversation that are trained.
    fn assistant_spans(
        &self,
        rendered: &str,
        messages: &[TemplateMessage],
        tools: Option<&Value>,
    ) -> Result<Vec<(usize, usize)>, String> {
        let mut spans = Vec::new();
        let mut cursor = 0;
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prefix = self.render_with_tools(&messages[..i], true, tools)?;
            let start = if rendered.starts_with(&prefix) && prefix.len() >= cursor {
                prefix.len()
            } else {
                // Templates that rewrite earlier turns: fall back to where the content appears.
                let found = rendered[cursor..].find(m.content.trim()).ok_or_else(|| {
                    format!("cannot find assistant message {i} in the rendered conversation")
                })?;
                cursor + found
            };
            let content_end = rendered[start..]
                .find(m.content.trim())
                .map(|p| start + p + m.content.trim().len())
                .unwrap_or(start);
            let end = match &self.end_of_turn {
                Some(marker) => rendered[content_end..]
                    .find(marker.as_str())
                    .map(|p| content_end + p + marker.len())
                    .unwrap_or(rendered.len()),
                None => {
                    if i + 1 < messages.len() {
                        let upto = self.render_with_tools(&messages[..=i], false, tools)?;
                        if rendered.starts_with(&upto) {
                            upto.trim_end().len()
                        } else {
                            content_end
                        }
                    } else {
                        rendered.trim_end().len()
                    }
                }
            };
            spans.push((start, end));
            cursor = end;
        }
        Ok(spans)
    }

    fn chat(
        &self,
        messages: &[Message],
        tools: Option<&Value>,
    ) -> Result<TokenizedExample, String> {
        let tm: Vec<TemplateMessage> = messages
            .iter()
            .map(|m| TemplateMessage {
                role: m.role.clone(),
                content: m.content.clone(),
                extra: m.extra.clone(),
            })
            .collect();
        let rendered = self.render_with_tools(&tm, false, tools)?;
        let spans = if self.train_on_inputs {
            vec![(0, rendered.len())]
        } else {
            self.assistant_spans(&rendered, &tm, tools)?
        };
        let (ids, offsets) = self.encode_offsets(&rendered)?;
        let labels = ids
            .iter()
            .zip(&offsets)
            .map(|(&id, &(start, _))| {
                if spans.iter().any(|&(s, e)| start >= s && start < e) {
                    id as i64
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        Ok(TokenizedExample { ids, labels })
    }

    /// TRL's SFT tokenization of a prompt-completion row: the ids of prompt + completion (EOS
    /// appended to a text completion), trained from where they stop matching the prompt's own
    /// ids (all of them with `train_on_inputs`).
    fn prompt_completion(
        &self,
        prompt: &Side,
        completion: &Side,
        tools: Option<&Value>,
    ) -> Result<TokenizedExample, String> {
        let (prompt_ids, ids) = super::preference::encode(self, prompt, completion, tools)?;
        let shared = super::preference::common_prefix(&prompt_ids, &ids);
        if shared == ids.len() {
            return Err("the completion tokenizes to nothing".into());
        }
        let labels = ids
            .iter()
            .enumerate()
            .map(|(t, &id)| {
                if self.train_on_inputs || t >= shared {
                    id as i64
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        Ok(TokenizedExample { ids, labels })
    }

    /// `text` as plain-text ids: BOS first when the tokenizer adds one (what `tokenizer(text)`
    /// gives in transformers).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids: Vec<u32> = self.bos_id.into_iter().collect();
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// A rendered chat template's ids (the template writes any BOS itself).
    pub fn encode_rendered(&self, rendered: &str) -> Result<Vec<u32>, String> {
        self.encode(rendered)
    }

    /// `messages` through the chat template, with the assistant header when
    /// `generation_prompt`.
    pub fn render_messages(
        &self,
        messages: &[Message],
        generation_prompt: bool,
        tools: Option<&Value>,
    ) -> Result<String, String> {
        let tm: Vec<TemplateMessage> = messages
            .iter()
            .map(|m| TemplateMessage {
                role: m.role.clone(),
                content: m.content.clone(),
                extra: m.extra.clone(),
            })
            .collect();
        self.render_with_tools(&tm, generation_prompt, tools)
    }

    /// The EOS token's text (appended to plain-text completions).
    pub fn eos_text(&self) -> Option<&str> {
        self.tokenizer.and_then(TokenizerBundle::eos_token)
    }

    /// The rendered prompt for generation: messages plus the assistant header.
    pub fn prompt(&self, messages: &[Message]) -> Result<String, String> {
        let tm: Vec<TemplateMessage> = messages
            .iter()
            .map(|m| TemplateMessage {
                role: m.role.clone(),
                content: m.content.clone(),
                extra: m.extra.clone(),
            })
            .collect();
        self.render(&tm, true)
    }
}

/// What a template writes after an assistant message's content (its end-of-turn marker).
fn probe_end_of_turn(t: &ChatTemplate) -> Result<Option<String>, DataError> {
    let probe = "burnishprobe7319";
    let full = t.render(&[msg("user", "hello"), msg("assistant", probe)], false)?;
    let after = full
        .rfind(probe)
        .map(|p| &full[p + probe.len()..])
        .unwrap_or("");
    let marker = after.trim();
    Ok(if marker.is_empty() {
        None
    } else {
        Some(marker.to_string())
    })
}
