"""`tiny:<arch>` models: small HF causal LMs trained here, deterministically, on the project corpus.

`TINY_ARCHS` is the table of supported architectures (HF class + config fields that make each one
exercise a real feature: Llama-3 rope scaling and GQA, Qwen2 qkv bias and tied embeddings, Mistral
sliding window). `tiny_config(arch)` is the config.json content, known without generating anything
(plan side: no torch import). `generate(arch, out)` writes the model dir
(`python -m builders.models.tiny generate ARCH OUT [STEPS]` does the same):

    config.json generation_config.json model.safetensors (float32)
    tokenizer.model (SentencePiece BPE, byte fallback) tokenizer.json tokenizer_config.json
    special_tokens_map.json

Same bytes on every run: fixed seeds, one thread and pinned CPU kernels (PINNED_ENV), sorted JSON,
safetensors metadata fixed. The run
side is split into the steps the `tiny-model` node runs (builders/models/nodes.py); each step reads
and writes files only, so a failed node resumes at its first unfinished step.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders.archs import FAMILIES
from builders.errors import ModelError, NodeFailed
from builders.models import corpus as corpus_mod

VOCAB_SIZE = 512
SEED = 1234
TRAIN_STEPS = 150  # default training length: about 65 s on one thread here (see TRAINING for the rest)
THREADS = 1  # one thread: float reductions in one fixed order
# Training runs in a child process with these set before torch loads: one thread, and CPU kernels
# pinned to the AVX2 code paths (torch's vectorized ops, MKL's conditional numerical reproducibility)
# so that x86-64 hosts with wider vector units pick the same kernels. Measured here: no slowdown.
PINNED_ENV = {
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
    "MKL_CBWR": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "PYTHONHASHSEED": "0",
}


@dataclass(frozen=True)
class Training:
    seq_len: int = 128
    batch: int = 8
    lr: float = 3e-3
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)


TRAINING = Training()

COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 256,  # k-quants want rows that are multiples of 256
    "intermediate_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # GQA
    "head_dim": 64,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "attention_dropout": 0.0,
    "use_cache": True,
    "torch_dtype": "float32",
}


@dataclass(frozen=True)
class TinyArch:
    hf_arch: str  # config["architectures"][0]: a row of builders/archs.py FAMILIES
    fields: dict[str, Any] = field(default_factory=dict)  # on top of COMMON
    features: tuple[str, ...] = ()  # what this arch exercises (docs/tests)
    # tokens added after the SentencePiece vocabulary (ids VOCAB_SIZE, VOCAB_SIZE + 1, ...), all special,
    # and the special-token names of tokenizer_config.json that differ from SPECIAL_TOKENS
    added_tokens: tuple[str, ...] = ()
    specials: dict[str, str] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return FAMILIES[self.hf_arch].model_type


# Phi-3's added tokens in its order (ids 32000-32010 there): llama.cpp's phi3 vocabulary needs
# <|endoftext|> (and takes <|end|> as end of turn), MLC's phi-3 conversation template <|user|> ...
PHI3_ADDED_TOKENS = ("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
                     "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>",
                     "<|placeholder6|>", "<|user|>")

TINY_ARCHS: dict[str, TinyArch] = {
    "llama": TinyArch(
        "LlamaForCausalLM",
        {
            "max_position_embeddings": 4096,
            "rope_theta": 500000.0,
            # Llama-3 style: low frequencies stretched; small original context so most dims are affected
            "rope_scaling": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 1024},
            "attention_bias": False,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "tie_word_embeddings": False,
        },
        ("gqa", "rope_scaling:llama3"),
    ),
    "qwen2": TinyArch(
        "Qwen2ForCausalLM",
        {
            "max_position_embeddings": 4096,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": True,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": 2,
        },
        ("gqa", "qkv_bias", "tied_embeddings"),
    ),
    "mistral": TinyArch(
        "MistralForCausalLM",
        {
            "max_position_embeddings": 4096,
            "rope_theta": 10000.0,
            # set (as in Mistral-7B-v0.1) but wider than every verification text, so runtimes that
            # ignore it still compute the same logits
            "sliding_window": 1024,
            "tie_word_embeddings": False,
        },
        ("gqa", "sliding_window"),
    ),
    "phi3": TinyArch(
        "Phi3ForCausalLM",
        {
            "vocab_size": VOCAB_SIZE + len(PHI3_ADDED_TOKENS),
            "eos_token_id": VOCAB_SIZE,  # <|endoftext|>, as Phi-3's config (32000)
            "max_position_embeddings": 4096,
            "original_max_position_embeddings": 4096,  # llama.cpp's PHI3 converter requires it
            "rope_theta": 10000.0,
            "sliding_window": None,  # llama.cpp ignores Phi-3's window: none, so the GGUF cells are built
            "tie_word_embeddings": False,
            "pad_token_id": VOCAB_SIZE,  # <|endoftext|>
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
        },
        ("gqa", "fused_qkv_gate_up", "added_special_tokens"),
        added_tokens=PHI3_ADDED_TOKENS,
        specials={"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    ),
}


@dataclass(frozen=True)
class VocabArch:
    """A tiny model with a real tokenizer vocabulary (builders/models/vocab.py): the architecture of
    `base` (a TINY_ARCHS key) with the real model's vocab size and special ids; random peaked weights."""

    base: str
    vocab: str  # builders.models.vocab.VOCABS key
    fields: dict[str, Any] = field(default_factory=dict)  # on top of the base arch
    features: tuple[str, ...] = ()


