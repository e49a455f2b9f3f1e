#!/usr/bin/env python3
"""How far the demo's adapter generalises: ask a trained demo model every held-out question
in ``scripts/make_demo_dataset.py``'s ``PROBES`` (none of them is in the data) with greedy
decoding, and count the ones that get the answer of their kind.

    cargo run --release -- train recipes/demo.yaml
    python3 scripts/demo_probe.py                       # checkpoints/demo/merged
    python3 scripts/demo_probe.py --model DIR [--adapter DIR] [--burnish PATH]

Prints each miss and the score; exits 1 if a ``burnish generate`` call fails. Only the Python
standard library is needed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo_dataset import PROBES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "checkpoints/demo/merged"))
    ap.add_argument("--adapter")
    ap.add_argument("--burnish", default=str(ROOT / "target/release/burnish"))
    args = ap.parse_args()
    right = 0
    for question, want in PROBES.items():
        cmd = [args.burnish, "generate", "--model", args.model, "--temperature", "0",
               "--max-new-tokens", "32", "--prompt", question]
        if args.adapter:
            cmd += ["--adapter", args.adapter]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stderr, file=sys.stderr)
            return 1
        got = run.stdout.strip()
        if got == want:
            right += 1
        else:
            print(f"miss: {question!r} -> {got!r}")
    print(f"{right} of {len(PROBES)} held-out questions got the answer of their kind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
