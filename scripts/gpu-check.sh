#!/usr/bin/env bash
# One command for one GPU window: correctness of burnish on CUDA against the committed goldens,
# and LoRA training throughput and peak device memory side by side with PyTorch + PEFT (SDPA
# attention, bf16 base, the same shapes and steps), ending with one JSON summary. Made to fit
# in about 7 minutes of wall time, compilation included: CubeCL's kernel cache is kept on disk
# for every process (cubecl.toml below), the headline benchmark runs first, and each phase is
# skipped when the time left would not cover it.
#
# Build (on a machine without a GPU; ~17 min from scratch on 2 cores):
#   CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda
#   strip -o .device/burnish-cuda target/release/burnish        # ~56 MB
#   xz -6 -f .device/burnish-cuda                                # ~11 MB: .device/burnish-cuda.xz
# (.device/ is git-ignored; pass it to the device tool with `carry: [".device"]`.)
# On the GPU machine (PyTorch, transformers and PEFT installed; no network), repository root:
#   scripts/gpu-check.sh .device/burnish-cuda.xz
# Env: OUT (default /tmp/gpu-check), BUDGET seconds (default 420), PYTHON (default python3),
# BIGSEQ (the 7B 4-bit run's sequence length, default 8192: issue 16 asks for it),
# DRY_RUN=1 runs every phase on the CPU at the small shape (checks the script without a GPU).
# The burnish rows run burnish's CubeCL kernels; one more row runs the same binary on Burn's
# composed ops (BURNISH_GPU_KERNELS=composed) to show what the kernels buy.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-.device/burnish-cuda.xz}
OUT=${OUT:-/tmp/gpu-check}
BUDGET=${BUDGET:-420}
PY=${PYTHON:-python3}
START=$(date +%s)
mkdir -p "$OUT"
: > "$OUT/bench.jsonl"
: > "$OUT/peaks.jsonl"
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/log.txt" >&2; }
# Whether at least $1 seconds of the budget are left.
left() { [ $(( BUDGET - ($(date +%s) - START) )) -ge "$1" ]; }

case "$BIN" in
*.xz) xz -dc "$BIN" > "$OUT/burnish" && chmod +x "$OUT/burnish" && BIN="$OUT/burnish" ;;
esac
if [ "${DRY_RUN:-0}" = 1 ]; then
  DEVICE=cpu; SMALL=small; BIGSHAPE=small; SEQS="128 256"; BIGSEQ=256
else
  DEVICE=cuda; SMALL=qwen2.5-0.5b; BIGSHAPE=qwen2.5-7b; SEQS="512 2048 8192"; BIGSEQ=${BIGSEQ:-8192}
  export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
  export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-balanced}
  # Compiled kernels and autotune results on disk, shared by every process of this run
  # (CubeCL reads cubecl.toml from the working directory; "target" = ./target).
  [ -f cubecl.toml ] || printf '[compilation]\ncache = "target"\n\n[autotune]\ncache = "target"\n' > cubecl.toml
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU (dry run)"; } > "$OUT/gpu.txt"
"$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" >> "$OUT/gpu.txt" 2>&1
log "$(tr '\n' ' ' < "$OUT/gpu.txt")"

# Run a command, recording its peak device memory (nvidia-smi every 100 ms, minus the idle
# baseline) in peaks.jsonl; on the CPU the benchmarks report their own peak RSS.
peak() {
  local name=$1; shift
  if ! command -v nvidia-smi > /dev/null; then "$@"; return; fi
  local base; base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/$name.mem" 2>/dev/null &
  local smi=$!
  "$@"; local rc=$?
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  local max; max=$(sort -n "$OUT/$name.mem" | tail -1)
  echo "{\"run\": \"$name\", \"rc\": $rc, \"peak_mib\": $(( ${max:-0} - base ))}" >> "$OUT/peaks.jsonl"
  return $rc
}
bench_pair() { # shape seq [extra burnish flags] -- [extra python flags]
  local shape=$1 seq=$2; shift 2
  local ours=() theirs=() side=ours
  for a in "$@"; do
    if [ "$a" = -- ]; then side=theirs; elif [ $side = ours ]; then ours+=("$a"); else theirs+=("$a"); fi
  done
  peak "burnish-$shape-$seq" timeout 400 "$BIN" -q bench --device $DEVICE --shape "$shape" --seq-len "$seq" \
    --steps 3 --warmup 1 --json "${ours[@]}" >> "$OUT/bench.jsonl" 2>> "$OUT/log.txt" \
    || log "burnish $shape $seq failed"
  peak "pytorch-$shape-$seq" timeout 400 "$PY" scripts/bench_peft.py --device $DEVICE --shape "$shape" --seq-len "$seq" \
    --steps 3 --warmup 1 "${theirs[@]}" >> "$OUT/bench.jsonl" 2>> "$OUT/log.txt" \
    || log "pytorch $shape $seq failed"
}

