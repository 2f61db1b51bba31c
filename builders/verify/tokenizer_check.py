"""The tokenizer check of an artifact: does what it ships tokenize text as the original model does?

Logit verification feeds token ids, so it cannot see a tokenizer an artifact gets wrong (a BOS the
model never had - MLC once gave Qwen2 `system_prefix_token_ids: [151643]` - a missing BOS, a lost
leading space, a wrong EOS). Each backend tokenizes the reference prompts and the perplexity text with
the files it ships, the way its runtime does (BOS/EOS included), and `check()` compares the ids with
the reference node's, which come from the original model's tokenizer (reference.npz, reference.json
`tokenizer_specials`). A difference fails the artifact's node.

Backends: GGUF - llama.cpp's tokenizer on the file (vocab_only, BOS as the file says); MLC - the
shipped tokenizer files + mlc-chat-config.json (conversation prefix token ids, bos/eos ids); Core ML -
the shipped tokenizer files + meta.yaml (its tokenizer section).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from builders.errors import NodeFailed

SHOWN_IDS = 12  # ids shown per side for a mismatching text


def expected(ref_dir: Path) -> tuple[list[tuple[str, list[int]]], dict]:
    """[(text, ids)] of the reference (prompts, then the perplexity text) and its tokenizer_specials."""
    info = json.loads((Path(ref_dir) / "reference.json").read_text())
    if "tokenizer_specials" not in info:
        raise NodeFailed(f"{ref_dir}/reference.json has no tokenizer_specials (made by an older builder); "
                         "rebuild the reference node")
    with np.load(Path(ref_dir) / "reference.npz") as z:
        texts = [(p["text"], [int(t) for t in z[f"tokens_{i}"][: int(z[f"prompt_len_{i}"])]])
                 for i, p in enumerate(info["prompts"])]
        texts.append((info["perplexity_text"], [int(t) for t in z["text_tokens"]]))
    return texts, info["tokenizer_specials"]


def ids_of(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def check(ref_dir: Path, encode: Callable[[str], Iterable[int]], bos_token_id: int | None,
          eos_token_ids, how: str) -> dict:
    """Compare the artifact's tokenization (`encode`: text -> ids with the BOS/EOS its runtime adds) and
    its BOS id / EOS (stop) ids with the reference's. Returns the manifest block
    {passed, how, texts, mismatches, bos_token_id, eos_token_id, failures}."""
    texts, ref = expected(ref_dir)
    mismatches, failures = [], []
    for text, want in texts:
        got = [int(t) for t in encode(text)]
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            mismatches.append({"text": text[:60], "first_difference": at, "expected": want[max(0, at - 2): at + SHOWN_IDS],
                               "got": got[max(0, at - 2): at + SHOWN_IDS], "expected_len": len(want), "got_len": len(got)})
    if mismatches:
        m = mismatches[0]
        failures.append(f"tokenizer ({how}): {len(mismatches)}/{len(texts)} texts tokenize differently from the "
                        f"original model's tokenizer; first {m['text'][:30]!r} at token {m['first_difference']}: "
                        f"expected {m['expected'][:6]}, got {m['got'][:6]}")
    eos = ids_of(eos_token_ids)
    if ref["eos_token_id"] is not None and ref["eos_token_id"] not in eos:
        failures.append(f"tokenizer ({how}): EOS/stop ids {eos} do not include the model's EOS {ref['eos_token_id']}")
    if ref["adds_bos"] and bos_token_id != ref["bos_token_id"]:
        failures.append(f"tokenizer ({how}): BOS id {bos_token_id}, the model's is {ref['bos_token_id']}")
    return {"passed": not failures, "how": how, "texts": len(texts), "mismatches": mismatches,
            "bos_token_id": {"reference": ref["bos_token_id"], "artifact": bos_token_id,
                             "reference_adds_bos": ref["adds_bos"]},
            "eos_token_id": {"reference": ref["eos_token_id"], "artifact": eos},
            "failures": failures}


def merge(verification: dict | None, result: dict) -> dict:
    """The node's verification block with the tokenizer check added: figures under checks.tokenizer,
    its failures appended; a failing tokenizer check fails the node."""
    ver = dict(verification or {"passed": True, "checks": {}, "thresholds": {}, "failures": []})
    ver["checks"] = {**ver.get("checks", {}), "tokenizer": result}
    ver["failures"] = list(ver.get("failures", [])) + result["failures"]
    ver["passed"] = bool(ver.get("passed", True)) and result["passed"]
    return ver


def hf_files_encoder(model_dir: Path, prefix_ids: list[int], add_special_tokens: bool = False):
    """text -> prefix_ids + ids of the tokenizer files in model_dir: tokenizer.json through `tokenizers`
    (what MLC's tokenizers-cpp and HF fast tokenizers load), else tokenizer.model through SentencePiece."""
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer  # noqa: PLC0415

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        return lambda text: list(prefix_ids) + tok.encode(text, add_special_tokens=add_special_tokens).ids
    if (model_dir / "tokenizer.model").is_file():
        import sentencepiece as spm  # noqa: PLC0415

        sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
        return lambda text: list(prefix_ids) + list(sp.encode(text))
    raise NodeFailed(f"{model_dir} ships neither tokenizer.json nor tokenizer.model: nothing to tokenize with")