# Weights are random, not trained: a minute of training cannot teach a 128k-token LM head anything (each
# token is seen a handful of times), while peaked random weights (PEAKED_INIT) give the sharp logits a
# quantization check needs, in about a second and without the corpus (which the real tokenizers would
# cut into other tokens than the tiny models' own).
VOCAB_ARCHS: dict[str, VocabArch] = {
    "llama3-vocab": VocabArch(
        "llama", "llama-bpe",
        {"vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": 128001},
        ("real_vocab:llama-bpe", "adds_bos", "ignore_merges")),
    "qwen2-vocab": VocabArch(
        "qwen2", "qwen2",
        # as Qwen2: config vocab 151936 > the tokenizer's 151646 tokens; bos id set but no BOS added
        {"vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151643},
        ("real_vocab:qwen2", "no_bos", "config_vocab_gt_tokenizer")),
    "llama2-vocab": VocabArch(
        "llama", "llama-spm",
        {"vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2, "rope_theta": 10000.0, "rope_scaling": None,
         "max_position_embeddings": 4096},
        ("real_vocab:llama-spm", "adds_bos", "sentencepiece")),
}

# PEAKED_INIT: embeddings ~N(0, 0.15), every other matrix ~N(0, 1/fan_in), biases ~N(0, 0.02), layer norms 1;
# then the residual writers (o_proj, down_proj) scaled by RESIDUAL_SCALE so the token's own embedding
# dominates the last hidden state, and an untied LM head made of the embedding rows in a seeded random
# order (tied: the embeddings themselves). Each position then has one clear winner - the successor of
# the current token under that permutation, a random bigram model - with the layers still adding their
# part (measured on all three: max|logit| ~6, top-1 gap median ~2.9, minimum ~1.5 - where plain
# 1/sqrt(fan_in) weights with final norm 3 give a gap median of 0.3-1 at std 3-7, which Q8_0 already
# flips 7% of the time). FINAL_NORM keeps max|logit| near 6, so float16 rounding stays under the F16
# threshold (max |delta logit| 0.01).
EMBED_STD = 0.15
BIAS_STD = 0.02
RESIDUAL_SCALE = 0.15
FINAL_NORM = 0.2


def known_archs() -> list[str]:
    return [*TINY_ARCHS, *VOCAB_ARCHS]


def _arch(arch: str) -> TinyArch:
    if arch in VOCAB_ARCHS:
        return TINY_ARCHS[VOCAB_ARCHS[arch].base]
    if arch not in TINY_ARCHS:
        raise ModelError(f"model source 'tiny:{arch}': unknown tiny architecture; "
                         f"use one of {', '.join('tiny:' + a for a in known_archs())}")
    return TINY_ARCHS[arch]


def tiny_config(arch: str) -> dict:
    """The config.json content of `tiny:<arch>` (exactly what generate() writes)."""
    a = _arch(arch)
    extra = VOCAB_ARCHS[arch].fields if arch in VOCAB_ARCHS else {}
    return {"architectures": [a.hf_arch], "model_type": a.model_type, **COMMON, **a.fields, **extra}


def generation_config(arch: str) -> dict:
    cfg = tiny_config(arch)
    return {**GENERATION_CONFIG, "bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}


GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}

TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    **SPECIAL_TOKENS,
    "pad_token": None,
    "add_bos_token": True,
    "add_eos_token": False,
    "legacy": False,
    "add_prefix_space": None,
    "clean_up_tokenization_spaces": False,
    "model_max_length": 4096,
    "sp_model_kwargs": {},
}

