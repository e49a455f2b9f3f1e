#!/usr/bin/env python3
"""Time `burnish export` on random-weight models of the Qwen2.5-0.5B and 1.5B shapes (the real
configs from tests/fixtures/configs/, bf16 weights like the released checkpoints, the Qwen2.5
tokenizer), for BENCHMARKS.md. The models are written under --work (about 1 GB and 3 GB) and are
not kept in the repository.

    ~/.cache/burnish-ref/venv/bin/python scripts/gguf_bench.py --burnish target/release/burnish \
        --work /tmp/gguf-bench --shapes qwen2.5-0.5b qwen2.5-1.5b --types q8_0 q4_k_m f16
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import time

import torch
import transformers
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_model(shape, work):
    d = os.path.join(work, shape)
    if os.path.isfile(os.path.join(d, "model.safetensors")):
        return d
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(ROOT, "tests", "fixtures", "configs", f"{shape}.json")) as f:
        config = json.load(f)
    config["torch_dtype"] = "bfloat16"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    shutil.copy(os.path.join(ROOT, "src", "model", "preset", "tokenizer.json"), d)
    shutil.copy(os.path.join(ROOT, "tests", "fixtures", "tokenizer-qwen2.5", "tokenizer_config.json"), d)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(d))
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, p in model.named_parameters():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        t = torch.randn(tuple(p.shape), generator=g) * (0.02 if p.dim() > 1 else 0.1)
        if name.endswith("norm.weight"):
            t += 1.0
        tensors[name] = t.to(torch.bfloat16)
    save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--burnish", default=os.path.join(ROOT, "target", "release", "burnish"))
    ap.add_argument("--work", default="/tmp/gguf-bench")
    ap.add_argument("--shapes", nargs="+", default=["qwen2.5-0.5b", "qwen2.5-1.5b"])
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    a = ap.parse_args()
    for shape in a.shapes:
        d = make_model(shape, a.work)
        for ty in a.types:
            out = os.path.join(a.work, f"{shape}-{ty}.gguf")
            t = time.perf_counter()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([a.burnish, "-q", "export", d, "--gguf", out, "--type", ty, "--force"], check=True)
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print(json.dumps({"shape": shape, "type": ty, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                              "bytes": os.path.getsize(out), "peak_rss_mb": round(after.ru_maxrss / 1024)}))
            os.remove(out)


if __name__ == "__main__":
    main()
