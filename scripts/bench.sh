#!/usr/bin/env bash
# burnish vs PyTorch + PEFT, side by side on this machine: the same shapes (LoRA r=16 on all
# seven projections, batch 1 x 512, AdamW), interleaved runs, medians and ratios.
#
#   scripts/bench.sh [SHAPE ...]          (default: small qwen2.5-0.5b)
#
# Env: PYTHON (default ~/.cache/burnish-ref/venv/bin/python), ROUNDS (default 3), THREADS
# (default 2), STEPS (default 5), BURNISH (default target/release/burnish, built if missing),
# DORA=1 (DoRA adapters on both sides).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$HOME/.cache/burnish-ref/venv/bin/python}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
STEPS=${STEPS:-5}
BURNISH=${BURNISH:-target/release/burnish}
EXTRA=()
[ "${DORA:-0}" = 1 ] && EXTRA=(--dora)
[ -x "$BURNISH" ] || cargo build --release
SHAPES=${*:-small qwen2.5-0.5b}
OUT=$(mktemp -d)
for shape in $SHAPES; do
  for round in $(seq "$ROUNDS"); do
    RAYON_NUM_THREADS=$THREADS "$BURNISH" -q bench --shape "$shape" --device cpu --steps "$STEPS" "${EXTRA[@]}" --json >> "$OUT/burnish-$shape.jsonl"
    "$PYTHON" scripts/bench_peft.py --shape "$shape" --threads "$THREADS" --steps "$STEPS" "${EXTRA[@]}" 2>/dev/null >> "$OUT/peft-$shape.jsonl"
  done
done
"$PYTHON" - "$OUT" $SHAPES <<'PY'
import json, statistics, sys
out, shapes = sys.argv[1], sys.argv[2:]
# Step times pooled over all rounds (the shared VM drifts by 10-20% within minutes, so a
# median of per-round medians can pair a slow burnish round with a fast PyTorch one), plus
# the median of the per-round ratios of runs made back to back.
print(f"{'shape':<14} {'burnish s/step':>15} {'pytorch s/step':>15} {'time ratio':>10} {'paired':>7} {'burnish RSS':>12} {'pytorch RSS':>12} {'mem ratio':>9}")
for s in shapes:
    b = [json.loads(l) for l in open(f"{out}/burnish-{s}.jsonl")]
    p = [json.loads(l) for l in open(f"{out}/peft-{s}.jsonl")]
    bt = statistics.median(t for r in b for t in r["step_times_s"])
    pt = statistics.median(t for r in p for t in r["step_times_s"])
    paired = statistics.median(x["median_step_s"] / y["median_step_s"] for x, y in zip(b, p))
    bm = statistics.median(r["peak_rss_bytes"] for r in b) / 1e9
    pm = statistics.median(r["peak_rss_bytes"] for r in p) / 1e9
    grow = max(r["rss_end_bytes"] - r["rss_after_warmup_bytes"] for r in b) / 1e6
    print(f"{s:<14} {bt:>15.3f} {pt:>15.3f} {bt/pt:>10.2f} {paired:>7.2f} {bm:>10.2f}GB {pm:>10.2f}GB {bm/pm:>9.2f}   (burnish RSS growth after warm-up: {grow:+.0f} MB)")
    print(f"{'':<14} rounds (burnish/pytorch s/step): " + ", ".join(f"{x['median_step_s']:.3f}/{y['median_step_s']:.3f}" for x, y in zip(b, p)))
PY
