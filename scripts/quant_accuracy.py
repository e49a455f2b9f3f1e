#!/usr/bin/env python3
"""How accurately do block-wise 4-/8-bit weight quantizations reproduce LLM weights?

A self-contained numpy/torch reference (no bitsandbytes) that quantizes weight matrices and
dequantizes them again, comparing three schemes, all block-wise over the flattened row-major
weight (blocks of `block_size` consecutive elements, one f32 scale per block):

  int4-sym  Burn 0.21's Q4S, the scheme burnish's int4 uses: alpha = max|x| in the block,
            scale = 2*alpha/14 (= alpha/7), q = clamp(round(x * (1/scale)), -7, 7),
            dequant = q * scale. 15 levels, evenly spaced.
  int8-sym  Burn's Q8S: the same with range 254 (scale = alpha/127, q in -127..127).
  nf4       the QLoRA paper's NormalFloat4 (Dettmers et al. 2023) with block absmax scaling:
            x / absmax is snapped to the nearest of bitsandbytes' 16 NF4 code values,
            dequant = code * absmax. (QLoRA's "double quantization" of the absmax scales to
            8 bits is not modelled: every scheme here keeps f32 scales.)

Why: burnish's 4-bit base weights use Burn's symmetric int4 because Burn 0.21's QuantScheme
has only linear (scale-only) value types (Q8F/Q8S/Q4F/Q4S/Q2F/Q2S/E*M*); there is no
lookup-table value type, so NF4 cannot be expressed. This script quantifies what that costs,
so the docs can state how burnish's int4 compares with NF4 instead of guessing.

Rounding and arithmetic follow burn-flex 0.21 (src/ops/qtensor.rs, `quantize_dynamic`)
exactly: scale = validated_scale(2*alpha/range) in f32, where validated_scale replaces a
zero/subnormal/non-finite scale with f32::MIN_POSITIVE (so an all-zero block dequantizes to
exact zeros); q = (x * (1/scale)).round() with Rust's round-half-away-from-zero (numpy's
round is banker's rounding, so it is done explicitly in f64, where it is exact); dequant is
the f32 product q * scale. The CubeCL (GPU) kernel computes round(x / scale) instead; the
number of elements where that gives a different q is reported as well (it is only ever
one step, at near-ties; the CUDA codegen also rounds half to even, which matters for the exact
ties that bf16 weights produce).

The NF4 table is not just copied: it is re-derived with bitsandbytes' `create_normal_map`
construction (offset 0.9677083, 8 positive and 7 negative standard-normal quantiles plus an
exact zero, normalised to [-1, 1]; torch.distributions.Normal.icdf replaces scipy's
norm.ppf) and asserted equal to the table to 1e-6.

Weight sets:
  gaussian-qwen2.5-0.5b  N(0, 0.02) matrices with the Qwen2.5-0.5B linear shapes (one decoder
                         layer: q/o 896x896, k/v 128x896, gate/up 4864x896, down 896x4864),
                         numpy default_rng(0); aggregated, and per projection in the JSON.
  student-t4             Student-t with 4 degrees of freedom scaled to std 0.02, 4864x896
                         (heavy tails, like the outliers of real LLM weights), default_rng(1).
  fixture:<model>        every 2-D `*_proj.weight` in tests/fixtures/models/<model>/*.safetensors
                         (tiny random models; sharded checkpoints are included too).

Metrics per (weight set, scheme, block size in 32/64/128), over all elements of the set:
  rel_rms_error          ||x - deq||_2 / ||x||_2
  max_err_over_max_abs   max|x - deq| / max|x|
  mean_block_max_err     mean over blocks of max|x - deq| / block absmax (all-zero blocks: 0)
  bound_holds            int4/int8 only: every element has |x - deq| <= scale/2 * (1 + 1e-7)
                         + 1e-7 * block absmax (the analytic half-step bound, with slack for
                         the f32 rounding of x*(1/scale) and q*scale), plus
  max_err_over_half_scale  max over elements of |x - deq| / (scale/2) (1.0 = exactly the bound).
Tensors whose element count is not a multiple of the block size are skipped (counted).

It also writes tests/fixtures/golden/quant-roundtrip.json: a small deterministic 4x64 input
(seeded Gaussian * 0.02 with outliers 0.3 and -0.25 and an all-zero block of 32) with the
scales, integer codes and dequantized values of int4-sym and int8-sym at block sizes 32 and
64, for a Rust test that compares Burn's quantize/dequantize against them. The seed is the
first one (from 0) for which no element lies within 1e-4 (in units of the scale) of a rounding
tie, so the fixture does not depend on the rounding mode or on x*(1/scale) vs x/scale.

Run in the reference environment (../shared/reference/setup-torch-venv.sh); takes well under
a minute on two cores:

    ~/.cache/burnish-ref/venv/bin/python scripts/quant_accuracy.py \
        [--out tests/fixtures/golden/quant-accuracy.json] \
        [--roundtrip-out tests/fixtures/golden/quant-roundtrip.json]

It prints a markdown table (relative RMS error at each block size, the other metrics at block
size 64) and writes the full results as JSON.
"""
import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import torch
from safetensors import safe_open

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "fixtures", "golden")
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
BLOCK_SIZES = [32, 64, 128]
SCHEMES = ["int4-sym", "nf4", "int8-sym"]
F32 = np.float32
F32_MIN_POSITIVE = np.finfo(F32).tiny  # Rust's f32::MIN_POSITIVE (smallest normal)
BOUND_SLACK = 1e-7

