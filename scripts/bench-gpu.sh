#!/usr/bin/env bash
# On an NVIDIA GPU machine (PyTorch, transformers and PEFT installed, no network), from the
# repository root, with a burnish built elsewhere with `--features cuda`:
#
#   BURNISH=path/to/burnish OUT=results/ scripts/bench-gpu.sh
#
# 1. checks burnish on CUDA against the committed goldens (eval losses of the tiny models,
#    PEFT training parity, greedy generation CUDA vs CPU, the demo);
# 2. benchmarks LoRA training steps (Qwen2.5-0.5B shape at 512 and 2048 tokens, bf16 base)
#    side by side with PyTorch + PEFT, peak device memory sampled with nvidia-smi.
# Everything lands in $OUT as JSON lines and logs.
set -uo pipefail
cd "$(dirname "$0")/.."
BURNISH=${BURNISH:-target/release/burnish}
OUT=${OUT:-/tmp/burnish-gpu}
PY=${PYTHON:-python3}
STEPS=${STEPS:-10}
BUDGET=${BUDGET:-3600}
START=$(date +%s)
mkdir -p "$OUT"
# Skip a phase when less than $1 seconds of the budget are left.
left() { [ $(( BUDGET - ($(date +%s) - START) )) -ge "$1" ]; }
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-balanced}
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
"$PY" -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

# Peak GPU memory of one command: nvidia-smi sampled every 100 ms, minus the idle baseline.
peak() {
  local name=$1; shift
  local base; base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/$name.mem" 2>/dev/null &
  local smi=$!
  "$@"
  local rc=$?
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  local max; max=$(sort -n "$OUT/$name.mem" | tail -1)
  echo "{\"run\": \"$name\", \"rc\": $rc, \"peak_mib\": $((max - base))}" >> "$OUT/peaks.jsonl"
  return $rc
}

VARIANTS=${VARIANTS:-qwen2-tied qwen2-untied qwen2-mha llama-gqa mistral qwen3}
log "correctness: eval of the tiny models on CUDA (f32 and bf16) vs transformers"
for v in $VARIANTS; do
  timeout 300 "$BURNISH" -q eval --model tests/fixtures/models/$v --data tests/fixtures/golden/$v.eval.jsonl \
    --device cuda --dtype f32 --json > "$OUT/eval-$v.json" 2>> "$OUT/log.txt"
  timeout 300 "$BURNISH" -q eval --model tests/fixtures/models/$v --data tests/fixtures/golden/$v.eval.jsonl \
    --device cuda --dtype bf16 --json > "$OUT/eval-bf16-$v.json" 2>> "$OUT/log.txt"
done
"$PY" - "$OUT" <<'PY' | tee -a "$OUT/log.txt"
import json, sys, math
out = sys.argv[1]
rows = []
import os
for v in os.environ.get("VARIANTS", "qwen2-tied qwen2-untied qwen2-mha llama-gqa mistral qwen3").split():
    want = json.load(open(f"tests/fixtures/golden/{v}.json"))["eval"]["loss"]
    try:
        got = json.load(open(f"{out}/eval-{v}.json"))["loss"]
        bf = json.load(open(f"{out}/eval-bf16-{v}.json"))["loss"]
    except Exception as e:
        rows.append({"variant": v, "error": str(e)}); continue
    rows.append({"variant": v, "transformers": want, "cuda_f32": got, "abs_diff_f32": abs(got - want),
                 "cuda_bf16": bf, "abs_diff_bf16": abs(bf - want)})
json.dump(rows, open(f"{out}/eval-check.json", "w"), indent=1)
for r in rows: print(r)
PY

log "correctness: PEFT training parity (case 1) on CUDA, f32"
cat > "$OUT/parity.yaml" <<YAML
model: {base: tests/fixtures/models/qwen2-tied, dtype: f32}
lora: {r: 8, alpha: 16, dropout: 0.0, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj], init_from: tests/fixtures/lora/init/adapter}
data: {train: [{path: tests/fixtures/golden/train-parity-1.jsonl, format: pretokenized}], validation: null, seq_len: 64, packing: false, shuffle: false}
train: {max_steps: 5, micro_batch_size: 2, grad_accum: 1, optimizer: {name: adamw, lr: 1.0e-3, weight_decay: 0.0}, scheduler: {name: constant, warmup_steps: 0}, max_grad_norm: null, device: cuda, eval_every: 0, save_every: 0}
output: {dir: $OUT/parity}
logging: {every: 1, tensorboard: false}
YAML
timeout 300 "$BURNISH" train "$OUT/parity.yaml" --overwrite >> "$OUT/log.txt" 2>&1
"$PY" - "$OUT" <<'PY' | tee -a "$OUT/log.txt"
import json, sys
out = sys.argv[1]
want = json.load(open("tests/fixtures/golden/train-parity.json"))["case1"]["losses"]
try:
    got = [json.loads(l)["loss"] for l in open(f"{out}/parity/metrics.jsonl")]
    rel = max(abs(a - b) / b for a, b in zip(got, want))
    res = {"peft": want, "cuda": got, "max_rel_diff": rel}
except Exception as e:
    res = {"error": str(e)}
json.dump(res, open(f"{out}/parity-check.json", "w"), indent=1)
print(res)
PY

log "benchmarks"
for seq in 512 2048; do
  left 120 || break
  peak burnish-0.5b-$seq timeout 600 "$BURNISH" -q bench --device cuda --shape qwen2.5-0.5b --seq-len $seq \
    --steps "$STEPS" --warmup 3 --json >> "$OUT/bench.jsonl" 2>> "$OUT/log.txt"
  peak pytorch-0.5b-$seq timeout 600 "$PY" scripts/bench_peft.py --device cuda --shape qwen2.5-0.5b --seq-len $seq \
    --steps "$STEPS" --warmup 3 >> "$OUT/bench.jsonl" 2>> "$OUT/log.txt"
done
if [ "${BIG:-1}" = 1 ] && left 200; then
  peak burnish-7b-512 timeout 600 "$BURNISH" -q bench --device cuda --shape qwen2.5-7b --seq-len 512 \
    --steps 5 --warmup 2 --json >> "$OUT/bench.jsonl" 2>> "$OUT/log.txt"
  peak pytorch-7b-512 timeout 600 "$PY" scripts/bench_peft.py --device cuda --shape qwen2.5-7b --seq-len 512 \
    --steps 5 --warmup 2 >> "$OUT/bench.jsonl" 2>> "$OUT/log.txt"
fi
log "correctness: greedy generation, CUDA vs CPU (tiny-qwen2 preset)"
left 60 && for dev in cuda cpu; do
  timeout 300 "$BURNISH" -q generate --model builtin:tiny-qwen2 --prompt "Name three colours." --temperature 0 \
    --max-new-tokens 24 --device $dev --json > "$OUT/generate-$dev.json" 2>> "$OUT/log.txt"
done

log "demo recipe on CUDA (30 steps)"
left 90 && timeout 420 "$BURNISH" train recipes/demo.yaml --set train.device=cuda --set model.dtype=auto --set "output.dir=$OUT/demo" \
  --set train.max_steps=30 --set output.merge=false --overwrite > "$OUT/demo.log" 2>&1
tail -3 "$OUT/demo.log" 2>/dev/null

cat "$OUT/bench.jsonl" "$OUT/peaks.jsonl" 2>/dev/null
log "done"
