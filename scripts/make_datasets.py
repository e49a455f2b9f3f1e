#!/usr/bin/env python3
"""Generate the small demo datasets that ship with burnish.

This script writes four JSON Lines files under ``datasets/`` (relative to the
repository root):

* ``alpaca-mini.jsonl``   -- 320 instruction rows ``{"instruction", "input", "output"}``
* ``chat-mini.jsonl``     -- 200 chat rows ``{"messages": [{"role", "content"}, ...]}``
* ``text-mini.jsonl``     -- 300 plain-text rows ``{"text"}``
* ``sharegpt-mini.jsonl`` -- 60 ShareGPT rows ``{"conversations": [{"from", "value"}, ...]}``

Every row is produced from templates, word lists and a glossary written for
burnish; no third-party data is used.  Wherever a row contains an answer
(arithmetic, unit conversions, string and list operations, days of the week,
Python expressions, ...) the answer is computed by this script, so it is
always correct.

The output is deterministic: all randomness comes from a single
``random.Random(1234)`` and files are written as UTF-8 with LF line endings,
one ``json.dumps(row, ensure_ascii=False)`` per line.  Re-running the script
reproduces byte-identical files::

    python3 scripts/make_datasets.py

Only the Python 3.11 standard library is needed.  The data is released under
CC0-1.0.
"""

from __future__ import annotations

import datetime
import json
import random
import sys
from fractions import Fraction
from pathlib import Path

SEED = 1234
ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "datasets"

N_ALPACA = 320
N_ALPACA_WITH_INPUT = 107  # about a third
N_CHAT = 200
N_SHAREGPT = 60
N_TEXT = 300
MAX_TOTAL_BYTES = 400 * 1024

# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

NUM_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
    "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
    "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
]
DAY_NAMES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTH_NAMES = [
    "January", "February", "March", "April", "May", "June", "July", "August",
    "September", "October", "November", "December",
]
VOWELS = "aeiou"


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def num_word(n: int) -> str:
    return NUM_WORDS[n] if 0 <= n < len(NUM_WORDS) else str(n)


def plural(n: int | str, singular: str, plural_form: str | None = None) -> str:
    """'1 apple', '3 apples' (n may be preformatted)."""
    if plural_form is None:
        plural_form = singular + "s"
    one = n == 1 or n == "1" or n == "one"
    return f"{n} {singular if one else plural_form}"


def join_and(items: list[str]) -> str:
    items = list(items)
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def trim_num(x) -> str:
    """Format a number compactly: 5 -> '5', 5.5 -> '5.5', 2.25 -> '2.25'."""
    if isinstance(x, Fraction):
        if x.denominator == 1:
            return str(x.numerator)
        x = float(x)
    if isinstance(x, int):
        return str(x)
    if abs(x - round(x)) < 1e-9:
        return str(int(round(x)))
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return s


def fmt2(x) -> str:
    """Exactly two decimals, rounding halves away from zero (exact arithmetic)."""
    fr = Fraction(x)
    sign = "-" if fr < 0 else ""
    cents = int(abs(fr) * 100 + Fraction(1, 2))
    if cents == 0:
        sign = ""
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def is_exact_2dp(fr: Fraction) -> bool:
    return (fr * 100).denominator == 1


def fmt_frac(fr: Fraction) -> tuple[str, bool]:
    """Return (text, exact) with at most two decimals."""
    if fr.denominator == 1:
        return str(fr.numerator), True
    if is_exact_2dp(fr):
        return trim_num(fr), True
    return fmt2(fr), False


def numlist(xs) -> str:
    return ", ".join(str(x) for x in xs)


def pick_sentences(rng: random.Random, sentences: list, lo: int, hi: int) -> list[str]:
    """Keep the first sentence, then a random ordered subset of the rest.

    An item may be a plain sentence or a (sentence, index) pair, meaning the
    sentence only makes sense if the sentence at that index is kept too.
    """
    items = [x if isinstance(x, tuple) else (x, None) for x in sentences]
    hi = min(hi, len(items))
    lo = min(lo, hi)
    k = rng.randint(lo, hi)
    while True:
        chosen = [0] + sorted(rng.sample(range(1, len(items)), k - 1))
        if all(items[i][1] is None or items[i][1] in chosen for i in chosen):
            return [items[i][0] for i in chosen]


# --------------------------------------------------------------------------
# Hand-written word lists
# --------------------------------------------------------------------------

WORDS = [
    "lantern", "planet", "garden", "window", "rocket", "pencil", "marble",
    "harbor", "kitten", "orange", "silver", "dragon", "puzzle", "castle",
    "meadow", "button", "ladder", "mirror", "tunnel", "violin", "canyon",
    "falcon", "jungle", "pepper", "saddle", "ticket", "walnut", "yellow",
    "anchor", "basket", "candle", "desert", "engine", "forest", "guitar",
    "helmet", "island", "jacket", "kernel", "lemon", "magnet", "needle",
    "oyster", "parrot", "rabbit", "salmon", "tomato", "umbrella", "velvet",
    "wizard", "compiler", "keyboard", "notebook", "sunflower", "education",
    "programming", "elephant", "banana", "algorithm", "mountain", "library",
    "tokenizer", "evening", "pineapple", "adventure", "calendar",
]

SORT_WORDS = [
    "pear", "apple", "fig", "cherry", "grape", "mango", "kiwi", "plum",
    "lime", "melon", "peach", "date", "olive", "quince", "banana", "apricot",
    "river", "cloud", "stone", "maple", "birch", "cedar", "willow", "oak",
    "zebra", "otter", "badger", "heron", "lynx", "moose", "newt", "yak",
]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Rust makes systems programming safer.",
    "We trained a small model on a laptop.",
    "The library opens at nine every morning.",
    "My sister planted tulips along the fence.",
    "Please save the file before closing the editor.",
    "A gentle rain fell on the quiet village.",
    "The train to the coast leaves at noon.",
    "Learning a new language takes patience.",
    "The robot sorted the boxes by color.",
    "Fresh bread smells wonderful in the morning.",
    "Our team shipped the update on Friday.",
    "The cat slept on the warm windowsill.",
    "Every function should do one thing well.",
    "The river was calm after the storm.",
    "Small datasets are useful for quick tests.",
    "She wrote her first program at age twelve.",
    "The market sells apples, pears and plums.",
    "Good tests make refactoring less scary.",
    "The moon rose slowly over the hills.",
]

NAMES = [
    ("Tobin", "he"), ("Mirela", "she"), ("Ansel", "he"), ("Priya", "she"),
    ("Kofi", "he"), ("Lena", "she"), ("Yusuf", "he"), ("Elodie", "she"),
    ("Hiro", "he"), ("Marta", "she"), ("Dario", "he"), ("Ines", "she"),
    ("Bram", "he"), ("Suki", "she"), ("Oren", "he"), ("Talia", "she"),
    ("Nils", "he"), ("Fenna", "she"), ("Rafi", "he"), ("Greta", "she"),
]
NAMES_NON_ASCII = [("Zoë", "she"), ("José", "he"), ("Søren", "he"), ("Amélie", "she"), ("Björn", "he")]

ITEMS = [
    ("apple", "apples"), ("marble", "marbles"), ("sticker", "stickers"),
    ("book", "books"), ("pencil", "pencils"), ("cookie", "cookies"),
    ("seashell", "seashells"), ("stamp", "stamps"), ("postcard", "postcards"),
    ("balloon", "balloons"),
]

# (subject in lower case, past tense, past participle, object, object is plural)
PASSIVE_ITEMS = [
    ("the chef", "cooked", "cooked", "the soup", False),
    ("the children", "painted", "painted", "the fence", False),
    ("a storm", "damaged", "damaged", "the old barn", False),
    ("the committee", "approved", "approved", "the new budget", False),
    ("my neighbour", "repaired", "repaired", "the bicycles", True),
    ("the students", "wrote", "written", "the report", False),
    ("the gardener", "planted", "planted", "three apple trees", True),
    ("the museum", "displayed", "displayed", "the ancient coins", True),
    ("our team", "fixed", "fixed", "the bug", False),
    ("the mayor", "opened", "opened", "the new bridge", False),
    ("the cat", "knocked over", "knocked over", "the vase", False),
    ("two engineers", "designed", "designed", "the engine", False),
    ("the author", "signed", "signed", "the books", True),
    ("a volunteer", "cleaned", "cleaned", "the beach", False),
    ("the baker", "made", "made", "the bread", False),
    ("the teacher", "graded", "graded", "the exams", True),
    ("the wind", "scattered", "scattered", "the leaves", True),
    ("the company", "released", "released", "a new version", False),
    ("Maria", "found", "found", "the missing keys", True),
    ("the orchestra", "performed", "performed", "the symphony", False),
    ("the pilot", "flew", "flown", "the plane", False),
    ("the reviewers", "rejected", "rejected", "the proposal", False),
]

IMPERATIVE_PHRASES = [
    "close the window", "turn off the lights", "water the plants",
    "send me the report by Friday", "check the oil before the trip",
    "save your work often", "read the instructions carefully",
    "lock the door when you leave", "bring an umbrella", "call the office tomorrow",
    "wash the dishes", "feed the cat", "back up the database",
    "update the documentation", "tidy your desk", "print two copies of the agenda",
    "restart the server", "label each box clearly",
]
IMPERATIVE_SOURCES = [
    "You should {vp}.", "Could you {vp}?", "I would like you to {vp}.",
    "It would be great if you could {vp}.", "You need to {vp}.",
    "I was hoping you might {vp}.",
]

# --------------------------------------------------------------------------
# Glossary written for burnish: (term, "what is ..." phrase, category,
# related term, definition as full sentences)
# --------------------------------------------------------------------------

