"""Real tokenizer vocabularies and the tokenizer check, on the host (no docker): the HF tokenizer files
rebuilt from llama.cpp's ggml-vocab GGUFs agree with llama.cpp's expected ids; a real-vocabulary tiny model
(Qwen2: config vocab 151936 > 151646 tokenizer ids, a bos id it never adds) gets a reference whose greedy
decode stays inside the tokenizer; MLC's chat config and Core ML's meta.yaml pass the tokenizer check
and a BOS the model never had fails it."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from builders import gguf_file
from builders.backends.coreml import meta
from builders.backends.mlc import gen_config
from builders.backends.mlc import steps as mlc_steps
from builders.backends.mlc.conv_templates import template
from builders.backends.mlc.models import ModelConfig
from builders.backends.mlc.quant import QUANTS
from builders.models import tiny, vocab
from builders.verify import tokenizer_check
from builders.verify.reference import Tokenizer, compute_reference

SDIST_MODELS = Path("/tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/models")


@pytest.fixture(scope="session")
def vocab_files(tmp_path_factory):
    """llama.cpp's ggml-vocab files: the unpacked sdist when present, else copied out of the gguf image
    (which keeps them at /opt/llama.cpp/models); never skipped."""
    import os

    if os.environ.get(vocab.VOCAB_DIR_ENV) or (SDIST_MODELS / "ggml-vocab-llama-bpe.gguf").is_file():
        return vocab.vocab_dir()
    from builders import images

    pins = yaml.safe_load((Path(__file__).resolve().parents[1] / "matrix.yaml").read_text())["images"]
    ref = images.ensure(["gguf"], pins)["gguf"]["ref"]
    dest = tmp_path_factory.mktemp("vocab")
    cid = subprocess.run(["docker", "create", ref], capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run(["docker", "cp", f"{cid}:/opt/llama.cpp/models/.", str(dest)], check=True)
    finally:
        subprocess.run(["docker", "rm", cid], capture_output=True)
    os.environ[vocab.VOCAB_DIR_ENV] = str(dest)
    return dest


@pytest.mark.parametrize("name", list(vocab.VOCABS))
def test_rebuilt_tokenizer_matches_llama_cpp_ids(vocab_files, tmp_path, name):
    info = vocab.write(name, tmp_path)
    report = vocab.check(tmp_path, name)
    assert report["tests"] >= 40
    expected_encoders = {"tokenizer.json", "transformers"} | ({"tokenizer.model"} if name == "llama-spm" else set())
    assert set(report["mismatches"]) == expected_encoders
    assert report["mismatches"] == {enc: [] for enc in expected_encoders}
    # BOS as the real models add it: Llama 3 <|begin_of_text|>, Llama 2 <s>, Qwen2 none
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tmp_path)("Hello world")["input_ids"]
    want = {"llama-bpe": (128000, 128001, 128256), "llama-spm": (1, 2, 32000), "qwen2": (None, 151643, 151646)}[name]
    assert (info["bos_token_id"], info["eos_token_id"], info["size"]) == want
    assert (ids[0] == want[0]) == (name != "qwen2") and ids[-1] != want[1]
    if name == "llama-bpe":  # the field transformers' GGUF import drops
        assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["ignore_merges"] is True


def test_spm_leading_space_kept(vocab_files, tmp_path):
    """SentencePiece's dummy prefix before a leading space: " Hello" is "▁", "▁Hello" (llama.cpp, sentencepiece)."""
    vocab.write("llama-spm", tmp_path)
    for enc in vocab.encoders(tmp_path).values():
        assert enc(" Hello") == [29871, 15043]


def test_gguf_kv_reader_reads_the_vocab(vocab_files):
    kv = gguf_file.read_kv(vocab.gguf_path("qwen2"))
    assert kv["tokenizer.ggml.pre"] == "qwen2" and len(kv["tokenizer.ggml.tokens"]) == 151936
    assert kv["tokenizer.ggml.merges"][2] == "i n" and kv["tokenizer.ggml.eos_token_id"] == 151643


@pytest.fixture(scope="module")
def qwen2_vocab(vocab_files, tmp_path_factory):
    """tiny:qwen2-vocab generated here + its reference logits."""
    root = tmp_path_factory.mktemp("qwen2-vocab")
    tiny.generate("qwen2-vocab", root / "model")
    info = compute_reference(root / "model", root / "reference")
    return root / "model", root / "reference", info


def test_qwen2_vocab_model_has_config_vocab_beyond_tokenizer(qwen2_vocab):
    model, ref, info = qwen2_vocab
    cfg = json.loads((model / "config.json").read_text())
    assert cfg == tiny.tiny_config("qwen2-vocab") and cfg["vocab_size"] == 151936
    assert len(Tokenizer(model)) == 151646
    assert info["greedy_argmax_ids"] == 151646 and info["config_vocab_size"] == 151936
    assert info["tokenizer_specials"] == {"bos_token_id": None, "eos_token_id": 151643, "adds_bos": False,
                                          "adds_eos": False, "size": 151646}
    with np.load(ref / "reference.npz") as z:
        assert z["logits_0"].shape[1] == 151936
        assert all(int(z[f"tokens_{i}"].max()) < 151646 for i in range(len(info["prompts"])))