# SentencePiece trainer options: BPE with byte fallback, Llama special-token layout, one thread,
# no sampling or shuffling, identity normalization (llama.cpp does not normalize either)
SPM_OPTIONS: dict[str, Any] = {
    "model_type": "bpe",
    "vocab_size": VOCAB_SIZE,
    "byte_fallback": True,
    "character_coverage": 1.0,
    "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": True,
    "split_digits": True,
    "num_threads": 1,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "max_sentence_length": 8192,
    "minloglevel": 2,
}


def write_json(path: Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


# ---- run side: each function is one step; imports of heavy packages stay inside ------------------

def write_corpus(work: Path) -> Path:
    """Training text, one paragraph per line."""
    path = Path(work) / "corpus.txt"
    path.write_text("\n".join(corpus_mod.corpus()) + "\n")
    return path


def added_tokens(arch: str) -> dict[str, int]:
    """The special tokens `tiny:<arch>` adds after its SentencePiece vocabulary: token -> id."""
    return {t: VOCAB_SIZE + i for i, t in enumerate(_arch(arch).added_tokens)}


def tokenizer_configs(arch: str) -> dict[str, dict]:
    """file name -> content of the HF tokenizer files written next to tokenizer.model (tokenizer.json aside):
    the specials named as the family's own tokenizer names them, its added tokens (as Phi-3 ships them:
    added_tokens.json and tokenizer_config.json's added_tokens_decoder)."""
    a = _arch(arch)
    specials = {**SPECIAL_TOKENS, **{k: v for k, v in a.specials.items() if k != "pad_token"}}
    files = {"tokenizer_config.json": {**TOKENIZER_CONFIG, **a.specials},
             "special_tokens_map.json": {**specials, **({"pad_token": a.specials["pad_token"]}
                                                         if "pad_token" in a.specials else {})}}
    added = added_tokens(arch)
    if added:
        files["added_tokens.json"] = added
        files["tokenizer_config.json"]["added_tokens_decoder"] = {
            str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                     "single_word": False} for t, i in added.items()}
    return files


def train_tokenizer(corpus_txt: Path, out: Path, arch: str = "llama") -> None:
    """tokenizer.model (SentencePiece BPE, the same for every arch) + the HF tokenizer files of `arch`, into out."""
    import sentencepiece as spm

    lines = Path(corpus_txt).read_text().splitlines()
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, **SPM_OPTIONS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    files = tokenizer_configs(arch)
    for name, data in files.items():
        write_json(out / name, data)
    _write_tokenizer_json(out, tuple(files), added_tokens(arch))


