"""Real tokenizer vocabularies rebuilt as Hugging Face tokenizers from llama.cpp's ggml-vocab GGUFs.

The llama-cpp-python sdist ships `models/ggml-vocab-<name>.gguf` (tokens, merges or scores, special ids)
with `.inp` / `.out` test data (strings and the ids llama.cpp produces, no BOS). The gguf image keeps
them at /opt/llama.cpp/models (docker/gguf.Dockerfile.j2, `images.gguf.vocabs` in matrix.yaml).

`VOCABS` is the table of supported vocabularies: how the original model's tokenizer files look
(pre-tokenizer regex, BPE `ignore_merges`, BOS/EOS tokens, whether it adds a BOS). `write(name, out)`
writes tokenizer.json + tokenizer_config.json + special_tokens_map.json (+ tokenizer.model for
SentencePiece vocabularies) built from the GGUF alone; `check(out, name)` tokenizes the `.inp`
strings with the written files and compares with `.out` - transformers' own GGUF import drops Llama 3's
`ignore_merges`, and its LlamaTokenizer has mis-handled SentencePiece leading spaces, so every rebuilt
tokenizer is checked against llama.cpp's ids before a model ships with it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders.errors import NodeFailed

VOCAB_DIR_ENV = "BUILDMATRIX_VOCAB_DIR"
VOCAB_DIRS = (Path("/opt/llama.cpp/models"),
              Path("/tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/models"))
TEST_SEP = "\n__ggml_vocab_test__\n"

# GGUF token types (gguf-py TokenType; the same numbers as SentencePiece's piece types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class Vocab:
    gguf: str  # ggml-vocab-<gguf>.gguf
    kind: str  # "bpe" (byte-level BPE, tokenizer.json) | "spm" (SentencePiece BPE, tokenizer.model)
    bos: str | None  # BOS token text (None: the model has none)
    eos: str
    add_bos: bool  # what the original tokenizer does with add_special_tokens=True
    split: str | None = None  # byte-level BPE pre-tokenizer regex
    ignore_merges: bool = False  # Llama 3: a word that is a whole token is not split by merges
    normalizer: dict | None = None
    config: dict[str, Any] = field(default_factory=dict)  # extra tokenizer_config.json fields
    model: str = ""  # the real model family this vocabulary belongs to (docs)


VOCABS: dict[str, Vocab] = {
    "llama-bpe": Vocab(
        "llama-bpe", "bpe", "<|begin_of_text|>", "<|end_of_text|>", True, LLAMA3_SPLIT, ignore_merges=True,
        config={"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                "model_max_length": 131072},
        model="Llama 3 (BPE, 128256 tokens)"),
    "qwen2": Vocab(
        "qwen2", "bpe", None, "<|endoftext|>", False, QWEN2_SPLIT, normalizer={"type": "NFC"},
        config={"tokenizer_class": "Qwen2Tokenizer", "pad_token": "<|endoftext|>", "unk_token": None,
                "add_prefix_space": False, "errors": "replace", "split_special_tokens": False,
                "clean_up_tokenization_spaces": False, "model_max_length": 32768},
        model="Qwen2 (BPE, 151646 tokens; config vocab 151936)"),
    "llama-spm": Vocab(
        "llama-spm", "spm", "<s>", "</s>", True,
        # not LlamaTokenizer: transformers 5 rebuilds its pipeline from the vocabulary with a Metaspace
        # pre-tokenizer that drops the dummy prefix before a leading space; the fast class loads
        # tokenizer.json as written (checked against llama.cpp's ids in check())
        config={"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "pad_token": None,
                "add_bos_token": True, "add_eos_token": False, "legacy": False,
                "clean_up_tokenization_spaces": False, "sp_model_kwargs": {}, "model_max_length": 4096},
        model="Llama 2 (SentencePiece BPE, 32000 tokens)"),
}


def _vocab(name: str) -> Vocab:
    if name not in VOCABS:
        raise NodeFailed(f"vocabulary '{name}' unknown; known: {', '.join(VOCABS)}")
    return VOCABS[name]


def vocab_dir() -> Path:
    """Where the ggml-vocab files are: $BUILDMATRIX_VOCAB_DIR, the gguf image's /opt/llama.cpp/models,
    or the unpacked sdist."""
    env = os.environ.get(VOCAB_DIR_ENV)
    for d in ([Path(env)] if env else []) + list(VOCAB_DIRS):
        if (d / "ggml-vocab-llama-bpe.gguf").is_file():
            return d
    where = ", ".join(str(d) for d in ([Path(env)] if env else []) + list(VOCAB_DIRS))
    raise NodeFailed(f"no ggml-vocab-*.gguf files in {where}; run the node in the gguf image or set "
                     f"{VOCAB_DIR_ENV} to llama.cpp's models/ directory")


def gguf_path(name: str) -> Path:
    path = vocab_dir() / f"ggml-vocab-{_vocab(name).gguf}.gguf"
    if not path.is_file():
        raise NodeFailed(f"{path} missing; add '{name}' to images.gguf.vocabs in matrix.yaml")
    return path


@dataclass
class GgufVocab:
    tokens: list[str]
    types: list[int]
    scores: list[float]
    merges: list[str]
    ids: dict[str, int]  # bos/eos/unk/pad ids as the file says


def read_gguf(path: Path) -> GgufVocab:
    from builders.gguf_file import GgufFormatError, read_kv  # noqa: PLC0415

    try:
        kv = read_kv(path)
    except GgufFormatError as e:
        raise NodeFailed(str(e)) from None
    ids = {k: kv.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    tokens = kv["tokenizer.ggml.tokens"]
    return GgufVocab(tokens, [int(t) for t in kv["tokenizer.ggml.token_type"]],
                     [float(x) for x in kv.get("tokenizer.ggml.scores", [0.0] * len(tokens))],
                     list(kv.get("tokenizer.ggml.merges", [])), ids)


def read_tests(name: str) -> list[tuple[str, list[int]]]:
    """The (text, ids) pairs of ggml-vocab-<name>.gguf.inp/.out (ids without BOS/EOS)."""
    path = gguf_path(name)
    texts = Path(str(path) + ".inp").read_text(encoding="utf-8").split(TEST_SEP)
    if texts and texts[-1] == "":
        texts = texts[:-1]
    lines = Path(str(path) + ".out").read_text(encoding="utf-8").split("\n")
    lines = lines[: len(texts)]
    if len(lines) != len(texts):
        raise NodeFailed(f"{path.name}: {len(texts)} test strings but {len(lines)} expected-id lines")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


# ---- writing the HF tokenizer files --------------------------------------------------------------

def _write_json(path: Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _added(token: str, tid: int, special: bool = True) -> dict:
    return {"id": tid, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": not special, "special": special}


def _template(v: Vocab, bos_id: int | None) -> dict:
    if not v.add_bos:
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    a, b = {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}
    bos = {"SpecialToken": {"id": v.bos, "type_id": 0}}
    return {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing", "single": [bos, a], "pair": [bos, a, {"SpecialToken": {"id": v.bos, "type_id": 1}}, b],
         "special_tokens": {v.bos: {"id": v.bos, "ids": [bos_id], "tokens": [v.bos]}}}]}


def _bpe_tokenizer_json(v: Vocab, g: GgufVocab) -> dict:
    """A byte-level BPE tokenizer.json: normal tokens + merges in the model; control tokens added as
    special; padding entries llama.cpp's converter appended ([PAD<n>]) are not part of the tokenizer."""
    vocab, added = {}, []
    for i, (tok, typ) in enumerate(zip(g.tokens, g.types)):
        if typ == NORMAL:
            vocab[tok] = i
        elif typ == CONTROL:
            added.append(_added(tok, i))
        elif not (typ in (USER_DEFINED, UNUSED) and tok == f"[PAD{i}]"):
            raise NodeFailed(f"ggml-vocab-{v.gguf}: token {i} {tok!r} has type {typ}; not handled")
    bos_id = g.ids["bos"] if v.bos else None
    if v.bos and g.tokens[bos_id] != v.bos:
        raise NodeFailed(f"ggml-vocab-{v.gguf}: bos id {bos_id} is {g.tokens[bos_id]!r}, expected {v.bos!r}")
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": v.normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": v.split}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": _template(v, bos_id),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": v.ignore_merges, "vocab": vocab, "merges": [m.split(" ") for m in g.merges]},
    }


