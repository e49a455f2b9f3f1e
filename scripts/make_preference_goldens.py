#!/usr/bin/env python3
"""Golden values for burnish's preference objectives, from TRL's DPOTrainer (sigmoid, IPO, the
conservative sigmoid with label smoothing, and its other pairwise losses), ORPOTrainer and
CPOTrainer (CPO, SimPO) on the tiny fixture models.

A rerun reproduces every case to float32 rounding (the last bits move with the thread count);
the committed cases were kept where a rerun only moved those bits.

Run in the reference environment (see scripts/make_fixtures.py; TRL and `datasets` installed
into it with pip):

    ~/.cache/burnish-ref/venv/bin/python scripts/make_preference_goldens.py

Writes, under tests/fixtures/:
  golden/preference-pairs.jsonl       six pretokenized pairs ({"prompt", "chosen", "rejected"}
                                      token ids, as burnish's `preference` format reads them)
  lora/preference-qwen2/, lora/preference-llama/
                                      fixed adapters (PEFT init with B randomised, so the policy
                                      and the reference differ from the first step)
  golden/preference.json              per optimizer step: TRL's loss, gradient norm and metrics
  golden/preference-tokens.json       rows in the text, conversational and implicit-prompt
                                      layouts and the ids TRL's DPOTrainer tokenizes them to
                                      (Qwen2.5 tokenizer and chat template)

Settings aligned with burnish (each would otherwise differ from burnish's or be random):
  - the data is already tokenized, so TRL's tokenization (`_prepare_dataset`, `tokenize_row`) is
    skipped and its collators get the ids directly (prompt + completion, completion-only labels);
  - batches in data order (a SequentialSampler instead of the Trainer's shuffled one);
  - AdamW (torch) at a constant learning rate without warmup, weight decay 0, clipping at 1.0;
  - dropout off (TRL's `disable_dropout`, and lora_dropout 0);
  - no truncation (max_length above every sequence);
  - the reference policy: TRL keeps a frozen copy of a pretrained adapter as its reference; the
    cases with reference "base" delete that copy, so TRL disables the adapter instead (burnish's
    default `dpo.reference: base`); "adapter" is burnish's `dpo.reference: <adapter folder>`;
  - the loss of each step is recorded from `compute_loss` (the Trainer's logged loss is rounded
    to 4 digits); the metrics come from the unrounded log records.
  - TRL 1.16's `sigmoid` loss has no label smoothing; conservative DPO (burnish's sigmoid with
    label_smoothing) is TRL's `aot` loss with one pair per batch, where sorting is the identity.
  - ORPO's NLL in TRL covers the prompt and the chosen completion: burnish's
    `data.train_on_inputs: true` for ORPO. CPO's (SimPO's `cpo_alpha` term) covers the chosen
    completion only.
"""
import json
import os
import shutil
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
VOCAB = 1024
torch.set_num_threads(2)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def pairs():
    g = torch.Generator().manual_seed(19)
    rand = lambda n: torch.randint(3, VOCAB, (n,), generator=g).tolist()
    out = []
    for p, c, r in [(5, 4, 6), (3, 7, 2), (8, 3, 3), (4, 5, 9), (6, 2, 4), (3, 6, 5)]:
        out.append({"prompt": rand(p), "chosen": rand(c), "rejected": rand(r)})
    path = os.path.join(FIX, "golden", "preference-pairs.jsonl")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in out:
            f.write(json.dumps(row) + "\n")
    return out


def fixed_adapter(model_name, dest):
    """PEFT's adapter for all linear modules (r 8, alpha 16), B drawn N(0, 1): far enough from the base that the
    rewards of the first step are of order 1, well above float32 rounding of the log-probabilities."""
    import peft
    base = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(FIX, "models", model_name), dtype=torch.float32)
    cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    torch.manual_seed(23)
    model = peft.get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(1.0 * torch.randn_like(p))
    path = os.path.join(FIX, "lora", dest)
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path)
    # Relative base path, as the other fixture adapters have it.
    cfg_path = os.path.join(path, "adapter_config.json")
    c = json.load(open(cfg_path))
    c["base_model_name_or_path"] = f"tests/fixtures/models/{model_name}"
    write_json(cfg_path, c)
    return path