# bitsandbytes' NF4 code book (bitsandbytes/functional.py, get_4bit_type("nf4")).
NF4_TABLE = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]
NF4_OFFSET = 0.9677083

# Qwen2.5-0.5B: hidden 896, 14 query heads / 2 KV heads of dim 64, intermediate 4864.
QWEN05_SHAPES = [
    ("q_proj", (896, 896)),
    ("k_proj", (128, 896)),
    ("v_proj", (128, 896)),
    ("o_proj", (896, 896)),
    ("gate_proj", (4864, 896)),
    ("up_proj", (4864, 896)),
    ("down_proj", (896, 4864)),
]

torch.set_num_threads(2)


# ----------------------------------------------------------------------------------------------
# NF4 table derivation
# ----------------------------------------------------------------------------------------------


def derive_nf4(offset=NF4_OFFSET):
    """bitsandbytes' create_normal_map(offset, use_extra_value=True), scipy-free.

    bitsandbytes: v1 = norm.ppf(linspace(offset, 0.5, 9)[:-1]) (8 positive values),
    v3 = -norm.ppf(linspace(offset, 0.5, 8)[:-1]) (7 negative values), plus zeros; the
    float32 tensor is sorted and divided by its max. The linspace is float32 (torch's default)
    and the quantiles are evaluated in float64, as scipy does.
    """
    normal = torch.distributions.Normal(
        torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    )
    p_pos = torch.linspace(offset, 0.5, 9)[:-1].to(torch.float64)
    p_neg = torch.linspace(offset, 0.5, 8)[:-1].to(torch.float64)
    v1 = normal.icdf(p_pos)
    v3 = -normal.icdf(p_neg)
    values = torch.cat([v1, torch.zeros(1, dtype=torch.float64), v3]).to(torch.float32)
    values = values.sort().values
    values = values / values.max()
    return values.numpy().astype(np.float64)


def check_nf4():
    derived = derive_nf4()
    table = np.array(NF4_TABLE, dtype=np.float64)
    diff = float(np.max(np.abs(derived - table)))
    assert diff <= 1e-6, f"derived NF4 table differs from bitsandbytes' by {diff}"
    return derived, diff


# ----------------------------------------------------------------------------------------------
# Quantizers (input: flat float32 array whose length is a multiple of block_size)
# ----------------------------------------------------------------------------------------------


def round_half_away(v):
    """Rust's f32::round: half away from zero. Evaluated in f64, where |v| + 0.5 is exact."""
    v = v.astype(np.float64)
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def validated_scale(scale):
    """burn-flex's validated_scale: keep normal scales, else f32::MIN_POSITIVE."""
    ok = np.isfinite(scale) & (np.abs(scale) >= F32_MIN_POSITIVE)
    return np.where(ok, scale, F32_MIN_POSITIVE).astype(F32)