GLOSSARY = [
    ("algorithm", "an algorithm", "computing", "big-O notation",
     "An algorithm is a finite sequence of well-defined steps that solves a problem or performs a computation."),
    ("API", "an API", "computing", "library",
     "An API (application programming interface) is a defined set of functions, types and conventions through which one piece of software can use another."),
    ("library", "a software library", "computing", "API",
     "A library is a collection of prewritten code, such as functions and types, that programs can reuse instead of implementing everything themselves."),
    ("array", "an array", "computing", "hash table",
     "An array is a data structure that stores elements in a contiguous block of memory, so any element can be reached directly by its index."),
    ("hash table", "a hash table", "computing", "array",
     "A hash table maps keys to values by using a hash function to compute where each entry is stored. This gives lookups that take constant time on average."),
    ("recursion", "recursion", "computing", "algorithm",
     "Recursion is a technique in which a function calls itself on smaller instances of the same problem until it reaches a simple base case."),
    ("compiler", "a compiler", "computing", "interpreter",
     "A compiler is a program that translates source code, usually written in a high-level language, into another form such as machine code before the program runs."),
    ("interpreter", "an interpreter", "computing", "compiler",
     "An interpreter is a program that executes source code directly, statement by statement or from an intermediate form, without first producing a separate native executable."),
    ("cache", "a cache", "computing", "latency",
     "A cache is a small, fast storage layer that keeps copies of recently or frequently used data so that later requests for it can be served more quickly."),
    ("latency", "latency", "computing", "cache",
     "Latency is the time delay between a request and its response, such as the time a server takes to answer or a model takes to return its first token."),
    ("thread", "a thread", "computing", "process",
     "A thread is the smallest sequence of instructions that an operating system can schedule independently. Threads that belong to the same process share its memory."),
    ("process", "a process", "computing", "thread",
     "A process is a running instance of a program, with its own address space and resources managed by the operating system."),
    ("version control", "version control", "computing", "commit",
     "Version control is a system that records changes to files over time so you can review history, compare revisions and restore earlier versions. Git is a widely used example."),
    ("commit", "a commit", "computing", "version control",
     "In version control, a commit is a recorded snapshot of changes to a set of files, stored together with a message that describes them."),
    ("floating-point number", "a floating-point number", "computing", "quantization",
     "A floating-point number is stored in binary as a sign, an exponent and a significand. This format covers a very wide range of values, but most of them only approximately."),
    ("big-O notation", "big-O notation", "computing", "algorithm",
     "Big-O notation describes how an algorithm's running time or memory use grows with the size of its input, ignoring constant factors. For example, O(n) means the cost grows linearly."),
    ("Unicode", "Unicode", "computing", "UTF-8",
     "Unicode is a standard that assigns a unique number, called a code point, to the characters of nearly every writing system, so text can be exchanged consistently."),
    ("UTF-8", "UTF-8", "computing", "Unicode",
     "UTF-8 is a variable-length encoding of Unicode that uses one to four bytes per code point. It is backward compatible with ASCII."),
    ("tokenizer", "a tokenizer", "machine learning", "embedding",
     "A tokenizer splits raw text into tokens, such as words or subword pieces, and maps each token to an integer ID that a model can process."),
    ("machine learning", "machine learning", "machine learning", "neural network",
     "Machine learning is a field of computing in which programs learn patterns from data in order to make predictions or decisions, instead of following only hand-written rules."),
    ("neural network", "a neural network", "machine learning", "backpropagation",
     "A neural network is a model built from layers of simple units that compute weighted sums of their inputs followed by nonlinear functions. Its weights are learned from data."),
    ("gradient descent", "gradient descent", "machine learning", "learning rate",
     "Gradient descent is an optimization method that repeatedly moves the parameters a small step in the direction opposite to the gradient of the loss, so the loss gradually decreases."),
    ("learning rate", "the learning rate", "machine learning", "optimizer",
     "The learning rate is a hyperparameter that sets how large each parameter update is during training. If it is too high, training can become unstable; if it is too low, training is slow."),
    ("loss function", "a loss function", "machine learning", "gradient descent",
     "A loss function measures how far a model's predictions are from the desired targets. Training tries to make its value as small as possible."),
    ("overfitting", "overfitting", "machine learning", "regularization",
     "Overfitting happens when a model learns the training data too closely, including its noise, so it does well on that data but poorly on new examples."),
    ("epoch", "an epoch", "machine learning", "batch size",
     "An epoch is one complete pass of the training procedure over the entire training dataset."),
    ("batch size", "the batch size", "machine learning", "epoch",
     "The batch size is the number of training examples that are processed together before the model's parameters are updated once."),
    ("backpropagation", "backpropagation", "machine learning", "gradient descent",
     "Backpropagation is the algorithm that computes the gradient of the loss with respect to every parameter of a neural network by applying the chain rule backwards from the output."),
    ("transformer", "a transformer", "machine learning", "attention",
     "A transformer is a neural network architecture built around self-attention, which lets every position in a sequence draw on information from the other positions. Most modern language models are transformers."),
    ("attention", "attention", "machine learning", "softmax",
     "Attention is a mechanism that computes a weighted combination of values, where each weight reflects how relevant a position is to the current query."),
    ("embedding", "an embedding", "machine learning", "tokenizer",
     "An embedding is a learned vector of numbers that represents a discrete item, such as a token, so that similar items end up with similar vectors."),
    ("fine-tuning", "fine-tuning", "machine learning", "LoRA",
     "Fine-tuning means continuing to train a pretrained model on a smaller, task-specific dataset so that it adapts to that task."),
    ("LoRA", "LoRA", "machine learning", "fine-tuning",
     "LoRA (low-rank adaptation) is a fine-tuning method that freezes the original weights and trains two small low-rank matrices whose product is added to a chosen weight matrix. This greatly reduces the number of trainable parameters."),
    ("tensor", "a tensor", "machine learning", "array",
     "A tensor is a multi-dimensional array of numbers, such as a vector or a matrix, and is the basic data structure of deep learning libraries."),
    ("activation function", "an activation function", "machine learning", "neural network",
     "An activation function is a nonlinear function, such as ReLU or GELU, applied to the outputs of a layer so that the network can model more than linear relationships."),
    ("softmax", "the softmax function", "machine learning", "attention",
     "Softmax turns a vector of real numbers into a probability distribution by exponentiating each value and dividing by the sum of all the exponentials."),
    ("regularization", "regularization", "machine learning", "dropout",
     "Regularization is any technique, such as weight decay or dropout, that discourages a model from becoming too complex in order to reduce overfitting."),
    ("dropout", "dropout", "machine learning", "overfitting",
     "Dropout is a regularization technique that randomly sets a fraction of activations to zero during training, so the network cannot rely on any single unit."),
    ("validation set", "a validation set", "machine learning", "overfitting",
     "A validation set is a portion of the data held out from training and used to tune hyperparameters and to check how well a model generalizes."),
    ("hyperparameter", "a hyperparameter", "machine learning", "learning rate",
     "A hyperparameter is a setting chosen before training, such as the learning rate or the number of layers, rather than learned from the data."),
    ("inference", "inference", "machine learning", "latency",
     "Inference is the use of a trained model to produce outputs for new inputs, without updating its parameters."),
    ("quantization", "quantization", "machine learning", "floating-point number",
     "Quantization represents a model's weights or activations with lower-precision numbers, such as 8-bit integers, to save memory and speed up computation at some cost in accuracy."),
    ("checkpoint", "a checkpoint", "machine learning", "fine-tuning",
     "A checkpoint is a saved snapshot of a model's parameters, often together with the optimizer state, so that training can be resumed or the model reused later."),
    ("perplexity", "perplexity", "machine learning", "loss function",
     "Perplexity measures how well a language model predicts text. It is the exponential of the average negative log-likelihood per token, and lower values are better."),
    ("optimizer", "an optimizer", "machine learning", "learning rate",
     "An optimizer is the algorithm, such as SGD or Adam, that uses gradients to update a model's parameters during training."),
]
GLOSS_BY_TERM = {g[0]: g for g in GLOSSARY}
for _g in GLOSSARY:
    assert _g[3] in GLOSS_BY_TERM and _g[3] != _g[0], _g


# --------------------------------------------------------------------------
# Python expressions (evaluated with a whitelist of builtins)
# --------------------------------------------------------------------------

SAFE_BUILTINS = {
    "len": len, "sum": sum, "max": max, "min": min, "sorted": sorted,
    "list": list, "range": range, "abs": abs, "bool": bool, "int": int,
    "str": str, "round": round,
}

# (expression, explanation) -- the value itself is computed by eval().
FIXED_SNIPPETS = [
    ("bool([])", "An empty list is falsy, so bool() returns False."),
    ("bool('0')", "Any non-empty string is truthy, even the string '0', so bool() returns True."),
    ("int('42') + 1", "int() converts the string '42' to the integer 42, and adding 1 gives 43."),
    ("str(7) * 3", "str(7) is the string '7', and multiplying a string by 3 repeats it three times."),
    ("3 == 3.0", "The == operator compares values, and the integer 3 is equal to the float 3.0."),
    ("0.1 + 0.2 == 0.3", "0.1 and 0.2 cannot be represented exactly as binary floating-point numbers, so their sum is 0.30000000000000004, which is not equal to 0.3."),
    ("[1, 2] + [3]", "The + operator concatenates two lists into a new list."),
    ("'abc' < 'abd'", "Strings are compared character by character, and 'c' comes before 'd'."),
    ("len({'a': 1, 'b': 2})", "len() of a dictionary counts its keys, and this one has two."),
    ("[0] * 3", "Multiplying a list by 3 repeats its contents three times."),
    ("list('abc')", "list() of a string produces a list of its characters."),
    ("max('apple', 'pear')", "max() compares the strings alphabetically, and 'pear' comes after 'apple'."),
    ("-7 // 2", "Floor division rounds down towards negative infinity, so -3.5 becomes -4."),
    ("round(2.5)", "Python rounds halves to the nearest even integer, so 2.5 becomes 2."),
    ("round(3.5)", "Python rounds halves to the nearest even integer, so 3.5 becomes 4."),
    ("sorted('banana')", "sorted() of a string returns a list of its characters in ascending order."),
    ("'hello world'.title()", "title() capitalizes the first letter of every word."),
    ("'  padded  '.strip()", "strip() removes whitespace from both ends of the string."),
    ("abs(-12) + abs(5)", "abs(-12) is 12 and abs(5) is 5, so the sum is 17."),
    ("len('')", "The empty string has no characters, so its length is 0."),
]

TYPE_DESCRIPTIONS = {
    "int": "an int, Python's integer type",
    "float": "a float, Python's floating-point number type",
    "str": "a str, which is Python's string type",
    "list": "a list",
    "bool": "a bool, which is either True or False",
}


def py_eval(expr: str):
    return eval(expr, {"__builtins__": SAFE_BUILTINS}, {})  # noqa: S307 - our own snippets only


