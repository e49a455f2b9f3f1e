"""Golden decisions of transformers' best-checkpoint bookkeeping and EarlyStoppingCallback.

For each sequence of evaluation metrics below, runs what transformers' Trainer runs after an
evaluation, in its order: `EarlyStoppingCallback.on_evaluate` (against the best *before* this
evaluation), then `Trainer._determine_best_metric` (with `load_best_model_at_end`,
`metric_for_best_model` as given, `greater_is_better` as transformers derives it from the
name), and records per evaluation: whether it is a new best, the best value and step, the patience count, and whether training
stops. `tests/resume.rs` replays the same values through burnish's `EvalWatch`.

    python scripts/early_stopping_reference.py   # writes tests/fixtures/golden/early-stopping.json
"""

import json
import pathlib
import tempfile
from types import SimpleNamespace

import transformers
from transformers import EarlyStoppingCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer import Trainer

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/golden/early-stopping.json"
EVAL_EVERY = 10

CASES = [
    # name, patience, threshold, metric_for_best_model, values (greater_is_better: transformers' default)
    ("falls-then-rises", 3, 0.0, "eval_loss", [3.0, 2.5, 2.2, 2.3, 2.4, 2.25, 2.6, 2.0]),
    ("plateau-counts-equal-losses", 2, 0.0, "eval_loss", [1.5, 1.5, 1.5, 1.4]),
    ("small-gains-below-threshold", 2, 0.05, "eval_loss", [2.0, 1.98, 1.97, 1.9, 1.89, 1.88]),
    ("recovers-before-patience", 3, 0.0, "eval_loss", [2.0, 2.1, 2.2, 1.9, 2.0, 2.05, 1.95]),
    ("threshold-beyond-reach", 2, 100.0, "eval_loss", [4.0, 3.0, 2.0, 1.0]),
    ("patience-one", 1, 0.0, "loss", [1.0, 0.9, 0.95, 0.8]),
    ("accuracies-higher-is-better", 2, 0.0, "rewards/accuracies", [0.5, 0.625, 0.625, 0.75, 0.7, 0.7]),
    ("accuracies-threshold", 1, 0.1, "eval_rewards/accuracies", [0.5, 0.55, 0.7, 0.75]),
]


def run(patience, threshold, metric, values):
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            eval_strategy="steps",
            eval_steps=EVAL_EVERY,
            save_strategy="steps",
            save_steps=EVAL_EVERY,
            load_best_model_at_end=True,
            metric_for_best_model=metric,
            report_to=[],
        )
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    callback = EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=threshold)
    state, control = TrainerState(), TrainerControl()
    trainer = SimpleNamespace(args=args, state=state)
    out = []
    for i, value in enumerate(values):
        state.global_step = (i + 1) * EVAL_EVERY
        metrics = {key: value}
        callback.on_evaluate(args, state, control, metrics=metrics)
        new_best = Trainer._determine_best_metric(trainer, metrics=metrics, trial=None)
        out.append(
            {
                "step": state.global_step,
                "value": value,
                "new_best": bool(new_best),
                "best": state.best_metric,
                "best_step": state.best_global_step,
                "without_improvement": callback.early_stopping_patience_counter,
                "stop": bool(control.should_training_stop),
            }
        )
        if control.should_training_stop:
            break
    return out


def run_args_greater(metric):
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, metric_for_best_model=metric, report_to=[])
    return args.greater_is_better


def main():
    cases = [
        {
            "name": n,
            "patience": p,
            "threshold": t,
            "metric_for_best_model": m,
            "greater_is_better": run_args_greater(m),
            "evaluations": run(p, t, m, values),
        }
        for n, p, t, m, values in CASES
    ]
    doc = {"transformers": transformers.__version__, "eval_every": EVAL_EVERY, "cases": cases}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    for c in cases:
        last = c["evaluations"][-1]
        print(f"{c['name']}: {len(c['evaluations'])} evaluations, stop={last['stop']}, best step {last['best_step']}")


if __name__ == "__main__":
    main()
