#!/usr/bin/env python3
"""PyTorch + PEFT at the shapes of `burnish bench`: LoRA r=16 on all seven projections,
synthetic tokens, forward + backward + AdamW, timed after warm-up. Prints one JSON line with
the median step time, tokens/s and peak RSS (CPU) or peak CUDA memory.

    ~/.cache/burnish-ref/venv/bin/python scripts/bench_peft.py --shape small [--device cpu] [--threads 2]

`--quant nf4` makes it QLoRA: the frozen base's decoder projections become bitsandbytes
`Linear4bit` (NF4, blocks of 64, one f32 absmax per block, no double quantization), the rest
(embeddings, norms, lm_head) and the LoRA factors stay in the model dtype. Needs
`pip install bitsandbytes` in the venv (it runs on the CPU).
"""
import argparse
import json
import resource
import statistics
import time

import torch
import transformers
import peft

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Weights per absmax. 64 is also bitsandbytes' own default for 4-bit (Params4bit's blocksize=None
# becomes 64; BitsAndBytesConfig's bnb_4bit_blocksize defaults to it); set it explicitly anyway.
NF4_BLOCKSIZE = 64

SHAPES = {
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    # google/gemma-3-270m (Gemma3ForCausalLM; the same as `burnish bench --shape gemma-3-270m`).
    "gemma-3-270m": dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=256, vocab_size=262144, tie_word_embeddings=True,
                         query_pre_attn_scalar=256, sliding_window=512, sliding_window_pattern=6,
                         rope_theta=1e6, rope_local_base_freq=1e4),
    # google/gemma-2-2b (Gemma2ForCausalLM; the same as `burnish bench --shape gemma-2-2b`):
    # soft-capped attention (50) and logits (30), so transformers runs eager attention.
    "gemma-2-2b": dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=256, vocab_size=256000, tie_word_embeddings=True,
                       query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0, rope_theta=1e4),
}


def quantize_nf4(model, device, compute_dtype):
    """Replaces every decoder projection in TARGET_MODULES by a bnb Linear4bit holding the same
    weights in NF4 (what `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")`
    does on loading, minus the checkpoint round trip). Embeddings and lm_head are left alone."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                if name not in TARGET_MODULES or not isinstance(lin, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                      compute_dtype=compute_dtype, compress_statistics=False,
                                      quant_type="nf4", device="meta")
                # Quantization happens when a Params4bit is moved to a device (from_prequantized
                # aside); `.to(device)` below does it, on the CPU as well.
                q.weight = bnb.nn.Params4bit(lin.weight.data.to("cpu"), requires_grad=False,
                                             blocksize=NF4_BLOCKSIZE, compress_statistics=False,
                                             quant_type="nf4")
                if lin.bias is not None:
                    q.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
                setattr(parent, name, q.to(device))
    # What transformers' bnb quantizer sets on a 4-bit load; PEFT reads it to wrap these layers in
    # its QLoRA layer (peft.tuners.lora.bnb.Linear4bit) instead of the generic lora.Linear.
    model.is_loaded_in_4bit = True
    return bnb.__version__


def reset_peak_rss():
    """The fp32 model is built whole before its projections are quantized, so the process's peak
    RSS would be the fp32 build, not QLoRA training. Linux resets the peak (VmHWM, which
    ru_maxrss reports) on `5` written to /proc/self/clear_refs. Returns whether that worked."""
    import gc
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="small", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--attn", default=None,
                    help="transformers attn_implementation (sdpa or eager; default sdpa, eager for Gemma 2, "
                         "whose soft cap SDPA would drop)")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="recompute each decoder layer in the backward pass (as burnish's flag)")
    ap.add_argument("--quant", default="none", choices=["none", "nf4"],
                    help="nf4: QLoRA, the frozen projections in bitsandbytes NF4 with blocks of 64")
    ap.add_argument("--dora", action="store_true", help="DoRA adapters (use_dora, as burnish's --dora)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.shape.startswith("gemma-3"):
        config_cls, model_cls, shape = transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, {}
    elif args.shape.startswith("gemma-2"):
        config_cls, model_cls, shape = transformers.Gemma2Config, transformers.Gemma2ForCausalLM, {}
    else:
        config_cls, model_cls, shape = transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(rope_theta=1e6)
    shape.update(SHAPES[args.shape])
    config = config_cls(rms_norm_eps=1e-6, max_position_embeddings=32768, **shape)
    if args.attn is None:
        args.attn = "eager" if args.shape.startswith("gemma-2") else "sdpa"
    config._attn_implementation = args.attn
    model = model_cls(config).to(dtype).to(args.device)
    bnb_version = None
    peak_rss_reset = None
    if args.quant == "nf4":
        bnb_version = quantize_nf4(model, args.device, dtype)
        peak_rss_reset = reset_peak_rss()
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=TARGET_MODULES,
        use_dora=args.dora))
    model.train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, eps=1e-8, weight_decay=0.0)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq_len), device=args.device)
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        if step >= args.warmup:
            times.append(dt)
    median = statistics.median(times)
    result = {
        "framework": f"pytorch {torch.__version__} + peft {peft.__version__}",
        "shape": args.shape, "device": args.device, "batch": args.batch, "seq_len": args.seq_len,
        "rank": args.rank, "threads": args.threads, "attn": args.attn,
        "quantize": f"nf4/{NF4_BLOCKSIZE}" if args.quant == "nf4" else "none",
        "gradient_checkpointing": args.gradient_checkpointing, "dora": args.dora,
        "median_step_s": median, "tokens_per_s": args.batch * args.seq_len / median,
        "step_times_s": times, "loss_last": loss_value,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if bnb_version is not None:
        result["framework"] += f" + bitsandbytes {bnb_version}"
        # false: peak_rss_bytes still includes the fp32 model built before quantization.
        result["peak_rss_reset_after_quantize"] = peak_rss_reset
    if cuda:
        result["peak_device_bytes"] = torch.cuda.max_memory_allocated()
        result["peak_device_reserved_bytes"] = torch.cuda.max_memory_reserved()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
