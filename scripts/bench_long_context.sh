#!/usr/bin/env bash
# Long-context benchmarks (BENCHMARKS.md, "Long context"): peak memory against the sequence
# length, the plan estimate against the measured peak, and step times against an older build.
#
#   scripts/bench_long_context.sh memory          # small shape at 2k/4k/8k, with and without dropout
#   scripts/bench_long_context.sh estimate        # qwen2.5-0.5b at 512 and 2k: measured vs estimated peak
#   scripts/bench_long_context.sh long            # qwen2.5-0.5b at 8k and 16k, checkpointing + dropout 0.05
#   OLD=path/to/older/burnish scripts/bench_long_context.sh speed
#                                                 # paired step times, this build vs OLD: 0.5B at 512, small at 4k
#
# Env: BURNISH (default target/release/burnish), THREADS (default 2), ROUNDS (default 3).
# Each bench is its own process, so each peak RSS is that run's alone.
set -euo pipefail
cd "$(dirname "$0")/.."
BURNISH=${BURNISH:-target/release/burnish}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
[ -x "$BURNISH" ] || cargo build --release
bench() { RAYON_NUM_THREADS=$THREADS "$1" -q bench --device cpu --json "${@:2}"; }
field() { python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(' '.join(str(r.get(k)) for k in sys.argv[1:]))" "$@"; }

case "${1:-memory}" in
memory)
  for dropout in 0 0.05; do
    peaks=()
    for seq in 2048 4096 8192; do
      line=$(bench "$BURNISH" --shape small --seq-len $seq --warmup 1 --steps 1 --dropout $dropout)
      read -r step peak est <<<"$(echo "$line" | field median_step_s peak_rss_bytes estimated_peak_bytes)"
      peaks+=("$peak")
      python3 -c "import sys; q,d,s,p,e=sys.argv[1:]; p,e=int(p),int(e); print(f'small seq {q:>5} dropout {d:<4} {float(s):7.2f} s/step  peak RSS {p/1e9:5.2f} GB  estimate {e/1e9:5.2f} GB ({(e-p)/p*100:+.0f}%)')" \
        "$seq" "$dropout" "$step" "$peak" "$est"
    done
    python3 -c "import sys; a,b,c=map(int,sys.argv[1:]); print(f'  (peak 8k - peak 4k) / (peak 4k - peak 2k) = {(c-b)/(b-a):.2f}  (linear: 2.0)')" "${peaks[@]}"
  done
  ;;
estimate)
  for seq in 512 2048; do
    line=$(bench "$BURNISH" --shape qwen2.5-0.5b --seq-len $seq --warmup 1 --steps 2)
    read -r step peak est <<<"$(echo "$line" | field median_step_s peak_rss_bytes estimated_peak_bytes)"
    python3 -c "import sys; s,p,e=sys.argv[1:4]; p,e=int(p),int(e); print(f'qwen2.5-0.5b seq {sys.argv[4]:>5}: {float(s):7.2f} s/step  peak RSS {p/1e9:5.2f} GB  estimate {e/1e9:5.2f} GB ({(e-p)/p*100:+.0f}%)')" "$step" "$peak" "$est" "$seq"
  done
  ;;
long)
  for seq in 8192 16384; do
    line=$(bench "$BURNISH" --shape qwen2.5-0.5b --seq-len $seq --warmup 0 --steps 1 --gradient-checkpointing --dropout 0.05)
    read -r step peak est <<<"$(echo "$line" | field median_step_s peak_rss_bytes estimated_peak_bytes)"
    python3 -c "import sys; s,p,e=sys.argv[1:4]; p,e=int(p),int(e); print(f'qwen2.5-0.5b seq {sys.argv[4]:>5} checkpointing, dropout 0.05: {float(s):7.1f} s/step  peak RSS {p/1e9:5.2f} GB  estimate {e/1e9:5.2f} GB ({(e-p)/p*100:+.0f}%)')" "$step" "$peak" "$est" "$seq"
  done
  ;;
speed)
  : "${OLD:?set OLD to the older burnish binary}"
  for case in "qwen2.5-0.5b 512 5" "small 4096 3"; do
    read -r shape seq steps <<<"$case"
    ratios=()
    for round in $(seq "$ROUNDS"); do
      new=$(bench "$BURNISH" --shape "$shape" --seq-len "$seq" --steps "$steps" | field median_step_s)
      old=$(bench "$OLD" --shape "$shape" --seq-len "$seq" --steps "$steps" | field median_step_s)
      ratios+=("$(python3 -c "print($new/$old)")")
      echo "  $shape seq $seq round $round: new $new s/step, old $old s/step"
    done
    python3 -c "import statistics,sys; r=list(map(float,sys.argv[2:])); print(f'{sys.argv[1]}: paired ratio new/old median {statistics.median(r):.3f} (rounds: {\", \".join(f\"{x:.3f}\" for x in r)})')" "$shape seq $seq" "${ratios[@]}"
  done
  ;;
*)
  echo "usage: $0 memory|estimate|long|speed" >&2
  exit 2
  ;;
esac