def _spm_model(v: Vocab, g: GgufVocab) -> bytes:
    """tokenizer.model (SentencePiece ModelProto, BPE with byte fallback) from the GGUF's pieces."""
    from sentencepiece import sentencepiece_model_pb2 as pb  # noqa: PLC0415

    m = pb.ModelProto()
    for tok, score, typ in zip(g.tokens, g.scores, g.types):
        if typ not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE):
            raise NodeFailed(f"ggml-vocab-{v.gguf}: piece {tok!r} has type {typ}; not handled")
        p = m.pieces.add()
        p.piece, p.score, p.type = tok, score, typ
    t = m.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.vocab_size = len(g.tokens)
    t.byte_fallback = True
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = g.ids["unknown"], g.ids["bos"], g.ids["eos"], -1
    t.split_digits = True
    t.allow_whitespace_only_pieces = True
    n = m.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = True
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    n.precompiled_charsmap = b""
    return m.SerializeToString(deterministic=True)


def _spm_tokenizer_json(out: Path) -> dict:
    """tokenizer.json as transformers converts tokenizer.model (in a scratch dir, so nothing stale is read),
    with the whitespace handling of the real Llama 2 tokenizer.json: transformers 5 writes a Metaspace
    pre-tokenizer (prepend_scheme "first") that does not add SentencePiece's dummy prefix to a text
    that already starts with a space (" Hello" gives "▁Hello", SentencePiece and llama.cpp "▁", "▁Hello");
    Llama 2 ships a normalizer (prepend "▁", spaces -> "▁") and no pre-tokenizer, which matches."""
    data = _converted_tokenizer_json(out)
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    data["pre_tokenizer"] = None
    data["model"]["unk_token"] = "<unk>"
    # SentencePiece BPE applies the merge whose result has the highest score first; the conversion
    # orders merges by token id, which puts whitespace runs ("▁▁", score -1e9) first
    import sentencepiece as spm  # noqa: PLC0415

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    data["model"]["merges"] = sorted(data["model"]["merges"], key=lambda m: -sp.get_score(sp.piece_to_id("".join(m))))
    return data


