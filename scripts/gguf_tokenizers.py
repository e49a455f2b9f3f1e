#!/usr/bin/env python3
"""The two tiny tokenizers the GGUF export fixtures use (called by scripts/gguf_reference.py):

  tests/fixtures/tokenizer-tiny/      the Qwen2.5 byte-level BPE tokenizer cut to 1024 tokens
  tests/fixtures/tokenizer-spm-tiny/  a 1024-piece SentencePiece BPE model with byte fallback
"""
import json
import os
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
TOKENIZER_JSON = os.path.join(ROOT, "src", "model", "preset", "tokenizer.json")
CHAT_TEMPLATE = os.path.join(ROOT, "src", "model", "preset", "chat_template_qwen2_5.jinja")


def write_json(path, obj):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def make_tiny_tokenizer():
    """The Qwen2.5 tokenizer cut to 1021 tokens + 3 specials = 1024 (the fixtures' vocab)."""
    with open(TOKENIZER_JSON, encoding="utf-8") as f:
        tok = json.load(f)
    keep = 1021
    vocab = {t: i for t, i in tok["model"]["vocab"].items() if i < keep}
    merges = []
    for m in tok["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        if a in vocab and b in vocab and (a + b) in vocab:
            merges.append([a, b])
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    added = [{"id": keep + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(specials)]
    tok["model"]["vocab"] = vocab
    tok["model"]["merges"] = merges
    tok["added_tokens"] = added
    out = os.path.join(FIX, "tokenizer-tiny")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(tok, f, ensure_ascii=False, separators=(",", ":"))
    with open(CHAT_TEMPLATE, encoding="utf-8") as f:
        template = f.read()
    write_json(os.path.join(out, "tokenizer_config.json"), {
        "add_bos_token": False, "add_prefix_space": False, "bos_token": None,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "model_max_length": 512, "tokenizer_class": "Qwen2Tokenizer", "chat_template": template,
    })
    from tokenizers import Tokenizer
    t = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    assert t.get_vocab_size(with_added_tokens=True) == 1024
    print(f"tokenizer-tiny: {len(vocab)} tokens, {len(merges)} merges, 3 specials")


def make_spm_tokenizer():
    """A 1024-piece SentencePiece BPE model with byte fallback (Llama 2 / Mistral 7B style),
    trained on the repository's datasets, with a tokenizers-format tokenizer.json beside it
    (burnish needs one in every model folder; the GGUF vocabulary comes from tokenizer.model)."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    out = os.path.join(FIX, "tokenizer-spm-tiny")
    os.makedirs(out, exist_ok=True)
    # A fixed path: sentencepiece records it in the model, which should not change between runs.
    corpus = os.path.join(tempfile.gettempdir(), "burnish-spm-corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        for name in ["alpaca-mini.jsonl", "chat-mini.jsonl"]:
            with open(os.path.join(ROOT, "datasets", name), encoding="utf-8") as src:
                for line in src:
                    f.write(json.dumps(json.loads(line), ensure_ascii=False) + "\n")
    prefix = os.path.join(out, "tokenizer")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=1024, model_type="bpe", byte_fallback=True, unk_id=0,
        bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, character_coverage=0.9995, minloglevel=2,
        num_threads=1)
    os.remove(prefix + ".vocab")
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    tok = Tokenizer(BPE(vocab, [], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["<unk>", "<s>", "</s>"]])
    tok.save(os.path.join(out, "tokenizer.json"))
    write_json(os.path.join(out, "tokenizer_config.json"), {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "added_tokens_decoder": {str(i): {"content": t, "special": True} for i, t in enumerate(["<unk>", "<s>", "</s>"])},
        "chat_template": "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                         "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}",
        "tokenizer_class": "LlamaTokenizer",
    })
    print("tokenizer-spm-tiny:", sp.get_piece_size(), "pieces")
