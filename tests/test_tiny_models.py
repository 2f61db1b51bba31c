"""tiny: models, the project corpus and reference logits, on the host with the real torch/transformers.

One model of each arch is trained for a few steps (cheap determinism/feature checks); the llama one
is also trained once with the real default schedule (about a minute) for the perplexity and
reference checks.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from builders.backends import get as get_backend
from builders.contract import SCHEMA
from builders.errors import ModelError, NodeFailed
from builders.models import corpus, nodes, tiny
from builders.verify import budget, prompts
from builders.verify.metrics import load_reference, perplexity
from builders.verify.reference import Tokenizer, compute_reference

ROOT = Path(__file__).resolve().parents[1]
FEW_STEPS = 4
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
               "tokenizer.json", "tokenizer.model", "tokenizer_config.json"}


def hashes(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(d).iterdir())}


@pytest.fixture(scope="module")
def few_step_models(tmp_path_factory):
    """arch -> model dir trained FEW_STEPS steps."""
    root = tmp_path_factory.mktemp("few")
    out = {}
    for arch in tiny.TINY_ARCHS:
        tiny.generate(arch, root / arch, steps=FEW_STEPS)
        out[arch] = root / arch
    return out


@pytest.fixture(scope="module")
def trained_llama(tmp_path_factory):
    """tiny:llama with the default training (the model the build uses)."""
    out = tmp_path_factory.mktemp("trained") / "llama"
    figures = tiny.generate("llama", out)
    return out, figures


def heldout_perplexity(model, tok: Tokenizer) -> float:
    ids = tok.encode(prompts.PERPLEXITY_TEXT)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    return perplexity(logits, np.asarray(ids))


# ---- corpus and prompts ---------------------------------------------------------------------------

def test_corpus_is_deterministic_and_sized():
    a, b = corpus.corpus(), corpus.corpus()
    assert a == b
    size = sum(len(p) + 1 for p in a)
    assert 250_000 <= size <= 400_000
    assert all("\n" not in p for p in a)
    # the structure the model is meant to learn is there: agreement and correct sums
    plural_of = corpus.NOUNS
    agreements = sums = 0
    for sent in (s.strip() for p in a[:300] for s in p.split(".")):
        words = sent.split()
        if len(words) > 3 and words[0] == "the" and words[2] in plural_of and words[3] in corpus.VERBS.values():
            agreements += 1  # singular noun, -s verb
        elif len(words) > 3 and words[0] == "the" and words[2] in plural_of.values():
            assert words[3] in corpus.VERBS or words[3] == "are", sent
            agreements += 1
        if " plus " in sent:
            x, rest = sent.split(" plus ")
            y, z = rest.split(" is ")
            assert corpus.NUMBERS.index(x) + corpus.NUMBERS.index(y) == corpus.NUMBERS.index(z)
            sums += 1
    assert agreements > 50 and sums > 20


def test_perplexity_text_is_held_out():
    train = set(corpus.corpus())
    assert 400 <= len(prompts.PERPLEXITY_TEXT) <= 640
    assert prompts.PERPLEXITY_TEXT.endswith(".")
    held = " ".join(corpus.heldout(640))  # the literal in verify/prompts.py is still the corpus's held-out text
    assert prompts.PERPLEXITY_TEXT == held[: held.rfind(".", 0, 640) + 1]
    assert not any(prompts.PERPLEXITY_TEXT[:120] in p for p in train)
    assert prompts.DECODE_STEPS == 8 and len(prompts.PROMPTS) == 6


# ---- configs (plan side, no generation) -----------------------------------------------------------

def test_tiny_config_features():
    llama, qwen2, mistral = (tiny.tiny_config(a) for a in ("llama", "qwen2", "mistral"))
    for cfg in (llama, qwen2, mistral):
        assert cfg["hidden_size"] % 256 == 0 and cfg["intermediate_size"] % 256 == 0
        assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # GQA
    assert llama["architectures"] == ["LlamaForCausalLM"]
    assert llama["rope_scaling"]["rope_type"] == "llama3" and llama["rope_scaling"]["factor"] > 1
    assert qwen2["architectures"] == ["Qwen2ForCausalLM"] and qwen2["tie_word_embeddings"] is True
    assert mistral["architectures"] == ["MistralForCausalLM"] and mistral["sliding_window"] > 0
    with pytest.raises(ModelError, match="tiny:llama"):
        tiny.tiny_config("gpt2")


def test_node_defs_and_backend():
    nd = nodes.tiny_node("qwen2")
    assert (nd.key, nd.kind, nd.image, nd.publish, nd.params["arch"]) == (
        "tiny-qwen2.model", "tiny-model", "base", None, "qwen2")
    rd = nodes.reference_node("tiny-qwen2")
    assert (rd.key, rd.kind, rd.image, rd.parents) == ("tiny-qwen2.reference", "reference", "base", {})
    backend = get_backend("model")
    assert backend.name == "model" and backend.quants == {} and backend.targets == ()
    assert set(backend.archs) == {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "Phi3ForCausalLM"}
    assert [n for n, _ in backend.steps("tiny-model")] == ["corpus", "tokenizer", "train", "save"]
    assert [n for n, _ in backend.steps("reference")] == ["logits"]
    for rel in backend.code:
        assert (ROOT / "builders" / rel).is_file(), rel
    with pytest.raises(NodeFailed, match="no node kind 'bogus'"):
        backend.steps("bogus")


def test_training_failure_is_one_line(tmp_path):
    txt = tiny.write_corpus(tmp_path)
    with pytest.raises(NodeFailed, match=r"training tiny:gpt2 failed \(exit 1\)"):
        tiny.train_pinned("gpt2", txt, tmp_path / "tokenizer.model", tmp_path / "state.pt", 1)


# ---- generated models -----------------------------------------------------------------------------

def test_generate_is_deterministic(few_step_models, tmp_path):
    first = hashes(few_step_models["llama"])
    assert set(first) == MODEL_FILES
    tiny.generate("llama", tmp_path / "again", steps=FEW_STEPS)
    assert hashes(tmp_path / "again") == first


@pytest.mark.parametrize("arch", list(tiny.TINY_ARCHS))
def test_model_loads_with_advertised_features(few_step_models, arch):
    d = few_step_models[arch]
    assert json.loads((d / "config.json").read_text()) == tiny.tiny_config(arch)
    cfg = AutoConfig.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    with safe_open(d / "model.safetensors", "np") as f:
        names = set(f.keys())
        assert all(f.get_tensor(n).dtype == np.float32 for n in names)
        assert f.metadata() == {"format": "pt"}
    assert model.config.num_key_value_heads == 2
    if arch == "llama":
        assert cfg.rope_parameters["rope_type"] == "llama3"
        assert "model.layers.0.self_attn.q_proj.bias" not in names
    if arch == "qwen2":
        assert cfg.tie_word_embeddings and "lm_head.weight" not in names
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        assert {f"model.layers.0.self_attn.{p}_proj.bias" for p in "qkv"} <= names
    if arch == "mistral":
        assert cfg.sliding_window == tiny.TINY_ARCHS["mistral"].fields["sliding_window"]
        assert "lm_head.weight" in names
    if arch == "phi3":  # the checkpoint stores the projections fused
        assert {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight"} <= names
        assert "model.layers.0.self_attn.q_proj.weight" not in names and cfg.sliding_window is None
        # Phi-3's added special tokens after the SentencePiece pieces (llama.cpp's phi3 vocabulary needs
        # <|endoftext|>), its EOS and PAD; the reference tokenizer is the whole HF tokenizer, not tokenizer.model
        tok = AutoTokenizer.from_pretrained(d)
        assert len(tok) == cfg.vocab_size == tiny.VOCAB_SIZE + len(tiny.PHI3_ADDED_TOKENS)
        assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|end|>", "<|user|>"]) == [512, 519, 522]
        assert tok.eos_token == tok.pad_token == "<|endoftext|>" and tok.eos_token_id == cfg.eos_token_id == 512
        assert json.loads((d / "added_tokens.json").read_text()) == tiny.added_tokens("phi3")
        ref = Tokenizer(d)
        assert ref.kind == "transformers" and ref.specials()["eos_token_id"] == 512
        assert ref.encode(prompts.PROMPTS[0]) == Tokenizer(few_step_models["llama"]).encode(prompts.PROMPTS[0])
    else:
        assert not (d / "added_tokens.json").exists() and tiny.added_tokens(arch) == {}


def test_tokenizer_files_agree(few_step_models):
    d = few_step_models["llama"]
    hf = AutoTokenizer.from_pretrained(d)
    spm = Tokenizer(d)
    assert spm.kind == "sentencepiece" and len(hf) == tiny.VOCAB_SIZE
    for text in (*prompts.PROMPTS, prompts.PERPLEXITY_TEXT, "Ünïcode ✓ 42 bytes"):
        ids = spm.encode(text)
        assert ids[0] == 1 and hf(text)["input_ids"] == ids
        assert spm.decode(ids[1:]) == text
    data = json.loads((d / "tokenizer.json").read_text())
    assert len(data["model"]["vocab"]) == tiny.VOCAB_SIZE and data["model"]["byte_fallback"] is True


def test_trained_model_beats_uniform(trained_llama):
    d, figures = trained_llama
    assert figures["final_loss"] < figures["first_loss"] / 4
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ppl = heldout_perplexity(model, Tokenizer(d))
    untrained = tiny.build_model("llama").eval()
    ppl_untrained = heldout_perplexity(untrained, Tokenizer(d))
    # uniform over the vocabulary would be 512; the untrained init is about that
    assert ppl_untrained > tiny.VOCAB_SIZE / 2
    assert ppl < 6.0, ppl


# ---- reference logits -----------------------------------------------------------------------------

def test_reference_format_and_determinism(trained_llama, tmp_path):
    d, _ = trained_llama
    info = compute_reference(d, tmp_path / "a")
    compute_reference(d, tmp_path / "b")
    assert hashes(tmp_path / "a") == hashes(tmp_path / "b")
    with np.load(tmp_path / "a" / "reference.npz") as z:
        data = {k: z[k] for k in z.files}
    vocab = tiny.VOCAB_SIZE
    tok = Tokenizer(d)
    for i, text in enumerate(prompts.PROMPTS):
        tokens, plen, logits = data[f"tokens_{i}"], data[f"prompt_len_{i}"], data[f"logits_{i}"]
        assert tokens.dtype == np.int32 and plen.dtype == np.int32 and plen.shape == ()
        assert logits.dtype == np.float32 and logits.shape == (len(tokens), vocab)
        assert tokens[:plen].tolist() == tok.encode(text)
        assert len(tokens) == plen + prompts.DECODE_STEPS
        # the continuation is greedy: each token is the argmax of the logits before it
        assert (logits[plen - 1:-1].argmax(-1) == tokens[plen:]).all()
    assert data["text_tokens"].dtype == np.int32 and data["text_logits"].dtype == np.float32
    # the whole text's ids (for the tokenizer check), logits for the budgeted first positions (verify/budget.py)
    assert 150 <= len(data["text_tokens"]) <= 260
    assert data["text_logits"].shape == (budget.TEXT_POSITIONS, vocab) == (info["text_positions"], vocab)
    assert info["vocab_size"] == vocab and info["decode_steps"] == prompts.DECODE_STEPS
    assert [p["text"] for p in info["prompts"]] == list(prompts.PROMPTS)
    assert info["tool_versions"]["torch"].startswith("2.13.0")
    scored = data["text_tokens"][: budget.TEXT_POSITIONS]
    assert math.isclose(info["ppl"], perplexity(data["text_logits"], scored), rel_tol=1e-5)
    ref = load_reference(tmp_path / "a")  # the loader the verifiers use
    assert len(ref["prompts"]) == len(prompts.PROMPTS)
    assert ref["text_tokens"].tolist() == scored.tolist()


def test_nodes_run_through_the_node_entry_point(tmp_path):
    """tiny-model then reference, each as `python -m builders.node run spec.json`."""
    def spec(key, kind, params, inputs, name):
        s = {"schema": SCHEMA, "parents": {}, "key": key, "kind": kind, "backend": "model", "digest": "0" * 64,
             "params": params,
             "model": {"name": "tiny-mistral", "source": "tiny:mistral", "revision": "tiny-0", "digest": ""},
             "inputs": inputs, "out": str(tmp_path / name / "out"), "work": str(tmp_path / name / "work"),
             "result": str(tmp_path / name / "result.json"), "steps": {}, "env": {"SOURCE_DATE_EPOCH": "0"}}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(s))
        proc = subprocess.run([sys.executable, "-m", "builders.node", "run", str(path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / name / "result.json").read_text())

    nd = nodes.tiny_node("mistral", train_steps=FEW_STEPS)
    res = spec(nd.key, nd.kind, nd.params, {}, "model")
    assert res["status"] == "ok" and res["steps_done"] == ["corpus", "tokenizer", "train", "save"]
    assert res["reports"]["training"]["steps"] == FEW_STEPS and "transformers" in res["tool_versions"]
    model_out = tmp_path / "model" / "out"
    assert set(p.name for p in model_out.iterdir()) == MODEL_FILES
    rd = nodes.reference_node("tiny-mistral")
    res = spec(rd.key, rd.kind, rd.params, {"model": str(model_out)}, "ref")
    assert res["status"] == "ok" and res["tool_versions"]["transformers"] == "5.23.0"
    assert {p.name for p in (tmp_path / "ref" / "out").iterdir()} == {"reference.npz", "reference.json"}
    # a reference node without a model input fails with one line
    res_file = tmp_path / "bad"
    bad = {"schema": SCHEMA, "key": "x.reference", "kind": "reference", "backend": "model", "digest": "0",
           "params": {}, "model": {"name": "x", "source": "x", "revision": "x", "digest": "0"}, "parents": {},
           "inputs": {"model": str(tmp_path / "nowhere")},
           "out": str(res_file / "out"), "work": str(res_file / "work"), "result": str(res_file / "r.json")}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    proc = subprocess.run([sys.executable, "-m", "builders.node", "run", str(tmp_path / "bad.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "has no config.json" in json.loads((res_file / "r.json").read_text())["reason"]