def make_snippet(rng: random.Random) -> tuple[str, object, str]:
    """Return (expression, value, explanation)."""
    kind = rng.choice([
        "len_list", "sum_list", "max_list", "min_list", "sorted_list", "upper",
        "reverse", "slice", "split", "join", "floordiv", "mod", "pow",
        "truediv", "range", "range2", "listcomp", "count", "len_str", "fixed",
        "fixed", "fixed",
    ])
    xs = [rng.randint(1, 20) for _ in range(rng.randint(3, 5))]
    w = rng.choice(WORDS)
    if kind == "len_list":
        e, ex = f"len({xs!r})", f"len() returns the number of items in the list, and there are {len(xs)}."
    elif kind == "sum_list":
        e, ex = f"sum({xs!r})", f"sum() adds up the numbers: {' + '.join(map(str, xs))} = {sum(xs)}."
    elif kind == "max_list":
        e, ex = f"max({xs!r})", "max() returns the largest item in the list."
    elif kind == "min_list":
        e, ex = f"min({xs!r})", "min() returns the smallest item in the list."
    elif kind == "sorted_list":
        e, ex = f"sorted({xs!r})", "sorted() returns a new list with the items in ascending order and leaves the original unchanged."
    elif kind == "upper":
        e, ex = f"{w!r}.upper()", "upper() returns a copy of the string with every letter converted to uppercase."
    elif kind == "reverse":
        e, ex = f"{w!r}[::-1]", "A slice with a step of -1 walks through the string backwards, which reverses it."
    elif kind == "slice":
        e, ex = f"{w!r}[1:4]", "The slice [1:4] takes the characters at indexes 1, 2 and 3; the end index is excluded."
    elif kind == "split":
        parts = rng.sample(SORT_WORDS, 3)
        e, ex = f"{','.join(parts)!r}.split(',')", "split(',') breaks the string at each comma and returns a list of the pieces."
    elif kind == "join":
        parts = rng.sample(SORT_WORDS, 3)
        e, ex = f"'-'.join({parts!r})", "join() builds one string by putting the separator '-' between the items of the list."
    elif kind == "floordiv":
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        q, exact = fmt_frac(Fraction(a, b))
        e = f"{a} // {b}"
        if a % b == 0:
            ex = f"// is floor division, and {b} divides {a} exactly."
        else:
            ex = f"// is floor division: {a} divided by {b} is {'' if exact else 'about '}{q}, rounded down to a whole number."
    elif kind == "mod":
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        e, ex = f"{a} % {b}", f"% gives the remainder of the division: {a} = {b} × {a // b} + {a % b}."
    elif kind == "pow":
        a, b = rng.randint(2, 9), rng.randint(2, 4)
        e, ex = f"{a} ** {b}", f"** raises {a} to the power {b}, that is {' × '.join([str(a)] * b)}."
    elif kind == "truediv":
        b = rng.choice([2, 4, 5, 8])
        a = rng.randint(1, 40)
        e, ex = f"{a} / {b}", "In Python 3 the / operator always performs true division and returns a float."
    elif kind == "range":
        n = rng.randint(3, 7)
        e, ex = f"list(range({n}))", f"range({n}) produces the integers from 0 up to, but not including, {n}."
    elif kind == "range2":
        a = rng.randint(1, 5)
        b = a + rng.randint(2, 5)
        e, ex = f"list(range({a}, {b}))", f"range({a}, {b}) starts at {a} and stops just before {b}."
    elif kind == "listcomp":
        k = rng.randint(2, 5)
        e, ex = f"[x * {k} for x in {xs!r}]", f"The list comprehension multiplies each element by {k} and collects the results in a new list."
    elif kind == "count":
        c = rng.choice(sorted(set(w)))
        e, ex = f"{w!r}.count({c!r})", f"count() returns how many times the substring {c!r} occurs in the string."
    elif kind == "len_str":
        e, ex = f"len({w!r})", "len() of a string counts its characters."
    else:
        e, ex = rng.choice(FIXED_SNIPPETS)
    return e, py_eval(e), ex


# --------------------------------------------------------------------------
# Computation helpers shared by the generators
# --------------------------------------------------------------------------

def vowels_of(s: str) -> list[str]:
    return [ch for ch in s.lower() if ch in VOWELS]


def mult_explanation(a: int, b: int) -> str:
    if b >= 10 and b % 10 != 0:
        t, o = b - b % 10, b % 10
        return (f"Split {b} into {t} and {o}: {a} × {t} = {a * t} and {a} × {o} = {a * o}, "
                f"and {a * t} + {a * o} = {a * b}.")
    return f"Multiplying {a} by {b} gives {a * b}."


def random_date(rng: random.Random) -> datetime.date:
    lo = datetime.date(1950, 1, 1).toordinal()
    hi = datetime.date(2035, 12, 31).toordinal()
    return datetime.date.fromordinal(rng.randint(lo, hi))


def long_date(d: datetime.date) -> str:
    return f"{d.day} {MONTH_NAMES[d.month - 1]} {d.year}"


def day_name(d: datetime.date) -> str:
    return DAY_NAMES[d.weekday()]


def hm_text(total_minutes: int) -> str:
    h, m = divmod(total_minutes, 60)
    if h == 0:
        return plural(m, "minute")
    if m == 0:
        return plural(h, "hour")
    return f"{plural(h, 'hour')} and {plural(m, 'minute')}"


def c_to_f(c: Fraction) -> Fraction:
    return c * Fraction(9, 5) + 32


def f_to_c(f: Fraction) -> Fraction:
    return (f - 32) * Fraction(5, 9)


KM_PER_MILE = Fraction(1609344, 1000000)  # exact definition: 1 mile = 1.609344 km
MILES_PER_KM_TEXT = "0.621371"


def miles_text(km: Fraction) -> str:
    """km -> miles with two decimals; checked against the rounded factor shown in the text."""
    exact = fmt2(km / KM_PER_MILE)
    assert exact == fmt2(km * Fraction(MILES_PER_KM_TEXT)), km
    return exact


def km_value(rng: random.Random) -> Fraction:
    if rng.random() < 0.7:
        return Fraction(rng.randint(2, 250))
    return Fraction(rng.randint(15, 999), 10)


# --------------------------------------------------------------------------
# alpaca-mini generators: each returns (instruction, input, output)
# --------------------------------------------------------------------------

def gen_arith(rng, with_input):
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(3, 99), rng.randint(3, 99)
        v = a * b
    else:
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        v = a + b if op == "+" else a - b
    if with_input:
        instr = rng.choice([
            "Evaluate the following expression.", "Compute the result of this arithmetic expression.",
            "Work out the value of the expression below.", "Solve this calculation.",
        ])
        inp = f"{a} {op} {b}"
    else:
        inp = ""
        instr = rng.choice({
            "+": [f"What is {a} + {b}?", f"Add {a} and {b}.", f"Calculate the sum of {a} and {b}.",
                  f"What do you get when you add {a} to {b}?"],
            "-": [f"What is {a} - {b}?", f"Subtract {b} from {a}.", f"Calculate {a} minus {b}.",
                  f"What is left when {b} is taken away from {a}?"],
            "*": [f"What is {a} × {b}?", f"Multiply {a} by {b}.", f"Calculate the product of {a} and {b}.",
                  f"What is {a} times {b}?"],
        }[op])
    outs = {
        "+": [f"{a} + {b} = {v}.", f"The sum of {a} and {b} is {v}.",
              f"{a} plus {b} equals {v}. You can check it by subtracting: {v} - {b} = {a}."],
        "-": [f"{a} - {b} = {v}.", f"{a} minus {b} is {v}.",
              f"The difference is {v}. Check: {v} + {b} = {a}."],
        "*": [f"{a} × {b} = {v}.", f"The product of {a} and {b} is {v}.",
              f"{a} × {b} = {v}. {mult_explanation(a, b)}"],
    }[op]
    return instr, inp, rng.choice(outs)


def word_problem(rng):
    """Return (question, answer sentence)."""
    name, pron = rng.choice(NAMES)
    he = pron
    sing, plur = rng.choice(ITEMS)
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(3, 40), rng.randint(2, 30)
        q = f"{name} has {a} {plur} and gets {b} more. How many {plur} does {name} have now?"
        ans = f"{name} now has {a + b} {plur}, because {a} + {b} = {a + b}."
    elif kind == 1:
        a = rng.randint(10, 60)
        b = rng.randint(2, a - 1)
        q = f"{name} had {a} {plur} and gave {b} of them to a friend. How many {plur} are left?"
        ans = f"{name} has {plural(a - b, sing, plur)} left, because {a} - {b} = {a - b}."
    elif kind == 2:
        k, n = rng.randint(3, 12), rng.randint(2, 15)
        q = f"A shop packs {plur} in boxes of {k}. How many {plur} are there in {n} boxes?"
        ans = f"There are {n * k} {plur} in {n} boxes, because {n} × {k} = {n * k}."
    elif kind == 3:
        p, d = rng.randint(5, 40), rng.randint(2, 14)
        q = f"{name} reads {p} pages a day. How many pages does {he} read in {d} days?"
        ans = f"{cap(he)} reads {p * d} pages in {d} days, since {p} × {d} = {p * d}."
    elif kind == 4:
        s, h = rng.choice([40, 50, 60, 80, 90, 100, 120]), rng.randint(2, 6)
        q = f"A train travels at {s} km/h for {h} hours. How far does it go?"
        ans = f"The train travels {s * h} km. Distance is speed times time, and {s} × {h} = {s * h}."
    else:
        a, b = rng.randint(20, 90), rng.randint(10, 80)
        c = rng.randint(5, a + b - 1)
        q = (f"{name} saved {a} dollars in March and {b} dollars in April, then spent {c} dollars on a gift. "
             f"How much money does {he} have left?")
        ans = (f"{name} has {a + b - c} dollars left. {cap(he)} saved {a} + {b} = {a + b} dollars, "
               f"and {a + b} - {c} = {a + b - c}.")
    return q, ans


def gen_word(rng, with_input):
    q, ans = word_problem(rng)
    if with_input:
        instr = rng.choice(["Solve the word problem.", "Answer the following question.",
                            "Read the problem and give the answer with a short explanation."])
        return instr, q, ans
    return q, "", ans