def quant_int(x, block_size, qmax):
    """Burn's Q4S (qmax=7) / Q8S (qmax=127), block level. Returns (deq, q, scales, absmax)."""
    blocks = x.reshape(-1, block_size)
    alpha = np.max(np.abs(blocks), axis=1)  # f32
    # Burn: 2.0 * alpha / (b - a); 2*alpha is exact, so this equals alpha/qmax correctly rounded.
    scale = validated_scale((F32(2.0) * alpha) / F32(2 * qmax))
    inv = (F32(1.0) / scale).astype(F32)
    v = (blocks * inv[:, None]).astype(F32)  # f32 product, as in Rust
    q = np.clip(round_half_away(v), -qmax, qmax).astype(np.int32)  # int: no -0.0, as Rust's `as i8`
    deq = (q.astype(F32) * scale[:, None]).astype(F32)
    return deq.reshape(-1), q.reshape(-1), scale, alpha


def int_q_div(x, block_size, qmax, scale):
    """CubeCL's variant (cubek-quant's quantize_symmetric): round(x / scale), where the CUDA
    codegen maps Round to rint, i.e. round half to even (np.rint, exact on f32)."""
    blocks = x.reshape(-1, block_size)
    v = (blocks / scale[:, None]).astype(F32)
    return np.clip(np.rint(v), -qmax, qmax).astype(np.int32).reshape(-1)


NF4_CODES = np.array(NF4_TABLE, dtype=F32)
# Decision thresholds: midpoints between neighbouring codes; a value exactly on a threshold
# takes the lower code, as bitsandbytes' dQuantizeNF4 (`x > threshold` ? upper : lower) does.
NF4_MIDS = ((NF4_CODES[:-1].astype(np.float64) + NF4_CODES[1:]) / 2).astype(F32)


def quant_nf4(x, block_size):
    """NF4 with block absmax scaling, as bitsandbytes' blockwise kernel: x * (1/absmax)."""
    blocks = x.reshape(-1, block_size)
    absmax = np.max(np.abs(blocks), axis=1)
    zero = absmax == 0
    inv = np.where(zero, F32(0.0), F32(1.0) / np.where(zero, F32(1.0), absmax)).astype(F32)
    normed = (blocks * inv[:, None]).astype(F32)
    idx = np.searchsorted(NF4_MIDS, normed, side="left")
    deq = (NF4_CODES[idx] * absmax[:, None]).astype(F32)
    return deq.reshape(-1), idx.reshape(-1), absmax


# ----------------------------------------------------------------------------------------------
# Metrics, accumulated over the tensors of a weight set
# ----------------------------------------------------------------------------------------------


class Acc:
    def __init__(self, int_scheme):
        self.int_scheme = int_scheme
        self.sq_err = 0.0
        self.sq_x = 0.0
        self.max_err = 0.0
        self.max_x = 0.0
        self.block_ratio_sum = 0.0
        self.n_blocks = 0
        self.n_zero_blocks = 0
        self.n_elements = 0
        self.n_tensors = 0
        self.n_skipped = 0
        self.bound_holds = True
        self.max_err_over_half_scale = 0.0
        self.div_mismatch = 0

    def add(self, x, block_size, scheme):
        if x.size % block_size:
            self.n_skipped += 1
            return
        if scheme == "nf4":
            deq, _, absmax = quant_nf4(x, block_size)
            scale = None
        else:
            qmax = 7 if scheme == "int4-sym" else 127
            deq, q, scale, absmax = quant_int(x, block_size, qmax)
            self.div_mismatch += int(np.count_nonzero(q != int_q_div(x, block_size, qmax, scale)))
        x64 = x.astype(np.float64)
        err = np.abs(x64 - deq.astype(np.float64)).reshape(-1, block_size)
        self.sq_err += float(np.sum(err * err))
        self.sq_x += float(np.sum(x64 * x64))
        self.max_err = max(self.max_err, float(err.max()))
        self.max_x = max(self.max_x, float(np.abs(x64).max()))
        block_err = err.max(axis=1)
        am = absmax.astype(np.float64)
        zero = am == 0
        self.block_ratio_sum += float(np.sum(np.where(zero, 0.0, block_err / np.where(zero, 1.0, am))))
        self.n_blocks += block_err.size
        self.n_zero_blocks += int(zero.sum())
        self.n_elements += x.size
        self.n_tensors += 1
        if scale is not None:
            half = scale.astype(np.float64)[:, None] / 2
            limit = half * (1 + BOUND_SLACK) + BOUND_SLACK * am[:, None]
            self.bound_holds &= bool(np.all(err <= limit))
            nz = ~zero
            if nz.any():
                ratio = err[nz] / half[nz]
                self.max_err_over_half_scale = max(self.max_err_over_half_scale, float(ratio.max()))

    def result(self):
        r = {
            "rel_rms_error": sig(np.sqrt(self.sq_err / self.sq_x)) if self.sq_x else None,
            "max_err_over_max_abs": sig(self.max_err / self.max_x) if self.max_x else None,
            "mean_block_max_err": sig(self.block_ratio_sum / self.n_blocks) if self.n_blocks else None,
            "n_elements": self.n_elements,
            "n_tensors": self.n_tensors,
        }
        if self.n_skipped:
            r["n_skipped"] = self.n_skipped
        if self.n_zero_blocks:
            r["n_zero_blocks"] = self.n_zero_blocks
        if self.int_scheme:
            r["bound_holds"] = self.bound_holds
            r["max_err_over_half_scale"] = sig(self.max_err_over_half_scale, 8)
            r["q_mismatch_x_div_scale"] = self.div_mismatch
        return r


