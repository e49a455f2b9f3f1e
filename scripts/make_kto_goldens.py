#!/usr/bin/env python3
"""Golden values for burnish's KTO objective (Ethayarajh et al. 2024), from TRL 1.16's
KTOTrainer on the tiny fixture models, and TRL's tokenization of unpaired rows.

Run in the reference environment (see scripts/make_fixtures.py; TRL and `datasets` installed
into it with pip), after scripts/make_preference_goldens.py (it reuses that script's fixed
adapters and pairs):

    ~/.cache/burnish-ref/venv/bin/python scripts/make_kto_goldens.py

Writes, under tests/fixtures/golden/:
  unpaired-rows.jsonl   twelve pretokenized unpaired rows ({"prompt", "completion", "label"},
                        burnish's `unpaired` format), and unpaired-eval.jsonl eight more
  kto.json              per optimizer step: TRL's loss, gradient norm and metrics, and the
                        evaluation TRL runs after the last step
  kto-tokens.json       text and conversational unpaired rows and the ids TRL tokenizes them to
                        (Qwen2.5 tokenizer and chat template)

TRL's whole data preparation runs (`_prepare_dataset`: unpairing of paired rows, EOS, the
completion after the common prefix, the KL completions rotated within each batch of
`per_device_train_batch_size`); only the tokenizer is replaced by a lookup of the fixture's
token ids, so the rows need no vocabulary. Settings aligned with burnish, as in
make_preference_goldens.py: sequential batches (TRL's `train_sampling_strategy` default for
KTO), AdamW at a constant rate, no warmup, no weight decay, clipping at 1.0, dropout off, no
truncation; the reference is the base with the adapter disabled (TRL's "ref" copy deleted).
"""
import json
import os
import sys
import tempfile

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_preference_goldens import (  # noqa: E402
    COMMON, FIX, ROOT, Recorder, sequential, tokenizer, write_json)

VOCAB = 1024
EOS = tokenizer().eos_token
torch.set_num_threads(2)
LABELS = [True, False, True, True, False, False, True, False, True, False, False, True]
EVAL_LABELS = [True, False, False, True, False, True, True, False]
METRICS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
           "logps/rejected", "kl"]


def rows(seed, labels, name):
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(3, VOCAB, (n,), generator=g).tolist()
    out = []
    for label in labels:
        p, c = torch.randint(3, 9, (2,), generator=g).tolist()
        out.append({"prompt": rand(p), "completion": rand(c), "label": label})
    with open(os.path.join(FIX, "golden", name), "w", encoding="utf-8", newline="\n") as f:
        for row in out:
            f.write(json.dumps(row) + "\n")
    return out


class Lookup:
    """Stands in for the tokenizer: each row's texts are placeholders whose ids are known."""

    def __init__(self):
        self.ids = {}

    def text(self, ids):
        key = "<" + ",".join(map(str, ids)) + ">"
        self.ids[key] = ids
        return key

    def tokenize(self, _processing_class, text, **_kwargs):
        out, rest = [], text
        eos = EOS
        while rest:
            if rest.startswith(eos):
                rest = rest[len(eos):]
                continue
            end = rest.index(">") + 1
            out += self.ids[rest[:end]]
            rest = rest[end:]
        return {"input_ids": out}


def run_kto(rows_, lr, batch, eval_rows=None, paired=None, **kto):
    """KTOTrainer for three steps over `rows_` (or `paired`, rows with chosen and rejected that
    TRL unpairs), with KTOConfig's `kto` settings; evaluated on `eval_rows` after the last."""
    import datasets
    import peft
    import trl.trainer.kto_trainer as kt
    from trl import KTOConfig, KTOTrainer

    look = Lookup()
    original = kt._tokenize
    kt._tokenize = look.tokenize
    if paired is not None:
        data = datasets.Dataset.from_list([
            {"prompt": look.text(r["prompt"]), "chosen": look.text(r["chosen"]),
             "rejected": look.text(r["rejected"])} for r in paired])
    else:
        data = datasets.Dataset.from_list([
            {"prompt": look.text(r["prompt"]), "completion": look.text(r["completion"]),
             "label": r["label"]} for r in rows_])
    evals = None
    if eval_rows is not None:
        evals = datasets.Dataset.from_list([
            {"prompt": look.text(r["prompt"]), "completion": look.text(r["completion"]),
             "label": r["label"]} for r in eval_rows])
    base = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(FIX, "models", "llama-gqa"), dtype=torch.float32)
    adapter = os.path.join(FIX, "lora", "preference-llama")
    model = peft.PeftModel.from_pretrained(base, adapter, is_trainable=True)
    rec = Recorder()
    evaluations = []

    class EvalRecorder(transformers.TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            evaluations.append(dict(metrics))

    with tempfile.TemporaryDirectory() as tmp:
        args = KTOConfig(output_dir=tmp, per_device_train_batch_size=batch,
                         per_device_eval_batch_size=batch, learning_rate=lr, max_length=None,
                         eval_strategy="no", **kto, **COMMON)
        cls = sequential(KTOTrainer)
        cls._get_train_sampler = KTOTrainer._get_train_sampler
        cls.losses = []
        trainer = cls(model=model, args=args, train_dataset=data, eval_dataset=evals,
                      processing_class=tokenizer(), callbacks=[rec, EvalRecorder()])
        # Without its "ref" copy, TRL computes the reference with the adapter disabled.
        trainer.model.delete_adapter("ref")
        assert "ref" not in trainer.model.peft_config
        trainer.train()
        if evals is not None:
            trainer.evaluate()
    kt._tokenize = original
    assert len(cls.losses) >= 3 and len(rec.logs) == 3, (cls.losses, rec.logs)
    steps = [dict({"loss": l, "grad_norm": g["grad_norm"]}, **{n: g[n] for n in METRICS if n in g})
             for l, g in zip(cls.losses, rec.logs)]
    out = {"steps": steps}
    if evaluations:
        e = evaluations[-1]
        out["eval"] = {k[len("eval_"):]: v for k, v in e.items()
                       if k[len("eval_"):] in METRICS + ["loss"]}
    return out


TOKEN_ROWS = [
    # Plain text: EOS appended to the completion.
    {"prompt": "The capital of France is", "completion": " Paris.", "label": True},
    # Conversational.
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     "completion": [{"role": "assistant", "content": "5."}], "label": False},
]