def gen_km(rng, with_input):
    x = km_value(rng)
    xs = trim_num(x)
    if rng.random() < 0.5:
        mi = miles_text(x)
        if with_input:
            instr, inp = rng.choice(["Convert the following distance from kilometers to miles.",
                                     "Express this distance in miles."]), f"{xs} km"
        else:
            instr = rng.choice([f"Convert {xs} kilometers to miles.", f"How many miles is {xs} km?",
                                f"Express a distance of {xs} km in miles."])
            inp = ""
        out = rng.choice([
            f"{xs} km is about {mi} miles.",
            f"{xs} kilometers is approximately {mi} miles. To convert, multiply by {MILES_PER_KM_TEXT}: "
            f"{xs} × {MILES_PER_KM_TEXT} ≈ {mi}.",
        ])
    else:
        kmt = fmt2(x * KM_PER_MILE)
        if with_input:
            instr, inp = rng.choice(["Convert the following distance from miles to kilometers.",
                                     "Express this distance in kilometers."]), f"{xs} miles"
        else:
            instr = rng.choice([f"Convert {xs} miles to kilometers.", f"How many kilometers is {xs} miles?",
                                f"A road is {xs} miles long. How long is it in kilometers?"])
            inp = ""
        out = rng.choice([
            f"{xs} miles is about {kmt} km.",
            f"{xs} miles is approximately {kmt} kilometers, because one mile is 1.609344 km and "
            f"{xs} × 1.609344 ≈ {kmt}.",
        ])
    return instr, inp, out


def gen_temp(rng, with_input):
    if rng.random() < 0.5:
        c = Fraction(rng.randint(-30, 45) if rng.random() < 0.85 else rng.choice([0, 100, 37, -40]))
        f = c_to_f(c)
        ft, exact = fmt_frac(f)
        cs = trim_num(c)
        if with_input:
            instr, inp = rng.choice(["Convert this temperature to Fahrenheit.",
                                     "Express the temperature below in degrees Fahrenheit."]), f"{cs} °C"
        else:
            instr = rng.choice([f"Convert {cs} degrees Celsius to Fahrenheit.",
                                f"What is {cs} °C in Fahrenheit?",
                                f"The thermometer shows {cs} °C. What is that in °F?"])
            inp = ""
        out = rng.choice([f"{cs} °C is {ft} °F.",
                          f"{cs} °C is {ft} °F. Using F = C × 9/5 + 32: {cs} × 9/5 + 32 = {ft}."])
    else:
        f = Fraction(rng.randint(-4, 110))
        c = f_to_c(f)
        ct, exact = fmt_frac(c)
        fs = trim_num(f)
        approx = "" if exact else "about "
        eq = "=" if exact else "≈"
        if with_input:
            instr, inp = rng.choice(["Convert this temperature to Celsius.",
                                     "Express the temperature below in degrees Celsius."]), f"{fs} °F"
        else:
            instr = rng.choice([f"Convert {fs} degrees Fahrenheit to Celsius.",
                                f"What is {fs} °F in Celsius?",
                                f"A recipe says to keep the water at {fs} °F. What is that in °C?"])
            inp = ""
        out = rng.choice([f"{fs} °F is {approx}{ct} °C.",
                          f"{fs} °F is {approx}{ct} °C. Using C = (F - 32) × 5/9: ({fs} - 32) × 5/9 {eq} {ct}."])
    return instr, inp, out


def gen_time(rng, with_input):
    if rng.random() < 0.5:
        h = rng.choice([Fraction(rng.randint(2, 24)), Fraction(rng.choice([3, 5, 7, 9, 13, 15]), 2),
                        Fraction(rng.choice([5, 9, 11, 15]), 4)])
        hs = trim_num(h)
        m = int(h * 60)
        if with_input:
            instr, inp = "Convert the following duration to minutes.", f"{hs} hours"
        else:
            instr = rng.choice([f"How many minutes are there in {hs} hours?", f"Convert {hs} hours to minutes.",
                                f"A film lasts {hs} hours. How many minutes is that?"])
            inp = ""
        out = rng.choice([f"{hs} hours is {m} minutes.",
                          f"{hs} hours is {m} minutes, because each hour has 60 minutes and {hs} × 60 = {m}."])
    else:
        m = rng.randint(61, 720)
        hs, exact = fmt_frac(Fraction(m, 60))
        if with_input:
            instr, inp = "Convert the following duration to hours and minutes.", f"{m} minutes"
        else:
            instr = rng.choice([f"How many hours and minutes is {m} minutes?", f"Convert {m} minutes to hours.",
                                f"A meeting ran for {m} minutes. How long is that in hours?"])
            inp = ""
        dec = f"{hs} hours" if exact else f"about {hs} hours"
        out = rng.choice([f"{m} minutes is {hm_text(m)}, or {dec}.",
                          f"{m} minutes is {hm_text(m)}. Dividing by 60 gives {m // 60} with a remainder of {m % 60}, "
                          f"which is {dec} in decimal form."])
    return instr, inp, out


def gen_reverse(rng, with_input):
    w = rng.choice(WORDS)
    r = w[::-1]
    if with_input:
        instr, inp = rng.choice(["Reverse the letters of the given word.", "Write the word below backwards."]), w
    else:
        instr = rng.choice([f"Reverse the word '{w}'.", f"Write '{w}' backwards.", f"What is '{w}' spelled in reverse?"])
        inp = ""
    out = rng.choice([f"'{w}' reversed is '{r}'.", f"Spelled backwards, '{w}' becomes '{r}'.",
                      f"The reversed word is '{r}'. It has the same {len(w)} letters as '{w}', in the opposite order."])
    return instr, inp, out


def gen_vowels(rng, with_input):
    if with_input and rng.random() < 0.6:
        s = rng.choice(SENTENCES)
        n = len(vowels_of(s))
        instr = rng.choice(["Count the vowels in the following sentence.",
                            "How many vowels does this sentence contain?"])
        out = f"The sentence contains {plural(n, 'vowel')}, counting a, e, i, o and u in either case."
        return instr, s, out
    w = rng.choice(WORDS)
    vs = vowels_of(w)
    n = len(vs)
    if with_input:
        instr, inp = "Count the vowels in the given word.", w
    else:
        instr = rng.choice([f"How many vowels are in the word '{w}'?", f"Count the vowels in '{w}'."])
        inp = ""
    out = rng.choice([f"The word '{w}' has {plural(n, 'vowel')}: {', '.join(vs)}.",
                      f"There are {plural(n, 'vowel')} in '{w}' ({', '.join(vs)}), counting a, e, i, o and u."])
    return instr, inp, out


def gen_letters(rng, with_input):
    kind = rng.randrange(3)
    if kind == 0:
        s = rng.choice(SENTENCES)
        n = sum(ch.isalpha() for ch in s)
        if with_input:
            instr, inp = "Count the letters in the sentence below, ignoring spaces and punctuation.", s
        else:
            instr, inp = f"How many letters are in the sentence \"{s}\", not counting spaces or punctuation?", ""
        out = f"The sentence has {plural(n, 'letter')} once spaces and punctuation are left out."
    elif kind == 1:
        w = rng.choice(WORDS)
        if with_input:
            instr, inp = "How many letters does this word have?", w
        else:
            instr, inp = rng.choice([f"How many letters are in the word '{w}'?", f"Count the letters in '{w}'."]), ""
        out = f"The word '{w}' has {plural(len(w), 'letter')}."
    else:
        w = rng.choice(WORDS)
        c = rng.choice(sorted(set(w))) if rng.random() < 0.85 else rng.choice([x for x in "bcdfgkmpstz" if x not in w] or ["q"])
        n = w.count(c)
        if with_input:
            instr, inp = f"How many times does the letter '{c}' appear in the word below?", w
        else:
            instr, inp = f"How many times does the letter '{c}' appear in '{w}'?", ""
        if n == 0:
            out = f"The letter '{c}' does not appear in '{w}' at all, so the count is 0."
        else:
            out = f"The letter '{c}' appears {'once' if n == 1 else plural(n, 'time')} in '{w}'."
    return instr, inp, out


def gen_upper(rng, with_input):
    s = rng.choice(SENTENCES)
    if with_input:
        instr, inp = rng.choice(["Convert this sentence to uppercase.", "Rewrite the sentence below in capital letters."]), s
    else:
        instr, inp = rng.choice([f"Write this sentence in uppercase: {s}", f"Convert to capital letters: {s}"]), ""
    out = rng.choice([s.upper(), f"Here it is in uppercase: {s.upper()}"])
    return instr, inp, out


def gen_sort(rng, with_input):
    ws = rng.sample(SORT_WORDS, rng.randint(4, 7))
    srt = sorted(ws)
    if with_input:
        instr, inp = rng.choice(["Sort the following words in alphabetical order.",
                                 "Put these words into alphabetical order."]), ", ".join(ws)
    else:
        instr, inp = rng.choice([f"Sort these words alphabetically: {', '.join(ws)}.",
                                 f"Arrange the words {join_and(ws)} in alphabetical order."]), ""
    out = rng.choice([f"In alphabetical order, the words are: {', '.join(srt)}.",
                      f"Sorted alphabetically: {', '.join(srt)}. The first word is '{srt[0]}' and the last is '{srt[-1]}'."])
    return instr, inp, out


def gen_dedupe(rng, with_input):
    if rng.random() < 0.5:
        base = rng.sample(SORT_WORDS, rng.randint(4, 6))
    else:
        base = [str(x) for x in rng.sample(range(1, 60), rng.randint(4, 6))]
    items = list(base)
    d = rng.randint(2, 4)
    for _ in range(d):
        src = rng.randrange(len(base))
        pos = rng.randint(items.index(base[src]) + 1, len(items))
        items.insert(pos, base[src])
    result = list(dict.fromkeys(items))
    assert result == base
    if with_input:
        instr, inp = rng.choice(["Remove the duplicates from this list, keeping the original order.",
                                 "Deduplicate the following list."]), ", ".join(items)
    else:
        instr, inp = f"Remove duplicate entries from the list {', '.join(items)} and keep the first occurrence of each.", ""
    out = (f"Without duplicates, the list is: {', '.join(result)}. "
           f"{cap(num_word(d))} repeated {'entry was' if d == 1 else 'entries were'} removed.")
    return instr, inp, out


