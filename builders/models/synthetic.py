"""`synthetic:<config>` models: a real model's exact config.json with random peaked weights and the real
vocabulary - for benchmarks and scale tests without the hub.

    synthetic:qwen2.5-0.5b            Qwen2.5-0.5B's config (494 M parameters), qwen2 vocabulary
    synthetic:llama-3.2-1b            Llama-3.2-1B's config (1.24 G parameters), llama-bpe vocabulary
    synthetic:qwen2.5-0.5b@layers=2   the same with num_hidden_layers overridden (tests, quick looks)

`CONFIGS` is the table: name -> (the upstream config.json, embedded verbatim as configs/<name>.json, and
the builders/models/vocab.py vocabulary its tokenizer is rebuilt from). Overrides after `@` are
`key=value` pairs separated by ','; `layers` is the only key. The plan side (`synthetic_config`,
`parse_name`) imports no torch; the `synthetic-model` node (builders/models/nodes.py) runs `write_weights`.

Weights: every tensor drawn from its own torch generator seeded by sha256(seed, tensor name), in row
blocks, converted to bfloat16 and appended to model.safetensors as it is drawn (the header is computed
from the shapes first), so the node holds one block, never the model. Names and shapes come from the
transformers model built on the meta device (no memory). The embedding has the config's vocab_size rows
even where the tokenizer has fewer tokens (Qwen2: 151936 rows, 151646 tokens), as the real checkpoints do.

Peaked init (tiny.PEAKED_INIT, scaled to the real size): embeddings ~N(0, EMBED_STD), matrices
~N(0, 1/fan_in), biases ~N(0, BIAS_STD), norms 1; the residual writers (o_proj, down_proj) scaled by
RESIDUAL_SCALE * sqrt(2 / layers), so all layers together add about as much as 2 layers of a tiny model
and the token's own embedding still dominates the last hidden state; the final norm scaled by 1/hidden
so the logits are the same size at every hidden size (LOGIT_TARGET would be the winning logit if the
layers added nothing). With tied embeddings the winner is the current token (a model that repeats),
untied the LM head is the embedding rows in a seeded permutation. Measured on qwen2.5-0.5b@layers=2
(20 positions, transformers fp32): LOGIT_TARGET 13 gave max logit 10 and a median top-1 probability of
only 0.04 (151936 competitors); 19.5 gives max logit ~15 and a median top-1 probability ~0.75 - well
above 1/vocab yet not 1, so top-1 agreement and KL thresholds measure something.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from builders.errors import ModelError, NodeFailed

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIGS: dict[str, str] = {  # name -> vocabulary (builders.models.vocab.VOCABS); config in configs/<name>.json
    "qwen2.5-0.5b": "qwen2",
    "llama-3.2-1b": "llama-bpe",
}
OVERRIDES = {"layers": "num_hidden_layers"}  # override key -> config field
SEED = 1234
EMBED_STD = 0.15
BIAS_STD = 0.02
RESIDUAL_SCALE = 0.15  # at 2 layers, as tiny.RESIDUAL_SCALE; scaled by sqrt(2 / layers)
LOGIT_TARGET = 19.5
BLOCK = 1 << 23  # elements drawn at a time (32 MiB float32)
WEIGHTS_FILE = "model.safetensors"


def known() -> list[str]:
    return sorted(CONFIGS)


def parse_name(spec: str) -> tuple[str, dict[str, int]]:
    """`qwen2.5-0.5b@layers=2` -> ("qwen2.5-0.5b", {"layers": 2}); ModelError names the known ones."""
    what = f"model 'synthetic:{spec}'"
    name, _, rest = spec.partition("@")
    if name not in CONFIGS:
        raise ModelError(f"{what}: unknown synthetic config '{name}'; choose from "
                         + ", ".join(f"synthetic:{n}" for n in known()))
    overrides: dict[str, int] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if key not in OVERRIDES or not eq:
            raise ModelError(f"{what}: override '{item}' is not KEY=VALUE with KEY one of {', '.join(OVERRIDES)} "
                             f"(e.g. synthetic:{name}@layers=2)")
        if not value.isdigit() or int(value) < 1:
            raise ModelError(f"{what}: {key}={value} must be a whole number of at least 1")
        overrides[key] = int(value)
    if "@" in spec and not overrides:
        raise ModelError(f"{what}: nothing after '@'; write e.g. synthetic:{name}@layers=2 or drop the '@'")
    return name, overrides


def display_name(spec: str) -> str:
    """The model name in cell ids and paths: synthetic-qwen2.5-0.5b, synthetic-qwen2.5-0.5b-layers2."""
    name, overrides = parse_name(spec)
    return "-".join(["synthetic", name, *(f"{k}{v}" for k, v in sorted(overrides.items()))])


def upstream_config(name: str) -> dict:
    """The embedded upstream config.json of `name` (configs/<name>.json, verbatim)."""
    if name not in CONFIGS:
        raise ModelError(f"unknown synthetic config '{name}'; choose from {', '.join(known())}")
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def synthetic_config(spec: str) -> dict:
    """The config.json the `synthetic:<spec>` model ships: the upstream one with the overrides applied."""
    name, overrides = parse_name(spec)
    config = upstream_config(name)
    for key, value in overrides.items():
        config[OVERRIDES[key]] = value
    return config


def vocab_of(spec: str) -> str:
    return CONFIGS[parse_name(spec)[0]]


def generator_code() -> str:
    """sha256 of this module: the weights are a function of (config, seed, this code)."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


