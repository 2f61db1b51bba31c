"""The fixed verification inputs: prompts (greedy-decoded DECODE_STEPS tokens by the reference) and
the perplexity text. Both are plain English from the project corpus's domain, so the tiny models
predict them well and a real checkpoint reads them as ordinary text. The perplexity text comes from
builders/models/corpus.py `heldout()`: a seed the training corpus never uses.
"""

from __future__ import annotations

from builders.models import corpus

DECODE_STEPS = 8

# Continuations that follow from the text (sequences, facts, agreement), not from a coin toss or a
# sum: a tiny model is confident there, so top-1 agreement measures the artifact, not luck.
PROMPTS: tuple[str, ...] = (
    "count from three to nine: three, four,",
    "after monday comes tuesday. after tuesday comes",
    "q: what color is the grass? a: the grass",
    "the letters c d e f g come in order. the letters",
    "the happy cats sleep on the mat. the old dog",
    "the color of the snow is white. the color of the sky is",
)

PERPLEXITY_CHARS = 640  # about 200 tokens of the tiny models' tokenizer


def _perplexity_text(limit: int = PERPLEXITY_CHARS) -> str:
    text = " ".join(corpus.heldout(limit))
    cut = text.rfind(".", 0, limit)
    return text[: cut + 1]


PERPLEXITY_TEXT = _perplexity_text()