def sig(v, digits=5):
    return float(f"{float(v):.{digits}g}")


def stats(tensors):
    """Shape of the distribution: std, max|x|/std and excess kurtosis over all elements."""
    x = np.concatenate([t.reshape(-1).astype(np.float64) for _, t in tensors])
    std = x.std()
    kurt = np.mean(((x - x.mean()) / std) ** 4) - 3
    return {"std": sig(std), "max_abs_over_std": sig(np.abs(x).max() / std), "excess_kurtosis": sig(kurt, 4)}


def measure(name, description, tensors, extra=None):
    results = []
    for scheme in SCHEMES:
        for bs in BLOCK_SIZES:
            acc = Acc(scheme != "nf4")
            for _, t in tensors:
                acc.add(np.ascontiguousarray(t, dtype=F32).reshape(-1), bs, scheme)
            results.append({"weight_set": name, "scheme": scheme, "block_size": bs, **acc.result()})
    info = {"name": name, "description": description, **stats(tensors)}
    info["tensors"] = sorted({f"{n.split('.')[-2] if '.' in n else n} {list(t.shape)}" for n, t in tensors})
    if extra:
        info.update(extra)
    return info, results


# ----------------------------------------------------------------------------------------------
# Weight sets
# ----------------------------------------------------------------------------------------------


def gaussian_set():
    rng = np.random.default_rng(0)
    return [(n, rng.standard_normal(shape, dtype=F32) * F32(0.02)) for n, shape in QWEN05_SHAPES]


def student_t_set():
    rng = np.random.default_rng(1)
    df = 4
    t = rng.standard_t(df, size=(4864, 896)) * (0.02 / np.sqrt(df / (df - 2)))
    return [("mlp_4864x896", t.astype(F32))]


def fixture_sets():
    sets = []
    for model_dir in sorted(glob.glob(os.path.join(MODELS, "*"))):
        files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
        tensors = []
        for f in files:
            with safe_open(f, framework="pt") as st:
                for k in sorted(st.keys()):
                    if not k.endswith("_proj.weight"):
                        continue
                    t = st.get_tensor(k)
                    if t.dim() != 2:
                        continue
                    tensors.append((k, t.to(torch.float32).numpy()))
        if tensors:
            rel = [os.path.relpath(f, ROOT) for f in files]
            sets.append((os.path.basename(model_dir), rel, tensors))
    return sets


# ----------------------------------------------------------------------------------------------
# Round-trip fixture for the Rust test
# ----------------------------------------------------------------------------------------------

RT_SHAPE = (4, 64)
RT_OUTLIERS = [((0, 5), 0.3), ((2, 40), -0.25)]
RT_ZERO = (slice(1, 2), slice(32, 64))  # elements 96..128: block 3 at block size 32
RT_MARGIN = 1e-4