def gen_stats(rng, with_input):
    # Always uses the input field: the numbers are given there.
    n = rng.randint(4, 8)
    lo = rng.choice([1, 1, -20])
    xs = [rng.randint(lo, 99) for _ in range(n)]
    op = rng.choice(["max", "min", "sum", "mean"])
    inp = numlist(xs)
    if op == "max":
        instr = rng.choice(["Find the largest number in the list.", "What is the maximum of these numbers?"])
        out = rng.choice([f"The maximum is {max(xs)}.",
                          f"The largest number is {max(xs)}; no other value in the list is greater."])
    elif op == "min":
        instr = rng.choice(["Find the smallest number in the list.", "What is the minimum of these numbers?"])
        out = rng.choice([f"The minimum is {min(xs)}.",
                          f"The smallest number is {min(xs)}; every other value in the list is at least as large."])
    elif op == "sum":
        instr = rng.choice(["Add up the numbers below.", "What is the sum of these numbers?",
                            "Compute the total of the following numbers."])
        out = rng.choice([f"The sum is {sum(xs)}.", f"The numbers add up to {sum(xs)}."])
    else:
        mean = Fraction(sum(xs), n)
        mt, exact = fmt_frac(mean)
        instr = rng.choice(["Compute the mean of these numbers.", "What is the average of the following numbers?"])
        word = "is" if exact else "is about"
        out = f"The mean {word} {mt}. The {n} numbers add up to {sum(xs)}, and {sum(xs)} ÷ {n} {'=' if exact else '≈'} {mt}."
    return instr, inp, out


def gen_date(rng, with_input):
    d = random_date(rng)
    iso = d.isoformat()
    if with_input:
        instr, inp = rng.choice(["Give the day of the week for the date below.",
                                 "Which day of the week does this date fall on?"]), iso
    else:
        instr, inp = rng.choice([f"What day of the week is {iso}?", f"Which weekday does {iso} fall on?",
                                 f"On what day of the week is the date {iso}?"]), ""
    out = rng.choice([f"{iso} ({long_date(d)}) falls on a {day_name(d)}.",
                      f"{long_date(d)} is a {day_name(d)}."])
    return instr, inp, out


def gen_python(rng, with_input):
    e, v, ex = make_snippet(rng)
    if with_input:
        instr, inp = rng.choice(["Explain what the following Python expression evaluates to.",
                                 "What does this Python expression return?"]), e
    else:
        instr, inp = rng.choice([f"What does `{e}` return in Python?", f"What is the result of evaluating `{e}` in Python?",
                                 f"In Python, what value does `{e}` produce?"]), ""
    out = f"`{e}` evaluates to `{v!r}`. {ex}"
    return instr, inp, out


def passive_pair(item):
    subj, past, pp, obj, obj_plural = item
    active = f"{cap(subj)} {past} {obj}."
    was = "were" if obj_plural else "was"
    passive = f"{cap(obj)} {was} {pp} by {subj}."
    return active, passive, was


def gen_passive(rng, with_input):
    item = rng.choice(PASSIVE_ITEMS)
    active, passive, was = passive_pair(item)
    if rng.random() < 0.3:
        # The reverse direction: passive -> active.
        if with_input:
            instr, inp = "Rewrite the sentence below in the active voice.", passive
        else:
            instr, inp = f"Rewrite this sentence in the active voice: {passive}", ""
        out = rng.choice([active, f"In the active voice: {active}"])
        return instr, inp, out
    if with_input:
        instr, inp = rng.choice(["Rewrite the sentence below in the passive voice.",
                                 "Change this sentence from active to passive voice."]), active
    else:
        instr, inp = rng.choice([f"Rewrite this sentence in the passive voice: {active}",
                                 f"Put the following sentence into the passive voice: {active}"]), ""
    out = rng.choice([passive,
                      f"{passive} The object '{item[3]}' becomes the subject, and the verb becomes '{was} {item[2]}'."])
    return instr, inp, out


def gen_imperative(rng, with_input):
    vp = rng.choice(IMPERATIVE_PHRASES)
    src = rng.choice(IMPERATIVE_SOURCES).format(vp=vp)
    imp = cap(vp) + "."
    if with_input:
        instr, inp = rng.choice(["Rewrite the sentence below as a direct command.",
                                 "Turn this sentence into the imperative mood."]), src
    else:
        instr, inp = rng.choice([f"Rewrite as an imperative sentence: {src}",
                                 f"Turn this into a direct command: {src}"]), ""
    out = rng.choice([imp, f"As a command: {imp}", f"{imp} The imperative starts with the verb and drops the subject."])
    return instr, inp, out


