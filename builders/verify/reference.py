"""Reference logits of the original model (transformers, fp32 math, eager attention).

`compute_reference(model_dir, out)` writes out/reference.npz and out/reference.json in the format
of docs/architecture.md ("Reference logits"). Bytes are deterministic: one torch thread, and the npz
is written as a stored (uncompressed) zip with fixed member dates and order.

Memory is bounded by the checkpoint: the weights stay in their stored dtype and each module computes
with an fp32 copy of its own parameters (verify/fp32_compute.py; the logits equal the fp32 model's bit
for bit). The perplexity text is scored over the first budget.TEXT_POSITIONS tokens (verify/budget.py).

One thread on purpose: reference.npz is an output whose bytes a rebuild must reproduce (the store and a
release compare sha256), and a thread count that changed a float summation order would make them depend
on the build host. Measured: the bytes equal those of the former all-fp32 model. (Artifact checks use every
CPU: their figures go to the manifest only; no digest holds them - parents enter by inputs digest.)
"""

from __future__ import annotations

import gc
import io
import json
import platform
import zipfile
from pathlib import Path

import numpy as np

from builders.verify import budget, prompts
from builders.verify.fp32_compute import logits_batch

THREADS = 1
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
FORMAT = 3  # 2: text_logits cover the first budget.TEXT_POSITIONS text tokens; 3: batched passes


class NpzWriter:
    """An .npz written member by member, like np.savez but without timestamps: members in the order added,
    fixed date, no compression. Each array goes straight into its zip member (no in-memory .npy copy) and
    can be dropped by the caller right after: the prompts' logits leave memory before the text's are
    computed. The file is seekable, so zipfile fills each local header's sizes and CRC in place: the bytes
    equal a writestr() of the same .npy."""

    def __init__(self, path: Path):
        self.zf = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED)

    def add(self, name: str, arr) -> None:
        info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
        info.external_attr = 0o644 << 16
        with self.zf.open(info, "w") as member:
            np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)

    def __enter__(self) -> "NpzWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.zf.close()


class Tokenizer:
    """The model's tokenizer: SentencePiece tokenizer.model when present, else transformers'."""

    def __init__(self, model_dir: Path):
        spm_file = Path(model_dir) / "tokenizer.model"
        if spm_file.is_file() and self._is_sentencepiece(spm_file) and not self._adds_tokens(model_dir, spm_file):
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor(model_file=str(spm_file))
            self.kind = "sentencepiece"
        else:
            from transformers import AutoTokenizer

            self.hf = AutoTokenizer.from_pretrained(str(model_dir))
            self.kind = "transformers"

    @staticmethod
    def _is_sentencepiece(path: Path) -> bool:
        import sentencepiece as spm

        try:
            spm.SentencePieceProcessor(model_file=str(path))
            return True
        except (RuntimeError, OSError):
            return False

    @staticmethod
    def _adds_tokens(model_dir: Path, spm_file: Path) -> bool:
        """True when tokenizer_config.json adds tokens after tokenizer.model's pieces (Phi-3's <|endoftext|>
        ... and its EOS among them): then tokenizer.model alone is not the model's tokenizer."""
        import sentencepiece as spm

        cfg_file = Path(model_dir) / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        pieces = spm.SentencePieceProcessor(model_file=str(spm_file)).get_piece_size()
        return any(int(i) >= pieces for i in cfg.get("added_tokens_decoder") or {})

    def __len__(self) -> int:
        """Ids this tokenizer has (a model's config vocab may be larger: Qwen2 151936 vs 151646)."""
        return self.sp.get_piece_size() if self.kind == "sentencepiece" else len(self.hf)

    def specials(self) -> dict:
        """BOS/EOS ids and whether encode() adds them: what every artifact's tokenizer must reproduce."""
        if self.kind == "sentencepiece":
            bos, eos = self.sp.bos_id(), self.sp.eos_id()
            bos, eos = (bos if bos >= 0 else None), (eos if eos >= 0 else None)
        else:
            bos, eos = self.hf.bos_token_id, self.hf.eos_token_id
        probe = self.encode("a")
        return {"bos_token_id": bos, "eos_token_id": eos, "adds_bos": bos is not None and probe[:1] == [bos],
                "adds_eos": eos is not None and probe[-1:] == [eos], "size": len(self)}

    def encode(self, text: str) -> list[int]:
        """Token ids with BOS (when the tokenizer has one)."""
        if self.kind == "sentencepiece":
            bos = [self.sp.bos_id()] if self.sp.bos_id() >= 0 else []
            return bos + self.sp.encode(text)
        return list(self.hf(text, add_special_tokens=True)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids) if self.kind == "sentencepiece" else self.hf.decode(ids)


def tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "safetensors", "sentencepiece", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions


def load_model(model_dir: Path):
    from builders.verify.fp32_compute import load_fp32_compute

    return load_fp32_compute(model_dir, THREADS)


def greedy_batch(model, prompts: list[list[int]], steps: int, n_ids: int | None = None) -> list[list[int]]:
    """`steps` greedy tokens after each prompt (never stopping early), all prompts in one left-padded batch
    with a KV cache: `steps` forward passes in all, however many prompts. Padding is masked out and the
    positions count from each prompt's first real token, so a prompt's tokens are those it would get alone
    (up to float summation order). With n_ids, the arg-max is taken over ids < n_ids only: a config vocab
    larger than the tokenizer has rows (padding) whose ids the tokenizer cannot decode, and no artifact's
    runtime would sample them. Only the last position goes through the LM head (logits_to_keep=1)."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out: list[list[int]] = [[] for _ in prompts]
    past = None
    for step in range(steps):
        res = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                    use_cache=True, logits_to_keep=1)
        past = res.past_key_values
        nxt = res.logits[:, -1, :n_ids].argmax(-1)
        for i, t in enumerate(nxt.tolist()):
            out[i].append(int(t))
        ids = nxt[:, None]
        mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=mask.dtype)], dim=1)
        positions = positions[:, -1:] + 1
    return out


def compute_reference(model_dir: Path, out: Path) -> dict:
    """Write reference.npz + reference.json into out; return the reference.json content."""
    import torch

    from builders.verify.metrics import perplexity

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(model_dir)
    model = load_model(model_dir)
    config_vocab = int(model.config.vocab_size)
    n_ids = len(tok) if len(tok) < config_vocab else None
    entries = []
    with torch.no_grad(), NpzWriter(out / "reference.npz") as npz:
        # three kinds of pass, whatever the number of prompts: the greedy continuations (DECODE_STEPS batched
        # passes), the teacher-forced logits of all prompts + continuations (one pass), the text (one pass)
        prompt_ids = [tok.encode(text) for text in prompts.PROMPTS]
        conts = greedy_batch(model, prompt_ids, prompts.DECODE_STEPS, n_ids)
        text_ids = tok.encode(prompts.PERPLEXITY_TEXT)
        scored = text_ids[: budget.text_positions(len(text_ids))]
        continuations = [tok.decode(cont) for cont in conts]
        tokenizer_kind, specials = tok.kind, tok.specials()
        del tok  # a real vocabulary's tokenizer is 100-200 MB: gone before the passes with vocabulary-wide logits
        gc.collect()
        sequences = [ids + cont for ids, cont in zip(prompt_ids, conts)]
        batch = logits_batch(model, sequences)
        vocab = int(batch[0].shape[1])
        for i, (text, ids, cont) in enumerate(zip(prompts.PROMPTS, prompt_ids, conts)):
            npz.add(f"tokens_{i}", np.asarray(ids + cont, dtype=np.int32))
            npz.add(f"prompt_len_{i}", np.asarray(len(ids), dtype=np.int32))
            npz.add(f"logits_{i}", batch[i].astype(np.float32, copy=False))
            entries.append({"text": text, "prompt_tokens": len(ids), "continuation": continuations[i]})
        del batch  # written: the prompts' logits are not held while the text's are computed
        npz.add("text_tokens", np.asarray(text_ids, dtype=np.int32))  # whole text: the tokenizer check reads it
        text_logits = logits_batch(model, [scored])[0].astype(np.float32, copy=False)
        ppl = perplexity(text_logits, np.asarray(scored, dtype=np.int32))
        npz.add("text_logits", text_logits)
        del text_logits
    info = {
        "format": FORMAT,
        "prompts": entries,
        "decode_steps": prompts.DECODE_STEPS,
        "vocab_size": vocab,
        "perplexity_text": prompts.PERPLEXITY_TEXT,
        "text_tokens": len(text_ids),
        "text_positions": len(scored),
        "ppl": round(ppl, 6),
        "tokenizer": tokenizer_kind,
        "tokenizer_specials": specials,
        # greedy decode took the arg-max over the ids the tokenizer has (null: the whole config vocab)
        "greedy_argmax_ids": n_ids,
        "config_vocab_size": config_vocab,
        "dtype": "float32",
        "weights_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "attn_implementation": "eager",
        "threads": THREADS,
        "tool_versions": tool_versions(),
    }
    (out / "reference.json").write_text(json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return info