def _write_tokenizer_json(out: Path, config_files: tuple[str, ...], added: dict[str, int]) -> None:
    """tokenizer.json converted by transformers from tokenizer.model and the config files alone (in a
    scratch dir, so a stale tokenizer.json is never picked up), re-serialized with sorted keys."""
    import shutil
    import tempfile

    import sentencepiece as spm
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("tokenizer.model", *config_files):
            shutil.copy(out / name, Path(tmp) / name)
        tok = AutoTokenizer.from_pretrained(tmp)
        data = json.loads(tok.backend_tokenizer.to_str())
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    vocab = data["model"]["vocab"]
    wrong = [p for p, i in vocab.items() if sp.piece_to_id(p) != i]
    if len(vocab) != sp.get_piece_size() or wrong:
        raise NodeFailed(f"tokenizer.json conversion disagrees with tokenizer.model ({len(vocab)} tokens, "
                           f"{len(wrong)} with other ids)")
    got = {t["content"]: t["id"] for t in data["added_tokens"] if t["id"] >= sp.get_piece_size()}
    if got != added or not all(t["special"] for t in data["added_tokens"] if t["content"] in added):
        raise NodeFailed(f"tokenizer.json conversion: added tokens {got}, expected {added} (all special)")
    write_json(out / "tokenizer.json", data)


def encode_corpus(corpus_txt: Path, tokenizer_model: Path):
    """Token stream of the corpus: BOS + paragraph tokens, paragraph after paragraph (int64 tensor)."""
    import sentencepiece as spm
    import torch

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    ids: list[int] = []
    for line in Path(corpus_txt).read_text().splitlines():
        ids.append(sp.bos_id())
        ids.extend(sp.encode(line))
    return torch.tensor(ids, dtype=torch.int64)


def _log(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def _deterministic_torch():
    import torch

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    return torch


def build_model(arch: str):
    """The HF model of `tiny:<arch>`, randomly initialized with the fixed seed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch = _deterministic_torch()
    cfg = dict(tiny_config(arch))
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    torch.manual_seed(SEED)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)


def lr_at(step: int, steps: int, t: Training) -> float:
    import math

    if step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    progress = (step - t.warmup) / max(1, steps - t.warmup)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(arch: str, corpus_txt: Path, tokenizer_model: Path, state_out: Path,
          steps: int = TRAIN_STEPS, log=None) -> dict:
    """Train from the fixed init on random windows of the corpus; save the state dict to state_out.
    Runs in this process as it is: generate() and the node call it through train_pinned()."""
    log = log or _log
    torch = _deterministic_torch()
    data = encode_corpus(corpus_txt, tokenizer_model)
    model = build_model(arch)
    model.train()
    t = TRAINING
    gen = torch.Generator().manual_seed(SEED)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                             {"params": other, "weight_decay": 0.0}],
                            lr=t.lr, betas=t.betas, foreach=False)
    t0 = time.monotonic()
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, t)
        starts = torch.randint(0, len(data) - t.seq_len, (t.batch,), generator=gen)
        batch = torch.stack([data[s:s + t.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=False)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == steps - 1:
            log(f"train {arch} step {step + 1}/{steps} loss {losses[-1]:.3f}")
    seconds = time.monotonic() - t0
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, state_out)
    return {"steps": steps, "tokens": len(data), "first_loss": losses[0], "final_loss": losses[-1],
            "train_seconds": round(seconds, 1), "threads": THREADS}


def save(arch: str, state_file: Path, out: Path) -> None:
    """save_pretrained (float32 safetensors) + our own config.json / generation_config.json."""
    torch = _deterministic_torch()
    model = build_model(arch)
    model.load_state_dict(torch.load(state_file, weights_only=True))
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    os.chmod(out / "model.safetensors", 0o644)  # save_pretrained creates it owner-only
    # config.json and generation_config.json from our tables: no version string, sorted keys
    write_json(out / "config.json", tiny_config(arch))
    write_json(out / "generation_config.json", generation_config(arch))


def peaked_init(model) -> None:
    """PEAKED_INIT on a built model, in the fixed order of its parameter names (seeded generator)."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                p.fill_(FINAL_NORM if name == "model.norm.weight" else 1.0)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * BIAS_STD)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * EMBED_STD)
            elif p.dim() == 2:
                scale = RESIDUAL_SCALE if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                p.copy_(torch.randn(p.shape, generator=gen) * scale / p.shape[1] ** 0.5)
            else:
                raise NodeFailed(f"peaked init: parameter {name} {tuple(p.shape)} has no rule")
        if not model.config.tie_word_embeddings:
            embed = model.get_input_embeddings().weight
            model.get_output_embeddings().weight.copy_(embed[torch.randperm(embed.shape[0], generator=gen)])


def write_vocab_weights(arch: str, work: Path, out: Path) -> dict:
    """Random peaked weights of a VOCAB_ARCHS model, saved like a trained one (config, generation config)."""
    torch = _deterministic_torch()
    model = build_model(arch)
    peaked_init(model)
    state = Path(work) / "state.pt"
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, state)
    save(arch, state, out)
    return {"init": "peaked random", "embed_std": EMBED_STD, "residual_scale": RESIDUAL_SCALE,
            "final_norm": FINAL_NORM, "seed": SEED,
            "parameters": sum(p.numel() for p in model.parameters())}