class GlossaryCycle:
    """Hands out glossary entries in a shuffled cycle so terms are spread evenly."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.queue: list = []

    def next(self):
        if not self.queue:
            self.queue = list(GLOSSARY)
            self.rng.shuffle(self.queue)
        return self.queue.pop()


def gen_gloss_factory(cycle: GlossaryCycle):
    def gen_gloss(rng, with_input):
        term, ask, _cat, related, text = cycle.next()
        if with_input:
            instr, inp = rng.choice(["Define the following term.", "Give a brief definition of the term below.",
                                     "Explain this computing term in one or two sentences."]), term
        else:
            instr, inp = rng.choice([f"What is {ask}?", f"Define {term}.",
                                     f"Explain what {ask} is in one or two sentences.",
                                     f"Give a short definition of {term}.",
                                     f"What does the term '{term}' mean?"]), ""
        out = text
        if rng.random() < 0.3:
            out += f" A closely related concept is {GLOSS_BY_TERM[related][1]}."
        return instr, inp, out
    return gen_gloss


def make_alpaca(rng: random.Random) -> list[dict]:
    cycle = GlossaryCycle(rng)
    plan = [
        (gen_arith, 30, False), (gen_word, 25, False), (gen_km, 20, False),
        (gen_temp, 18, False), (gen_time, 16, False), (gen_reverse, 12, False),
        (gen_vowels, 12, False), (gen_letters, 12, False), (gen_upper, 10, False),
        (gen_sort, 12, False), (gen_dedupe, 10, False), (gen_stats, 28, True),
        (gen_date, 20, False), (gen_python, 30, False), (gen_passive, 14, False),
        (gen_imperative, 14, False), (gen_gloss_factory(cycle), 37, False),
    ]
    schedule = []
    for gen, count, forced_input in plan:
        schedule += [(gen, forced_input)] * count
    assert len(schedule) == N_ALPACA, len(schedule)
    rng.shuffle(schedule)
    forced = [i for i, (_, f) in enumerate(schedule) if f]
    free = [i for i, (_, f) in enumerate(schedule) if not f]
    with_input = set(forced) | set(rng.sample(free, N_ALPACA_WITH_INPUT - len(forced)))

    rows, seen = [], set()
    for i, (gen, _) in enumerate(schedule):
        for _attempt in range(100):
            instr, inp, out = gen(rng, i in with_input)
            key = (instr, inp)
            if key not in seen:
                break
        else:
            raise RuntimeError(f"could not make a unique row with {gen.__name__}")
        seen.add(key)
        rows.append({"instruction": instr, "input": inp, "output": out})
    return rows


# --------------------------------------------------------------------------
# Conversations (chat-mini and sharegpt-mini)
#
# Each conversation generator takes (rng, n) and returns n exchanges
# (user, short_answer, long_answer); follow-up questions refer to the
# previous answer.
# --------------------------------------------------------------------------

def conv_arith(rng, n):
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(3, 40), rng.randint(3, 40)
        v = a * b
        q = rng.choice([f"What is {a} × {b}?", f"Can you multiply {a} by {b}?", f"What's {a} times {b}?"])
        long = f"{a} × {b} = {v}. {mult_explanation(a, b)}"
    elif op == "+":
        a, b = rng.randint(10, 500), rng.randint(10, 500)
        v = a + b
        q = rng.choice([f"What is {a} + {b}?", f"Can you add {a} and {b} for me?", f"What's {a} plus {b}?"])
        long = f"{a} + {b} = {v}. You can check it by subtracting: {v} - {b} = {a}."
    else:
        a, b = rng.randint(100, 900), rng.randint(10, 99)
        v = a - b
        q = rng.choice([f"What is {a} - {b}?", f"What's {a} minus {b}?", f"Can you subtract {b} from {a}?"])
        long = f"{a} - {b} = {v}. Check: {v} + {b} = {a}."
    sym = {"+": "+", "-": "-", "*": "×"}[op]
    ex = [(q, f"{a} {sym} {b} = {v}.", long)]
    asked_parity = False
    while len(ex) < n:
        choice = rng.choice(["double", "add", "sub", "parity", "half", "square"])
        if choice == "double":
            ex.append((rng.choice(["And if I double it?", "What if I double that?"]),
                       f"Doubling it gives {2 * v}.", f"Doubling {v} gives {2 * v}, since {v} × 2 = {2 * v}."))
            v *= 2
        elif choice == "add":
            k = rng.randint(5, 99)
            ex.append((f"Now add {k} to that.", f"That gives {v + k}.", f"{v} + {k} = {v + k}."))
            v += k
        elif choice == "sub":
            k = rng.randint(5, 99)
            ex.append((f"And if I subtract {k} from the result?", f"You get {v - k}.", f"{v} - {k} = {v - k}."))
            v -= k
        elif choice == "parity" and not asked_parity:
            asked_parity = True
            even = v % 2 == 0
            ex.append(("Is that number even or odd?", f"{v} is {'even' if even else 'odd'}.",
                       f"{v} is {'even' if even else 'odd'}, because its last digit is {str(abs(v))[-1]}"
                       f"{', which is even' if even else ', which is odd'}."))
        elif choice == "half" and v % 2 == 0:
            ex.append(("What is half of it?", f"Half of {v} is {v // 2}.", f"Half of {v} is {v // 2}, since {v} ÷ 2 = {v // 2}."))
            v //= 2
        elif choice == "square" and abs(v) < 200:
            ex.append(("What is that number squared?", f"{v} squared is {v * v}.", f"{v} squared is {v} × {v} = {v * v}."))
            v = v * v
    return ex


def conv_word(rng, n):
    name, he = rng.choice(NAMES)
    sing, plur = rng.choice(ITEMS)
    a, b = rng.randint(5, 40), rng.randint(3, 30)
    v = a + b
    ex = [(f"{name} has {a} {plur} and buys {b} more. How many does {he} have now?",
           f"{name} has {v} {plur} now.", f"{name} has {v} {plur} now, because {a} + {b} = {v}.")]
    steps = {1: [], 2: [rng.choice(["give", "share"])], 3: ["give", "share"]}[n]
    for what in steps:
        if what == "give":
            c = rng.randint(1, v - 2)
            ex.append((f"And if {he} then gives {c} away?", f"Then {he} has {plural(v - c, sing, plur)} left.",
                       f"Then {he} has {plural(v - c, sing, plur)} left, since {v} - {c} = {v - c}."))
            v -= c
        else:
            k = rng.randint(2, 6)
            q, r = divmod(v, k)
            rem = f", with {r} left over" if r else ", with none left over"
            ex.append((f"If {he} shares them equally among {k} friends, how many does each friend get?",
                       f"Each friend gets {q}{rem}.",
                       f"Each friend gets {q}{rem}, because {v} ÷ {k} is {q} remainder {r}."))
    return ex


def conv_km(rng, n):
    km = Fraction(rng.randint(2, 120))
    ks = trim_num(km)
    mi = miles_text(km)
    ex = [(rng.choice([f"How many miles is {ks} km?", f"Can you convert {ks} kilometers to miles?"]),
           f"{ks} km is about {mi} miles.",
           f"{ks} km is about {mi} miles. Multiply by {MILES_PER_KM_TEXT}: {ks} × {MILES_PER_KM_TEXT} ≈ {mi}.")]
    pool = ["double", "meters", "time"]
    rng.shuffle(pool)
    for what in pool[: n - 1]:
        if what == "double":
            mi2 = miles_text(2 * km)
            ex.append(("And twice that distance?", f"{trim_num(2 * km)} km is about {mi2} miles.",
                       f"Twice the distance is {trim_num(2 * km)} km, which is about {mi2} miles."))
        elif what == "meters":
            ex.append(("How many meters is the original distance?", f"{ks} km is {int(km * 1000)} meters.",
                       f"{ks} km is {int(km * 1000)} meters, because one kilometer is 1000 meters."))
        else:
            s = rng.choice([4, 5, 10, 15, 20, 30, 60])
            mins = km / s * 60
            mt, exact = fmt_frac(mins)
            if exact:
                tt = hm_text(int(mins)) if mins.denominator == 1 else f"{mt} minutes"
            else:
                tt = f"about {mt} minutes"
            ex.append((f"How long would it take at {s} km/h?", f"It would take {tt}.",
                       f"At {s} km/h it would take {tt}, since time is distance divided by speed: {ks} ÷ {s} × 60 minutes."))
    return ex


def conv_temp(rng, n):
    c = Fraction(rng.randint(-20, 40))
    ft, _ = fmt_frac(c_to_f(c))
    cs = trim_num(c)
    ex = [(rng.choice([f"What is {cs} °C in Fahrenheit?", f"Convert {cs} degrees Celsius to Fahrenheit, please."]),
           f"{cs} °C is {ft} °F.", f"{cs} °C is {ft} °F, using F = C × 9/5 + 32.")]
    pool = ["kelvin", "warmer", "freezing"]
    rng.shuffle(pool)
    for what in pool[: n - 1]:
        if what == "kelvin":
            k = c + Fraction(27315, 100)
            ex.append(("And in Kelvin?", f"{cs} °C is {trim_num(k)} K.",
                       f"{cs} °C is {trim_num(k)} K, because you add 273.15 to the Celsius value."))
        elif what == "warmer":
            d = rng.randint(2, 15)
            c = c + d
            cs = trim_num(c)
            ft, _ = fmt_frac(c_to_f(c))
            ex.append((f"What if it gets {d} degrees Celsius warmer?", f"Then it is {cs} °C, which is {ft} °F.",
                       f"Then the temperature is {cs} °C, which is {ft} °F."))
        else:
            rel = "above" if c > 0 else ("below" if c < 0 else "exactly at")
            ex.append(("Is that above or below freezing?", f"{cs} °C is {rel} freezing.",
                       f"{cs} °C is {rel} the freezing point of water, which is 0 °C or 32 °F."))
    return ex


def conv_time(rng, n):
    h = rng.randint(2, 12)
    m = h * 60
    ex = [(rng.choice([f"How many minutes are in {h} hours?", f"Convert {h} hours to minutes."]),
           f"{h} hours is {m} minutes.", f"{h} hours is {m} minutes, because {h} × 60 = {m}.")]
    pool = ["seconds", "add"]
    rng.shuffle(pool)
    for what in pool[: n - 1]:
        if what == "seconds":
            ex.append(("And how many seconds is that?", f"{m} minutes is {m * 60} seconds.",
                       f"{m} minutes is {m * 60} seconds, since each minute has 60 seconds."))
        else:
            k = rng.randint(5, 95)
            m += k
            ex.append((f"If I add {k} more minutes, how long is that?", f"That makes {m} minutes, or {hm_text(m)}.",
                       f"Adding {k} minutes gives {m} minutes in total, which is {hm_text(m)}."))
    return ex


def conv_reverse(rng, n):
    w = rng.choice(WORDS)
    r = w[::-1]
    ex = [(rng.choice([f"Can you reverse the word '{w}'?", f"How is '{w}' spelled backwards?"]),
           f"'{w}' reversed is '{r}'.", f"Reading '{w}' from the last letter to the first gives '{r}'.")]
    pool = ["upper", "length", "palindrome"]
    rng.shuffle(pool)
    for what in pool[: n - 1]:
        if what == "upper":
            ex.append(("Now write that in uppercase.", f"In uppercase it is {r.upper()}.", f"In uppercase, '{r}' is {r.upper()}."))
        elif what == "length":
            ex.append(("How many letters does it have?", f"It has {len(r)} letters.",
                       f"It has {len(r)} letters, the same as '{w}', since reversing does not change the length."))
        else:
            pal = w == r
            ex.append(("Is the original word a palindrome?",
                       "Yes, it is." if pal else f"No, '{w}' is not a palindrome.",
                       f"{'Yes' if pal else 'No'}: a palindrome reads the same backwards, and '{w}' reversed is '{r}'."))
    return ex


def conv_vowels(rng, n):
    w = rng.choice(WORDS)
    vs = vowels_of(w)
    ex = [(f"How many vowels are in the word '{w}'?", f"'{w}' has {plural(len(vs), 'vowel')}.",
           f"'{w}' has {plural(len(vs), 'vowel')}, counting a, e, i, o and u.")]
    pool = ["which", "consonants"]
    rng.shuffle(pool)
    for what in pool[: n - 1]:
        if what == "which":
            ex.append(("Which vowels are they, in order?", f"They are {join_and(vs)}.",
                       f"In order of appearance they are {join_and(vs)}."))
        else:
            c = len(w) - len(vs)
            ex.append(("And how many consonants?", f"It has {plural(c, 'consonant')}.",
                       f"It has {plural(c, 'consonant')}: the word has {len(w)} letters and {len(vs)} of them are vowels."))
    return ex


def conv_list(rng, n):
    xs = [rng.randint(1, 60) for _ in range(rng.randint(4, 6))]
    ex = [(f"What is the sum of {numlist(xs)}?", f"The sum is {sum(xs)}.",
           f"The sum is {sum(xs)}: {' + '.join(map(str, xs))} = {sum(xs)}.")]
    pool = ["mean", "max", "remove"]
    rng.shuffle(pool)
    for what in pool[: n - 1]:
        if what == "mean":
            mt, exact = fmt_frac(Fraction(sum(xs), len(xs)))
            w = "is" if exact else "is about"
            ex.append(("And the mean?", f"The mean {w} {mt}.",
                       f"The mean {w} {mt}, which is the sum {sum(xs)} divided by the {len(xs)} numbers."))
        elif what == "max":
            ex.append(("Which number is the largest?", f"The largest is {max(xs)}.",
                       f"The largest number in the list is {max(xs)}."))
        else:
            m = max(xs)
            ex.append(("What's the sum if I remove the largest one?", f"Then the sum is {sum(xs) - m}.",
                       f"Removing {m} leaves a sum of {sum(xs)} - {m} = {sum(xs) - m}."))
    return ex


def conv_sort(rng, n):
    ws = rng.sample(SORT_WORDS, rng.randint(4, 6))
    srt = sorted(ws)
    ex = [(f"Sort these words alphabetically: {', '.join(ws)}.", f"In alphabetical order: {', '.join(srt)}.",
           f"In alphabetical order they are: {', '.join(srt)}.")]
    pool = ["reverse", "longest", "count"]
    rng.shuffle(pool)
    for what in pool[: n - 1]:
        if what == "reverse":
            r = list(reversed(srt))
            ex.append(("Now list them in reverse order.", f"Reversed: {', '.join(r)}.", f"In reverse alphabetical order: {', '.join(r)}."))
        elif what == "longest":
            L = max(len(x) for x in srt)
            longest = [x for x in srt if len(x) == L]
            if len(longest) == 1:
                s = f"The longest word is '{longest[0]}', with {L} letters."
            else:
                s = f"The longest words are {join_and([repr(x) for x in longest])}, each with {L} letters."
            ex.append(("Which word is the longest?", s, s))
        else:
            ex.append(("How many words are there?", f"There are {len(ws)} words.",
                       f"There are {num_word(len(ws))} words in the list."))
    return ex


def conv_date(rng, n):
    d = random_date(rng)
    iso = d.isoformat()
    ex = [(rng.choice([f"What day of the week is {iso}?", f"Which weekday is {iso}?"]),
           f"{iso} is a {day_name(d)}.", f"{long_date(d)} is a {day_name(d)}.")]
    if n == 1:
        return ex
    if rng.random() < 0.6:
        d1 = d + datetime.timedelta(days=7)
        ex.append(("And one week later?", f"{d1.isoformat()} is also a {day_name(d1)}.",
                   f"One week later is {d1.isoformat()}, which is also a {day_name(d1)}, because seven days make a full week."))
    else:
        k = rng.choice([10, 30, 100])
        d1 = d + datetime.timedelta(days=k)
        ex.append((f"And {k} days after that?", f"{d1.isoformat()} is a {day_name(d1)}.",
                   f"{k} days later is {d1.isoformat()} ({long_date(d1)}), which is a {day_name(d1)}."))
    if n == 3:
        d2 = d1 + datetime.timedelta(days=1)
        ex.append(("What about the day after that?", f"{d2.isoformat()} is a {day_name(d2)}.",
                   f"The day after that is {d2.isoformat()}, a {day_name(d2)}."))
    return ex


def conv_gloss(rng, n, cycle: GlossaryCycle):
    term, ask, cat, related, text = cycle.next()
    ex = [(rng.choice([f"What is {ask}?", f"Can you explain {ask}?", f"What does '{term}' mean?"]), text, text)]
    seen = {term}
    cur = term
    while len(ex) < n:
        rel = GLOSS_BY_TERM[cur][3]
        if rel not in seen:
            g = GLOSS_BY_TERM[rel]
            asked = {u for u, _, _ in ex}
            q = rng.choice([x for x in ["What's a closely related term?", "Is there a related idea I should know about?",
                                        "What is related to that?"] if x not in asked])
            ex.append((q, f"A closely related concept is {g[1]}. {g[4]}", f"A closely related concept is {g[1]}. {g[4]}"))
        else:
            others = [g for g in GLOSSARY if g[2] == cat and g[0] not in seen]
            g = rng.choice(others)
            ex.append((f"Tell me one more {cat} term.", f"Here is one: {g[0]}. {g[4]}", f"Here is one: {g[0]}. {g[4]}"))
        seen.add(g[0])
        cur = g[0]
    return ex


def conv_python(rng, n):
    e, v, expl = make_snippet(rng)
    ex = [(rng.choice([f"What does `{e}` return in Python?", f"What is the value of `{e}`?"]),
           f"It returns `{v!r}`.", f"`{e}` evaluates to `{v!r}`. {expl}")]
    pool = ["type", "truthy"]
    rng.shuffle(pool)
    for what in pool[: n - 1]:
        if what == "type":
            tn = type(v).__name__
            ex.append(("What type is that result?", f"It is {TYPE_DESCRIPTIONS[tn].split(',')[0]}.",
                       f"The result is {TYPE_DESCRIPTIONS[tn]}."))
        else:
            t = bool(v)
            ex.append(("Is it truthy?", "Yes, it is truthy." if t else "No, it is falsy.",
                       f"{'Yes' if t else 'No'}: bool({v!r}) is {t}, so the value is {'truthy' if t else 'falsy'}."))
    return ex


def conv_passive(rng, n):
    item = rng.choice(PASSIVE_ITEMS)
    active, passive, _ = passive_pair(item)
    ex = [(f"Can you rewrite \"{active}\" in the passive voice?", passive, f"In the passive voice it becomes: {passive}")]
    pool = ["back", "who"]
    rng.shuffle(pool)
    for what in pool[: n - 1]:
        if what == "back":
            ex.append(("And back to the active voice?", active, f"Back in the active voice: {active}"))
        else:
            ex.append(("Who performs the action in that sentence?", f"The doer is {item[0]}.",
                       f"The action is performed by {item[0]}; in the passive sentence, the doer appears after 'by'."))
    return ex


MATH_CONVS = [conv_arith, conv_word, conv_km, conv_temp, conv_time, conv_list]
WORD_CONVS = [conv_reverse, conv_vowels, conv_sort, conv_passive]
CODE_CONVS = [conv_python, conv_gloss]

PERSONAS = [
    ("You are a concise math tutor.", "short", MATH_CONVS),
    ("You are a helpful assistant.", "long", MATH_CONVS + WORD_CONVS + CODE_CONVS + [conv_date]),
    ("You are a friendly teaching assistant who explains each step.", "long", MATH_CONVS + [conv_date]),
    ("You are a patient tutor for beginner programmers.", "long", CODE_CONVS + WORD_CONVS),
    ("You are a precise assistant. Keep answers brief and exact.", "short",
     MATH_CONVS + WORD_CONVS + CODE_CONVS + [conv_date]),
]
ALL_CONVS = MATH_CONVS + WORD_CONVS + CODE_CONVS + [conv_date]


def make_conversations(rng: random.Random, total: int, n_system: int, n_multi: int,
                       cycle: GlossaryCycle) -> list[list[dict]]:
    """Return conversations as lists of {"role", "content"} messages."""
    system_idx = set(rng.sample(range(total), n_system))
    multi_idx = set(rng.sample(range(total), n_multi))
    convs, seen = [], set()
    for i in range(total):
        for _attempt in range(100):
            n = rng.choice([2, 3]) if i in multi_idx else 1
            msgs = []
            if i in system_idx:
                prompt, style, pool = rng.choice(PERSONAS)
                msgs.append({"role": "system", "content": prompt})
            else:
                style, pool = rng.choice(["short", "long"]), ALL_CONVS
            gen = rng.choice(pool)
            ex = gen(rng, n, cycle) if gen is conv_gloss else gen(rng, n)
            assert len(ex) == n, (gen.__name__, n, len(ex))
            for user, short, long in ex:
                msgs.append({"role": "user", "content": user})
                msgs.append({"role": "assistant", "content": short if style == "short" else long})
            key = json.dumps(msgs, ensure_ascii=False)
            if key not in seen:
                break
        else:
            raise RuntimeError("could not make a unique conversation")
        seen.add(key)
        convs.append(msgs)
    return convs


# --------------------------------------------------------------------------
# text-mini generators
# --------------------------------------------------------------------------

def character(rng):
    pool = NAMES_NON_ASCII if rng.random() < 0.12 else NAMES
    name, he = rng.choice(pool)
    return {
        "name": name, "he": he, "He": cap(he),
        "him": "him" if he == "he" else "her",
        "his": "his" if he == "he" else "her", "His": "His" if he == "he" else "Her",
    }


def story(rng) -> str:
    c = character(rng)
    n, he, He, his, His, him = c["name"], c["he"], c["He"], c["his"], c["His"], c["him"]
    friend = rng.choice([x[0] for x in NAMES if x[0] != n])
    kind = rng.randrange(13)
    if kind == 0:
        cups, loaves = rng.randint(2, 5), rng.randint(1, 3)
        s = [f"{n} decided to bake bread on a quiet Sunday morning.",
             f"{He} mixed {num_word(cups)} cups of flour with water, salt and a little yeast.",
             f"While the dough rose, {he} tidied the kitchen and made a pot of tea.",
             f"By noon there {'was one loaf' if loaves == 1 else f'were {num_word(loaves)} loaves'} cooling on the table.",
             f"{He} gave the warmest slice to {friend}, who lived next door."]
    elif kind == 1:
        coins = rng.randint(20, 60)
        k, p = rng.randint(2, 6), rng.randint(2, 4)
        s = [f"{n} walked to the market with {coins} coins in {his} pocket.",
             f"{He} bought {num_word(k)} apples at {num_word(p)} coins each, which left {coins - k * p} coins.",
             f"At the next stall a woman was selling honey in small glass jars.",
             (f"{n} chatted with her about the weather before heading home.", 2)]
    elif kind == 2:
        s = [f"{n}'s bicycle had a flat tire one morning.",
             f"{He} turned the bike upside down and found a tiny thorn stuck in the rubber.",
             (f"After patching the hole, {he} pumped the tire back up.", 1),
             f"By lunchtime {he} was riding along the river path again.",
             f"{He} promised {him}self to check the tires every week."]
        if rng.random() < 0.3:
            s[3] = f"By lunchtime {he} was riding along the river path again 🚲."
    elif kind == 3:
        k, d = rng.randint(2, 6), rng.choice([7, 14, 21])
        topic = rng.choice(["lighthouses", "old maps", "bees", "volcanoes", "sailing ships", "mushrooms"])
        s = [f"{n} spent a rainy afternoon at the town library.",
             f"{He} borrowed {num_word(k)} books about {topic}.",
             (f"The librarian reminded {him} to bring them back within {d} days.", 1),
             (f"On the walk home, {n} was already reading the first of them.", 1)]
    elif kind == 4:
        r, per = rng.randint(2, 6), rng.randint(3, 9)
        s = [f"{n} planted {num_word(r)} rows of tomatoes with {num_word(per)} plants in each row, {r * per} plants in total.",
             f"Every evening {he} watered them with a dented green can.",
             f"By midsummer the first fruit had turned red.",
             f"{He} picked a bowlful and shared it with {friend}."]
    elif kind == 5:
        s = [f"{n} met {friend} at a small café near the station.",
             f"They ordered two coffees and shared a slice of lemon cake.",
             f"{friend} asked a naïve question about why the sky is blue, and {n} did {his} best to explain.",
             f"They stayed until the café closed ☕."]
    elif kind == 6:
        laps, m = rng.randint(2, 5), rng.choice([300, 400, 500, 600, 800])
        s = [f"{n} took {his} dog for a walk around the park.",
             f"They walked {num_word(laps)} laps of {m} meters each, {laps * m} meters in all.",
             f"The dog stopped to sniff every single bench.",
             f"Back home, it fell asleep on the rug almost at once."]
    elif kind == 7:
        dep_h, dep_m = rng.randint(6, 10), rng.choice([0, 10, 15, 20, 30, 40, 45, 50])
        dur = rng.randint(70, 250)
        arr = dep_h * 60 + dep_m + dur
        s = [f"{n} took an early train to visit {his} aunt by the sea.",
             f"The train left at {dep_h:02d}:{dep_m:02d} and the journey took {hm_text(dur)}, "
             f"so it arrived at {arr // 60:02d}:{arr % 60:02d}.",
             f"{He} spent the trip reading a mystery novel.",
             f"{His} aunt was waiting on the platform with an umbrella."]
    elif kind == 8:
        weeks = rng.randint(3, 12)
        s = [f"{n} finally booked a trip to 東京 (Tokyo).",
             f"For {weeks} weeks before leaving, {he} practised a few Japanese phrases every evening.",
             f"{He} made a list of temples, markets and noodle shops to visit.",
             f"{friend} asked {him} to bring back a postcard 🗼."]
    elif kind == 9:
        pieces = rng.choice([300, 500, 750, 1000])
        s = [f"It rained all afternoon, so {n} stayed inside with a {pieces}-piece puzzle.",
             f"{He} sorted the edge pieces first, as {he} always did.",
             f"The picture showed a harbour full of little boats.",
             f"When the sun came out, {n} put the last piece in place 🧩."]
    elif kind == 10:
        people, ml = rng.randint(2, 8), rng.choice([250, 300, 350, 400])
        s = [f"{n} made vegetable soup for {num_word(people)} people.",
             f"{He} chopped carrots, onions and celery while the stock warmed up.",
             f"Each bowl held {ml} millilitres, so the pot needed at least {people * ml} millilitres of soup.",
             f"Everyone asked for a second bowl."]
    elif kind == 11:
        a, b, c3 = rng.randint(3, 9), rng.randint(3, 9), rng.randint(3, 12)
        s = [f"{n} is training for a ten-kilometre race.",
             f"This week {he} ran {a}, {b} and {c3} kilometres, {a + b + c3} kilometres in total.",
             f"{His} knees felt fine, which was a good sign.",
             f"{friend} offered to run the last session with {him}."]
    else:
        planks, mins = rng.randint(10, 30), rng.randint(3, 8)
        s = [f"{n} painted the garden fence a cheerful shade of blue.",
             f"There were {planks} planks, and each took about {mins} minutes, "
             f"so the job lasted roughly {hm_text(planks * mins)}.",
             f"A curious robin watched from the apple tree.",
             f"When {he} finished, {he} washed the brushes and admired the result."]
    return " ".join(pick_sentences(rng, s, 2, 5))


TOWN_PREFIX = ["Brindle", "Harrow", "Oak", "Salt", "Fern", "Copper", "Willow", "Ash", "Stone", "Marsh",
               "Raven", "Elder", "Thistle", "Kettle", "Moss", "Amber", "Heron", "Bramble", "Lark", "Cinder"]
TOWN_SUFFIX = ["wick", "mere", "hollow", "bridge", "ford", "dale", "stead", "by", "ton", "haven", "field", "combe"]


def town_name(rng) -> str:
    return rng.choice(TOWN_PREFIX) + rng.choice(TOWN_SUFFIX)


def town(rng) -> str:
    t = town_name(rng)
    t2 = town_name(rng)
    while t2 == t:
        t2 = town_name(rng)
    river = rng.choice(["Wend", "Alder", "Silt", "Carrow", "Mistle", "Tarn"])
    where = rng.choice([f"on the banks of the {river} River", "at the foot of a long line of chalk hills",
                        "beside a wide, shallow lake", "on a windy stretch of coast", "in a valley full of orchards"])
    old, new = rng.randint(400, 3000), rng.randint(200, 6000)
    known = rng.choice(["apple cider", "painted wooden doors", "autumn kite festival", "stone bridge with seven arches",
                        "enormous Saturday market", "pear orchards", "tiny railway museum", "blue-tiled bathhouse",
                        "clock that runs exactly five minutes fast", "annual pumpkin race"])
    height, year = rng.randint(12, 45), rng.randint(1650, 1920)
    month = rng.choice(MONTH_NAMES)
    fest = rng.choice(["lantern walk", "cheese fair", "boat race", "music week", "harvest supper", "storytelling festival"])
    days = rng.randint(2, 6)
    every = rng.choice([10, 15, 20, 30])
    hours = rng.randint(10, 16)
    extras = [
        "The café on the square is famous for its crème brûlée.",
        "A small noodle bar, run by a family from 東京, opened near the station last spring.",
        "The town's motto, painted above the hall door, is \"Slow and steady 🐢\".",
        "Visitors often stop at the bakery for a warm pain au chocolat and a café au lait.",
    ]
    s = [f"{t} is a small town {where}.",
         f"About {old + new:,} people live there: {old:,} in the old quarter and {new:,} in the newer streets to the east.",
         f"It is best known for its {known}.",
         f"The clock tower in the main square is {height} meters tall and was built in {year}.",
         f"Every {month}, the town holds a {fest} that lasts {num_word(days)} days.",
         f"A bus leaves for {t2} every {every} minutes, which makes {60 // every * hours} buses "
         f"during the {hours}-hour service day."]
    chosen = pick_sentences(rng, s, 2, 4)
    if rng.random() < 0.2:
        chosen.append(rng.choice(extras))
    return " ".join(chosen)


def smallest_factor(n: int) -> int:
    d = 2
    while d * d <= n:
        if n % d == 0:
            return d
        d += 1
    return n


def arithmetic_fact(rng) -> str:
    kind = rng.randrange(9)
    if kind == 0:
        a, b = rng.sample(range(10, 100), 2)
        return (f"The sum of {a} and {b} is {a + b}. Because addition is commutative, adding them in the other order, "
                f"{b} + {a}, gives the same result. Subtracting {b} from {a + b} takes you back to {a}.")
    if kind == 1:
        a, b = rng.randint(3, 30), rng.randint(31, 49)
        return f"{a} times {b} equals {a * b}. {mult_explanation(a, b)} Multiplication is commutative too, so {b} × {a} is also {a * b}."
    if kind == 2:
        n = rng.randint(11, 199)
        p = smallest_factor(n)
        if p == n:
            return (f"{n} is a prime number. Its only divisors are 1 and {n} itself. "
                    f"To check this, it is enough to try dividing by every prime up to the square root of {n}.")
        return (f"{n} is not a prime number. It can be written as {p} × {n // p}, so {p} is one of its divisors. "
                f"The smallest divisor greater than 1 of any composite number is always a prime.")
    if kind == 3:
        n = rng.randint(5, 40)
        return (f"The square of {n} is {n * n}. The next square, {n + 1} × {n + 1} = {(n + 1) ** 2}, "
                f"is larger by {2 * n + 1}, because (n + 1)² = n² + 2n + 1.")
    if kind == 4:
        n = rng.randint(100, 9999)
        s = sum(int(ch) for ch in str(n))
        ok = s % 3 == 0
        return (f"The digits of {n} add up to {s}. Since {s} is {'' if ok else 'not '}divisible by 3, "
                f"{n} is {'' if ok else 'not '}divisible by 3 either. This digit-sum test works for 3 and for 9.")
    if kind == 5:
        p = rng.choice([5, 10, 20, 25, 50, 75])
        n = rng.randint(1, 40) * 20
        v = Fraction(p * n, 100)
        return (f"{p}% of {n} is {trim_num(v)}. To find a percentage, multiply by the percent and divide by 100: "
                f"{n} × {p} ÷ 100 = {trim_num(v)}.")
    if kind == 6:
        a, b, c = rng.randint(1, 20), rng.randint(2, 12), rng.randint(2, 12)
        return (f"In the expression {a} + {b} × {c}, the multiplication is done first. "
                f"{b} × {c} = {b * c}, and then {a} + {b * c} = {a + b * c}. "
                f"With brackets, ({a} + {b}) × {c} gives a different answer: {(a + b) * c}.")
    if kind == 7:
        n = rng.randint(10, 500)
        even = n % 2 == 0
        if even:
            return f"{n} is an even number. Dividing it by 2 leaves no remainder: {n} ÷ 2 = {n // 2}."
        return f"{n} is an odd number. Dividing it by 2 leaves a remainder of 1, because {n} = 2 × {n // 2} + 1."
    a, b = rng.sample(range(2, 13), 2)
    return (f"Division undoes multiplication. Since {a} × {b} = {a * b}, it follows that {a * b} ÷ {b} = {a} "
            f"and {a * b} ÷ {a} = {b}.")


def glossary_prose(rng, entry) -> str:
    term, ask, cat, related, text = entry
    rel_ask, rel_text = GLOSS_BY_TERM[related][1], GLOSS_BY_TERM[related][4]
    frame = rng.randrange(4)
    if frame == 0:
        return f"{text} A closely related concept is {rel_ask}."
    if frame == 1:
        return f"Here is a term worth knowing: {term}. {text}"
    if frame == 2:
        return f"If you read about {cat}, you will meet the term \"{term}\". {text} It often comes up together with {rel_ask}."
    return f"{text} It is worth comparing with {rel_ask}. {rel_text}"


def make_text(rng: random.Random) -> list[dict]:
    texts = []
    seen = set()

    def add(fn):
        for _ in range(100):
            t = fn()
            if t not in seen:
                seen.add(t)
                texts.append(t)
                return
        raise RuntimeError("could not make a unique text row")

    for entry in GLOSSARY:
        add(lambda e=entry: glossary_prose(rng, e))
    n_rest = N_TEXT - len(GLOSSARY)
    kinds = ["story"] * 105 + ["town"] * 75
    kinds += ["fact"] * (n_rest - len(kinds))
    for k in kinds:
        add({"story": lambda: story(rng), "town": lambda: town(rng), "fact": lambda: arithmetic_fact(rng)}[k])
    rng.shuffle(texts)
    return [{"text": t} for t in texts]


# --------------------------------------------------------------------------
# Validation and output
# --------------------------------------------------------------------------

def check_messages(msgs, role_key, content_key, roles):
    sys_role, user_role, asst_role = roles
    assert msgs, "empty conversation"
    i = 0
    if msgs[0][role_key] == sys_role:
        i = 1
    rest = msgs[i:]
    assert len(rest) >= 2 and len(rest) % 2 == 0, msgs
    for j, m in enumerate(rest):
        assert set(m) == {role_key, content_key}, m
        assert m[role_key] == (user_role if j % 2 == 0 else asst_role), msgs
    for m in msgs:
        assert isinstance(m[content_key], str) and m[content_key].strip(), msgs
    assert msgs[-1][role_key] == asst_role


def validate(alpaca, chat, text, sharegpt):
    assert len(alpaca) == N_ALPACA and len(chat) == N_CHAT
    assert len(text) == N_TEXT and len(sharegpt) == N_SHAREGPT
    for r in alpaca:
        assert set(r) == {"instruction", "input", "output"}
        assert all(isinstance(v, str) for v in r.values())
        assert r["instruction"].strip() and r["output"].strip()
    assert sum(1 for r in alpaca if r["input"]) == N_ALPACA_WITH_INPUT
    for r in chat:
        assert set(r) == {"messages"}
        check_messages(r["messages"], "role", "content", ("system", "user", "assistant"))
    for r in sharegpt:
        assert set(r) == {"conversations"}
        check_messages(r["conversations"], "from", "value", ("system", "human", "gpt"))
    for r in text:
        assert set(r) == {"text"} and r["text"].strip()


def to_sharegpt(msgs):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in msgs]}


def write_jsonl(path: Path, rows) -> int:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path.write_bytes(data)
    return len(data)


def main() -> int:
    rng = random.Random(SEED)
    alpaca = make_alpaca(rng)
    cycle = GlossaryCycle(rng)
    chat = [{"messages": m} for m in make_conversations(rng, N_CHAT, 60, 80, cycle)]
    text = make_text(rng)
    sharegpt = [to_sharegpt(m) for m in make_conversations(rng, N_SHAREGPT, 18, 24, cycle)]
    validate(alpaca, chat, text, sharegpt)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, rows in [("alpaca-mini.jsonl", alpaca), ("chat-mini.jsonl", chat),
                       ("text-mini.jsonl", text), ("sharegpt-mini.jsonl", sharegpt)]:
        size = write_jsonl(OUT_DIR / name, rows)
        total += size
        print(f"{name}: {len(rows)} rows, {size} bytes")
    print(f"total: {total} bytes")
    if total >= MAX_TOTAL_BYTES:
        print(f"error: datasets exceed {MAX_TOTAL_BYTES} bytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
