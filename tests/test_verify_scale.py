"""Verification at scale (no docker): the fp32-compute reference model, the position budget, threads."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from builders.verify import budget, fp32_compute  # noqa: E402


def _random_model(arch: str, dtype, out):
    """A small random transformers model saved in `dtype` (qwen2: q/k/v biases; llama: llama3 rope scaling)."""
    torch.manual_seed(0)
    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=300, max_position_embeddings=256)
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(**common, tie_word_embeddings=True)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**common, tie_word_embeddings=False, rope_scaling={
            "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}, rope_theta=500000.0)
        model = transformers.LlamaForCausalLM(cfg)
    model.to(dtype).save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fp32_compute_equals_the_fp32_model_bit_for_bit(arch, dtype, tmp_path, monkeypatch):
    """Weights kept in bf16/fp16, each module upcast for its own call: the same logits as the fp32 model
    (full pass and a KV-cached decode step), with the weights resident at the checkpoint's size. The LM
    head (300 rows) is multiplied 64 rows at a time here, the embedding gathered before widening."""
    monkeypatch.setattr(fp32_compute, "BLOCK_ROWS", 64)
    d = _random_model(arch, getattr(torch, dtype), tmp_path / arch)
    ids = torch.tensor([[1, 5, 9, 200, 31, 77, 12, 3, 99, 100]])
    small = fp32_compute.load_fp32_compute(d, 1)
    assert {p.dtype for p in small.parameters()} == {getattr(torch, dtype)}
    full = transformers.AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32,
                                                             attn_implementation="eager").eval()
    with torch.no_grad():
        for m in (small, full):
            m.logits_all = m(input_ids=ids, use_cache=False).logits[0].numpy()
            past = m(input_ids=ids[:, :6], use_cache=True).past_key_values
            m.logits_step = m(input_ids=ids[:, 6:7], past_key_values=past, use_cache=True).logits[0, -1].numpy()
    assert small.logits_all.dtype == np.float32
    assert np.array_equal(small.logits_all, full.logits_all)
    assert np.array_equal(small.logits_step, full.logits_step)
    # after the call the parameters are back in their stored dtype (nothing stays upcast)
    assert {p.dtype for p in small.parameters()} == {getattr(torch, dtype)}


def test_upcast_refuses_a_rounded_buffer():
    """A floating buffer (rope inv_freq) loaded in bf16 would change the rotary angles: refused."""
    m = torch.nn.Linear(2, 2).to(torch.bfloat16)
    m.register_buffer("inv_freq", torch.ones(2, dtype=torch.bfloat16), persistent=False)
    with pytest.raises(ValueError, match="inv_freq"):
        fp32_compute.upcast_per_module(m)


def test_text_budget():
    assert budget.text_positions(1000) == budget.TEXT_POSITIONS
    assert budget.text_positions(40) == 40


def test_runtime_budget_takes_whole_prompts_until_it_is_covered():
    n = budget.RUNTIME_POSITIONS
    assert budget.runtime_prompts([n // 2, n // 2, 5, 5]) == 2  # exactly covered by two
    assert budget.runtime_prompts([n // 2, n // 2 - 1, 5, 5]) == 3  # one short: a third whole prompt
    assert budget.runtime_prompts([n + 1, 5]) == 1
    assert budget.runtime_prompts([3, 3]) == 2  # fewer positions than the budget: all of them
    assert budget.text_positions(0) == 0


def test_cpu_threads_follow_the_affinity_mask():
    import os

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity mask on this platform")
    assert fp32_compute.cpu_threads() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_hf_model_streams_weights_and_batches_sequences(arch, tmp_path):
    """HfModel (the dequantized-weights reference of the GGUF check): weights handed over as loaders
    are called once per module call, a batched right-padded pass gives each sequence's own logits, and
    no parameter stays materialized after a pass."""
    from builders.verify.hf_forward import HfModel

    d = _random_model(arch, torch.float32, tmp_path / arch)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    state = {k: v.numpy().copy() for k, v in ref.state_dict().items()}
    hf = HfModel(d, threads=1)
    calls: dict[str, int] = {}

    def loader(name):
        def load():
            calls[name] = calls.get(name, 0) + 1
            return state[name]
        return load

    for name in hf.params:
        if name in state and not (hf.tied and name == "lm_head.weight"):
            hf.put(name, loader(name))
    assert hf.missing() == []
    seqs = [np.array([1, 5, 9, 200, 31, 77, 12]), np.array([4, 8]), np.array([250, 3, 3, 17, 99])]
    got = hf.forward_batch(seqs)
    with torch.no_grad():
        want = [ref(input_ids=torch.tensor(s[None]), use_cache=False).logits[0].numpy() for s in seqs]
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
    # one call per module call: the tied embedding serves the input lookup and the LM head
    assert calls.pop("model.embed_tokens.weight") == (2 if hf.tied else 1)
    assert set(calls.values()) == {1}
    assert all(p.device.type == "meta" for p in hf.model.parameters())


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_hf_model_reads_only_the_rows_it_needs_from_row_loaders(arch, tmp_path, monkeypatch):
    """Loaders with a `rows` method (GGUF tensors): the embedding reads only the looked-up ids' rows and the
    LM head reads BLOCK_ROWS rows at a time; neither is ever loaded whole, and the logits are unchanged."""
    from builders.verify import hf_forward

    monkeypatch.setattr(hf_forward, "BLOCK_ROWS", 48)  # the tiny vocabulary spans several blocks
    d = _random_model(arch, torch.float32, tmp_path / arch)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    state = {k: v.numpy().copy() for k, v in ref.state_dict().items()}
    hf = hf_forward.HfModel(d, threads=1)
    assert hf.params["model.embed_tokens.weight"][0] > 2 * 48
    whole, rows_read = [], []

    class RowLoader:
        def __init__(self, name):
            self.name = name

        def __call__(self):
            whole.append(self.name)
            return state[self.name]

        def rows(self, sel):
            rows_read.append((self.name, len(np.arange(len(state[self.name]))[sel])))
            return state[self.name][sel]

    for name in hf.params:
        if name in state and not (hf.tied and name == "lm_head.weight"):
            hf.put(name, RowLoader(name))
    seqs = [np.array([1, 5, 9, 200, 31, 77, 12]), np.array([4, 8, 5])]
    got = hf.forward_batch(seqs)
    with torch.no_grad():
        want = [ref(input_ids=torch.tensor(s[None]), use_cache=False).logits[0].numpy() for s in seqs]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
    assert not any(n.endswith(("embed_tokens.weight", "lm_head.weight")) for n in whole)
    head = "model.embed_tokens.weight" if hf.tied else "lm_head.weight"
    vocab = hf.params[head][0]
    assert ("model.embed_tokens.weight", 10) in rows_read  # the 9 distinct ids of the batch and padding id 0
    blocks = [min(48, vocab - i) for i in range(0, vocab, 48)]
    assert [n for name, n in rows_read if name == head][-len(blocks):] == blocks


def test_hf_model_names_a_missing_weight(tmp_path):
    from builders.verify.hf_forward import HfModel

    d = _random_model("llama", torch.float32, tmp_path / "m")
    hf = HfModel(d, threads=1)
    with pytest.raises(KeyError, match="no parameter"):
        hf.put("model.nope.weight", np.zeros(2))
    with pytest.raises(ValueError, match="does not fit"):
        hf.put("model.norm.weight", np.zeros(3))
    hf.put("model.norm.weight", lambda: np.zeros(3))  # a loader's shape is checked when it runs
    assert "model.embed_tokens.weight" in hf.missing()
    with pytest.raises((KeyError, ValueError)):
        hf.forward_batch([np.array([1, 2])])