def roundtrip_input(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(RT_SHAPE) * 0.02
    for (r, c), v in RT_OUTLIERS:
        x[r, c] = v
    x[RT_ZERO] = 0.0
    return x.astype(F32)


def tie_margin(x, bs, qmax):
    """Smallest distance (in units of the scale) of x/scale or x*(1/scale) from a .5 tie."""
    _, _, scale, _ = quant_int(x, bs, qmax)
    blocks = x.reshape(-1, bs).astype(np.float64)
    m = np.inf
    for v in (blocks * (F32(1.0) / scale).astype(np.float64)[:, None], blocks / scale[:, None]):
        frac = np.abs(v) - np.floor(np.abs(v))
        inside = np.abs(v) < qmax  # values clamped at +-qmax cannot flip
        if inside.any():
            m = min(m, float(np.min(np.abs(frac - 0.5)[inside])))
    return m


def roundtrip_fixture():
    configs = [("int4-sym", 7, 32), ("int4-sym", 7, 64), ("int8-sym", 127, 32), ("int8-sym", 127, 64)]
    for seed in range(1000):
        x = roundtrip_input(seed).reshape(-1)
        margin = min(tie_margin(x, bs, qmax) for _, qmax, bs in configs)
        if margin >= RT_MARGIN:
            break
    else:
        sys.exit("no seed gives a tie-free round-trip input")

    def f32s(a):
        # float(np.float32) is the exact f32 value; its repr parses back to the same f32.
        return [float(v) for v in np.asarray(a, dtype=F32).reshape(-1)]

    cases = []
    for scheme, qmax, bs in configs:
        deq, q, scale, _ = quant_int(x, bs, qmax)
        assert np.array_equal(q, int_q_div(x, bs, qmax, scale))
        cases.append({
            "scheme": scheme,
            "burn_quant_value": "Q4S" if qmax == 7 else "Q8S",
            "block_size": bs,
            "scales": f32s(scale),
            "q": [int(v) for v in q],
            "dequantized": f32s(deq),
        })
    return {
        "description": (
            "Block-wise symmetric quantize -> dequantize of a 4x64 f32 tensor (flattened row-major) "
            "as Burn 0.21 does it (burn-flex quantize_dynamic): alpha = block max|x|, "
            "scale = validated_scale(2*alpha/range) (zero/subnormal -> f32::MIN_POSITIVE), "
            "q = clamp(round_half_away(x * (1/scale)), -qmax, qmax), dequant = q * scale (f32). "
            "Compare within 1e-6 * block scale. Generated by scripts/quant_accuracy.py."
        ),
        "input_recipe": (
            f"numpy default_rng({seed}).standard_normal((4, 64)) * 0.02 (f64), then x[0,5] = 0.3, "
            "x[2,40] = -0.25, x[1,32:64] = 0 (elements 96..128, an all-zero block at block size 32), "
            "cast to f32"
        ),
        "seed": seed,
        "min_tie_margin": sig(margin, 4),
        "tie_margin_note": (
            "smallest distance, in units of the block scale, of any unclamped x*(1/scale) or x/scale "
            f"from a .5 rounding tie over all four cases; seed = first from 0 with margin >= {RT_MARGIN}, "
            "so the result does not depend on the rounding mode or on x*(1/scale) vs x/scale"
        ),
        "shape": list(RT_SHAPE),
        "input": f32s(x),
        "cases": cases,
    }


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def markdown(results, sets):
    by = {(r["weight_set"], r["scheme"], r["block_size"]): r for r in results}
    lines = [
        "| weight set | scheme | rel RMS err bs32 | bs64 | bs128 | max err / max abs(x) (bs64) "
        "| mean block max err / absmax (bs64) | half-step bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"
    for s in sets:
        for scheme in SCHEMES:
            rs = [by[(s["name"], scheme, bs)] for bs in BLOCK_SIZES]
            r64 = by[(s["name"], scheme, 64)]
            bound = "n/a" if scheme == "nf4" else ("holds" if all(r["bound_holds"] for r in rs) else "VIOLATED")
            lines.append(
                f"| {s['name']} | {scheme} | " + " | ".join(pct(r["rel_rms_error"]) for r in rs)
                + f" | {pct(r64['max_err_over_max_abs'])} | {pct(r64['mean_block_max_err'])} | {bound} |"
            )
    return "\n".join(lines)


def write_json(path, obj):
    """Indented JSON with lists of scalars and flat records each kept on one line."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    inline = []

    def flat(v):
        return not isinstance(v, (list, dict))

    def walk(o):
        if isinstance(o, dict):
            if all(flat(v) for v in o.values()) and len(o) > 1:
                inline.append(json.dumps(o))
                return f"@@{len(inline) - 1}@@"
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            if all(flat(v) for v in o):
                inline.append(json.dumps(o))
                return f"@@{len(inline) - 1}@@"
            return [walk(v) for v in o]
        return o

    text = json.dumps(walk(obj), indent=1)
    for i, s in enumerate(inline):
        text = text.replace(f'"@@{i}@@"', s, 1)
    assert json.loads(text) == obj
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text + "\n")
    return len(text) + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(GOLDEN, "quant-accuracy.json"))
    ap.add_argument("--roundtrip-out", default=os.path.join(GOLDEN, "quant-roundtrip.json"))
    args = ap.parse_args()
    t0 = time.time()

    nf4_derived, nf4_diff = check_nf4()

    sets, results, per_proj = [], [], []
    gauss = gaussian_set()
    info, res = measure(
        "gaussian-qwen2.5-0.5b",
        "N(0, 0.02), one Qwen2.5-0.5B decoder layer's 7 linear shapes, default_rng(0) standard_normal(float32) * 0.02",
        gauss,
    )
    sets.append(info)
    results += res
    for n, t in gauss:
        _, res = measure(f"gaussian-qwen2.5-0.5b/{n}", "", [(n, t)])
        per_proj += [{k: v for k, v in r.items() if k not in ("n_tensors",)} for r in res]
    del gauss

    info, res = measure(
        "student-t4",
        "Student-t, 4 degrees of freedom, scaled to std 0.02, 4864x896, default_rng(1)",
        student_t_set(),
    )
    sets.append(info)
    results += res

    for model, files, tensors in fixture_sets():
        info, res = measure(
            f"fixture:{model}",
            f"2-D *_proj.weight tensors of a tiny random test model ({len(tensors)} tensors)",
            tensors,
            {"files": files},
        )
        sets.append(info)
        results += res

    out = {
        "description": (
            "Reconstruction accuracy of block-wise weight quantization: Burn 0.21's symmetric int4 (Q4S, "
            "what burnish's int4 uses) and int8 (Q8S) versus QLoRA's NF4 with block absmax scaling. "
            "Metrics are over all elements of a weight set. Generated by scripts/quant_accuracy.py."
        ),
        "schemes": {
            "int4-sym": "Burn Q4S: scale = absmax/7, q = clamp(round_half_away(x*(1/scale)), -7, 7), 4 bits + 32/block_size bits/weight",
            "int8-sym": "Burn Q8S: scale = absmax/127, q in -127..127, 8 bits + 32/block_size bits/weight",
            "nf4": "QLoRA NormalFloat4 (bitsandbytes code book), nearest code of x/absmax, f32 absmax per block (no double quantization), 4 bits + 32/block_size bits/weight",
        },
        "metrics": {
            "rel_rms_error": "||x - deq||_2 / ||x||_2",
            "max_err_over_max_abs": "max|x - deq| / max|x|",
            "mean_block_max_err": "mean over blocks of max|x - deq| / block absmax (all-zero blocks count as 0)",
            "bound_holds": f"int only: all |x - deq| <= scale/2 * (1 + {BOUND_SLACK}) + {BOUND_SLACK} * block absmax",
            "max_err_over_half_scale": "int only: max |x - deq| / (scale/2) over non-zero blocks",
            "q_mismatch_x_div_scale": "int only: elements whose q differs if computed as rint(x / scale) (CubeCL kernel on CUDA: division, round half to even) instead of round_half_away(x * (1/scale)) (burn-flex)",
        },
        "nf4_code": NF4_TABLE,
        "nf4_derivation": {
            "method": (
                "bitsandbytes create_normal_map(offset=0.9677083, use_extra_value=True): "
                "icdf(linspace(offset, 0.5, 9)[:-1]) and -icdf(linspace(offset, 0.5, 8)[:-1]) with "
                "torch.distributions.Normal(0, 1) in float64, plus 0, cast to float32, sorted, divided by the max"
            ),
            "derived": [sig(v, 9) for v in nf4_derived],
            "max_abs_diff_to_table": nf4_diff,
        },
        "block_sizes": BLOCK_SIZES,
        "weight_sets": sets,
        "results": results,
        "gaussian_per_projection": per_proj,
    }
    size = write_json(args.out, out)
    rt_size = write_json(args.roundtrip_out, roundtrip_fixture())

    print(markdown(results, sets))
    print()
    print(f"NF4 table re-derived from the normal quantiles: max |diff| = {nf4_diff:.2e}")
    print(f"wrote {os.path.relpath(args.out, ROOT)} ({size} bytes), "
          f"{os.path.relpath(args.roundtrip_out, ROOT)} ({rt_size} bytes) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
