"""Numerical comparison of an artifact's logits with the original model's (numpy only).

Figures (all over the compared positions; scale-free ones first):
  rel_l2         ||ref-art||_2 / ||ref||_2
  nmse           sum((ref-art)^2) / sum(ref^2)        (= rel_l2 squared)
  kl             mean KL(softmax(ref) || softmax(art)) in nats
  top1           fraction of positions where argmax agrees
  max_abs_logit  max |ref - art|  (reported; its scale is the model's logit scale)
  ppl_ref, ppl_art, ppl_delta   perplexity of the fixed text (art - ref)
A figure named `runtime_<figure>` compares the artifact with the original model evaluated in fp32 on
the artifact's own (dequantized) weights: it measures the converter/runtime, not the quantization.

Logits are processed in float32, a block of positions at a time (at most BLOCK_BYTES of float32 logits
per block, and BLOCK_ROWS positions), with sums accumulated in float64.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from builders.verify.thresholds import THRESHOLD_KEYS

BLOCK_ROWS = 64  # positions per block at most
BLOCK_BYTES = 8 << 20  # float32 logits per block at most: 13 positions of a 152k vocabulary; ~5 temporaries of it


def block_rows(vocab: int) -> int:
    """Positions per block for a vocabulary of this size."""
    return max(1, min(BLOCK_ROWS, BLOCK_BYTES // (4 * max(1, vocab))))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Per row, float64: max + log(sum(exp(x - max)))."""
    m = x.max(axis=-1, keepdims=True)
    return m[:, 0].astype(np.float64) + np.log(np.exp(x - m).sum(axis=-1, dtype=np.float64))


def _pairs(ref, art, block: int | None):
    """(ref block, art block) pairs over both: arrays [n, vocab], or equal-length lists of them (e.g. one
    per prompt), walked `block` rows (default: block_rows of the vocabulary) at a time without
    concatenating anything."""
    refs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
    arts = list(art) if isinstance(art, (list, tuple)) else [art]
    if len(refs) != len(arts):
        raise ValueError(f"{len(arts)} logits arrays for {len(refs)} reference arrays")
    for r, a in zip(refs, arts):
        r, a = np.asarray(r), np.asarray(a)
        if r.shape != a.shape:
            raise ValueError(f"logits shape {a.shape} differs from reference {r.shape}")
        if r.ndim != 2 or r.shape[1] == 0:
            raise ValueError(f"no logits to compare (shape {r.shape})")
        step = block or block_rows(r.shape[1])
        for i in range(0, r.shape[0], step):
            yield r[i:i + step].astype(np.float32, copy=False), a[i:i + step].astype(np.float32, copy=False)


def compare(ref, art, block: int | None = None) -> dict:
    """The figures of `art` against `ref`: arrays [positions, vocab], or equal-length lists of them (one per
    sequence; compared pairwise, never concatenated)."""
    sq_diff = sq_ref = kl_sum = 0.0
    max_abs, max_ref, agree, n = 0.0, 0.0, 0, 0
    for r, a in _pairs(ref, art, block):
        d = r - a
        sq_diff += float(np.sum(d * d, dtype=np.float64))
        sq_ref += float(np.sum(r * r, dtype=np.float64))
        max_abs = max(max_abs, float(np.abs(d).max()))
        max_ref = max(max_ref, float(np.abs(r).max()))
        agree += int((r.argmax(-1) == a.argmax(-1)).sum())
        # KL = sum p_ref * (log p_ref - log p_art), with log p_ref - log p_art = d - (lse_ref - lse_art):
        # the difference is taken on the logits, so no cancellation of two large log-probabilities
        lse_r, lse_a = _logsumexp(r), _logsumexp(a)
        p = np.exp(r - lse_r[:, None].astype(np.float32))
        row = np.sum(p * d, axis=-1, dtype=np.float64) - (lse_r - lse_a) * np.sum(p, axis=-1, dtype=np.float64)
        kl_sum += float(row.sum())
        n += len(r)
    if n == 0:
        raise ValueError("no logits to compare (no positions)")
    nmse = sq_diff / max(sq_ref, 1e-30)
    return {
        "positions": int(n),
        "max_abs_logit": max_abs,
        "nmse": nmse,
        "rel_l2": math.sqrt(nmse),
        "top1": agree / n,
        "kl": kl_sum / n,
        "max_abs_ref_logit": max_ref,
    }


def perplexity(logits: np.ndarray, tokens: np.ndarray, block: int | None = None) -> float:
    """Perplexity of tokens[1:] given logits[:-1] (logits[i] predicts tokens[i+1])."""
    logits, tokens = np.asarray(logits), np.asarray(tokens)
    block = block or block_rows(logits.shape[-1])
    nll = 0.0
    n = len(tokens) - 1
    if n <= 0:
        raise ValueError("perplexity needs at least two tokens")
    for i in range(0, n, block):
        x = logits[i:min(i + block, n)].astype(np.float32, copy=False)
        nxt = tokens[i + 1:i + 1 + len(x)]
        nll += float((_logsumexp(x) - x[np.arange(len(x)), nxt]).sum())
    return float(np.exp(nll / n))


HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npz_arrays(path: Path, names=None) -> dict:
    """The members of an .npz as arrays (all, or those in `names`). The reference's members are stored
    uncompressed (verify/reference.NpzWriter): each is memory-mapped read-only where it lies in the file,
    so nothing is read until used and no logits are copied into the process; a compressed member (any
    other writer) is read whole."""
    import zipfile  # noqa: PLC0415

    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if names is not None and name not in names:
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                with zf.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            f.seek(info.header_offset)
            local = f.read(30)
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            f.seek(start)
            read_header = HEADER_READERS.get(np.lib.format.read_magic(f))
            shape, fortran, dtype = read_header(f) if read_header else (None, None, None)
            if read_header is None or dtype.hasobject:  # a .npy format this does not map: read it whole
                with zf.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            if int(np.prod(shape)) == 0:
                out[name] = np.zeros(shape, dtype)
                continue
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                  order="F" if fortran else "C")
    return out


def load_reference(ref_dir: Path, text: bool = True) -> dict:
    """The reference's prompts [(tokens, prompt_len, logits)] and scored perplexity text (text_tokens,
    text_logits), memory-mapped from reference.npz (_npz_arrays). text=False leaves the text's logits
    unread (text_logits None): checks that do not score the text (verify/budget.py scores_text)."""
    data = _npz_arrays(Path(ref_dir) / "reference.npz")
    n = len([k for k in data if k.startswith("tokens_")])
    # the scored part of the perplexity text (verify/budget.py): as many tokens as the reference has logits for
    return {
        "prompts": [(np.asarray(data[f"tokens_{i}"]), int(data[f"prompt_len_{i}"]), data[f"logits_{i}"]) for i in range(n)],
        "text_tokens": np.asarray(data["text_tokens"][: len(data["text_logits"])]),
        "text_logits": data["text_logits"] if text else None,
    }


def load_prompt_tokens(ref_dir: Path) -> list[np.ndarray]:
    """The reference prompts' token ids (prompt + continuation), without reading any logits."""
    return [tokens for tokens, _, _ in load_reference(ref_dir, text=False)["prompts"]]


def evaluate(ref_dir: Path, forward: Callable[[np.ndarray], np.ndarray], with_text: bool = True,
             keep: list | None = None) -> dict:
    """Run `forward(tokens) -> logits [n, vocab]` on every reference prompt (teacher forced over the
    prompt and the reference's greedy continuation) and on the perplexity text; return figures.
    With `keep` (a list), the artifact's prompt logits are appended to it (for a second comparison)."""
    return evaluate_many(ref_dir, lambda seqs: [forward(s) for s in seqs], with_text, keep)


def evaluate_many(ref_dir: Path, forward_many: Callable[[list], list], with_text: bool = True,
                  keep: list | None = None) -> dict:
    """As `evaluate`, with `forward_many(sequences) -> [logits]` given every sequence at once (prompts,
    then the perplexity text), for runtimes that evaluate a batch of sequences in one pass."""
    ref = load_reference(ref_dir, text=with_text)
    seqs = [tokens for tokens, _, _ in ref["prompts"]] + ([ref["text_tokens"]] if with_text else [])
    outs = forward_many(seqs)
    if len(outs) != len(seqs):
        raise ValueError(f"{len(outs)} logits arrays for {len(seqs)} sequences")
    arts = [np.asarray(o)[: len(s)] for o, s in zip(outs, seqs)]
    prompt_arts = arts[: len(ref["prompts"])]
    if keep is not None:
        keep.extend(prompt_arts)
    figures = compare([logits for _, _, logits in ref["prompts"]], prompt_arts)
    if with_text:
        figures["ppl_ref"] = perplexity(ref["text_logits"], ref["text_tokens"])
        figures["ppl_art"] = perplexity(arts[-1], ref["text_tokens"])
        figures["ppl_delta"] = figures["ppl_art"] - figures["ppl_ref"]
    return figures


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool)


def verdict(figures: dict, thresholds: dict | None, where: str = "this artifact",
            require: tuple[str, ...] = ()) -> dict:
    """The manifest's verification block: figures, thresholds, failures, passed.

    Fails closed: no thresholds, an unknown threshold key, a non-numeric or NaN threshold, a NaN/inf
    figure, a threshold whose figure was not measured, no compared positions, or no threshold on a
    figure family listed in `require` (figure-name prefixes, e.g. "runtime_") all fail with a reason."""
    thresholds = dict(thresholds or {})
    failures = []
    if not thresholds:
        failures.append(f"no verification thresholds for {where}: add them under verify.thresholds in matrix.yaml "
                        f"(e.g. top1_min, kl_max)")
    for fig, value in figures.items():
        if _is_number(value) and not math.isfinite(float(value)):
            failures.append(f"figure {fig} is {value}: the artifact's logits are not finite")
    if "positions" in figures and not figures["positions"]:
        failures.append("no positions were compared")
    for key, limit in thresholds.items():
        if key not in THRESHOLD_KEYS:
            failures.append(f"unknown threshold '{key}' for {where} (known: {', '.join(THRESHOLD_KEYS)})")
            continue
        if not _is_number(limit) or not math.isfinite(float(limit)):
            failures.append(f"threshold {key}={limit!r} for {where} is not a finite number")
            continue
        fig, op = THRESHOLD_KEYS[key]
        if fig not in figures:
            failures.append(f"threshold {key} is set but {fig} was not measured for {where}")
            continue
        value = figures[fig]
        if not _is_number(value) or not math.isfinite(float(value)):
            continue  # already reported above
        ok = value <= limit if op == "<=" else value >= limit
        if not ok:
            failures.append(f"{fig}={value:.4g} not {op} {limit}")
    for prefix in require:
        if not any(THRESHOLD_KEYS.get(k, ("",))[0].startswith(prefix) for k in thresholds):
            failures.append(f"{prefix}* figures were measured but {where} has no {prefix}* threshold in matrix.yaml")
    return {"passed": not failures, "checks": figures, "thresholds": thresholds, "failures": failures}
