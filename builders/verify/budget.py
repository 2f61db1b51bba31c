"""The fixed position budget of every numerical check: which positions of the reference are scored.

One table for every backend (GGUF, MLC, Core ML read it through `metrics.load_reference`), so a check
costs the same number of model positions whatever the model's size or tokenizer:

  prompts  every position of the PROMPTS (prompts.py; 6 prompts of ~6-12 tokens, each followed by the
           reference's DECODE_STEPS=8 greedy tokens): about 60-120 positions. All of them are scored:
           the decode positions are where an artifact's KV cache is exercised.
  text     the first TEXT_POSITIONS tokens of the perplexity text (prompts.PERPLEXITY_TEXT, 640
           characters: ~130 tokens with a real 150k vocabulary, ~200 with the tiny models' 1-2k
           vocabularies, up to 640 with a byte-level one), scored for perplexity - only when the cell's
           thresholds read a perplexity figure (`ppl_delta_max`: scores_text). These are as many positions
           as all the prompts together, for one figure that no default threshold reads: at Qwen2.5-0.5B they
           were half of llama.cpp's decode and made a Q4_K_M check longer than its quantize step. KL and
           top-1 over the prompts are the figures the thresholds hold (the measure llama.cpp's own KL mode
           recommends over a short text's perplexity). The reference computes the text's logits always (one
           reference serves every cell), so setting `ppl_delta_max` rebuilds only the checks.
So a check runs ~120 positions (~120 + TEXT_POSITIONS = ~250 with a perplexity threshold; the reference
and llama.cpp score them with one batched pass per sequence). Why that is enough for the thresholds' statistics:
  - top1 (the tightest thresholds, 0.7 .. 1.0): over the ~120 prompt positions a true agreement of 0.95
    has a binomial standard error of sqrt(0.95 * 0.05 / 120) = 0.02, so a 0.9 threshold sits 2.5 standard
    errors away; 1.0 thresholds need no statistics (one disagreement fails).
  - kl / rel_l2 / nmse are means over positions of per-position sums over the whole vocabulary; their
    spread across positions is small next to the factor-of-10 margins between quantization levels
    (matrix.yaml's measured figures).
  - perplexity: 128 next-token log-likelihoods; a relative standard error of about
    std(nll) / sqrt(128) / mean(nll) < 10% for the models here, below the ppl_delta thresholds' margins.
  runtime  the `runtime_*` figures (an artifact vs the original model on the artifact's own dequantized
           weights: verify/metrics.py) score the first whole prompts covering at least RUNTIME_POSITIONS
           positions (prompts.py's first prompts, with their continuations). They measure an implementation
           error (a converter's or kernel's), not a quantization's spread: a wrong tensor, permutation or
           kernel shows on every position, and their thresholds sit a factor of 2-10 above the measured
           figures. The dequantized-weights model is a second full forward pass that the artifact's own
           check does not need; its cost is the model's size x these positions.
The budget only cuts the perplexity text and the runtime positions; the tokenizer check
(tokenizer_check.py) still compares the whole text's token ids.
"""

from __future__ import annotations

from builders.verify.thresholds import THRESHOLD_KEYS

TEXT_POSITIONS = 128  # tokens of the perplexity text the reference computes logits for and checks score
RUNTIME_POSITIONS = 32  # prompt positions (whole prompts) the runtime_* figures score at least
TEXT_FIGURES = ("ppl_ref", "ppl_art", "ppl_delta")  # what the text's positions measure (metrics.perplexity)


def scores_text(thresholds: dict | None) -> bool:
    """Whether a check with these thresholds scores the perplexity text: only when one reads its figures."""
    return any(THRESHOLD_KEYS.get(k, ("",))[0] in TEXT_FIGURES for k in (thresholds or {}))


def text_positions(n_tokens: int) -> int:
    """How many tokens of a perplexity text of n_tokens are scored (at least two: one prediction)."""
    return max(0, min(n_tokens, TEXT_POSITIONS))


def runtime_prompts(lengths: list[int]) -> int:
    """How many of the prompts (in order, of these lengths) the runtime_* figures score: the fewest whose
    positions reach RUNTIME_POSITIONS, or all of them."""
    total = 0
    for i, n in enumerate(lengths):
        total += n
        if total >= RUNTIME_POSITIONS:
            return i + 1
    return len(lengths)
