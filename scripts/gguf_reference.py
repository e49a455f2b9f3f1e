#!/usr/bin/env python3
"""GGUF export goldens and acceptance checks, from llama.cpp's `gguf` package and transformers.

Run in the reference environment after building burnish (`cargo build`), with the `gguf`
package installed (`~/.cache/burnish-ref/venv/bin/pip install gguf`):

    ~/.cache/burnish-ref/venv/bin/python scripts/gguf_reference.py \
        --burnish target/debug/burnish --llama-cpp /path/to/llama.cpp

`--llama-cpp` is a llama.cpp source tree (for instance vendor/llama.cpp of the llama-cpp-python
sdist: `pip download --no-deps --no-binary :all: llama-cpp-python`). The `gguf` package has
reference quantizers for q8_0, q4_0 and q5_0 but not for the k-quants, so the script compiles
ggml-quants.c (plain `cc -O2 -ffp-contract=off`, the reference quantizers without fused
multiply-adds) and calls `quantize_row_q4_K_ref` / `quantize_row_q6_K_ref` through ctypes.

What it checks (and fails on), then writes under tests/fixtures/ (the tokenizers come from
scripts/gguf_tokenizers.py):

  tokenizer-tiny/      a 1024-token byte-level BPE tokenizer cut from the Qwen2.5 tokenizer
                       (first 1021 tokens and the merges among them, 3 special tokens), so the
                       1024-vocabulary fixture models can carry a real tokenizer
  tokenizer-spm-tiny/  a 1024-piece SentencePiece BPE model (byte fallback, as Mistral 7B),
                       trained with `sentencepiece` on datasets/
  gguf-quant.*         test arrays and their quantized bytes: q8_0, q4_0, q5_0 from
                       gguf.quants.quantize, q4_K and q6_K from ggml's C reference (checked to
                       dequantize, with gguf.quants.dequantize, within the formats' error)
  gguf-export.*        for each fixture model (+ adapter) and type, burnish's export read by
                       GGUFReader: metadata, names, types, and the tensors against the merged
                       model (transformers + PEFT merge_and_unload; gemma3-spm: Gemma 3, its
                       norms stored as 1 + w): f16/bf16/f32 exactly after
                       rounding, q8_0/q4_0/q5_0 byte-identical to gguf.quants.quantize of the
                       merged f32 tensors (models without an adapter; with one, burnish's f32
                       merge may differ in the last bit, so those compare dequantized values),
                       k-quants byte-identical to the C reference; then transformers loads each
                       file (`from_pretrained(dir, gguf_file=...)`): logits against the merged
                       model, greedy generation from the f16 file, and the tokenizer rebuilt from
                       the file against tokenizer.json; and, with llama-cpp-python installed
                       (`pip install llama-cpp-python`, a source build), llama.cpp runs each f16
                       file and its logits are held to the merged model's too. The last-position logits of the f16 and q8_0 files,
                       the greedy ids and the sha256 of every file go into the golden files,
                       which the Rust tests compare with.
"""
import argparse
import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file

import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
GOLD = os.path.join(FIX, "golden")
TOKENIZER_JSON = os.path.join(ROOT, "src", "model", "preset", "tokenizer.json")
torch.set_num_threads(2)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def versions():
    import importlib.metadata
    import peft
    return {"gguf": importlib.metadata.version("gguf"),
            "transformers": transformers.__version__, "torch": torch.__version__, "peft": peft.__version__,
            "numpy": np.__version__}