def tokenizer():
    """Any tokenizer with a pad token inside the fixture vocabulary (TRL wants one; the data
    is pretokenized, so only the pad id is used, and padding is masked)."""
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(ROOT, "src", "model", "preset", "tokenizer.json"))
    tok.pad_token = "!"  # id 0
    tok.eos_token = '"'  # id 1
    return tok


class Recorder(transformers.TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.logs.append(dict(logs))


def sequential(trainer_cls):
    from torch.utils.data import SequentialSampler

    class T(trainer_cls):
        losses = []

        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = out[0] if isinstance(out, tuple) else out
            self.losses.append(loss.item())
            return out

    return T


COMMON = dict(
    max_steps=3, gradient_accumulation_steps=1, lr_scheduler_type="constant", warmup_steps=0,
    weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999,
    adam_epsilon=1e-8, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
    seed=1, data_seed=1, disable_dropout=True, bf16=False, fp16=False,
)

METRICS = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected"]


def run_dpo(model_name, adapter, rows, loss_type, beta, lr, batch, label_smoothing=0.0,
            reference="base", discopop_tau=0.05, loss_weights=None, **divergence):
    """`reference`: "base" (adapter disabled: TRL's reference for a new adapter) or "adapter"
    (a frozen copy of the starting adapter: TRL's reference for a pretrained one). `loss_type`:
    a name, or a list of names summed with `loss_weights`. `divergence`: DPOConfig's
    `f_divergence_type`, `f_alpha_divergence_coef` and `ld_alpha`."""
    import datasets
    import peft
    from trl import DPOConfig, DPOTrainer
    DPOTrainer._prepare_dataset = lambda self, dataset, *a, **k: dataset
    data = datasets.Dataset.from_list([
        {"prompt_ids": r["prompt"], "chosen_ids": r["chosen"], "rejected_ids": r["rejected"]}
        for r in rows])
    base = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(FIX, "models", model_name), dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, adapter, is_trainable=True)
    rec = Recorder()
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, per_device_train_batch_size=batch, learning_rate=lr,
                         beta=beta,
                         loss_type=loss_type if isinstance(loss_type, list) else [loss_type],
                         loss_weights=loss_weights, label_smoothing=label_smoothing,
                         discopop_tau=discopop_tau, max_length=None, **divergence, **COMMON)
        cls = sequential(DPOTrainer)
        cls.losses = []
        trainer = cls(model=model, args=args, train_dataset=data, processing_class=tokenizer(),
                      callbacks=[rec])
        if reference == "base":
            # Without its "ref" copy, TRL computes the reference with the adapter disabled.
            trainer.model.delete_adapter("ref")
            assert "ref" not in trainer.model.peft_config
        trainer.train()
    return steps(cls.losses, rec.logs, METRICS)


def tokenized_features(r):
    """A pretokenized pair as ORPOTrainer's and CPOTrainer's `tokenize_row` would give it
    (prompt, prompt + chosen and prompt + rejected, completion-only labels)."""
    def side(completion):
        ids = r["prompt"] + completion
        return {"input_ids": ids, "attention_mask": [1] * len(ids),
                "labels": [-100] * len(r["prompt"]) + completion}
    c, j = side(r["chosen"]), side(r["rejected"])
    out = {"prompt": "", "chosen": "", "rejected": "",
           "prompt_input_ids": r["prompt"], "prompt_attention_mask": [1] * len(r["prompt"])}
    out.update({f"chosen_{k}": v for k, v in c.items()})
    out.update({f"rejected_{k}": v for k, v in j.items()})
    return out


def run_pretokenized(trainer_cls, config_cls, model_name, adapter, rows, lr, batch, metrics, **settings):
    """A TRL trainer that takes the rows already tokenized (`tokenized_features`; ORPO's and
    CPO's), with its config's `settings`, for three steps."""
    import datasets
    import peft

    trainer_cls.tokenize_row = lambda self, feature, model=None: feature
    data = datasets.Dataset.from_list([tokenized_features(r) for r in rows])
    base = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(FIX, "models", model_name), dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, adapter, is_trainable=True)
    rec = Recorder()
    with tempfile.TemporaryDirectory() as tmp:
        args = config_cls(output_dir=tmp, per_device_train_batch_size=batch, learning_rate=lr,
                          max_length=512, remove_unused_columns=False, **settings, **COMMON)
        cls = sequential(trainer_cls)
        cls.losses = []
        trainer = cls(model=model, args=args, train_dataset=data, processing_class=tokenizer(),
                      callbacks=[rec])
        trainer.train()
    return steps(cls.losses, rec.logs, METRICS + metrics)