def generate_vocab(arch: str, out: Path, work: Path | None = None) -> dict:
    """A VOCAB_ARCHS model dir: the real tokenizer files (checked against llama.cpp's ids) + weights."""
    import tempfile

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = write_vocab_tokenizer(arch, out)
    with tempfile.TemporaryDirectory() as tmp:
        figures = write_vocab_weights(arch, Path(work or tmp), out)
    return {"tokenizer": tok, "weights": figures}


def write_vocab_tokenizer(arch: str, out: Path) -> dict:
    """The real tokenizer files of a VOCAB_ARCHS model; fails unless every encoder agrees with llama.cpp."""
    from builders.models import vocab

    return vocab.write_checked(VOCAB_ARCHS[arch].vocab, out)


def train_pinned(arch: str, corpus_txt: Path, tokenizer_model: Path, state_out: Path,
                 steps: int = TRAIN_STEPS) -> dict:
    """train() in a child process started with PINNED_ENV (its log lines go to our stderr)."""
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **PINNED_ENV, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "builders.models.tiny", "train", arch, str(corpus_txt),
           str(tokenizer_model), str(state_out), str(steps)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise NodeFailed(f"training tiny:{arch} failed (exit {proc.returncode}); see the log above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def generate(arch: str, out: Path, steps: int = TRAIN_STEPS, work: Path | None = None) -> dict:
    """Write the complete `tiny:<arch>` model dir into out; return training figures."""
    import tempfile

    _arch(arch)
    if arch in VOCAB_ARCHS:
        return generate_vocab(arch, out, work)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work or tmp)
        corpus_txt = write_corpus(work)
        train_tokenizer(corpus_txt, out, arch)
        figures = train_pinned(arch, corpus_txt, out / "tokenizer.model", work / "state.pt", steps)
        save(arch, work / "state.pt", out)
    return figures


USAGE = ("usage: python -m builders.models.tiny generate ARCH OUT [STEPS]\n"
         "       python -m builders.models.tiny train ARCH CORPUS_TXT TOKENIZER_MODEL STATE_OUT STEPS")


def main(argv: list[str]) -> int:
    if argv[:1] == ["generate"] and len(argv) in (3, 4):
        steps = int(argv[3]) if len(argv) == 4 else TRAIN_STEPS
        print(json.dumps(generate(argv[1], Path(argv[2]), steps)))
        return 0
    if argv[:1] == ["train"] and len(argv) == 6:
        arch, corpus_txt, tok, state, steps = argv[1:]
        print(json.dumps(train(arch, Path(corpus_txt), Path(tok), Path(state), int(steps), log=_log)))
        return 0
    print(USAGE)
    return 2


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