# ---- run side -------------------------------------------------------------------------------------

def tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def parameter_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every stored tensor, sorted by name: the transformers model built on the meta
    device (tied weights appear once, under the name save_pretrained keeps)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return sorted((n, tuple(p.shape)) for n, p in model.named_parameters())


def scales(config: dict) -> dict[str, float]:
    """The init's numbers for this config (see the module docstring)."""
    hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    # winning logit ~ final_norm * (e / rms(e)) . e = final_norm * EMBED_STD * hidden
    return {"embed_std": EMBED_STD, "bias_std": BIAS_STD,
            "residual_scale": RESIDUAL_SCALE * math.sqrt(2 / layers),
            "final_norm": LOGIT_TARGET / (EMBED_STD * hidden)}


def _rule(name: str, shape: tuple[int, ...], s: dict[str, float]) -> tuple[str, float]:
    """("fill", value) or ("normal", std) for one tensor."""
    if name.endswith("norm.weight"):
        return "fill", s["final_norm"] if name == "model.norm.weight" else 1.0
    if name.endswith(".bias"):
        return "normal", s["bias_std"]
    if "embed_tokens" in name:
        return "normal", s["embed_std"]
    if len(shape) == 2:
        scale = s["residual_scale"] if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
        return "normal", scale / math.sqrt(shape[1])
    raise NodeFailed(f"synthetic init: parameter {name} {shape} has no rule")


def _blocks(name: str, shape: tuple[int, ...], rule: tuple[str, float], seed: int):
    """The tensor's values as bfloat16 blocks of whole rows, in order (deterministic: one generator)."""
    import torch

    kind, value = rule
    rows = shape[0] if len(shape) > 1 else 1
    row = math.prod(shape) // rows
    step = max(1, BLOCK // row)
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    for start in range(0, rows, step):
        n = min(step, rows - start) * row
        block = torch.full((n,), value) if kind == "fill" else torch.randn(n, generator=gen) * value
        yield block.to(torch.bfloat16)


def _header(shapes: list[tuple[str, tuple[int, ...]]]) -> bytes:
    meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes:
        size = math.prod(shape) * 2
        meta[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    return raw + b" " * (-len(raw) % 8)


def write_weights(config: dict, out: Path, seed: int = SEED) -> dict:
    """model.safetensors (bfloat16) of `config`, streamed; figures for the node result."""
    import torch

    shapes = parameter_shapes(config)
    s = scales(config)
    tied = bool(config.get("tie_word_embeddings"))
    embed = next(n for n, _ in shapes if "embed_tokens" in n)
    header = _header(shapes)
    path = Path(out) / WEIGHTS_FILE
    tmp = path.with_name(path.name + ".tmp")
    total = 0
    with open(tmp, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for name, shape in shapes:
            if name == "lm_head.weight" and not tied:
                # the embedding rows in a seeded order: drawn again (same generator), permuted in bfloat16
                rows = torch.cat(list(_blocks(embed, shape, _rule(embed, shape, s), seed))).view(shape)
                perm = torch.randperm(shape[0], generator=torch.Generator().manual_seed(tensor_seed(seed, name)))
                blocks = [rows[perm].reshape(-1)]
            else:
                blocks = _blocks(name, shape, _rule(name, shape, s), seed)
            for block in blocks:
                f.write(block.view(torch.uint8).numpy().tobytes())
            total += math.prod(shape)
    tmp.rename(path)
    return {"init": "peaked random (synthetic)", "seed": seed, "dtype": "bfloat16", "parameters": total,
            "tensors": len(shapes), "bytes": path.stat().st_size, **{k: round(v, 6) for k, v in s.items()}}


def write_model(spec: str, config: dict, out: Path, seed: int = SEED) -> dict:
    """The whole model dir: config.json, generation_config.json, the real tokenizer, the weights."""
    from builders.models import tiny

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from builders.models import vocab

    tok = vocab.write_checked(CONFIGS[parse_name(spec)[0]], out)
    tiny.write_json(out / "config.json", config)
    tiny.write_json(out / "generation_config.json", generation_config(config))
    return {"tokenizer": tok, "weights": write_weights(config, out, seed)}


def generation_config(config: dict) -> dict:
    return {"bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id"),
            "do_sample": False}
