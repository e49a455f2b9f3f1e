//! The data pipeline against transformers (scripts/make_fixtures.py, part templates): chat
//! template text and ids (Qwen2.5, Qwen3 and Gemma 3 templates), which tokens are trained, the classic Alpaca prompt, EOS = pad;
//! and packing equivalence, truncation counts and located dataset errors.

mod common;

use burn::tensor::DType;
use burnish::backend::Cpu;
use burnish::data::dataset::{DataPlan, LocalSource, TooLong, Validation, prepare};
use burnish::data::formats::{Example, Message};
use burnish::data::template::TemplateMessage;
use burnish::data::tokenize::Tokenization;
use burnish::data::{PackedRow, TokenizedExample, collate};
use burnish::model::loss::{IGNORE_INDEX, cross_entropy_sum};
use burnish::model::{ModelFolder, TokenizerBundle};
use common::*;

fn messages(v: &serde_json::Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| Message {
            role: m["role"].as_str().unwrap().into(),
            content: m["content"].as_str().unwrap().into(),
            extra: Default::default(),
        })
        .collect()
}

fn tokenizer_for(name: &str) -> TokenizerBundle {
    let dir = tokenizer_folder(match name {
        "qwen2.5" => "tokenizer-qwen2.5",
        "qwen3" => "tokenizer",
        "gemma3" => "tokenizer-gemma3",
        _ => "tokenizer-base",
    });
    TokenizerBundle::from_dir(dir.path()).unwrap()
}

