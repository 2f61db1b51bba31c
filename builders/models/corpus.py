"""The project's own deterministic text corpus: simple English generated from word tables.

Every paragraph mixes templates with real, learnable structure (subject-verb agreement, counting,
small sums, weekday/month order, fixed facts, lists with totals). The generator uses only
`random.Random.random()`, whose sequence Python guarantees across versions, so the text is the same
on every machine. `corpus(seed)` is the training text; `heldout(seed)` uses other seeds and is never
trained on (builders/verify/prompts.py takes its perplexity text from it).
"""

from __future__ import annotations

import random
from typing import Callable

TRAIN_SEED = 20260101
TRAIN_BYTES = 300_000
ZIPF = 1.25  # word-choice skew; measured: fewer near-tie top-1 positions than 1.0, more structure than 1.5

NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
           "fifteen sixteen seventeen eighteen nineteen twenty").split()
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
MONTHS = ("january february march april may june july august september october november "
          "december").split()
LETTERS = "a b c d e f g h i j k l m n o p q r s t u v w x y z".split()

# singular -> plural
NOUNS = {
    "cat": "cats", "dog": "dogs", "bird": "birds", "child": "children", "farmer": "farmers",
    "teacher": "teachers", "fox": "foxes", "horse": "horses", "girl": "girls", "boy": "boys",
    "baker": "bakers", "mouse": "mice",
}
# base form -> third person singular
VERBS = {
    "sleep": "sleeps", "sit": "sits", "play": "plays", "wait": "waits", "sing": "sings",
    "read": "reads", "run": "runs", "rest": "rests",
}
PLACES = ("on the mat", "in the garden", "near the river", "under the tree", "at the school",
          "in the kitchen", "by the door", "on the hill")
ADJECTIVES = "small big happy old young quiet busy tired".split()
NAMES = "tom anna ben lucy sam mia leo emma".split()
FRUITS = {"apple": "apples", "pear": "pears", "lemon": "lemons", "plum": "plums", "orange": "oranges"}
# thing -> its color (fixed facts the model can learn)
FACTS = {
    "sky": "blue", "grass": "green", "snow": "white", "sun": "yellow", "night": "black",
    "blood": "red", "sea": "blue", "leaf": "green", "coal": "black", "milk": "white",
}


class Words:
    """Zipf-weighted choices (item k of a table has weight 1/(k+1)), driven only by Random.random(),
    whose sequence Python guarantees across versions. Skewed rather than uniform choices, like real
    text: the most likely next word leads the runner-up by about ln 2 nats, so a model's top-1 is
    not a coin toss that any rounding flips."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def pick(self, items):
        items = list(items)
        weights = [1.0 / (k + 1) ** ZIPF for k in range(len(items))]
        x = self.rng.random() * sum(weights)
        for item, w in zip(items, weights):
            x -= w
            if x < 0:
                return item
        return items[-1]

    def int(self, lo: int, hi: int) -> int:
        """Integer in [lo, hi], lo the most likely."""
        return self.pick(range(lo, hi + 1))

    def coin(self) -> bool:
        """True two times out of three."""
        return self.pick((True, False))


def _agreement(w: Words) -> str:
    noun = w.pick(NOUNS)
    verb = w.pick(VERBS)
    adj = w.pick(ADJECTIVES)
    if w.coin():
        return f"the {adj} {noun} {VERBS[verb]} {w.pick(PLACES)}."
    return f"the {adj} {NOUNS[noun]} {verb} {w.pick(PLACES)}."


def _be(w: Words) -> str:
    noun = w.pick(NOUNS)
    adj = w.pick(ADJECTIVES)
    if w.coin():
        return f"the {noun} is {adj} and the {NOUNS[noun]} are {adj} too."
    return f"this {noun} was {adj}, but these {NOUNS[noun]} were not."


def _counting(w: Words) -> str:
    start = w.int(0, 14)
    end = w.int(start + 3, min(start + 8, 20))
    seq = ", ".join(NUMBERS[start:end + 1])
    return f"count from {NUMBERS[start]} to {NUMBERS[end]}: {seq}."


def _sum(w: Words) -> str:
    a, b = w.int(0, 10), w.int(0, 10)
    if w.coin():
        return f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}."
    return f"{a} + {b} = {a + b}."


def _order(w: Words) -> str:
    seq = DAYS if w.coin() else MONTHS
    i = w.int(0, len(seq) - 1)
    return f"after {seq[i]} comes {seq[(i + 1) % len(seq)]}."


def _fact(w: Words) -> str:
    thing = w.pick(FACTS)
    if w.coin():
        return f"q: what color is the {thing}? a: the {thing} is {FACTS[thing]}."
    return f"the color of the {thing} is {FACTS[thing]}."


def _fruit_list(w: Words) -> str:
    name = w.pick(NAMES)
    fruits = list(FRUITS)
    counts = []
    for _ in range(w.int(2, 3)):
        fruit = fruits.pop(w.int(0, len(fruits) - 1))
        n = w.int(1, 5)
        counts.append((n, fruit if n == 1 else FRUITS[fruit]))
    items = [f"{NUMBERS[n]} {f}" for n, f in counts]
    listed = ", ".join(items[:-1]) + " and " + items[-1]
    total = sum(n for n, _ in counts)
    return f"{name} has {listed}. in total {name} has {NUMBERS[total]} fruits."


def _letters(w: Words) -> str:
    i = w.int(0, 20)
    return "the letters " + " ".join(LETTERS[i:i + 5]) + " come in order."


def _name_verb(w: Words) -> str:
    a, b = w.pick(NAMES), w.pick(NAMES)
    verb = w.pick(VERBS)
    if a == b:
        return f"{a} {VERBS[verb]} {w.pick(PLACES)}."
    return f"{a} and {b} {verb} {w.pick(PLACES)}."


TEMPLATES: tuple[Callable[[Words], str], ...] = (
    _agreement, _be, _counting, _sum, _order, _fact, _fruit_list, _letters, _name_verb,
)


def paragraph(w: Words) -> str:
    return " ".join(w.pick(TEMPLATES)(w) for _ in range(w.int(3, 6)))


def paragraphs(seed: int, n_bytes: int) -> list[str]:
    """Paragraphs (one per line, no newlines inside) until at least n_bytes of text."""
    w, out, size = Words(seed), [], 0
    while size < n_bytes:
        p = paragraph(w)
        out.append(p)
        size += len(p) + 1
    return out


def corpus(seed: int = TRAIN_SEED, n_bytes: int = TRAIN_BYTES) -> list[str]:
    """The training corpus, one paragraph per item."""
    return paragraphs(seed, n_bytes)


def heldout(n_bytes: int = 2_000) -> list[str]:
    """Text generated with a seed the training corpus never uses."""
    return paragraphs(TRAIN_SEED + 1, n_bytes)