def _converted_tokenizer_json(out: Path) -> dict:
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from transformers import AutoTokenizer  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(out / name, Path(tmp) / name)
        tok = AutoTokenizer.from_pretrained(tmp)
        return json.loads(tok.backend_tokenizer.to_str())


def write(name: str, out: Path) -> dict:
    """Write the HF tokenizer files of vocabulary `name` into out; return {bos_token_id, eos_token_id,
    add_bos, size} (size = the tokenizer's own token count, which may be below the model's vocab)."""
    v = _vocab(name)
    g = read_gguf(gguf_path(name))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    eos_id = g.tokens.index(v.eos)
    bos_id = g.tokens.index(v.bos) if v.bos else None
    special = {"bos_token": v.bos, "eos_token": v.eos}
    special.update({k: v.config[k] for k in ("unk_token", "pad_token") if v.config.get(k)})
    _write_json(out / "special_tokens_map.json", {k: x for k, x in special.items() if x is not None})
    _write_json(out / "tokenizer_config.json", {**v.config, "bos_token": v.bos, "eos_token": v.eos})
    if v.kind == "spm":
        (out / "tokenizer.model").write_bytes(_spm_model(v, g))
        data = _spm_tokenizer_json(out)
        size = len(g.tokens)
    else:
        data = _bpe_tokenizer_json(v, g)
        size = len(data["model"]["vocab"]) + len(data["added_tokens"])
    _write_json(out / "tokenizer.json", data)
    return {"vocab": name, "bos_token_id": bos_id, "eos_token_id": eos_id, "add_bos": v.add_bos, "size": size}


# ---- checking the written files against llama.cpp's expected ids ---------------------------------

def encoders(out: Path) -> dict:
    """The ways the written files get used: `tokenizers` on tokenizer.json (MLC, Core ML runtimes),
    transformers' AutoTokenizer (the reference node, ANEMLL), SentencePiece on tokenizer.model."""
    from tokenizers import Tokenizer  # noqa: PLC0415
    from transformers import AutoTokenizer  # noqa: PLC0415

    tj = Tokenizer.from_file(str(Path(out) / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(out))
    fns = {"tokenizer.json": lambda s: tj.encode(s, add_special_tokens=False).ids,
           "transformers": lambda s: list(hf(s, add_special_tokens=False)["input_ids"])}
    if (Path(out) / "tokenizer.model").is_file():
        import sentencepiece as spm  # noqa: PLC0415

        sp = spm.SentencePieceProcessor(model_file=str(Path(out) / "tokenizer.model"))
        fns["tokenizer.model"] = lambda s: list(sp.encode(s))
    return fns


def write_checked(name: str, out: Path) -> dict:
    """write() + check(): fails (NodeFailed) unless every encoder of the written files agrees with llama.cpp."""
    info = write(name, out)
    report = check(out, name)
    bad = {enc: texts for enc, texts in report["mismatches"].items() if texts}
    if bad:
        raise NodeFailed(f"rebuilt {name} tokenizer disagrees with llama.cpp's ids on "
                         + "; ".join(f"{enc}: {len(t)}/{report['tests']} (first {t[0]!r})" for enc, t in bad.items()))
    return {**info, "tests": report["tests"], "encoders": sorted(report["mismatches"])}


def check(out: Path, name: str) -> dict:
    """Tokenize every .inp string with every encoder of the written files; {encoder: mismatches}."""
    tests = read_tests(name)
    report = {"tests": len(tests), "mismatches": {}}
    for enc, fn in encoders(out).items():
        bad = [text for text, want in tests if fn(text) != want]
        report["mismatches"][enc] = bad
    return report