#[test]
fn chat_templates_render_and_mask_like_transformers() {
    let golden = read_json(&fixtures().join("golden/chat-templates.json"));
    for (name, cases) in golden["templates"].as_object().unwrap() {
        let tok = tokenizer_for(name);
        let tz = Tokenization::new(Some(&tok), None, false, None).unwrap();
        let marker = if name == "gemma3" {
            "<end_of_turn>"
        } else {
            "<|im_end|>"
        };
        assert_eq!(tz.end_of_turn(), Some(marker));
        let template = burnish::data::template::ChatTemplate::new(
            tok.chat_template.as_deref().unwrap(),
            tok.bos_token(),
            tok.eos_token(),
        )
        .unwrap();
        for case in cases.as_array().unwrap() {
            let kind = case["kind"].as_str().unwrap();
            let msgs = messages(&case["messages"]);
            let tm: Vec<TemplateMessage> = msgs
                .iter()
                .map(|m| TemplateMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                    extra: Default::default(),
                })
                .collect();
            assert_eq!(
                template.render(&tm, false).unwrap(),
                case["text"].as_str().unwrap(),
                "{name}/{kind}: text"
            );
            assert_eq!(
                tz.prompt(&msgs[..msgs.len() - 1]).unwrap(),
                case["prompt_with_generation"].as_str().unwrap(),
                "{name}/{kind}: generation prompt"
            );
            let t = tz.tokenize(&Example::Chat(msgs.clone(), None)).unwrap();
            let want_ids: Vec<u32> = case["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(t.ids, want_ids, "{name}/{kind}: ids");
            let mask: Vec<u64> = case["assistant_mask"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let ours: Vec<u64> = t
                .labels
                .iter()
                .map(|&l| u64::from(l != IGNORE_INDEX))
                .collect();
            assert_eq!(ours, mask, "{name}/{kind}: trained tokens");
            // Trained tokens carry their own id as label.
            for (i, &l) in t.labels.iter().enumerate() {
                assert!(l == IGNORE_INDEX || l == t.ids[i] as i64);
            }
            // With train_on_inputs every token is trained.
            let all = Tokenization::new(Some(&tok), None, true, None)
                .unwrap()
                .tokenize(&Example::Chat(msgs.clone(), None))
                .unwrap();
            assert!(all.labels.iter().all(|&l| l != IGNORE_INDEX));
            if name == "gemma3" {
                // Gemma 2's template writes the same turns but refuses system messages;
                // burnish folds a leading one into the first user turn as Gemma 3's template
                // does, so transformers' Gemma 3 output is the reference here too.
                let g2 = Tokenization::new(Some(&tok), Some(GEMMA2_TEMPLATE), false, None).unwrap();
                assert_eq!(
                    g2.prompt(&msgs[..msgs.len() - 1]).unwrap(),
                    case["prompt_with_generation"].as_str().unwrap(),
                    "gemma2/{kind}: generation prompt"
                );
                let t2 = g2.tokenize(&Example::Chat(msgs, None)).unwrap();
                assert_eq!(t2.ids, want_ids, "gemma2/{kind}: ids");
                assert_eq!(t2.labels, t.labels, "gemma2/{kind}: trained tokens");
            }
        }
    }
}

#[test]
fn alpaca_and_sharegpt_rows_go_through_the_template() {
    let golden = read_json(&fixtures().join("golden/chat-templates.json"));
    for (name, cases) in golden["templates"].as_object().unwrap() {
        let tok = tokenizer_for(name);
        let tz = Tokenization::new(Some(&tok), None, false, None).unwrap();
        for case in cases.as_array().unwrap() {
            let kind = case["kind"].as_str().unwrap();
            let msgs = messages(&case["messages"]);
            let example = match kind {
                "alpaca" | "alpaca-system" => {
                    let user = &msgs[msgs.len() - 2].content;
                    let (instruction, input) = user.split_once("\n\n").unwrap_or((user, ""));
                    Example::Alpaca {
                        instruction: instruction.into(),
                        input: input.into(),
                        output: msgs[msgs.len() - 1].content.clone(),
                        system: (kind == "alpaca-system").then(|| msgs[0].content.clone()),
                    }
                }
                _ => continue,
            };
            let t = tz.tokenize(&example).unwrap();
            let want_ids: Vec<u32> = case["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(t.ids, want_ids, "{name}/{kind}");
            let mask: Vec<u64> = case["assistant_mask"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(
                t.labels
                    .iter()
                    .map(|&l| u64::from(l != IGNORE_INDEX))
                    .collect::<Vec<_>>(),
                mask,
                "{name}/{kind}"
            );
        }
    }
    // ShareGPT rows through the dataset reader: from/value and human/gpt normalised.
    let tmp = tempfile::tempdir().unwrap();
    let case = golden["templates"]["qwen2.5"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "sharegpt")
        .unwrap();
    let conv: Vec<serde_json::Value> = case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let from = match m["role"].as_str().unwrap() {
                "user" => "human",
                "assistant" => "gpt",
                r => r,
            };
            serde_json::json!({"from": from, "value": m["content"]})
        })
        .collect();
    let file = tmp.path().join("sg.jsonl");
    std::fs::write(
        &file,
        serde_json::json!({"conversations": conv}).to_string() + "\n",
    )
    .unwrap();
    let tok = tokenizer_for("qwen2.5");
    let plan = plan_for(vec![file], None, 512, false, TooLong::Truncate);
    let data = prepare(&plan, Some(&tok)).unwrap();
    let want_ids: Vec<u32> = case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(data.train[0].ids, want_ids);
    assert_eq!(data.formats, vec![burnish::data::Format::Sharegpt]);
}

#[test]
fn classic_alpaca_and_eos_equal_to_pad() {
    let golden = read_json(&fixtures().join("golden/chat-templates.json"));
    let tok = tokenizer_for("base");
    assert!(tok.chat_template.is_none());
    let tz = Tokenization::new(Some(&tok), None, false, None).unwrap();
    for case in golden["alpaca_classic"].as_array().unwrap() {
        let row = &case["row"];
        let ex = Example::Alpaca {
            instruction: row["instruction"].as_str().unwrap().into(),
            input: row["input"].as_str().unwrap().into(),
            output: row["output"].as_str().unwrap().into(),
            system: None,
        };
        let t = tz.tokenize(&ex).unwrap();
        let ids: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(t.ids, ids);
        let trained: Vec<u64> = case["trained"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            t.labels
                .iter()
                .map(|&l| u64::from(l != IGNORE_INDEX))
                .collect::<Vec<_>>(),
            trained
        );
    }
    // Text rows end with EOS, which is also the pad id; it is trained, and padding is not.
    let pad = golden["pad_id"].as_u64().unwrap() as u32;
    assert_eq!(pad, golden["eos_is_pad_id"].as_u64().unwrap() as u32);
    let mut rows = Vec::new();
    for case in golden["text_eos_is_pad"].as_array().unwrap() {
        let t = tz
            .tokenize(&Example::Text(case["row"]["text"].as_str().unwrap().into()))
            .unwrap();
        let ids: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(t.ids, ids);
        assert_eq!(*t.ids.last().unwrap(), pad);
        assert!(t.labels.iter().all(|&l| l != IGNORE_INDEX));
        rows.push(PackedRow::single(&t));
    }
    let refs: Vec<&PackedRow> = rows.iter().collect();
    let (batch, targets) = collate(&refs, pad);
    let short = if rows[0].len() < rows[1].len() { 0 } else { 1 };
    let n = rows[short].len();
    // The token before EOS predicts EOS (= pad id) ...
    assert_eq!(targets.rows[short][n - 2], pad as i64);
    // ... and padding positions predict nothing, although they hold the same id.
    assert!(
        targets.rows[short][n - 1..]
            .iter()
            .all(|&t| t == IGNORE_INDEX)
    );
    assert!(batch.input_ids[short][n..].iter().all(|&i| i == pad));
}

fn plan_for(
    files: Vec<std::path::PathBuf>,
    format: Option<burnish::data::Format>,
    seq_len: usize,
    packing: bool,
    too_long: TooLong,
) -> DataPlan {
    DataPlan {
        train: vec![LocalSource {
            files,
            format,
            fields: Default::default(),
            max_rows: None,
            ..Default::default()
        }],
        validation: Validation::None,
        seq_len,
        packing,
        train_on_inputs: false,
        too_long,
        chat_template: None,
        system_prompt: None,
        seed: 3,
        vocab_size: 151_936,
        unpair: false,
    }
}

/// A packed row of three examples gives each example the loss it has alone (f32 tolerance:
/// the same products summed in a different order).
#[test]
fn packing_gives_the_same_per_example_loss() {
    let folder = ModelFolder::open(&model_dir("qwen2-tied")).unwrap();
    let model = folder.load::<Cpu>(DType::F32, &Default::default()).unwrap();
    let examples: Vec<TokenizedExample> = [(9usize, 2usize), (5, 0), (12, 4)]
        .iter()
        .enumerate()
        .map(|(k, &(n, masked))| {
            let ids: Vec<u32> = (0..n as u32)
                .map(|i| (i * 37 + k as u32 * 101 + 5) % 1000 + 3)
                .collect();
            let mut labels: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            labels[..masked].fill(IGNORE_INDEX);
            TokenizedExample { ids, labels }
        })
        .collect();
    let packed = burnish::data::pack::pack(&examples, 64);
    assert_eq!(packed.len(), 1);
    let row = &packed[0];
    for (k, ex) in examples.iter().enumerate() {
        let alone = PackedRow::single(ex);
        let (b, t) = collate(&[&alone], 0);
        let (loss_alone, n_alone) =
            cross_entropy_sum(&model.net, model.hidden_states(&b, None), &t, 16);
        let (b, mut t) = collate(&[row], 0);
        // Keep only example k's targets.
        for (pos, target) in t.rows[0].iter_mut().enumerate() {
            if row.segments[pos] != k as i32 {
                *target = IGNORE_INDEX;
            }
        }
        let (loss_packed, n_packed) =
            cross_entropy_sum(&model.net, model.hidden_states(&b, None), &t, 16);
        assert_eq!(n_alone, n_packed);
        let (a, p) = (loss_alone.into_scalar(), loss_packed.into_scalar());
        assert!(
            (a - p).abs() <= 1e-4 * a.abs().max(1.0),
            "example {k}: alone {a} packed {p}"
        );
    }
}

#[test]
fn truncation_and_drop_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rows.jsonl");
    let mut text = String::new();
    for n in [4usize, 30, 10, 50, 8] {
        let ids: Vec<usize> = (0..n).map(|i| 10 + i).collect();
        text.push_str(&serde_json::json!({"input_ids": ids}).to_string());
        text.push('\n');
    }
    std::fs::write(&file, text).unwrap();
    let p = plan_for(vec![file.clone()], None, 16, false, TooLong::Truncate);
    let d = prepare(&p, None).unwrap();
    assert_eq!(
        (d.stats.truncated, d.stats.dropped_too_long, d.train.len()),
        (2, 0, 5)
    );
    assert!(d.train.iter().all(|r| r.len() <= 16));
    let p = plan_for(vec![file.clone()], None, 16, true, TooLong::Drop);
    let d = prepare(&p, None).unwrap();
    assert_eq!(
        (
            d.stats.truncated,
            d.stats.dropped_too_long,
            d.stats.train_examples
        ),
        (0, 2, 3)
    );
    assert_eq!(d.train.iter().map(PackedRow::examples).sum::<usize>(), 3);
}