def run_orpo(model_name, adapter, rows, beta, lr, batch):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    return run_pretokenized(ORPOTrainer, ORPOConfig, model_name, adapter, rows, lr, batch,
                            ["nll_loss", "log_odds_ratio", "log_odds_chosen"], beta=beta)


def run_simpo(model_name, adapter, rows, beta, gamma, cpo_alpha, lr, batch):
    """SimPO (Meng et al. 2024) as TRL's CPOTrainer computes it (`loss_type="simpo"`), with
    CPO's NLL term on the chosen completions weighted by `cpo_alpha`; the rows as for ORPO."""
    return run_cpo_trainer(model_name, adapter, rows, lr, batch, beta=beta, loss_type="simpo",
                           simpo_gamma=gamma, cpo_alpha=cpo_alpha)


def run_cpo_trainer(model_name, adapter, rows, lr, batch, **cpo):
    """TRL's CPOTrainer with the CPOConfig settings `cpo` (CPO: loss_type sigmoid, hinge or
    ipo; SimPO: simpo)."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    return run_pretokenized(CPOTrainer, CPOConfig, model_name, adapter, rows, lr, batch,
                            ["nll_loss"], **cpo)


def steps(losses, logs, names):
    assert len(losses) == len(logs) == 3, (losses, logs)
    return [dict({"loss": l, "grad_norm": g["grad_norm"]}, **{n: g[n] for n in names})
            for l, g in zip(losses, logs)]


TOKEN_ROWS = [
    # Plain text: EOS appended to the completions.
    {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Berlin."},
    # HH-RLHF: the prompt is the shared beginning (the space before the split goes with the
    # completions).
    {"chosen": "\n\nHuman: Say hi.\n\nAssistant: Hi there!",
     "rejected": "\n\nHuman: Say hi.\n\nAssistant: No."},
    # Conversational, explicit prompt.
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     "chosen": [{"role": "assistant", "content": "4."}],
     "rejected": [{"role": "assistant", "content": "Let me think about it for a while: 5."}]},
    # UltraFeedback-binarized: whole conversations sharing the user turn.
    {"chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
     "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Seven."}]},
]


def token_goldens():
    """TRL's own tokenization of TOKEN_ROWS (its `_prepare_dataset`, without the model)."""
    import datasets
    from trl import DPOConfig, DPOTrainer
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(ROOT, "src", "model", "preset", "tokenizer.json"), tmp)
        shutil.copy(os.path.join(FIX, "tokenizer-qwen2.5", "tokenizer_config.json"), tmp)
        tok = transformers.AutoTokenizer.from_pretrained(tmp)
        args = DPOConfig(output_dir=tmp, report_to=[], use_cpu=True, bf16=False)
        out = []
        for row in TOKEN_ROWS:
            ds = datasets.Dataset.from_list([row])
            # `_prepare_dataset` only needs the tokenizer from the trainer.
            holder = type("Holder", (), {"_tokenizer": tok})()
            t = DPOTrainer._prepare_dataset(holder, ds, tok, args, "train")[0]
            out.append({"row": row, "prompt_ids": t["prompt_ids"], "chosen_ids": t["chosen_ids"],
                        "rejected_ids": t["rejected_ids"]})
    write_json(os.path.join(FIX, "golden", "preference-tokens.json"), out)


MPO = ["sigmoid", "bco_pair", "sft"]
MPO_WEIGHTS = [0.8, 0.2, 1.0]


def F_DIVERGENCES(qwen, llama):
    """f-DPO's other divergences (f_divergence_type, loss, model, adapter name, adapter, other
    DPOConfig settings): each with another loss that takes it, alpha with RPO's mix."""
    return [
        ("forward_kl", "sigmoid", "qwen2-tied", "qwen2", qwen, {}),
        ("js_divergence", "ipo", "llama-gqa", "llama", llama, {}),
        ("alpha_divergence", ["sigmoid", "sft"], "qwen2-tied", "qwen2", qwen,
         {"f_alpha_divergence_coef": 0.3, "loss_weights": [1.0, 0.5]}),
    ]


