"""Verification figures and the verdict rules (numpy only, no Docker)."""

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from builders import backends
from builders.verify.metrics import THRESHOLD_KEYS, compare, perplexity, verdict

ROOT = Path(__file__).resolve().parents[1]


def _float64_figures(ref, art):
    r, a = ref.astype(np.float64), art.astype(np.float64)

    def log_softmax(x):
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    lr, la = log_softmax(r), log_softmax(a)
    return {"kl": float((np.exp(lr) * (lr - la)).sum(-1).mean()),
            "nmse": float(((r - a) ** 2).sum() / (r**2).sum()),
            "max_abs_logit": float(np.abs(r - a).max())}


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_chunked_float32_figures_match_float64_on_the_whole_array(block):
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 10, (150, 3000)).astype(np.float32)  # logits reaching about +-45
    art = ref + rng.normal(0, 0.05, ref.shape).astype(np.float32)
    got, want = compare(ref, art, block=block), _float64_figures(ref, art)
    assert got["kl"] == pytest.approx(want["kl"], rel=1e-4)
    assert got["nmse"] == pytest.approx(want["nmse"], rel=1e-6)
    assert got["rel_l2"] == pytest.approx(math.sqrt(want["nmse"]), rel=1e-6)
    assert got["max_abs_logit"] == pytest.approx(want["max_abs_logit"], rel=1e-6)
    assert got["positions"] == 150 and 0.9 < got["top1"] <= 1.0
    assert got["max_abs_ref_logit"] > 40


def test_identical_logits_give_zero_error_and_full_agreement():
    ref = np.random.default_rng(1).normal(0, 5, (10, 100)).astype(np.float32)
    f = compare(ref, ref.copy())
    assert f["nmse"] == 0 and f["max_abs_logit"] == 0 and f["top1"] == 1.0 and abs(f["kl"]) < 1e-7


def test_scale_free_figures_do_not_change_with_the_logit_scale():
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 1, (40, 500)).astype(np.float32)
    art = ref * (1 + rng.normal(0, 1e-3, ref.shape)).astype(np.float32)
    small, big = compare(ref, art), compare(ref * 40, art * 40)
    assert big["rel_l2"] == pytest.approx(small["rel_l2"], rel=1e-4)
    assert big["max_abs_logit"] == pytest.approx(40 * small["max_abs_logit"], rel=1e-4)


def test_perplexity_matches_the_float64_definition():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 8, (90, 700)).astype(np.float32)
    tokens = rng.integers(0, 700, 90)
    x = logits.astype(np.float64)[:-1]
    lp = x - x.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    want = math.exp(-lp[np.arange(89), tokens[1:]].mean())
    assert perplexity(logits, tokens, block=16) == pytest.approx(want, rel=1e-5)


def test_compare_refuses_empty_or_mismatched_logits():
    with pytest.raises(ValueError, match="no logits"):
        compare(np.zeros((0, 10)), np.zeros((0, 10)))
    with pytest.raises(ValueError, match="differs"):
        compare(np.zeros((2, 10)), np.zeros((3, 10)))


FIG = {"positions": 10, "rel_l2": 1e-3, "nmse": 1e-6, "kl": 1e-5, "top1": 1.0, "max_abs_logit": 0.05,
       "runtime_rel_l2": 2e-4}


def test_verdict_passes_only_when_every_threshold_holds():
    ok = verdict(FIG, {"rel_l2_max": 2e-3, "top1_min": 1.0})
    assert ok["passed"] and ok["failures"] == []
    bad = verdict(FIG, {"rel_l2_max": 5e-4, "top1_min": 1.0})
    assert not bad["passed"] and bad["failures"] == ["rel_l2=0.001 not <= 0.0005"]


@pytest.mark.parametrize("thresholds, fragment", [
    (None, "no verification thresholds for gguf Q4_0-QAT"),
    ({}, "no verification thresholds for gguf Q4_0-QAT"),
    ({"rel_l2": 1e-3}, "unknown threshold 'rel_l2'"),
    ({"ppl_delta_max": 1.0}, "ppl_delta_max is set but ppl_delta was not measured"),
    ({"kl_max": float("nan")}, "kl_max=nan for gguf Q4_0-QAT is not a finite number"),
    ({"kl_max": "0.1"}, "is not a finite number"),
])
def test_verdict_fails_closed(thresholds, fragment):
    v = verdict(FIG, thresholds, where="gguf Q4_0-QAT")
    assert v["passed"] is False
    assert any(fragment in f for f in v["failures"]), v["failures"]
    assert all("\n" not in f for f in v["failures"])


def test_a_nan_figure_fails_even_without_a_threshold_on_it():
    v = verdict({**FIG, "kl": float("nan")}, {"top1_min": 0.5})
    assert not v["passed"] and v["failures"] == ["figure kl is nan: the artifact's logits are not finite"]
    v = verdict({**FIG, "rel_l2": float("inf")}, {"rel_l2_max": 1.0})
    assert not v["passed"] and len(v["failures"]) == 1


def test_verdict_fails_when_nothing_was_compared():
    v = verdict({**FIG, "positions": 0}, {"top1_min": 0.5})
    assert not v["passed"] and "no positions were compared" in v["failures"]


def test_required_figure_family_needs_a_threshold():
    v = verdict(FIG, {"top1_min": 0.5}, where="gguf F16", require=("runtime_",))
    assert not v["passed"] and "gguf F16 has no runtime_* threshold" in v["failures"][0]
    assert verdict(FIG, {"top1_min": 0.5, "runtime_rel_l2_max": 1e-3}, require=("runtime_",))["passed"]