#[test]
fn bad_rows_name_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer_for("qwen2.5");
    let cases = [
        (
            "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\"}\n",
            "rows.jsonl:2",
            "missing field 'output'",
        ),
        (
            "{\"instruction\": \"a\", \"output\": \"b\"}\n\n{not json\n",
            "rows.jsonl:3",
            "invalid JSON",
        ),
        (
            "{\"instruction\": \"a\", \"output\": 5}\n",
            "rows.jsonl:1",
            "must be a string",
        ),
    ];
    for (text, at, what) in cases {
        let file = tmp.path().join("rows.jsonl");
        std::fs::write(&file, text).unwrap();
        let p = plan_for(
            vec![file],
            Some(burnish::data::Format::Alpaca),
            64,
            false,
            TooLong::Truncate,
        );
        let err = prepare(&p, Some(&tok)).err().unwrap().to_string();
        assert!(err.contains(at) && err.contains(what), "{err}");
    }
    let file = tmp.path().join("chat.json");
    std::fs::write(
        &file,
        r#"[{"messages": [{"role": "user", "content": "hi"}]}]"#,
    )
    .unwrap();
    let p = plan_for(vec![file], None, 64, false, TooLong::Truncate);
    let err = prepare(&p, Some(&tok)).err().unwrap().to_string();
    assert!(
        err.contains("chat.json row 0") && err.contains("no assistant message"),
        "{err}"
    );
}