def OTHER_DPO_LOSSES(qwen, llama):
    """TRL's other pairwise DPO losses: (loss, model, adapter name, adapter, beta,
    label_smoothing, discopop_tau), alternating the two models. EXO with the paper's epsilon;
    DiscoPOP with a temperature at which its blend of the two losses is away from both ends.
    sigmoid_norm runs on qwen2-tied: on llama-gqa its third step moves by 1e-4 with float32
    rounding (Adam's first update is lr * sign(g), so gradients at rounding level each move
    their parameter by a full lr), on both sides alike."""
    q = ("qwen2-tied", "qwen2", qwen)
    l = ("llama-gqa", "llama", llama)
    return [
        ("exo_pair", *q, 0.1, 1e-3, 0.05),
        ("nca_pair", *l, 0.1, 0.0, 0.05),
        ("bco_pair", *q, 0.1, 0.0, 0.05),
        ("sppo_hard", *l, 0.1, 0.0, 0.05),
        ("apo_zero", *q, 0.1, 0.0, 0.05),
        ("apo_down", *l, 0.1, 0.0, 0.05),
        ("discopop", *q, 0.1, 0.0, 2.0),
        ("sigmoid_norm", *q, 0.5, 0.0, 0.05),
    ]


def main():
    import peft
    import trl
    token_goldens()
    rows = pairs()
    qwen = fixed_adapter("qwen2-tied", "preference-qwen2")
    llama = fixed_adapter("llama-gqa", "preference-llama")
    cases = {
        "dpo_sigmoid": dict(model="qwen2-tied", adapter="preference-qwen2", micro_batch_size=2,
                            lr=1e-3, beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
                            reference="base", steps=run_dpo("qwen2-tied", qwen, rows, "sigmoid", 0.1, 1e-3, 2)),
        "dpo_ipo": dict(model="llama-gqa", adapter="preference-llama", micro_batch_size=2,
                        lr=1e-3, beta=0.1, loss_type="ipo", label_smoothing=0.0,
                        reference="base", steps=run_dpo("llama-gqa", llama, rows, "ipo", 0.1, 1e-3, 2)),
        # One pair per batch: TRL's aot loss is then conservative DPO.
        "dpo_conservative": dict(model="qwen2-tied", adapter="preference-qwen2",
                                 micro_batch_size=1, lr=1e-3, beta=0.2, loss_type="sigmoid",
                                 label_smoothing=0.1,
                                 reference="base",
                                 steps=run_dpo("qwen2-tied", qwen, rows, "aot", 0.2, 1e-3, 1,
                                               label_smoothing=0.1)),
        # SLiC-HF's hinge with a beta large enough that some pairs clear the margin (no
        # gradient from them) and others do not.
        "dpo_hinge": dict(model="qwen2-tied", adapter="preference-qwen2", micro_batch_size=2,
                          lr=1e-3, beta=4.0, loss_type="hinge", label_smoothing=0.0,
                          reference="base", steps=run_dpo("qwen2-tied", qwen, rows, "hinge", 4.0, 1e-3, 2)),
        "dpo_robust": dict(model="llama-gqa", adapter="preference-llama", micro_batch_size=2,
                           lr=1e-3, beta=0.1, loss_type="robust", label_smoothing=0.2,
                           reference="base",
                           steps=run_dpo("llama-gqa", llama, rows, "robust", 0.1, 1e-3, 2,
                                         label_smoothing=0.2)),
        **{f"dpo_{loss}": dict(model=model, adapter=f"preference-{short}", micro_batch_size=2,
                               lr=1e-3, beta=beta, loss_type=loss, label_smoothing=eps,
                               discopop_tau=tau, reference="base",
                               steps=run_dpo(model, adapter, rows, loss, beta, 1e-3, 2,
                                             label_smoothing=eps, discopop_tau=tau))
           for loss, model, short, adapter, beta, eps, tau in OTHER_DPO_LOSSES(qwen, llama)},
        # Several losses summed (TRL's loss_type list): MPO's mix with its paper's weights, and
        # RPO (DPO plus the chosen completions' NLL).
        "dpo_mpo": dict(model="qwen2-tied", adapter="preference-qwen2", micro_batch_size=2,
                        lr=1e-3, beta=0.1, loss_type=MPO, loss_weights=MPO_WEIGHTS,
                        label_smoothing=0.0, reference="base",
                        steps=run_dpo("qwen2-tied", qwen, rows, MPO, 0.1, 1e-3, 2,
                                      loss_weights=MPO_WEIGHTS)),
        "dpo_rpo": dict(model="llama-gqa", adapter="preference-llama", micro_batch_size=2,
                        lr=1e-3, beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5],
                        label_smoothing=0.0, reference="base",
                        steps=run_dpo("llama-gqa", llama, rows, ["sigmoid", "sft"], 0.1, 1e-3, 2,
                                      loss_weights=[1.0, 0.5])),
        **{f"dpo_{div}": dict(model=model, adapter=f"preference-{short}", micro_batch_size=2,
                              lr=1e-3, beta=0.1, loss_type=loss, label_smoothing=0.0,
                              reference="base", f_divergence_type=div, **extra,
                              steps=run_dpo(model, adapter, rows, loss, 0.1, 1e-3, 2,
                                            f_divergence_type=div, **extra))
           for div, loss, model, short, adapter, extra in F_DIVERGENCES(qwen, llama)},
        # LD-DPO: the tokens past each pair's shorter completion weigh ld_alpha.
        "dpo_ld_alpha": dict(model="qwen2-tied", adapter="preference-qwen2", micro_batch_size=2,
                             lr=1e-3, beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
                             reference="base", ld_alpha=0.3,
                             steps=run_dpo("qwen2-tied", qwen, rows, "sigmoid", 0.1, 1e-3, 2,
                                           ld_alpha=0.3)),
        "orpo": dict(model="qwen2-tied", adapter="preference-qwen2", micro_batch_size=2, lr=1e-3,
                     beta=0.1, steps=run_orpo("qwen2-tied", qwen, rows, 0.1, 1e-3, 2)),
        "simpo": dict(model="llama-gqa", adapter="preference-llama", micro_batch_size=2, lr=1e-3,
                      beta=2.0, gamma=0.8, cpo_alpha=0.5,
                      steps=run_simpo("llama-gqa", llama, rows, 2.0, 0.8, 0.5, 1e-3, 2)),
        # CPO (Xu et al. 2024): summed log-probabilities, label smoothing and the NLL term;
        # its hinge with a beta that lets some pairs clear the margin; IPO on per-token means.
        "cpo_sigmoid": dict(model="qwen2-tied", adapter="preference-qwen2", micro_batch_size=2,
                            lr=1e-3, beta=0.1, loss_type="sigmoid", label_smoothing=0.1,
                            cpo_alpha=1.0,
                            steps=run_cpo_trainer("qwen2-tied", qwen, rows, 1e-3, 2, beta=0.1,
                                                  loss_type="sigmoid", label_smoothing=0.1,
                                                  cpo_alpha=1.0)),
        "cpo_hinge": dict(model="llama-gqa", adapter="preference-llama", micro_batch_size=2,
                          lr=1e-3, beta=0.5, loss_type="hinge", label_smoothing=0.0, cpo_alpha=0.5,
                          steps=run_cpo_trainer("llama-gqa", llama, rows, 1e-3, 2, beta=0.5,
                                                loss_type="hinge", cpo_alpha=0.5)),
        "cpo_ipo": dict(model="qwen2-tied", adapter="preference-qwen2", micro_batch_size=2,
                        lr=1e-3, beta=0.5, loss_type="ipo", label_smoothing=0.0, cpo_alpha=0.0,
                        steps=run_cpo_trainer("qwen2-tied", qwen, rows, 1e-3, 2, beta=0.5,
                                              loss_type="ipo", cpo_alpha=0.0)),
    }
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "trl": trl.__version__}
    write_json(os.path.join(FIX, "golden", "preference.json"), {"versions": versions, "cases": cases})
    for name, c in cases.items():
        print(name, [round(s["loss"], 6) for s in c["steps"]])


if __name__ == "__main__":
    sys.exit(main())