def test_peaked_weights_give_peaked_logits(qwen2_vocab):
    _, ref, _ = qwen2_vocab
    with np.load(ref / "reference.npz") as z:
        logits = z["logits_0"][:, :151646]
    top2 = np.sort(logits, axis=-1)[:, -2:]
    gaps = top2[:, 1] - top2[:, 0]
    # one clear winner per position, logits small enough for float16 rounding to stay under 0.01
    assert float(np.median(gaps)) > 1.5 and float(gaps.min()) > 0.5 and float(np.abs(logits).max()) < 8


def _mlc_weights_dir(model: Path, out: Path, conv_bos=None) -> Path:
    hf = json.loads((model / "config.json").read_text())
    out.mkdir()
    cfg = gen_config.write(model, out, hf, ModelConfig.from_hf(hf, {}), QUANTS["q0f32"], None)
    if conv_bos is not None:  # the old behaviour: a BOS prefix from the config's bos_token_id
        cfg["conv_template"] = template(cfg["conv_template"]["name"], conv_bos, [151643])
        (out / "mlc-chat-config.json").write_text(json.dumps(cfg))
    return out


def test_mlc_chat_config_of_qwen2_has_no_bos_and_passes(qwen2_vocab, tmp_path):
    model, ref, _ = qwen2_vocab
    w = _mlc_weights_dir(model, tmp_path / "w")
    cfg = json.loads((w / "mlc-chat-config.json").read_text())
    assert cfg["conv_template"]["system_prefix_token_ids"] is None and cfg["eos_token_id"] == 151643
    result = mlc_steps.tokenizer_result(w, ref)
    assert result["passed"] and result["texts"] == 7 and not result["mismatches"], result["failures"]


def test_wrong_bos_fails_the_tokenizer_check(qwen2_vocab, tmp_path):
    model, ref, _ = qwen2_vocab
    w = _mlc_weights_dir(model, tmp_path / "w", conv_bos=151643)
    result = mlc_steps.tokenizer_result(w, ref)
    assert not result["passed"] and len(result["mismatches"]) == 7
    assert result["mismatches"][0]["first_difference"] == 0 and result["mismatches"][0]["got"][0] == 151643
    ver = tokenizer_check.merge({"passed": True, "checks": {"top1": 1.0}, "thresholds": {}, "failures": []}, result)
    assert not ver["passed"] and "tokenize differently" in ver["failures"][0] and ver["checks"]["top1"] == 1.0


def test_coreml_meta_tokenizer_section(qwen2_vocab, tmp_path):
    model, ref, _ = qwen2_vocab
    for f in meta.TOKENIZER_FILES:
        if (model / f).is_file():
            shutil.copy(model / f, tmp_path / f)
    section = meta.tokenizer_section(tmp_path)
    assert section == {"bos_token_id": None, "eos_token_id": 151643, "stop_token_ids": [151643], "add_bos_token": False}
    (tmp_path / "meta.yaml").write_text(yaml.safe_dump({"tokenizer": section}))
    assert meta.tokenizer_result(tmp_path, ref)["passed"]
    bad = {**section, "bos_token_id": 151643, "add_bos_token": True}
    (tmp_path / "meta.yaml").write_text(yaml.safe_dump({"tokenizer": bad}))
    assert not meta.tokenizer_result(tmp_path, ref)["passed"]
    (tmp_path / "meta.yaml").write_text(yaml.safe_dump({"model_info": {}}))
    assert "no tokenizer section" in meta.tokenizer_result(tmp_path, ref)["failures"][0]


def test_greedy_decode_stays_inside_the_tokenizer(tmp_path):
    """A config vocab beyond a SentencePiece tokenizer whose extra rows win every arg-max: the reference
    node restricts greedy decoding to the tokenizer's ids (SentencePiece cannot decode the others)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path / "m"
    tiny.train_tokenizer(tiny.write_corpus(tmp_path), d)
    n_tok = tiny.VOCAB_SIZE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=n_tok + 8, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    # the rows past the tokenizer point along the hidden states' mean direction, scaled up: they win
    with torch.no_grad():
        h = model.model(input_ids=torch.tensor([[1, 5, 7, 9]])).last_hidden_state[0]
        model.lm_head.weight[n_tok:] = 50 * h.mean(0) / h.mean(0).norm()
    model.save_pretrained(d)
    with torch.no_grad():
        probe = model(input_ids=torch.tensor([Tokenizer(d).encode("the cat")])).logits[0, -1]
    assert int(probe.argmax()) >= n_tok, "the setup makes an id the tokenizer lacks win the arg-max"
    info = compute_reference(d, tmp_path / "ref")
    assert info["greedy_argmax_ids"] == n_tok
    with np.load(tmp_path / "ref" / "reference.npz") as z:
        assert all(int(z[f"tokens_{i}"].max()) < n_tok for i in range(len(info["prompts"])))