/// A golden file of rows (`{"row": ...}` cases): the cases, their rows written to
/// `<dir>/rows.jsonl`, and the Qwen2.5 tokenizer (its folder kept alive alongside).
struct GoldenRows {
    cases: Vec<serde_json::Value>,
    file: std::path::PathBuf,
    tokenizer: TokenizerBundle,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn golden_rows(name: &str) -> GoldenRows {
    let golden = read_json(&fixtures().join("golden").join(name));
    let cases = golden.as_array().unwrap().clone();
    let tmp = tempfile::tempdir().unwrap();
    let rows: String = cases.iter().map(|c| format!("{}\n", c["row"])).collect();
    let file = tmp.path().join("rows.jsonl");
    std::fs::write(&file, rows).unwrap();
    let tok_dir = tokenizer_folder("tokenizer-qwen2.5");
    let tokenizer = TokenizerBundle::from_dir(tok_dir.path()).unwrap();
    GoldenRows {
        cases,
        file,
        tokenizer,
        _dirs: (tmp, tok_dir),
    }
}

/// A JSON list of token ids.
fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The error `prepare` must give for `plan` (`what`: the bad input, for the failure message).
fn prepare_error(plan: &DataPlan, tokenizer: &TokenizerBundle, what: &str) -> String {
    match prepare(plan, Some(tokenizer)) {
        Ok(_) => panic!("{what} was accepted"),
        Err(e) => e.to_string(),
    }
}

/// Prompt-completion rows (text and conversational, detected from their columns) tokenize to
/// TRL 1.16's SFTTrainer ids and labels (scripts/make_prompt_completion_goldens.py): only the
/// completion is trained; with `train_on_inputs` every token is.
#[test]
fn prompt_completion_rows_tokenize_as_trl() {
    let GoldenRows {
        cases,
        file,
        tokenizer,
        // Bound, so the folders live to the end of the test.
        _dirs: _keep,
    } = golden_rows("prompt-completion-tokens.json");
    let ints = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    for train_on_inputs in [false, true] {
        let mut plan = plan_for(vec![file.clone()], None, 512, false, TooLong::Truncate);
        plan.train_on_inputs = train_on_inputs;
        let data = prepare(&plan, Some(&tokenizer)).unwrap();
        assert_eq!(data.formats, vec![burnish::data::Format::PromptCompletion]);
        assert_eq!(data.train.len(), cases.len());
        for (i, (row, c)) in data.train.iter().zip(&cases).enumerate() {
            let ids = ints(&c["input_ids"]);
            assert_eq!(row.ids, u32s(&c["input_ids"]), "row {i} ids");
            let labels = if train_on_inputs {
                ids.clone()
            } else {
                ints(&c["labels"])
            };
            assert_eq!(row.labels, labels, "row {i} labels");
        }
    }
    // A row without its completion is located.
    std::fs::write(&file, "{\"prompt\": \"a\", \"completion\": \"\"}\n").unwrap();
    let plan = plan_for(
        vec![file.clone()],
        Some(burnish::data::Format::PromptCompletion),
        512,
        false,
        TooLong::Truncate,
    );
    let err = prepare_error(&plan, &tokenizer, "an empty completion");
    assert!(
        err.contains("rows.jsonl") && err.contains("completion ('completion') is empty"),
        "{err}"
    );
}

/// Conversations with a `tools` column (a list, or a JSON string) render the tool definitions
/// and tool calls as transformers' `apply_chat_template(tools=...)` does in TRL's SFTTrainer
/// (Qwen2.5's template, scripts/make_prompt_completion_goldens.py); a `tools` string that is not
/// a JSON list is located.
#[test]
fn tool_definitions_render_as_trl() {
    let GoldenRows {
        cases,
        file,
        tokenizer,
        // Bound, so the folders live to the end of the test.
        _dirs: _keep,
    } = golden_rows("tool-chat-tokens.json");
    let plan = plan_for(vec![file.clone()], None, 512, false, TooLong::Truncate);
    let data = prepare(&plan, Some(&tokenizer)).unwrap();
    assert_eq!(data.train.len(), cases.len());
    for (i, (row, c)) in data.train.iter().zip(&cases).enumerate() {
        assert_eq!(row.ids, u32s(&c["input_ids"]), "row {i}");
        // The tool definitions are context: only assistant turns are trained.
        assert!(row.labels.iter().any(|&l| l != IGNORE_INDEX), "row {i}");
    }
    std::fs::write(
        &file,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}], \"tools\": \"not json\"}\n",
    )
    .unwrap();
    let err = prepare_error(&plan, &tokenizer, "a bad tools string");
    assert!(
        err.contains("rows.jsonl") && err.contains("'tools'"),
        "{err}"
    );
    // A row of texts renders no tools: refused rather than dropped.
    std::fs::write(
        &file,
        "{\"prompt\": \"a\", \"completion\": \"b\", \"tools\": []}\n",
    )
    .unwrap();
    let err = prepare_error(&plan, &tokenizer, "tools on a text row");
    assert!(
        err.contains("rows.jsonl") && err.contains("for conversations (lists of messages) only"),
        "{err}"
    );
}

