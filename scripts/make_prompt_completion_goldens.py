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
to (the tool definitions in the template's system block).
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
    path = os.path.join(FIX, "golden", "prompt-completion-tokens.json")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    with open(os.path.join(FIX, "golden", "tool-chat-tokens.json"), "w", encoding="utf-8",
              newline="\n") as f:
        json.dump(tools, f, indent=1)
        f.write("\n")
    for o in tools:
        print("tools", len(o["input_ids"]))
    for o in out:
        print(len(o["input_ids"]), sum(l != -100 for l in o["labels"]))


if __name__ == "__main__":
    main()
