#!/usr/bin/env python3
"""Golden learning rates of transformers' schedulers (`get_scheduler`), for burnish's
`train.scheduler` names that go beyond cosine/linear/constant.

Run in the reference environment (../shared/reference/setup-torch-venv.sh):

    ~/.cache/burnish-ref/venv/bin/python scripts/schedule_reference.py

Writes tests/fixtures/golden/schedules.json: per case, the burnish scheduler section, the peak
learning rate, the number of optimizer steps, and the learning rate transformers' LambdaLR gives
each step (read from the optimizer before each `scheduler.step()`, as the Trainer logs it).
burnish's `min_lr` is transformers' `lr_end` (polynomial) and `min_lr_ratio` times the peak
(warmup_stable_decay).
"""
import json
import os

import torch
import transformers
from transformers import get_scheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEAK = 2e-4
TOTAL = 20

# (case name, burnish scheduler section, transformers name, warmup, transformers kwargs)
CASES = [
    ("restarts", {"name": "cosine_with_restarts", "warmup_steps": 2, "num_cycles": 3},
     "cosine_with_restarts", 2, {"num_cycles": 3}),
    ("polynomial", {"name": "polynomial", "warmup_steps": 3, "power": 2.0, "min_lr": 1e-5},
     "polynomial", 3, {"power": 2.0, "lr_end": 1e-5}),
    ("inverse_sqrt", {"name": "inverse_sqrt", "warmup_steps": 4},
     "inverse_sqrt", 4, {}),
    ("inverse_sqrt_timescale", {"name": "inverse_sqrt", "warmup_steps": 2, "timescale": 10},
     "inverse_sqrt", 2, {"timescale": 10}),
    ("wsd_cosine", {"name": "warmup_stable_decay", "warmup_steps": 3, "decay_steps": 6,
                    "min_lr": 2e-5},
     "warmup_stable_decay", 3, {"num_decay_steps": 6, "min_lr_ratio": 0.1}),
    ("wsd_linear", {"name": "warmup_stable_decay", "warmup_steps": 2, "decay_steps": 5,
                    "decay_type": "linear"},
     "warmup_stable_decay", 2, {"num_decay_steps": 5, "decay_type": "linear"}),
    ("wsd_sqrt_cycles", {"name": "warmup_stable_decay", "warmup_steps": 0, "decay_steps": 8,
                         "decay_type": "1-sqrt", "min_lr": 1e-5},
     "warmup_stable_decay", 0, {"num_decay_steps": 8, "decay_type": "1-sqrt",
                                "min_lr_ratio": 0.05}),
    ("wsd_cosine_cycles", {"name": "warmup_stable_decay", "warmup_steps": 1, "decay_steps": 10,
                           "num_cycles": 1.0},
     "warmup_stable_decay", 1, {"num_decay_steps": 10, "num_cycles": 1.0}),
]


def lrs(name, warmup, kwargs):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=PEAK)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=TOTAL,
                          scheduler_specific_kwargs=kwargs)
    out = []
    for _ in range(TOTAL):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def main():
    cases = [{"name": n, "scheduler": s, "peak_lr": PEAK, "total_steps": TOTAL,
              "lrs": lrs(t, w, k)} for n, s, t, w, k in CASES]
    path = os.path.join(ROOT, "tests", "fixtures", "golden", "schedules.json")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump({"versions": {"torch": torch.__version__,
                                "transformers": transformers.__version__},
                   "cases": cases}, f, indent=1)
        f.write("\n")
    for c in cases:
        print(c["name"], [f"{x:.3e}" for x in c["lrs"][:8]])


if __name__ == "__main__":
    main()