# 1. The headline: the 0.5B shape at 512 tokens (this process also fills the kernel cache).
log "bench $SMALL ${SEQS%% *}"
bench_pair $SMALL "${SEQS%% *}"

# 2. Correctness against goldens nobody here wrote: eval losses vs transformers (f32, bf16),
#    and PEFT training parity, LoRA and DoRA (gemma3: Gemma 3's norms, GeGLU and per-layer RoPE
#    on the device).
log "correctness"
for v in qwen2-tied llama-gqa gemma3; do
  for dt in f32 bf16; do
    left 60 || break 2
    timeout 120 "$BIN" -q eval --model tests/fixtures/models/$v --data tests/fixtures/golden/$v.eval.jsonl \
      --device $DEVICE --dtype $dt --json > "$OUT/eval-$v-$dt.json" 2>> "$OUT/log.txt"
  done
done
cat > "$OUT/parity.yaml" <<YAML
model: {base: tests/fixtures/models/qwen2-tied, dtype: f32}
lora: {r: 8, alpha: 16, dropout: 0.0, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj], init_from: tests/fixtures/lora/init/adapter}
data: {train: [{path: tests/fixtures/golden/train-parity-1.jsonl, format: pretokenized}], validation: null, seq_len: 64, packing: false, shuffle: false}
train: {max_steps: 5, micro_batch_size: 2, grad_accum: 1, optimizer: {name: adamw, lr: 1.0e-3, weight_decay: 0.0}, scheduler: {name: constant, warmup_steps: 0}, max_grad_norm: null, device: $DEVICE, eval_every: 0, save_every: 0}
output: {dir: $OUT/parity}
logging: {every: 1, tensorboard: false}
YAML
left 60 && timeout 120 "$BIN" -q train "$OUT/parity.yaml" --overwrite >> "$OUT/log.txt" 2>&1
# DoRA (PEFT's case 5: magnitudes from the base's row norms, LoRA+ ratio 4, weight decay 0.01).
sed -e 's/dropout: 0.0,/dropout: 0.0, dora: true,/' \
    -e 's/weight_decay: 0.0}/weight_decay: 0.01, loraplus_lr_ratio: 4}/' \
    -e "s#dir: $OUT/parity#dir: $OUT/parity-dora#" "$OUT/parity.yaml" > "$OUT/parity-dora.yaml"
left 60 && timeout 120 "$BIN" -q train "$OUT/parity-dora.yaml" --overwrite >> "$OUT/log.txt" 2>&1

