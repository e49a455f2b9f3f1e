#!/usr/bin/env python3
"""Try burnish the way a new user gets it wrong: malformed recipes, unknown keys and values,
missing or damaged files, bad dataset rows, impossible output folders, bad flags, offline
pushes. Every case must exit 2 with a message that names what is wrong (the file and line, the
key, the path or the flag), without a panic.

    python3 scripts/bad_inputs.py [--binary target/release/burnish]

Prints one line per case and a summary; exits 1 if any case fails. Standard library only.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests/fixtures/models/qwen2-tied"
GOOD = "model: {base: builtin:tiny-qwen2}\ndata:\n  train: [{path: %s, format: alpaca}]\n" % (
    ROOT / "datasets/alpaca-mini.jsonl")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "target/release/burnish"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="burnish-bad-"))

    def write(name, text, mode="w"):
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, mode) as f:
            f.write(text)
        return str(p)

    def recipe(name, text):
        return write(name, text)

    rows = write("rows.jsonl", "".join(json.dumps({"input_ids": [5, 6, 7, 8, 9, 10]}) + "\n" for _ in range(8)))
    damaged = tmp / "damaged"
    shutil.copytree(TINY, damaged)
    data = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(data[: len(data) // 2])
    no_config = tmp / "no-config"
    shutil.copytree(TINY, no_config)
    (no_config / "config.json").unlink()
    a_file = write("a-file", "x")
    ro = tmp / "read-only-output"
    ro.mkdir()

    def train_with(body, name):
        return ["train", recipe(name, "model: {base: %s}\n%s" % (TINY, body))]

    pre = "data: {train: [{path: %s, format: pretokenized}], validation: null, seq_len: 32}\n" % rows
    cases = [
        # (description, argv, needle)
        ("YAML syntax", ["validate", recipe("syntax.yaml", "model:\n  base: [unclosed\n")], "invalid YAML"),
        ("unknown top-level key", ["validate", recipe("k1.yaml", GOOD + "trian: {}\n")], "did you mean 'train'"),
        ("unknown nested key", ["validate", recipe("k2.yaml", GOOD + "lora: {alpah: 4}\n")], "lora.alpah"),
        ("wrong type", ["validate", recipe("t.yaml", GOOD + "train: {micro_batch_size: four}\n")], "train.micro_batch_size"),
        ("unknown scheduler", ["validate", recipe("s.yaml", GOOD + "train: {scheduler: {name: cosin}}\n")], "did you mean 'cosine'"),
        ("unknown optimizer", ["validate", recipe("o.yaml", GOOD + "train: {optimizer: {name: sgd}}\n")], "train.optimizer.name"),
        ("unknown device", ["validate", recipe("d.yaml", GOOD + "train: {device: tpu}\n")], "train.device"),
        ("unknown dtype", ["validate", recipe("dt.yaml", GOOD.replace("builtin:tiny-qwen2}", "builtin:tiny-qwen2, dtype: fp8}"))], "model.dtype"),
        ("negative lr", ["validate", recipe("lr.yaml", GOOD + "train: {optimizer: {lr: -1}}\n")], "train.optimizer.lr"),
        ("dropout 1", ["validate", recipe("dr.yaml", GOOD + "lora: {dropout: 1.0}\n")], "lora.dropout"),
        ("rank 0", ["validate", recipe("r.yaml", GOOD + "lora: {r: 0}\n")], "lora.r"),
        ("unknown target module", ["validate", recipe("tg.yaml", GOOD + "lora: {targets: [q_prj]}\n")], "did you mean 'q_proj'"),
        ("bad --set", ["validate", recipe("ok.yaml", GOOD), "--set", "train.lr"], "--set"),
        ("--set unknown key", ["validate", recipe("ok2.yaml", GOOD), "--set", "train.lrr=1"], "train.lrr"),
        ("missing data file", ["validate", recipe("m.yaml", "model: {base: builtin:tiny-qwen2}\ndata: {train: [{path: nope.jsonl}]}\n")], "nope.jsonl"),
        ("unsupported data file", ["validate", recipe("u.yaml", "model: {base: builtin:tiny-qwen2}\ndata: {train: [{path: %s}]}\n" % a_file)], ".jsonl"),
        ("unknown field mapping", ["validate", recipe("f.yaml", "model: {base: builtin:tiny-qwen2}\ndata: {train: [{path: %s, format: alpaca, fields: {answer: out}}]}\n" % (ROOT / "datasets/alpaca-mini.jsonl"))], "fields.answer"),
        ("unknown role mapping", ["validate", recipe("rm.yaml", "model: {base: builtin:tiny-qwen2}\ndata: {train: [{path: %s, format: messages, roles: {bot: robot}}]}\n" % (ROOT / "datasets/chat-mini.jsonl"))], "roles.bot"),
        ("unknown preset", ["validate", recipe("p.yaml", "model: {base: builtin:huge}\ndata: {train: [{path: %s}]}\n" % rows)], "model.base"),
        ("not a model folder", ["eval", "--model", str(tmp), "--data", rows, "--device", "cpu"], "config.json"),
        ("model without config", ["inspect", str(no_config)], "config.json"),
        ("truncated safetensors", ["eval", "--model", str(damaged), "--data", rows, "--device", "cpu"], "model.safetensors"),
        ("bad JSON row", ["eval", "--model", str(TINY), "--data", write("bad.jsonl", '{"input_ids": [1,2,3]}\n{oops\n'), "--device", "cpu"], "bad.jsonl:2"),
        ("row of the wrong format", ["eval", "--model", str(TINY), "--data", write("wrong.jsonl", '{"input_ids": "abc"}\n'), "--device", "cpu"], "wrong.jsonl:1"),
        ("invalid UTF-8", ["eval", "--model", str(TINY), "--data", write("utf8.jsonl", b'{"input_ids": [1, 2]}\n\xff\xfe\n', "wb"), "--device", "cpu"], "utf8.jsonl:2"),
        ("empty data file", ["eval", "--model", str(TINY), "--data", write("empty.jsonl", ""), "--device", "cpu"], "empty.jsonl"),
        ("unknown role in a row", ["plan", recipe("role.yaml", "model: {base: builtin:tiny-qwen2}\ndata: {train: [{path: %s, format: messages}], validation: null}\n" % write("role.jsonl", json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}) + "\n"))], "role.jsonl:1"),
        ("no assistant turn", ["plan", recipe("na.yaml", "model: {base: builtin:tiny-qwen2}\ndata: {train: [{path: %s, format: messages}], validation: null}\n" % write("na.jsonl", json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n"))], "na.jsonl:1"),
        ("output.dir is a file", train_with(pre + "output: {dir: %s}\n" % a_file, "o1.yaml"), "is a file, not a folder"),
        ("output.dir under a file", train_with(pre + "output: {dir: %s/run}\n" % a_file, "o2.yaml"), "which is a file"),
        ("resume without checkpoints", train_with(pre + "output: {dir: %s}\n" % (tmp / "fresh"), "o3.yaml") + ["--resume"], "no complete checkpoint"),
        ("resume from a missing folder", train_with(pre + "output: {dir: %s}\n" % (tmp / "fresh2"), "o4.yaml") + ["--resume", str(tmp / "nope")], "nope"),
        ("init_from not an adapter", ["validate", recipe("i.yaml", GOOD + "lora: {init_from: %s}\n" % tmp)], "lora.init_from"),
        ("eval --seq-len 0", ["eval", "--model", str(TINY), "--data", rows, "--seq-len", "0"], "--seq-len"),
        ("eval --batch-size 0", ["eval", "--model", str(TINY), "--data", rows, "--batch-size", "0"], "--batch-size"),
        ("negative temperature", ["generate", "--model", str(TINY), "--prompt", "hi", "--temperature=-1"], "--temperature"),
        ("top-p 0", ["generate", "--model", str(TINY), "--prompt", "hi", "--top-p", "0"], "--top-p"),
        ("bench --steps 0", ["bench", "--steps", "0"], "--steps"),
        ("bench --dropout 1", ["bench", "--dropout", "1"], "--dropout"),
        ("unknown bench shape", ["bench", "--shape", "huge", "--device", "cpu"], "huge"),
        ("merge into a non-empty folder", ["merge", "--adapter", str(ROOT / "tests/fixtures/lora/qwen2-tied/adapter"), "--base", str(TINY), "--out", str(tmp)], "--force"),
        ("adapter for another model", ["merge", "--adapter", str(ROOT / "tests/fixtures/lora/qwen3/adapter"), "--base", str(TINY), "--out", str(tmp / "m2")], "adapter"),
        ("push to a bad repo id", ["push", str(ROOT / "tests/fixtures/lora/qwen2-tied/adapter"), "not a repo"], "not a repo"),
        ("push offline", ["push", str(ROOT / "tests/fixtures/lora/qwen2-tied/adapter"), "org/repo"], "HF_HUB_OFFLINE"),
        ("download offline, not cached", ["download", "org/not-cached"], "HF_HUB_OFFLINE"),
        ("cuda in a CPU build", train_with(pre + "train: {device: cuda}\noutput: {dir: %s}\n" % (tmp / "cuda"), "c.yaml"), "cuda"),
        ("export an unknown type", ["export", str(TINY), "--gguf", str(tmp / "x.gguf"), "--type", "q3_x"], "q3_x"),
    ]
    failures = 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_TOKEN="hf_test", HF_HOME=str(tmp / "hf"))
    for what, argv, needle in cases:
        p = subprocess.run([args.binary, *argv], env=env, capture_output=True, text=True, timeout=300)
        err = p.stderr
        problems = []
        if p.returncode != 2:
            problems.append(f"exit {p.returncode}")
        if needle not in err:
            problems.append(f"no {needle!r} in the message")
        if "panicked" in err:
            problems.append("panic")
        failures += bool(problems)
        first = next((l for l in err.splitlines() if l.startswith("error")), err.strip().splitlines()[-1] if err.strip() else "")
        print(f"{'OK  ' if not problems else 'FAIL'} {what}: {first[:150]}" + (f"  [{'; '.join(problems)}]" if problems else ""))
    print(f"{len(cases) - failures} of {len(cases)} bad inputs gave exit 2 with a located message and no panic")
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
