#!/usr/bin/env python3
"""SIGKILL a training run at random moments and check that resuming gives the uninterrupted
run's result exactly.

    python3 scripts/kill_resume.py [--trials 20] [--binary target/release/burnish] [--seed 1]

For each trial: start `burnish train` on a small fixture recipe (TensorBoard on, a checkpoint
every 2 steps), SIGKILL it after a random delay within the reference run's duration (so kills
land during steps, checkpoint writes, the final evaluation and the adapter write), then resume
with `--resume` (killing again with probability 1/2) until it finishes. Then compare with a
reference run:
  - every checkpoint file byte for byte (trainer_state.json without elapsed_s),
  - the final adapter,
  - metrics.jsonl line for line, timing fields removed,
  - TensorBoard: every scalar's steps strictly increasing over all event files (read with
    TensorBoard's own EventFileLoader when the `tensorboard` package is installed).
Prints one line per trial and a summary; exits 1 if any trial differs. Standard library only
(plus `tensorboard` if available).
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rows_file(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(160):
            n = rng.randint(6, 40)
            f.write(json.dumps({"input_ids": [rng.randint(3, 1002) for _ in range(n)]}) + "\n")


def recipe(dir: Path, out: Path, rows: Path) -> Path:
    text = f"""
model: {{base: {ROOT / 'tests/fixtures/models/qwen2-tied'}}}
lora: {{r: 8, alpha: 16, dropout: 0.1, targets: all-linear}}
data:
  train: [{{path: {rows}, format: pretokenized}}]
  validation: {{split: 0.1}}
  seq_len: 64
  packing: true
train:
  max_steps: 60
  micro_batch_size: 2
  grad_accum: 2
  optimizer: {{lr: 5.0e-3, weight_decay: 0.01}}
  scheduler: {{name: cosine, warmup_steps: 3}}
  seed: 7
  device: cpu
  eval_every: 10
  save_every: 2
  keep_last: 3
output: {{dir: {out}}}
logging: {{every: 1, tensorboard: true}}
"""
    p = dir / f"recipe-{out.name}.yaml"
    p.write_text(text)
    return p


def run(binary: str, recipe: Path, extra=(), kill_after=None):
    """Run to completion, or SIGKILL after `kill_after` seconds. Returns the exit code."""
    env = dict(os.environ, RAYON_NUM_THREADS="2")
    p = subprocess.Popen([binary, "train", str(recipe), *extra], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after is None:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"run failed ({p.returncode}): {err.decode(errors='replace')[-2000:]}")
        return p.returncode
    try:
        p.wait(timeout=kill_after)
        return p.returncode
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return -9


def again(out: Path):
    """What a user types after a crash: --resume when a checkpoint exists, else nothing."""
    ckpts = out / "checkpoints"
    has = ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir())
    return ["--resume"] if has else []


TIMING = re.compile(r',"(elapsed_s|tokens_per_sec)":[^,}]*')


def metrics(out: Path):
    return [TIMING.sub("", line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def checkpoint_files(out: Path):
    files = {}
    for step in sorted((out / "checkpoints").iterdir()):
        if not step.name.startswith("step-"):
            continue
        for f in sorted(step.iterdir()):
            data = f.read_bytes()
            if f.name == "trainer_state.json":
                state = json.loads(data)
                state.pop("elapsed_s", None)
                data = json.dumps(state, sort_keys=True).encode()
            files[f"{step.name}/{f.name}"] = data
    return files


def tensorboard_steps(out: Path):
    """tag -> steps over every event file, in file order."""
    steps = {}
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    except ImportError:
        EventFileLoader = None
    for f in sorted((out / "tensorboard").iterdir()):
        if EventFileLoader is not None:
            for e in EventFileLoader(str(f)).Load():
                for v in e.summary.value:
                    if v.HasField("simple_value") or v.metadata.plugin_data.plugin_name == "scalars":
                        steps.setdefault(v.tag, []).append(e.step)
        else:
            for step, tag in read_events(f):
                steps.setdefault(tag, []).append(step)
    return steps


def read_events(path: Path):
    """(step, tag) of every simple_value in a TFRecord event file (minimal protobuf reader)."""
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        n = int.from_bytes(data[pos:pos + 8], "little")
        rec = data[pos + 12:pos + 12 + n]
        pos += 12 + n + 4
        fields = dict(parse(rec))
        step = fields.get(2, 0)
        if 5 in fields:
            for key, value in parse(fields[5]):
                if key == 1:
                    inner = dict(parse(value))
                    if 2 in inner:
                        yield step, inner[1].decode()


def parse(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            return
        yield field, value


def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--binary", default=str(ROOT / "target/release/burnish"))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="burnish-kill-"))
    rows = tmp / "rows.jsonl"
    rows_file(rows, 5)
    ref = tmp / "ref"
    t0 = time.time()
    run(args.binary, recipe(tmp, ref, rows))
    duration = time.time() - t0
    want_ckpt, want_metrics = checkpoint_files(ref), metrics(ref)
    want_adapter = (ref / "adapter/adapter_model.safetensors").read_bytes()
    failures = 0
    for trial in range(args.trials):
        out = tmp / f"t{trial}"
        r = recipe(tmp, out, rows)
        kills = []
        delay = rng.uniform(0.05, duration)
        code = run(args.binary, r, kill_after=delay)
        kills.append(round(delay, 2) if code == -9 else None)
        while rng.random() < 0.5 and code == -9:
            delay = rng.uniform(0.05, duration)
            code = run(args.binary, r, again(out), kill_after=delay)
            kills.append(round(delay, 2) if code == -9 else None)
        run(args.binary, r, again(out))
        problems = []
        got_ckpt = checkpoint_files(out)
        if got_ckpt.keys() != want_ckpt.keys():
            problems.append(f"checkpoint files {sorted(got_ckpt)} vs {sorted(want_ckpt)}")
        else:
            problems += [f"{k} differs" for k in want_ckpt if got_ckpt[k] != want_ckpt[k]]
        if (out / "adapter/adapter_model.safetensors").read_bytes() != want_adapter:
            problems.append("final adapter differs")
        if metrics(out) != want_metrics:
            problems.append("metrics.jsonl differs")
        for tag, steps in tensorboard_steps(out).items():
            if any(a >= b for a, b in zip(steps, steps[1:])):
                problems.append(f"TensorBoard {tag} repeats steps")
        leftovers = [p.name for p in list(out.iterdir()) + list((out / "checkpoints").iterdir())
                     if ".partial-" in p.name or ".old-" in p.name]
        if leftovers:
            problems.append(f"leftovers {leftovers}")
        failures += bool(problems)
        print(f"trial {trial + 1:2}: kills at {kills} s -> {'OK' if not problems else '; '.join(problems)}")
    print(f"{args.trials - failures} of {args.trials} trials resumed to identical files "
          f"(reference run {duration:.1f} s)")
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
