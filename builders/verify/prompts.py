"""The fixed verification inputs: prompts (greedy-decoded DECODE_STEPS tokens by the reference) and
the perplexity text. Both are plain English from the project corpus's domain, so the tiny models
predict them well and a real checkpoint reads them as ordinary text. The perplexity text comes from
builders/models/corpus.py `heldout()`: a seed the training corpus never uses (a literal below, so the
verify layer imports nothing of the model builders).
"""

from __future__ import annotations

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

# builders/models/corpus.py `heldout(640)` joined and cut after its last full sentence (about 200 tokens of
# the tiny models' tokenizer), written out here so verification depends on no model-building code;
# tests/test_tiny_models.py checks the two still agree.
PERPLEXITY_TEXT = (
    "after saturday comes sunday. eight plus one is nine. the big birds sit on the mat. q: what color is "
    "the sky? a: the sky is blue. the big bird sleeps near the river. this cat was small, but these cats "
    "were not. the young cat sleeps in the kitchen. the small farmers sleep near the river. the dog is "
    "big and the dogs are big too. this cat was small, but these cats were not. the small dogs sleep on "
    "the mat. the small cats wait on the mat. the small birds sleep in the kitchen. five plus three is "
    "eight. count from ten to thirteen: ten, eleven, twelve, thirteen. the happy cat sleeps in the "
    "kitchen. after january comes february."
)
