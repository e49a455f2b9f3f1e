#!/usr/bin/env python3
"""Golden token ids for burnish's `prompt_completion` format: what TRL 1.16's SFTTrainer
makes of prompt-completion rows (its `_prepare_dataset`: EOS appended to text completions, the
prompt and prompt + completion tokenized, the completion mask from where they diverge), with
the Qwen2.5 tokenizer and chat template.

Run in the reference environment (see scripts/make_fixtures.py; TRL installed into it):

    ~/.cache/burnish-ref/venv/bin/python scripts/make_prompt_completion_goldens.py

Writes tests/fixtures/golden/prompt-completion-tokens.json: each row, its `input_ids` and its
`labels` (-100: not trained, with TRL's default `completion_only_loss`); and
tests/fixtures/golden/tool-chat-tokens.json: conversations with a `tools` column (a list, or a
JSON string as some Hub datasets store it) and tool calls, and the `input_ids` TRL renders them
to (the tool definitions in the template's system block); tests/fixtures/golden/
tool-rows-tokens.json: the same tools on a prompt-completion row (SFTTrainer's ids and
labels), a preference pair (DPOTrainer's prompt, chosen and rejected ids) and an unpaired row
(KTOTrainer's prompt and completion ids).
"""
import json
import os
import shutil
import tempfile

import datasets
import transformers
from trl import SFTConfig, SFTTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")

ROWS = [
    # Plain text: EOS appended to the completion.
    {"prompt": "The capital of France is", "completion": " Paris."},
    # A boundary where tokens merge: the completion starts where the ids diverge.
    {"prompt": "Count: one, two,", "completion": "three"},
    # Conversational: the prompt with the generation prompt, the reply through its end.
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     "completion": [{"role": "assistant", "content": "4."}]},
    # Several turns of context.
    {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Name a colour."}],
     "completion": [{"role": "assistant", "content": "Blue."}]},
]


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TOOL_ROWS = [
    {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "{\"temp_c\": 21}"},
        {"role": "assistant", "content": "21 degrees in Paris."}],
     "tools": [WEATHER]},
    # The tools as a JSON string (TRL's `json.loads` of a string column).
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
     "tools": json.dumps([WEATHER])},
]


def tool_goldens(tok, args):
    out = []
    for row in TOOL_ROWS:
        holder = type("Holder", (), {"_tokenizer": tok, "chat_template": None,
                                     "completion_only_loss": True})()
        t = SFTTrainer._prepare_dataset(holder, datasets.Dataset.from_list([row]), tok, args,
                                        args.packing, None, "train")[0]
        out.append({"row": row, "input_ids": t["input_ids"]})
    return out


TOOL_PROMPT = [{"role": "user", "content": "Weather in Paris?"}]
TOOL_CALL = [{"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}]


def tool_row_goldens(tok, tmp):
    """The same tools on prompt-completion (SFTTrainer), preference (DPOTrainer) and unpaired
    (KTOTrainer) conversations: each trainer's ids."""
    from types import SimpleNamespace
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
    refuse = [{"role": "assistant", "content": "I cannot check the weather."}]
    rows = {
        "prompt_completion": {"prompt": TOOL_PROMPT, "completion": TOOL_CALL, "tools": [WEATHER]},
        "preference": {"prompt": TOOL_PROMPT, "chosen": TOOL_CALL, "rejected": refuse,
                       "tools": [WEATHER]},
        "unpaired": {"prompt": TOOL_PROMPT, "completion": refuse, "label": False,
                     "tools": json.dumps([WEATHER])},
    }
    out = []
    sft = SFTConfig(output_dir=tmp, report_to=[], use_cpu=True, bf16=False, max_length=None)
    holder = type("Holder", (), {"_tokenizer": tok, "chat_template": None,
                                 "completion_only_loss": True})()
    t = SFTTrainer._prepare_dataset(holder, datasets.Dataset.from_list([rows["prompt_completion"]]),
                                    tok, sft, False, None, "train")[0]
    out.append({"kind": "prompt_completion", "row": rows["prompt_completion"],
                "input_ids": t["input_ids"], "labels": t["labels"]})
    dpo = DPOConfig(output_dir=tmp, report_to=[], use_cpu=True, bf16=False)
    holder = type("Holder", (), {"_tokenizer": tok})()
    t = DPOTrainer._prepare_dataset(holder, datasets.Dataset.from_list([rows["preference"]]), tok,
                                    dpo, "train")[0]
    out.append({"kind": "preference", "row": rows["preference"], "prompt_ids": t["prompt_ids"],
                "chosen_ids": t["chosen_ids"], "rejected_ids": t["rejected_ids"]})
    kto = KTOConfig(output_dir=tmp, max_length=None, report_to=[], use_cpu=True, bf16=False)
    me = SimpleNamespace(calculate_KL=False, _tokenizer=tok, desirable_weight=1.0,
                         undesirable_weight=1.0)
    t = KTOTrainer._prepare_dataset(me, datasets.Dataset.from_list([rows["unpaired"]]), tok, kto,
                                    "eval")[0]
    out.append({"kind": "unpaired", "row": rows["unpaired"], "prompt_ids": t["prompt_ids"],
                "completion_ids": t["completion_ids"]})
    return out


def main():
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(ROOT, "src", "model", "preset", "tokenizer.json"), tmp)
        shutil.copy(os.path.join(FIX, "tokenizer-qwen2.5", "tokenizer_config.json"), tmp)
        tok = transformers.AutoTokenizer.from_pretrained(tmp)
        args = SFTConfig(output_dir=tmp, report_to=[], use_cpu=True, bf16=False,
                         max_length=None, packing=False)
        for row in ROWS:
            # `_prepare_dataset` needs only these of the trainer (no template override).
            holder = type("Holder", (), {"_tokenizer": tok, "chat_template": None,
                                         "completion_only_loss": True})()
            t = SFTTrainer._prepare_dataset(holder, datasets.Dataset.from_list([row]), tok, args,
                                            args.packing, None, "train")[0]
            out.append({"row": row, "input_ids": t["input_ids"], "labels": t["labels"]})
        tools = tool_goldens(tok, args)
        tool_rows = tool_row_goldens(tok, tmp)
    path = os.path.join(FIX, "golden", "prompt-completion-tokens.json")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    with open(os.path.join(FIX, "golden", "tool-chat-tokens.json"), "w", encoding="utf-8",
              newline="\n") as f:
        json.dump(tools, f, indent=1)
        f.write("\n")
    with open(os.path.join(FIX, "golden", "tool-rows-tokens.json"), "w", encoding="utf-8",
              newline="\n") as f:
        json.dump(tool_rows, f, indent=1)
        f.write("\n")
    for o in tool_rows:
        print(o["kind"], len(o["row"]))
    for o in tools:
        print("tools", len(o["input_ids"]))
    for o in out:
        print(len(o["input_ids"]), sum(l != -100 for l in o["labels"]))


if __name__ == "__main__":
    main()