# 3. Longer sequences, then the 7B shape with a 4-bit base.
for seq in ${SEQS#* }; do
  left 90 || break
  log "bench $SMALL $seq"
  bench_pair $SMALL "$seq"
done
if left 120; then
  log "bench $BIGSHAPE $BIGSEQ, 4-bit base"
  extra=()
  "$PY" -c "import bitsandbytes" 2>/dev/null && extra=(--quant nf4)
  bench_pair $BIGSHAPE $BIGSEQ --quant-bits 4 --gradient-checkpointing -- "${extra[@]}" --gradient-checkpointing
fi

# 4. What burnish's CubeCL kernels buy: the 0.5B shape at the second length again, on Burn's
#    composed ops (BURNISH_GPU_KERNELS=composed), in the same sitting.
: > "$OUT/composed.jsonl"
CSEQ=$(echo $SEQS | cut -d' ' -f2)
if left 90; then
  log "bench $SMALL $CSEQ, composed ops"
  peak "composed-$SMALL-$CSEQ" env BURNISH_GPU_KERNELS=composed timeout 300 "$BIN" -q bench --device $DEVICE \
    --shape "$SMALL" --seq-len "$CSEQ" --steps 3 --warmup 1 --json >> "$OUT/composed.jsonl" 2>> "$OUT/log.txt" \
    || log "burnish composed $SMALL $CSEQ failed"
fi

# 5. One summary.
"$PY" - "$OUT" "$BUDGET" "$START" <<'PY'
import json, os, sys, time
out, budget, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
summary = {"gpu": open(f"{out}/gpu.txt").read().strip(), "seconds": int(time.time()) - start, "budget_s": budget}
evals = []
for v in ("qwen2-tied", "llama-gqa", "gemma3"):
    want = json.load(open(f"tests/fixtures/golden/{v}.json"))["eval"]["loss"]
    for dt, tol in (("f32", 1e-3), ("bf16", 5e-2)):
        try:
            got = json.load(open(f"{out}/eval-{v}-{dt}.json"))["loss"]
            evals.append({"model": v, "dtype": dt, "transformers": want, "burnish": got,
                          "rel_diff": abs(got - want) / want, "tolerance": tol, "ok": abs(got - want) / want <= tol})
        except Exception as e:
            evals.append({"model": v, "dtype": dt, "error": str(e)})
summary["eval_parity"] = evals
for key, case, run in (("peft_training_parity", "case1", "parity"),
                       ("peft_dora_training_parity", "case5", "parity-dora")):
    try:
        want = json.load(open("tests/fixtures/golden/train-parity.json"))[case]["losses"]
        got = [json.loads(l)["loss"] for l in open(f"{out}/{run}/metrics.jsonl")]
        rel = max(abs(a - b) / b for a, b in zip(got, want))
        summary[key] = {"losses": got, "peft": want, "max_rel_diff": rel, "tolerance": 1e-3, "ok": rel <= 1e-3 and len(got) == len(want)}
    except Exception as e:
        summary[key] = {"error": str(e)}
peaks = {}
for l in open(f"{out}/peaks.jsonl"):
    r = json.loads(l); peaks[r["run"]] = r["peak_mib"]
# LoRA training costs ~6 x (frozen parameters) FLOP per token, plus attention (QK^T and PV
# over the causal half, forward and backward: 6 x layers x seq x heads x head_dim).
SHAPES = {"small": (256, 1024, 4, 4, 2, 32000), "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936),
          "qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064)}
def flops_per_token(shape, seq):
    h, i, layers, nh, nkv, vocab = SHAPES[shape]
    hd = h // nh
    params = layers * (h * nh * hd + 2 * h * nkv * hd + nh * hd * h + 3 * h * i) + vocab * h
    return 6 * params + 6 * layers * seq * nh * hd
rows = []
lines = [(l, None) for l in open(f"{out}/bench.jsonl")] + [(l, "burnish-composed") for l in open(f"{out}/composed.jsonl")]
for l, label in lines:
    try:
        r = json.loads(l)
    except ValueError:
        continue
    who = label or ("burnish" if "median_step_s" in r and "framework" not in r else r.get("framework", "pytorch"))
    shape, seq = r.get("shape"), r.get("seq_len")
    tps = r.get("tokens_per_s")
    row = {"who": who, "shape": shape, "seq_len": seq, "tokens_per_s": tps,
           "peak_mib": peaks.get(f"{ {'burnish': 'burnish', 'burnish-composed': 'composed'}.get(who, 'pytorch')}-{shape}-{seq}",
                                 (r.get("peak_rss_bytes") or r.get("peak_bytes") or 0) / 2**20),
           "quantize": r.get("quantize")}
    if who.startswith("burnish") and tps and shape in SHAPES:
        row["mfu_vs_790_tflops"] = tps * flops_per_token(shape, seq) / 790e12
    rows.append(row)
summary["benchmarks"] = rows
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(summary, indent=1))
PY
log "done: $OUT/summary.json"
