"""Numerical comparison of an artifact's logits with the original model's (numpy only).

Figures (all over the compared positions):
  max_abs_logit  max |ref - art|
  nmse           sum((ref-art)^2) / sum(ref^2)
  rel_l2         ||ref-art||_2 / ||ref||_2
  top1           fraction of positions where argmax agrees
  kl             mean KL(softmax(ref) || softmax(art)) in nats
  ppl_ref, ppl_art, ppl_delta   perplexity of the fixed text (art - ref)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

# threshold key -> (figure, comparison); a figure passes when `figure <op> threshold`
THRESHOLD_KEYS = {
    "max_abs_logit": ("max_abs_logit", "<="),
    "nmse_max": ("nmse", "<="),
    "rel_l2_max": ("rel_l2", "<="),
    "top1_min": ("top1", ">="),
    "kl_max": ("kl", "<="),
    "ppl_delta_max": ("ppl_delta", "<="),
}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare(ref: np.ndarray, art: np.ndarray) -> dict:
    ref = np.asarray(ref, dtype=np.float64)
    art = np.asarray(art, dtype=np.float64)
    if ref.shape != art.shape:
        raise ValueError(f"logits shape {art.shape} differs from reference {ref.shape}")
    diff = ref - art
    lr, la = _log_softmax(ref), _log_softmax(art)
    kl = (np.exp(lr) * (lr - la)).sum(axis=-1)
    return {
        "positions": int(ref.shape[0]),
        "max_abs_logit": float(np.abs(diff).max()),
        "nmse": float((diff**2).sum() / max((ref**2).sum(), 1e-30)),
        "rel_l2": float(np.sqrt((diff**2).sum()) / max(np.sqrt((ref**2).sum()), 1e-30)),
        "top1": float((ref.argmax(-1) == art.argmax(-1)).mean()),
        "kl": float(kl.mean()),
    }


def perplexity(logits: np.ndarray, tokens: np.ndarray) -> float:
    """Perplexity of tokens[1:] given logits[:-1] (logits[i] predicts tokens[i+1])."""
    lp = _log_softmax(np.asarray(logits)[:-1])
    nll = -lp[np.arange(len(tokens) - 1), np.asarray(tokens)[1:]]
    return float(np.exp(nll.mean()))


def load_reference(ref_dir: Path) -> dict:
    with np.load(Path(ref_dir) / "reference.npz") as z:
        data = {k: z[k] for k in z.files}
    n = len([k for k in data if k.startswith("tokens_")])
    return {
        "prompts": [(data[f"tokens_{i}"], int(data[f"prompt_len_{i}"]), data[f"logits_{i}"]) for i in range(n)],
        "text_tokens": data["text_tokens"],
        "text_logits": data["text_logits"],
    }


def evaluate(ref_dir: Path, forward: Callable[[np.ndarray], np.ndarray], with_text: bool = True) -> dict:
    """Run `forward(tokens) -> logits [n, vocab]` on every reference prompt (teacher forced over the
    prompt and the reference's greedy continuation) and on the perplexity text; return figures."""
    ref = load_reference(ref_dir)
    refs, arts = [], []
    for tokens, _, logits in ref["prompts"]:
        refs.append(logits)
        arts.append(np.asarray(forward(tokens))[: len(tokens)])
    figures = compare(np.concatenate(refs), np.concatenate(arts))
    if with_text:
        text_art = np.asarray(forward(ref["text_tokens"]))
        figures["ppl_ref"] = perplexity(ref["text_logits"], ref["text_tokens"])
        figures["ppl_art"] = perplexity(text_art, ref["text_tokens"])
        figures["ppl_delta"] = figures["ppl_art"] - figures["ppl_ref"]
    return figures


def verdict(figures: dict, thresholds: dict | None) -> dict:
    """The manifest's verification block: figures, thresholds, failures, passed."""
    failures = []
    for key, limit in (thresholds or {}).items():
        if key not in THRESHOLD_KEYS:
            raise ValueError(f"unknown threshold '{key}' (known: {', '.join(THRESHOLD_KEYS)})")
        fig, op = THRESHOLD_KEYS[key]
        if fig not in figures:
            failures.append(f"{fig} not measured but a threshold is set")
            continue
        value = figures[fig]
        ok = value <= limit if op == "<=" else value >= limit
        if not ok:
            failures.append(f"{fig}={value:.4g} not {op} {limit}")
    return {"passed": not failures, "checks": figures, "thresholds": dict(thresholds or {}), "failures": failures}