def token_goldens():
    """What TRL's `_prepare_dataset` makes of text and conversational rows (KL off)."""
    import datasets
    import shutil
    from types import SimpleNamespace
    from trl import KTOConfig, KTOTrainer

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(ROOT, "src", "model", "preset", "tokenizer.json"), tmp)
        shutil.copy(os.path.join(FIX, "tokenizer-qwen2.5", "tokenizer_config.json"), tmp)
        tok = transformers.AutoTokenizer.from_pretrained(tmp)
        args = KTOConfig(output_dir=tmp, max_length=None, report_to=[], use_cpu=True, bf16=False)
        for row in TOKEN_ROWS:
            # `_prepare_dataset` needs only these of the trainer.
            me = SimpleNamespace(calculate_KL=False, _tokenizer=tok, desirable_weight=1.0,
                                 undesirable_weight=1.0)
            t = KTOTrainer._prepare_dataset(me, datasets.Dataset.from_list([row]), tok, args,
                                            "eval")[0]
            out.append({"row": row, "prompt_ids": t["prompt_ids"],
                        "completion_ids": t["completion_ids"]})
    write_json(os.path.join(FIX, "golden", "kto-tokens.json"), out)


def main():
    import trl
    train = rows(29, LABELS, "unpaired-rows.jsonl")
    evals = rows(31, EVAL_LABELS, "unpaired-eval.jsonl")
    with open(os.path.join(FIX, "golden", "preference-pairs.jsonl")) as f:
        pairs = [json.loads(l) for l in f]
    cases = {
        "kto": dict(micro_batch_size=4, lr=1e-3, beta=0.1, desirable_weight=1.0,
                    undesirable_weight=1.0, loss_type="kto", data="unpaired-rows.jsonl",
                    **run_kto(train, 1e-3, 4, eval_rows=evals, beta=0.1)),
        "kto_weighted": dict(micro_batch_size=3, lr=2e-3, beta=0.5, desirable_weight=1.5,
                             undesirable_weight=0.7, loss_type="kto", data="unpaired-rows.jsonl",
                             **run_kto(train, 2e-3, 3, beta=0.5, desirable_weight=1.5,
                                       undesirable_weight=0.7)),
        # beta 0.3 puts more of the first step's gradient entries near Adam's epsilon, where
        # float32 rounding flips their update: its third step moves by 3e-3.
        "apo_zero_unpaired": dict(micro_batch_size=4, lr=1e-3, beta=0.1, desirable_weight=1.0,
                                  undesirable_weight=1.0, loss_type="apo_zero_unpaired",
                                  data="unpaired-rows.jsonl",
                                  **run_kto(train, 1e-3, 4, beta=0.1,
                                            loss_type="apo_zero_unpaired")),
        # Paired rows, unpaired by TRL: the chosen completions of the block, then the rejected.
        "kto_from_pairs": dict(micro_batch_size=4, lr=1e-3, beta=0.2, desirable_weight=1.0,
                               undesirable_weight=1.0, loss_type="kto",
                               data="preference-pairs.jsonl",
                               **run_kto(None, 1e-3, 4, paired=pairs, beta=0.2)),
    }
    token_goldens()
    versions = {"trl": trl.__version__, "transformers": transformers.__version__,
                "torch": torch.__version__}
    write_json(os.path.join(FIX, "golden", "kto.json"), {"versions": versions, "cases": cases})
    for name, c in cases.items():
        print(name, [round(s["loss"], 6) for s in c["steps"]], c.get("eval", {}).get("loss"))


if __name__ == "__main__":
    main()