def check_spm_file(path, model_dir, gemma=False):
    """The SentencePiece vocabulary as convert_hf_to_gguf.py writes it, and transformers'
    tokenizer rebuilt from the file encodes as sentencepiece does."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
    reader = GGUFReader(path)
    assert field(reader, "tokenizer.ggml.model") == "llama" and field(reader, "tokenizer.ggml.pre") == "default"
    tokens = field(reader, "tokenizer.ggml.tokens")
    scores = field(reader, "tokenizer.ggml.scores")
    types = field(reader, "tokenizer.ggml.token_type")
    for i in range(sp.get_piece_size()):
        if i < 3:  # <unk> <s> </s>: special in added_tokens_decoder -> control, score -1000
            assert (tokens[i], types[i], scores[i]) == (sp.id_to_piece(i), 3, -1000.0), i
            continue
        want_type = 6 if sp.is_byte(i) else 5 if sp.is_unused(i) else 1
        assert (tokens[i], types[i]) == (sp.id_to_piece(i), want_type), (i, tokens[i], types[i])
        assert scores[i] == np.float32(sp.get_score(i)), i
    assert field(reader, "tokenizer.ggml.bos_token_id") == 1 and field(reader, "tokenizer.ggml.eos_token_id") == 2
    assert field(reader, "tokenizer.ggml.unknown_token_id") == 0 and field(reader, "tokenizer.ggml.add_bos_token") is True
    if gemma:
        # The converter marks Gemma's SentencePiece model as adding no dummy prefix (Gemma's does
        # not); this fixture's model was trained with one, so encodings would differ by it.
        assert field(reader, "tokenizer.ggml.add_space_prefix") is False
        return
    tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    # Texts without leading whitespace or special-token strings: transformers' GGUF llama
    # tokenizer drops sentencepiece's extra dummy-prefix space before leading spaces and parses
    # "<s>", neither of which is about the file.
    for text in ["Hello, world! 123 4567", "Emoji 🦀 café naïve 東京", "two  spaces\tand\n\nnewlines  x"]:
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text), text


# --------------------------------------------------------------------------------------------
# Quantizers
# --------------------------------------------------------------------------------------------

def c_reference(llama_cpp):
    """ggml-quants.c compiled as a shared library (reference quantizers, no FMA contraction)."""
    ggml = os.path.join(llama_cpp, "ggml")
    out = os.path.join(tempfile.mkdtemp(), "libggml_quants_ref.so")
    subprocess.run(["cc", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-I", os.path.join(ggml, "include"),
                    "-I", os.path.join(ggml, "src"), os.path.join(ggml, "src", "ggml-quants.c"), "-o", out],
                   check=True)
    return ctypes.CDLL(out, mode=os.RTLD_LAZY)


def c_quantize(lib, fn, x, type_size, block):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros(x.size // block * type_size, dtype=np.uint8)
    getattr(lib, fn)(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(x.size))
    return out


def quant_arrays():
    g = np.random.default_rng(21)
    rows = [
        g.standard_normal(512),
        g.standard_normal(512) * 0.02,  # typical weight scale
        g.standard_normal(512) * 1e-6,
        np.zeros(512),
        np.full(512, 0.125),
        np.where(np.arange(512) % 97 == 0, 40.0, g.standard_normal(512) * 0.1),  # outliers
        -np.abs(g.standard_normal(512)),  # all negative
        np.abs(g.standard_normal(512)),  # all positive (q4_K min = 0)
        np.round(g.standard_normal(512) * 16) / 16,  # many exact ties after scaling
        g.uniform(-1, 1, 512) ** 3,
    ]
    return np.stack(rows).astype(np.float32)


def make_quant(lib):
    x = quant_arrays()
    tensors = {"input": x}
    report = {}
    for name, qt in [("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q5_0", T.Q5_0)]:
        q = gguf.quants.quantize(x, qt)
        tensors[name] = q
        if lib is not None:
            block, size = gguf.GGML_QUANT_SIZES[qt]
            c = c_quantize(lib, f"quantize_row_{name}_ref", x, size, block)
            assert np.array_equal(c, q.reshape(-1)), f"{name}: gguf.quants differs from ggml's C reference"
        report[name] = rel_error(x, gguf.quants.dequantize(q, qt))
    assert lib is not None, "--llama-cpp is needed for the k-quant goldens"
    for name, qt, fn in [("q4_K", T.Q4_K, "quantize_row_q4_K_ref"), ("q6_K", T.Q6_K, "quantize_row_q6_K_ref")]:
        block, size = gguf.GGML_QUANT_SIZES[qt]
        q = c_quantize(lib, fn, x, size, block).reshape(x.shape[0], -1)
        tensors[name] = q
        deq = gguf.quants.dequantize(q, qt)
        report[name] = rel_error(x, deq)
    for name, b in QUANT_BOUNDS.items():
        assert report[name]["rel_rms"] < b, (name, report[name])
    save_file(tensors, os.path.join(GOLD, "gguf-quant.safetensors"))
    write_json(os.path.join(GOLD, "gguf-quant.json"), {
        "versions": versions(),
        "what": "rows of `input` quantized by gguf.quants.quantize (q8_0, q4_0, q5_0; identical to ggml's C "
                "reference) and by ggml-quants.c quantize_row_q4_K_ref / quantize_row_q6_K_ref "
                "(cc -O2 -ffp-contract=off)",
        "dequantization_error": report,
        "bounds_rel_rms": QUANT_BOUNDS,
    })
    print("quant:", {k: round(v["rel_rms"], 5) for k, v in report.items()})


# The formats' error: relative RMS of a row of smooth data is about (level step) / sqrt(12) /
# RMS, which for Gaussian data is ~0.5% (q8_0), ~2% (q6_K), ~4.5% (q5_0), ~7% (q4_K) and ~9%
# (q4_0), as measured on these arrays; the bounds leave a third of margin.
QUANT_BOUNDS = {"q8_0": 0.008, "q6_K": 0.025, "q5_0": 0.06, "q4_K": 0.095, "q4_0": 0.12}

# Rows of quant_arrays() drawn from smooth distributions (no outliers, zeros or constants):
# where the formats' typical error is measured (row 2, 1e-6 scale, underflows the f16 scales).
SMOOTH_ROWS = [0, 1, 6, 7, 9]


def rel_error(x, y):
    """Relative RMS error over the smooth rows (worst row), and the largest error anywhere."""
    x = x.reshape(-1, 512).astype(np.float64)
    y = y.reshape(-1, 512).astype(np.float64)
    per_row = [float(np.sqrt(np.mean((x[r] - y[r]) ** 2)) / np.sqrt(np.mean(x[r] ** 2))) for r in SMOOTH_ROWS]
    return {"rel_rms": max(per_row), "max_abs": float(np.max(np.abs(x - y)))}


# --------------------------------------------------------------------------------------------
# Exports
# --------------------------------------------------------------------------------------------

# case: (fixture model, adapter under fixtures/lora or None)
CASES = {
    "qwen2-tied+adapter": ("qwen2-tied", "qwen2-tied"),
    # A DoRA adapter: each merged row rescaled to its magnitude before export.
    "qwen2-tied+dora": ("qwen2-tied", "dora"),
    "qwen2-untied": ("qwen2-untied", None),
    "llama-gqa+adapter": ("llama-gqa", "llama-gqa"),
    "mistral": ("mistral", None),
    # The same model with a SentencePiece tokenizer (tokenizer.model), as Mistral 7B ships.
    "mistral-spm": ("mistral", None),
    "qwen3+adapter": ("qwen3", "qwen3"),
    # 8 layers with rows of 256 and 512 values, so the k-quants and q4_k_m's layer rule apply.
    "synth-k": ("synth-k", None),
    # Gemma 3 (norms stored as 1 + w, a sliding and a full layer with their own RoPE bases, linear
    # scaling on the full one) with a SentencePiece tokenizer, as Gemma ships; its
    # query_pre_attn_scalar set to head_dim (CONFIG_PATCH), the only scale llama.cpp's gemma3
    # graph computes for a model of this shape.
    "gemma3-spm": ("gemma3", "gemma3"),
    # Gemma 2: soft-capped attention and logits, every other layer sliding; the same
    # query_pre_attn_scalar patch for llama.cpp's gemma2 graph.
    "gemma2-spm": ("gemma2", "gemma2"),
}

# Config changes a case's model folder gets (tests/export_gguf.rs applies the same, from the
# golden).
CONFIG_PATCH = {"gemma3-spm": {"query_pre_attn_scalar": 16}, "gemma2-spm": {"query_pre_attn_scalar": 16}}

SYNTH_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": False,
    "hidden_act": "silu", "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
}


def synth_values(name, n):
    """Deterministic weights from an integer hash of (tensor name, index): exact f32 values that
    tests/export_gguf.rs computes identically, so this model need not be committed."""
    h = 2166136261
    for b in name.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    x = (np.arange(n, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(h)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(12)
    x = (x * np.uint64(0x297A2D39)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    u = (x >> np.uint64(8)).astype(np.float32) / np.float32(2 ** 24)
    v = u - np.float32(0.5)
    if name.endswith("norm.weight"):
        return np.float32(1.0) + v * np.float32(0.25)
    if name.endswith(".bias"):
        return v * np.float32(0.25)
    if "embed_tokens" in name or "lm_head" in name:
        return v * np.float32(0.5)
    return v * np.float32(0.125)


def synth_model(d):
    from safetensors.numpy import save_file as save_np
    os.makedirs(d)
    write_json(os.path.join(d, "config.json"), SYNTH_CONFIG)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SYNTH_CONFIG))
    tensors = {}
    for name, p in model.named_parameters():
        tensors[name] = synth_values(name, p.numel()).reshape(tuple(p.shape))
    save_np(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
TYPES = ["f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q6_k"]
GGUF_ARCH = {"qwen2": gguf.MODEL_ARCH.QWEN2, "llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA,
             "qwen3": gguf.MODEL_ARCH.QWEN3, "gemma3_text": gguf.MODEL_ARCH.GEMMA3,
             "gemma2": gguf.MODEL_ARCH.GEMMA2}
# Logit error bounds against the merged f32 model, as a fraction of the largest |logit|, with
# about a third of margin over what these tiny random models show (f16 9e-4, bf16 1e-2, q8_0
# 3.6e-2, q6_k 4.6e-2 on the model where it is not q8_0, q4_k_m 0.22, q4_0 0.42: with 64-wide
# layers a 4-bit model is far from its f32 original).
# llama.cpp running an f16 file keeps K/V in f16 too: 0.8e-3 to 1.7e-3 on the models here,
# 5.7e-3 on gemma3 (3.7e-3 with an f32 K/V cache; its scaled embeddings and 1 + w norms run
# larger activations). One wrong key is far beyond: gemma3 with the full layers' RoPE base on
# its sliding layer moves the logits by 0.6 of the largest.
LLAMA_CPP_F16_BOUND = 0.01
LOGIT_BOUNDS = {"f16": 0.002, "bf16": 0.02, "q8_0": 0.05, "q6_k": 0.07, "q4_k_m": 0.3, "q4_0": 0.55}
# gemma3's activations run larger (embeddings scaled by sqrt(hidden), norms of 1 + w): the same
# weight rounding moves its logits 4-6x as far (f16 4.0e-3, q8_0 0.19 of the largest); 5x with
# the others' margin.
CASE_BOUND_SCALE = {"gemma3-spm": 5.0, "gemma2-spm": 5.0}
FTYPE = {"f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q6_k": 18}


def tokenizer_of(case):
    return "tokenizer-spm-tiny" if case.endswith("-spm") else "tokenizer-tiny"


def model_folder(model, tmp, tokenizer="tokenizer-tiny", patch=None):
    """A fixture model with a tiny tokenizer (what the Rust tests assemble too)."""
    d = os.path.join(tmp, model)
    if model == "synth-k":
        synth_model(d)
    else:
        shutil.copytree(os.path.join(FIX, "models", model), d)
    for f in os.listdir(os.path.join(FIX, tokenizer)):
        shutil.copy(os.path.join(FIX, tokenizer, f), d)
    if patch:
        with open(os.path.join(d, "config.json")) as f:
            config = json.load(f)
        config.update(patch)
        write_json(os.path.join(d, "config.json"), config)
    return d


def merged_reference(model_dir, adapter):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    base = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    if adapter:
        import peft
        model = peft.PeftModel.from_pretrained(model, os.path.join(FIX, "lora", adapter, "adapter")).merge_and_unload().eval()
    merged = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    changed = {k for k in merged if not np.array_equal(merged[k], base[k])}
    return model, merged, changed


def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def expected_type(ftype, name, shape, n_layers, tied):
    """llama.cpp llama_tensor_get_type (+ tensor_type_fallback) for these dense models; 1-D -> F32."""
    if len(shape) < 2 or name.endswith("_norm.weight") or not name.endswith("weight"):
        return T.F32
    base = {"f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_k_m": T.Q4_K, "q6_k": T.Q6_K}[ftype]
    if base in (T.F16, T.BF16):
        return base
    cols = shape[-1]
    blk = lambda t: gguf.GGML_QUANT_SIZES[t][0]
    t = base
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        if cols % blk(t) != 0:
            t = T.Q8_0
        elif t != T.Q8_0:
            t = T.Q6_K
    elif ftype == "q4_k_m" and ("attn_v.weight" in name or "ffn_down" in name):
        if use_more_bits(int(name.split(".")[1]), n_layers):
            t = T.Q6_K
    if cols % blk(t) != 0:
        t = {T.Q4_K: T.Q5_0, T.Q6_K: T.Q8_0}.get(t, t)
        if cols % blk(t) != 0:
            t = T.F16
    return t


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def check_file(path, case, ftype, model_dir, merged, changed, config, lib, spm_case=False):
    reader = GGUFReader(path)
    arch_name = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
                 "Qwen3ForCausalLM": "qwen3", "Gemma3ForCausalLM": "gemma3",
                 "Gemma2ForCausalLM": "gemma2"}[config["architectures"][0]]
    arch = field(reader, "general.architecture")
    assert arch == arch_name, (arch, arch_name)
    expect_kv = {
        f"{arch}.block_count": config["num_hidden_layers"],
        f"{arch}.context_length": config["max_position_embeddings"],
        f"{arch}.embedding_length": config["hidden_size"],
        f"{arch}.feed_forward_length": config["intermediate_size"],
        f"{arch}.attention.head_count": config["num_attention_heads"],
        f"{arch}.attention.head_count_kv": config["num_key_value_heads"],
        "general.file_type": FTYPE[ftype],
        "general.quantization_version": 2,
    }
    if not spm_case:
        expect_kv.update({
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.eos_token_id": 1023,
            "tokenizer.ggml.padding_token_id": 1021,
            "tokenizer.ggml.bos_token_id": config["bos_token_id"],
            "tokenizer.ggml.add_bos_token": False,
        })
    rope = config.get("rope_parameters") or {}
    if arch == "gemma3":
        # convert_hf_to_gguf.py (Gemma3Model, TextModel): the full layers' RoPE and scaling,
        # the sliding layers' base, the window; a layout other than five sliding to one full
        # spelled out per layer (llama.cpp's load_swa_pattern reads an array of flags).
        local = rope["sliding_attention"]
        rope = rope["full_attention"]
        expect_kv[f"{arch}.rope.freq_base_swa"] = np.float32(local["rope_theta"])
        expect_kv[f"{arch}.attention.sliding_window"] = config["sliding_window"]
        expect_kv[f"{arch}.attention.sliding_window_pattern"] = [
            t == "sliding_attention" for t in config["layer_types"]]
        expect_kv[f"{arch}.rope.scaling.type"] = rope["rope_type"]
        expect_kv[f"{arch}.rope.scaling.factor"] = np.float32(rope["factor"])
        expect_kv["tokenizer.ggml.add_space_prefix"] = False
    if arch == "gemma2":
        # convert_hf_to_gguf.py (Gemma2Model): the window and both soft caps; the layers'
        # layout is llama.cpp's default for gemma2 (sliding, full, ...), so no pattern key.
        expect_kv[f"{arch}.attention.sliding_window"] = config["sliding_window"]
        expect_kv[f"{arch}.attn_logit_softcapping"] = np.float32(config["attn_logit_softcapping"])
        expect_kv[f"{arch}.final_logit_softcapping"] = np.float32(config["final_logit_softcapping"])
        expect_kv["tokenizer.ggml.add_space_prefix"] = False
        assert config["layer_types"] == ["sliding_attention", "full_attention"]
        assert f"{arch}.attention.sliding_window_pattern" not in reader.fields
    expect_kv[f"{arch}.rope.freq_base"] = np.float32(rope.get("rope_theta", config.get("rope_theta")))
    expect_kv[f"{arch}.attention.layer_norm_rms_epsilon"] = np.float32(config["rms_norm_eps"])
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    expect_kv[f"{arch}.attention.key_length"] = head_dim
    if arch == "llama":
        expect_kv["llama.rope.dimension_count"] = head_dim
        expect_kv["llama.vocab_size"] = config["vocab_size"]
    for k, v in expect_kv.items():
        got = field(reader, k)
        assert got == v, (case, ftype, k, got, v)
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config["vocab_size"], len(tokens)
    if not spm_case:
        assert tokens[1023] == "<|im_end|>" and "im_start" in field(reader, "tokenizer.chat_template")

    tied = config.get("tie_word_embeddings", False)
    n_layers = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(GGUF_ARCH[config["model_type"]], n_layers)
    expected = {}
    for hf, w in merged.items():
        if hf == "lm_head.weight" and tied:
            continue
        name = name_map.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert name is not None, hf
        if arch == "llama" and hf.endswith(("q_proj.weight", "q_proj.bias")):
            w = permute(w, config["num_attention_heads"], config["num_attention_heads"])
        if arch == "llama" and hf.endswith(("k_proj.weight", "k_proj.bias")):
            w = permute(w, config["num_attention_heads"], config["num_key_value_heads"])
        if arch in ("gemma3", "gemma2") and hf.endswith("norm.weight"):
            # Gemma3Model.norm_shift (Gemma2Model adds the same 1): llama.cpp multiplies by the stored weight, Gemma by 1 + w.
            w = w + np.float32(1.0)
        expected[name] = (w.astype(np.float32), hf in changed)
    if rope.get("rope_type") == "llama3":
        # What llama.cpp divides the rotary frequencies by: default / llama3-scaled.
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
        cfg = transformers.AutoConfig.from_pretrained(model_dir)
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
        base = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        expected["rope_freqs.weight"] = ((base / scaled).numpy().astype(np.float32), True)
    names = [t.name for t in reader.tensors]
    assert sorted(names) == sorted(expected), (sorted(names), sorted(expected))
    types = {}
    for t in reader.tensors:
        want, approximate = expected[t.name]
        qt = T(t.tensor_type)
        et = expected_type(ftype, t.name, want.shape, n_layers, tied)
        assert qt == et, (case, ftype, t.name, qt.name, et.name)
        types[t.name] = qt.name
        got = gguf.quants.dequantize(t.data, qt).reshape(want.shape)
        if qt == T.F32:
            tol = 1e-5 if approximate else 0.0
            assert np.max(np.abs(got - want)) <= tol * max(1.0, np.max(np.abs(want))), (t.name,)
        elif qt in (T.F16, T.BF16):
            ref = gguf.quants.quantize(want, qt)
            if approximate:
                # Burnish's f32 merge may differ from PEFT's in the last bit: at most one step.
                ref_v = gguf.quants.dequantize(ref, qt).reshape(want.shape)
                step = np.abs(ref_v) * (2.0 ** (-10 if qt == T.F16 else -7)) + 1e-30
                assert np.all(np.abs(got - ref_v) <= step + 6e-8), (t.name, qt.name)
            else:
                assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), ref.view(np.uint8).reshape(-1)), (t.name, qt.name)
        else:
            if qt in (T.Q4_K, T.Q6_K):
                block, size = gguf.GGML_QUANT_SIZES[qt]
                fn = {T.Q4_K: "quantize_row_q4_K_ref", T.Q6_K: "quantize_row_q6_K_ref"}[qt]
                ref = c_quantize(lib, fn, want, size, block)
            else:
                ref = gguf.quants.quantize(want, qt).reshape(-1)
            same = np.array_equal(np.asarray(t.data).reshape(-1), ref)
            if not approximate:
                assert same, (case, ftype, t.name, qt.name, "bytes differ from the reference quantizer")
            err = np.sqrt(np.mean((got - want) ** 2)) / max(np.sqrt(np.mean(want ** 2)), 1e-12)
            bound = QUANT_BOUNDS[qt.name[0].lower() + qt.name[1:]]
            assert err < bound, (t.name, qt.name, err)
    return reader, types


def check_llama_cpp(path, ref_logits, ids, case, ftype):
    """llama.cpp itself (llama-cpp-python, when installed) runs the f16 file: its logits for
    each row against the merged model's, within the format's bound. (f16 only: the quantized
    dot products of the llama-cpp-python 0.3.36 build here died with SIGILL on this VM.)"""
    try:
        import llama_cpp
    except ImportError:
        print(f"{case} {ftype}: llama-cpp-python not installed, llama.cpp run skipped")
        return
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    worst = 0.0
    for row in range(ids.shape[0]):
        llm.reset()
        llm.eval([int(t) for t in ids[row]])
        got = np.array(llm.scores[: ids.shape[1]], dtype=np.float32)
        ref = ref_logits[row]
        worst = max(worst, float(np.max(np.abs(got - ref)) / np.max(np.abs(ref))))
    print(f"{case} {ftype}: llama.cpp logits rel {worst:.2e}")
    assert worst < LLAMA_CPP_F16_BOUND, (case, ftype, "llama.cpp", worst)


def load_gguf_model(tmp, fname, config, model_dir=None):
    kwargs = {}
    if config["model_type"] == "qwen3":
        # transformers' GGUF loader ignores qwen3.attention.key_length (Qwen3Config defaults to 128).
        kwargs["head_dim"] = config["head_dim"]
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp, gguf_file=fname, dtype=torch.float32, **kwargs).eval()
    if config["model_type"] in ("gemma3_text", "gemma2"):
        # transformers' GGUF loader reads the tensors (undoing the norm shift) but builds the
        # config from the Gemma config class's defaults for what its key table lacks (layer
        # types, local RoPE base, scaling, query_pre_attn_scalar, soft caps): put the tensors
        # into the folder's model. The keys themselves are checked in check_file and, when
        # llama-cpp-python is installed, by llama.cpp running the file (check_llama_cpp).
        true = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.from_pretrained(model_dir)).eval()
        missing, unexpected = true.load_state_dict(model.state_dict(), strict=False)
        assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
        true.tie_weights()
        return true
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type") == "llama3":
        # Carried by rope_freqs.weight, which transformers' GGUF loader does not read: give the
        # loaded model the scaling the file encodes (checked against rope_freqs above).
        import copy
        cfg = copy.deepcopy(model.config)
        cfg.rope_parameters = dict(rope)
        rotary = type(model.model.rotary_emb)(config=cfg)
        model.model.rotary_emb = rotary
    return model


def make_exports(burnish, lib):
    tmp_root = tempfile.mkdtemp()
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 1021, (2, 12), generator=g)
    prompt = [int(i) for i in torch.randint(3, 1021, (6,), generator=g)]
    tensors = {"ids": ids.numpy().astype(np.int64)}
    out = {"versions": versions(), "types": TYPES, "logit_bounds_rel_max": LOGIT_BOUNDS,
           "prompt": prompt, "new_tokens": 12, "cases": {}}
    for case, (model, adapter) in CASES.items():
        tmp = os.path.join(tmp_root, case)
        os.makedirs(tmp)
        model_dir = model_folder(model, tmp, tokenizer_of(case), CONFIG_PATCH.get(case))
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
        ref_model, merged, changed = merged_reference(model_dir, adapter)
        with torch.no_grad():
            ref_logits = ref_model(input_ids=ids).logits.float().numpy()
        res = {"model": model, "adapter": adapter, "tokenizer": tokenizer_of(case), "files": {}}
        if case in CONFIG_PATCH:
            res["config"] = CONFIG_PATCH[case]
        if case in CASE_BOUND_SCALE:
            res["logit_bound_scale"] = CASE_BOUND_SCALE[case]
        spm_case = case.endswith("-spm")
        for ftype in TYPES:
            fname = f"{case}-{ftype}.gguf"
            path = os.path.join(tmp, fname)
            # ("mistral" alone as general.name sends transformers down a GGUF path it lacks.)
            args = [burnish, "export", "--gguf", path, "--type", ftype, "--name", f"fixture-{model}"]
            if adapter:
                args += ["--adapter", os.path.join(FIX, "lora", adapter, "adapter"), "--base", model_dir]
            else:
                args += [model_dir]
            subprocess.run(args, check=True, env=dict(os.environ, RAYON_NUM_THREADS="2"))
            _, types = check_file(path, case, ftype, model_dir, merged, changed, config, lib, spm_case)
            if spm_case:
                check_spm_file(path, model_dir, gemma=config["model_type"] in ("gemma3_text", "gemma2"))
            if ftype == "f16":
                check_llama_cpp(path, ref_logits, ids, case, ftype)
            gm = load_gguf_model(tmp, fname, config, model_dir)
            with torch.no_grad():
                logits = gm(input_ids=ids).logits.float().numpy()
            rel = float(np.max(np.abs(logits - ref_logits)) / np.max(np.abs(ref_logits)))
            assert rel < LOGIT_BOUNDS[ftype] * CASE_BOUND_SCALE.get(case, 1.0), (case, ftype, rel)
            with open(path, "rb") as f:
                sha = hashlib.sha256(f.read()).hexdigest()
            counts = {}
            for t in types.values():
                counts[t] = counts.get(t, 0) + 1
            res["files"][ftype] = {"sha256": sha, "bytes": os.path.getsize(path),
                                   "logits_rel_max_vs_merged": rel, "tensor_types": counts}
            if ftype in ("f16", "q8_0"):
                # The last position of each row (it attends to every earlier one): kept small.
                tensors[f"{case}.{ftype}.logits"] = logits[:, -1, :].astype(np.float32)
            if ftype == "f16":
                gm.generation_config.eos_token_id = None
                with torch.no_grad():
                    gen = gm.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                      pad_token_id=0, eos_token_id=None)
                greedy = [int(t) for t in gen[0, len(prompt):]]
                ref_model.generation_config.eos_token_id = None
                with torch.no_grad():
                    gen_ref = ref_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                                 pad_token_id=0, eos_token_id=None)
                assert [int(t) for t in gen_ref[0, len(prompt):]] == greedy, (case, "greedy differs from merged")
                res["greedy_f16"] = greedy
                if not spm_case:
                    check_tokenizer(tmp, fname, model_dir)
            print(f"{case} {ftype}: {os.path.getsize(path)} bytes, logits rel {rel:.2e}")
        out["cases"][case] = res
    save_file(tensors, os.path.join(GOLD, "gguf-export.safetensors"))
    write_json(os.path.join(GOLD, "gguf-export.json"), out)
    shutil.rmtree(tmp_root, ignore_errors=True)


TEXTS = [
    "Hello, world! 123 4567",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "  spaces   and\ttabs\n\nnewlines",
    "Emoji 🦀 café naïve 東京",
]


def check_tokenizer(tmp, fname, model_dir):
    """The tokenizer transformers rebuilds from the file encodes as tokenizer.json does."""
    from tokenizers import Tokenizer
    ref = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok = transformers.AutoTokenizer.from_pretrained(tmp, gguf_file=fname)
    for text in TEXTS:
        want = ref.encode(text, add_special_tokens=False).ids
        got = tok.encode(text, add_special_tokens=False)
        assert got == want, (fname, text, got, want)


def check_qwen_preset(burnish):
    """The real Qwen2.5 tokenizer (151,643 tokens + specials, padded to 151,936) round-trips."""
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "tiny-qwen2-q8_0.gguf")
    subprocess.run([burnish, "export", "builtin:tiny-qwen2", "--gguf", path, "--type", "q8_0"], check=True,
                   env=dict(os.environ, BURNISH_HOME=os.path.join(tmp, "home")))
    reader = GGUFReader(path)
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 151936 and tokens[151645] == "<|im_end|>" and tokens[151935] == "[PAD151935]"
    assert field(reader, "tokenizer.ggml.eos_token_id") == 151645
    assert field(reader, "tokenizer.ggml.bos_token_id") == 151643
    from tokenizers import Tokenizer
    ref = Tokenizer.from_file(TOKENIZER_JSON)
    tok = transformers.AutoTokenizer.from_pretrained(tmp, gguf_file=os.path.basename(path))
    for text in TEXTS:
        assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False).ids, text
    shutil.rmtree(tmp, ignore_errors=True)
    print("qwen2.5 tokenizer: ok")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--burnish", default=os.path.join(ROOT, "target", "debug", "burnish"))
    ap.add_argument("--llama-cpp", required=True)
    ap.add_argument("--only", nargs="*", default=["tokenizer", "quant", "export", "qwen"])
    a = ap.parse_args()
    lib = c_reference(a.llama_cpp)
    if "tokenizer" in a.only:
        from gguf_tokenizers import make_spm_tokenizer, make_tiny_tokenizer
        make_tiny_tokenizer()
        make_spm_tokenizer()
    if "quant" in a.only:
        make_quant(lib)
    if "export" in a.only:
        make_exports(a.burnish, lib)
    if "qwen" in a.only:
        check_qwen_preset(a.burnish)


if __name__ == "__main__":
    sys.exit(main())