/// The same tools on a prompt-completion row, a preference pair and an unpaired row render as
/// TRL's SFTTrainer, DPOTrainer and KTOTrainer render them (scripts/make_prompt_completion_goldens.py);
/// tools on a row of plain texts are refused rather than dropped.
#[test]
fn tools_on_prompt_completion_preference_and_unpaired_rows() {
    use burnish::data::Format;
    let GoldenRows {
        cases,
        file,
        tokenizer,
        // Bound, so the folders live to the end of the test.
        _dirs: _keep,
    } = golden_rows("tool-rows-tokens.json");
    let ids = u32s;
    for case in &cases {
        let kind = case["kind"].as_str().unwrap();
        std::fs::write(&file, format!("{}\n", case["row"])).unwrap();
        let format = match kind {
            "prompt_completion" => Format::PromptCompletion,
            "preference" => Format::Preference,
            _ => Format::Unpaired,
        };
        let plan = plan_for(
            vec![file.clone()],
            Some(format),
            512,
            false,
            TooLong::Truncate,
        );
        let data = prepare(&plan, Some(&tokenizer)).unwrap();
        match kind {
            "prompt_completion" => {
                assert_eq!(data.train[0].ids, ids(&case["input_ids"]), "{kind}");
                let labels: Vec<i64> = case["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect();
                assert_eq!(data.train[0].labels, labels, "{kind}");
            }
            "preference" => {
                let p = &data.train_pairs[0];
                assert_eq!(p.prompt, ids(&case["prompt_ids"]), "{kind}");
                assert_eq!(p.chosen, ids(&case["chosen_ids"]), "{kind}");
                assert_eq!(p.rejected, ids(&case["rejected_ids"]), "{kind}");
            }
            _ => {
                let p = &data.train_pairs[0];
                assert_eq!(p.prompt, ids(&case["prompt_ids"]), "{kind}");
                assert_eq!(p.chosen, ids(&case["completion_ids"]), "{kind}");
            }
        }
    }
    std::fs::write(
        &file,
        "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\", \"tools\": []}\n",
    )
    .unwrap();
    let plan = plan_for(vec![file.clone()], None, 512, false, TooLong::Truncate);
    let err = prepare_error(&plan, &tokenizer, "tools on a text pair");
    assert!(
        err.contains("rows.jsonl") && err.contains("for conversations (lists of messages) only"),
        "{err}"
    );
}