def test_runtime_thresholds_are_known_keys_of_their_own():
    assert THRESHOLD_KEYS["runtime_rel_l2_max"] == ("runtime_rel_l2", "<=")
    assert THRESHOLD_KEYS["runtime_top1_min"] == ("runtime_top1", ">=")
    v = verdict({**FIG, "runtime_rel_l2": 0.5}, {"rel_l2_max": 1e-2, "runtime_rel_l2_max": 1e-2})
    assert v["failures"] == ["runtime_rel_l2=0.5 not <= 0.01"]


# ---- the project's matrix.yaml ------------------------------------------------------------------

FLOAT_FORMATS = {"gguf": ("F32", "F16", "BF16"), "mlc": ("q0f32", "q0f16"), "coreml": ("fp16",)}
SCALE_FREE = {"rel_l2_max", "nmse_max", "kl_max", "top1_min"}


def _project_thresholds():
    return yaml.safe_load((ROOT / "matrix.yaml").read_text())["verify"]["thresholds"]


@pytest.mark.parametrize("backend", sorted(backends.USER_BACKENDS))
def test_every_quant_of_every_backend_has_thresholds(backend):
    quants = set(backends.get(backend).quants)
    have = _project_thresholds().get(backend, {})
    assert sorted(quants - set(have)) == [], f"{backend}: quants with no thresholds in matrix.yaml"
    for quant, limits in have.items():
        assert limits and set(limits) <= set(THRESHOLD_KEYS), (backend, quant, limits)


def test_gguf_thresholds_check_the_runtime_against_its_own_weights():
    for quant, limits in _project_thresholds()["gguf"].items():
        assert any(k.startswith("runtime_") for k in limits), f"gguf {quant}: no runtime_* threshold"


@pytest.mark.parametrize("backend", sorted(FLOAT_FORMATS))
def test_float_formats_use_scale_free_thresholds(backend):
    for quant in FLOAT_FORMATS[backend]:
        limits = _project_thresholds()[backend][quant]
        assert "max_abs_logit" not in limits and "runtime_max_abs_logit" not in limits, (backend, quant)
        assert SCALE_FREE & set(limits), (backend, quant)


def test_figures_over_lists_of_sequences_equal_the_concatenated_ones():
    """compare() given one array per sequence (never concatenated) gives the figures of the concatenation."""
    rng = np.random.default_rng(1)
    refs = [rng.normal(0, 5, (n, 500)).astype(np.float32) for n in (7, 0, 30, 12)]
    arts = [r + rng.normal(0, 0.1, r.shape).astype(np.float32) for r in refs]
    arts[2][3, 0] += 100.0  # one position disagrees
    got, want = compare(refs, arts, block=5), compare(np.concatenate(refs), np.concatenate(arts), block=5)
    assert got["positions"] == want["positions"] == 49
    for k in ("kl", "nmse", "rel_l2", "top1", "max_abs_logit", "max_abs_ref_logit"):
        assert got[k] == pytest.approx(want[k], rel=1e-6), k
    with pytest.raises(ValueError, match="differs from reference"):
        compare(refs, arts[:2] + [arts[3], arts[2]])
    with pytest.raises(ValueError, match="2 logits arrays for 4"):
        compare(refs, arts[:2])
    with pytest.raises(ValueError, match="no positions"):
        compare([refs[1]], [arts[1]])


def test_reference_members_are_memory_mapped_and_equal_to_np_load(tmp_path):
    """The reference's stored (uncompressed) npz members come back memory-mapped, read-only and equal to
    np.load's; a compressed member (another writer) is read whole; text=False leaves the text logits."""
    from builders.verify import metrics
    from builders.verify.reference import NpzWriter

    rng = np.random.default_rng(2)
    arrays = {"tokens_0": np.array([1, 2, 3], np.int32), "prompt_len_0": np.array(2, np.int32),
              "logits_0": rng.normal(size=(3, 11)).astype(np.float32), "text_tokens": np.arange(9, dtype=np.int32),
              "text_logits": rng.normal(size=(5, 11)).astype(np.float32)}
    ref = tmp_path / "ref"
    ref.mkdir()
    with NpzWriter(ref / "reference.npz") as npz:
        for k, v in arrays.items():
            npz.add(k, v)
    got = metrics.load_reference(ref)
    (tokens, n, logits), = got["prompts"]
    assert isinstance(logits, np.memmap) and not logits.flags.writeable
    assert np.array_equal(logits, arrays["logits_0"]) and np.array_equal(tokens, arrays["tokens_0"]) and n == 2
    assert np.array_equal(got["text_logits"], arrays["text_logits"])
    assert np.array_equal(got["text_tokens"], arrays["text_tokens"][:5]), "the scored part of the text"
    assert metrics.load_reference(ref, text=False)["text_logits"] is None
    np.savez_compressed(tmp_path / "compressed.npz", **arrays)
    whole = metrics._npz_arrays(tmp_path / "compressed.npz")
    assert not isinstance(whole["logits_0"], np.memmap)
    assert all(np.array_equal(whole[k], v) for k, v in arrays.items())


def test_the_perplexity_text_is_scored_only_for_a_threshold_that_reads_it():
    from builders.verify import budget

    assert budget.scores_text({"ppl_delta_max": 0.5, "top1_min": 0.9})
    assert not budget.scores_text({"top1_min": 0.9, "kl_max": 0.05, "runtime_kl_max": 0.02})
    assert not budget.scores_text(None) and not budget.scores_text({})
    assert not budget.scores_text({"ppl_delta_mx": 0.5}), "an unknown key reads nothing (verdict refuses it)"
