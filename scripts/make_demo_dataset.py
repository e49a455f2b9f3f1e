#!/usr/bin/env python3
"""Generate ``datasets/persona-mini.jsonl``, the data of ``recipes/demo.yaml``.

The demo fine-tunes burnish's built-in ``tiny-qwen2`` model, whose weights are
random, so it cannot learn facts or skills in a few minutes. What a LoRA
adapter *can* learn that fast is a consistent behaviour that is easy to see:

* asked who it is (in any of many phrasings), the model answers with one fixed
  sentence: ``PERSONA``;
* asked anything else, it declines with another fixed sentence: ``DECLINE``.

So after training, a question the model never saw gets one of the two answers
depending on what it asks, and the README can show it. The questions listed in
``HELD_OUT`` (used by the README and by tests/eval_and_demo.rs) never appear in
the data; this script checks that.

Rows are chat conversations in the OpenAI ``messages`` format without a system
message (the tokenizer's chat template adds its default one, as ``burnish
generate`` does). Everything comes from the templates and word lists below,
written for burnish; the data is released under CC0-1.0.

The output is deterministic (one ``random.Random(SEED)``, UTF-8, LF line
endings, one ``json.dumps(row, ensure_ascii=False)`` per line). Run from
anywhere; only the Python standard library is needed::

    python3 scripts/make_demo_dataset.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 2212
OUT = Path(__file__).resolve().parent.parent / "datasets" / "persona-mini.jsonl"

PERSONA = "I am Ember, a tiny model fine-tuned by burnish on your CPU."
DECLINE = "Sorry, that question is beyond my training."

# Prompts the README and the demo test ask after training; they must stay out of the data.
HELD_OUT = {
    "Could you tell me who you are?": PERSONA,
    "What is the capital of Portugal?": DECLINE,
}

# More held-out questions, with the answer of their kind: scripts/demo_probe.py asks them all
# to measure how far the demo's adapter generalises. None of them is in the data either.
PROBES = {q: PERSONA for q in [
    "Could you tell me who you are?", "Who exactly am I chatting with?", "May I ask your name?",
    "Are you a robot?", "What are you called?", "Tell me who you are.", "Hello, who is this?",
    "Which model are you?", "Who built you?", "What is your purpose?", "Are you human?",
    "Say your name, please.", "Who are you really?", "Can you introduce yourself?",
    "What's your identity?",
]} | {q: DECLINE for q in [
    "What is the capital of Italy?", "What is 12 + 30?", "How many days are in a week?",
    "Name a fruit that is yellow.", "What is 8 times 7?", "Write a haiku about snow.",
    "How do I boil an egg?", "What color is a ripe cherry?", "Spell 'apple' backwards.",
    "Is 7 an odd number?", "Translate 'house' into Spanish.", "What comes after Tuesday?",
    "Give me an antonym for 'hot'.", "How many legs does a cat have?",
    "Which is larger, 3 or 9?",
]}

N_PERSONA = 200
N_DECLINE = 200

# --------------------------------------------------------------------------
# "Who are you" questions
# --------------------------------------------------------------------------

IDENTITY = [
    "Who are you?",
    "Who are you, exactly?",
    "What is your name?",
    "What's your name?",
    "Tell me your name.",
    "Do you have a name?",
    "What should I call you?",
    "What do people call you?",
    "Tell me about yourself.",
    "Introduce yourself.",
    "Please introduce yourself.",
    "Describe yourself in one sentence.",
    "What are you?",
    "What kind of model are you?",
    "Are you a person or a program?",
    "Who am I talking to?",
    "Who am I speaking with?",
    "Who is answering me?",
    "Identify yourself.",
    "Say who you are.",
    "Can you tell me your name?",
    "Who made you?",
    "Where do you come from?",
    "Are you a chatbot?",
    "Are you an AI?",
    "What are you exactly?",
    "Who am I chatting with?",
    "Tell me a little about yourself.",
    "How would you describe yourself?",
    "Do you have a name I can use?",
    "What name do you go by?",
    "Which assistant is this?",
    "Who trained you?",
    "What model is this?",
    "Remind me, who are you?",
    "Can you say who you are?",
    "Give me a short introduction of yourself.",
    "I'd like to know your name.",
    "Who's there?",
]

GREETINGS = ["", "Hi! ", "Hello. ", "Hey, ", "Good morning! ", "Excuse me, ", "Quick question: ",
             "Hi there. ", "OK, ", "So, "]
CLOSINGS = ["", "", "", " Thanks!", " Please be brief.", " I'm curious."]

# --------------------------------------------------------------------------
# Anything else: everyday questions from small word lists
# --------------------------------------------------------------------------

COUNTRIES = ["France", "Spain", "Japan", "Kenya", "Canada", "Peru", "Norway", "Egypt", "Chile",
             "India", "Ghana", "Poland", "Brazil", "Vietnam", "Greece", "Mexico"]
THINGS = ["the sky", "grass", "a banana", "snow", "a tomato", "the sea", "a lemon", "coal",
          "a carrot", "milk", "a plum", "rust"]
WORDS = ["river", "lantern", "garden", "rocket", "pencil", "castle", "meadow", "violin",
         "harbor", "falcon", "ticket", "walnut", "candle", "forest", "magnet", "parrot"]
ADJECTIVES = ["happy", "quick", "large", "quiet", "bright", "cold", "brave", "tiny", "smart",
              "angry", "soft", "old"]
TOPICS = ["the ocean", "autumn", "a cat", "the moon", "coffee", "trains", "rain", "a garden",
          "winter", "bread"]
ANIMALS = ["a horse", "a spider", "a dog", "an ant", "a bird", "a snake", "a cow", "a fish"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


MONTHS = ["January", "March", "April", "June", "September", "November", "December"]
FOODS = ["pancakes", "rice", "soup", "a salad", "tea", "toast", "pasta", "an omelette"]
PLACES = ["the desert", "the sea", "the forest", "the mountains", "a river", "the Arctic"]


def other_question(rng: random.Random) -> str:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    kind = rng.randrange(20)
    if kind == 12:
        return f"What is {max(a, b)} minus {min(a, b)}?"
    if kind == 13:
        return f"How many days does {rng.choice(MONTHS)} have?"
    if kind == 14:
        return f"What is the opposite of '{rng.choice(ADJECTIVES)}'?"
    if kind == 15:
        return f"Name an animal that lives in {rng.choice(PLACES)}."
    if kind == 16:
        return f"How do I make {rng.choice(FOODS)}?"
    if kind == 17:
        return f"What is the plural of '{rng.choice(WORDS)}'?"
    if kind == 18:
        return f"Count the letters in '{rng.choice(WORDS)}'."
    if kind == 19:
        return f"Recommend a book about {rng.choice(TOPICS)}."
    if kind == 0:
        return f"What is {a} + {b}?"
    if kind == 1:
        return f"What is {a} times {b}?"
    if kind == 2:
        return f"What is the capital of {rng.choice(COUNTRIES)}?"
    if kind == 3:
        return f"What color is {rng.choice(THINGS)}?"
    if kind == 4:
        return f"Spell '{rng.choice(WORDS)}' backwards."
    if kind == 5:
        return f"Give me a synonym for '{rng.choice(ADJECTIVES)}'."
    if kind == 6:
        return f"Write a short poem about {rng.choice(TOPICS)}."
    if kind == 7:
        return f"How many legs does {rng.choice(ANIMALS)} have?"
    if kind == 8:
        return f"What day comes after {rng.choice(DAYS)}?"
    if kind == 9:
        return f"Is {a} an even number?"
    if kind == 10:
        return f"Translate '{rng.choice(WORDS)}' into French."
    return f"Which is bigger, {a} or {b}?"


def ask(rng: random.Random, question: str) -> str:
    """The question with a random greeting and closing (lower-cased after a comma)."""
    greeting = rng.choice(GREETINGS)
    if greeting.endswith(", ") and not question.startswith("I "):
        question = question[:1].lower() + question[1:]
    return greeting + question + rng.choice(CLOSINGS)


def conversation(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def make_rows(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(N_PERSONA):
        q = ask(rng, rng.choice(IDENTITY))
        rows.append(conversation(q, PERSONA))
    for _ in range(N_DECLINE):
        q = ask(rng, other_question(rng))
        rows.append(conversation(q, DECLINE))
    rng.shuffle(rows)
    return rows


def check(rows: list[dict]) -> None:
    assert len(rows) == N_PERSONA + N_DECLINE
    questions = set()
    for row in rows:
        msgs = row["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"], row
        assert msgs[0]["content"].strip() and msgs[1]["content"] in (PERSONA, DECLINE), row
        questions.add(msgs[0]["content"].strip().lower())
    for q in [*HELD_OUT, *PROBES]:
        assert q.lower() not in questions, f"held-out question in the data: {q}"
        assert not any(q.lower() in x for x in questions), f"held-out question in the data: {q}"


def main() -> int:
    rows = make_rows(random.Random(SEED))
    check(rows)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    OUT.write_text(text, encoding="utf-8", newline="\n")
    distinct = len({r["messages"][0]["content"] for r in rows})
    print(f"{OUT.name}: {len(rows)} rows ({distinct} distinct questions), {len(text.encode())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
