"""The threshold keys matrix.yaml `verify.thresholds` may set, as data: each names the figure it limits and how
(builders/verify/metrics.py measures the figures and `verdict` applies them). numpy-free, so that loading
the matrix does not import numpy."""

from __future__ import annotations

BASE_KEYS = {
    "max_abs_logit": ("max_abs_logit", "<="),
    "nmse_max": ("nmse", "<="),
    "rel_l2_max": ("rel_l2", "<="),
    "top1_min": ("top1", ">="),
    "kl_max": ("kl", "<="),
}
# threshold key -> (figure, comparison); a figure passes when `figure <op> threshold`
THRESHOLD_KEYS = {
    **BASE_KEYS,
    "ppl_delta_max": ("ppl_delta", "<="),
    **{f"runtime_{k}": (f"runtime_{fig}", op) for k, (fig, op) in BASE_KEYS.items()},
}
