#!/usr/bin/env python3
"""datasets/preference-mini.jsonl: preference pairs written for burnish's DPO and ORPO demos.

Each row is TRL's conversational preference layout:

    {"prompt": [{"role": "user", "content": ...}],
     "chosen": [{"role": "assistant", "content": ...}],
     "rejected": [{"role": "assistant", "content": ...}]}

The user asks a small task (arithmetic, a unit conversion, spelling a word backwards, counting
letters, the day after a weekday, the larger of two numbers). The chosen answer is helpful and
correct, computed here, in one fixed friendly form ("Happy to help! ..."); the rejected answer
brushes the user off in one of a dozen ways. A preference objective has to learn to prefer the
helpful form, which a tiny model learns in a minute; held-out prompts get new tasks.

Deterministic (random.Random(1919), standard library only):

    python3 scripts/make_preference_dataset.py
"""
import json
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "datasets", "preference-mini.jsonl")
ROWS = 320

WORDS = ["river", "planet", "garden", "window", "pencil", "rocket", "candle", "forest", "bridge",
         "marble", "castle", "violin", "meadow", "harbor", "lantern", "tunnel", "pepper", "falcon",
         "silver", "orange", "thunder", "blanket", "compass", "puzzle", "quartz", "saddle"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
BRUSH_OFFS = [
    "No. Figure it out yourself.",
    "I don't feel like answering that.",
    "Why would I know? Ask someone else.",
    "That is a boring question.",
    "Not my problem.",
    "Look it up, it is not hard.",
    "I have better things to do.",
    "Ugh, fine, no.",
    "You could have done that yourself.",
    "Stop asking me things like this.",
    "Whatever. Next question.",
    "I refuse to waste time on that.",
]


def task(rng):
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randrange(2, 60), rng.randrange(2, 60)
        op = rng.choice(["+", "-", "*"])
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        return f"What is {a} {op} {b}?", f"{a} {op} {b} = {value}."
    if kind == 1:
        km = rng.randrange(1, 200)
        return (f"How many miles are {km} kilometres?",
                f"{km} km is about {km * 0.621371:.2f} miles.")
    if kind == 2:
        w = rng.choice(WORDS)
        return f"Spell the word '{w}' backwards.", f"'{w}' backwards is '{w[::-1]}'."
    if kind == 3:
        w = rng.choice(WORDS)
        letter = rng.choice(sorted(set(w)))
        n = w.count(letter)
        return (f"How many times does the letter '{letter}' appear in '{w}'?",
                f"The letter '{letter}' appears {n} time{'s' if n != 1 else ''} in '{w}'.")
    if kind == 4:
        d = rng.randrange(7)
        return f"What day comes after {DAYS[d]}?", f"The day after {DAYS[d]} is {DAYS[(d + 1) % 7]}."
    a, b = rng.sample(range(1, 1000), 2)
    return f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger than {min(a, b)}."


def main():
    rng = random.Random(1919)
    seen = set()
    rows = []
    while len(rows) < ROWS:
        question, answer = task(rng)
        if question in seen:
            continue
        seen.add(question)
        rows.append({
            "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": f"Happy to help! {answer}"}],
            "rejected": [{"role": "assistant", "content": rng.choice(BRUSH_OFFS)}],
        })
    assert len({r["prompt"][0]["content"] for r in rows}) == ROWS
    assert all(r["chosen"] != r["rejected"] for r in rows)
    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
