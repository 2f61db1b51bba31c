"""The internal `model` backend: node kinds that make a model and its reference logits.

    tiny-model  params {"arch", "train_steps"}  steps corpus, tokenizer, train, save  -> HF model dir
    tiny-vocab-model  params {"arch", "vocab"}     steps tokenizer, weights             -> HF model dir
                (a real vocabulary rebuilt from llama.cpp's ggml-vocab GGUF: runs in the gguf image,
                which keeps those files; random peaked weights, see tiny.VOCAB_ARCHS)
    synthetic-model  params {"spec", "config", "vocab", "seed", "generator"}  steps tokenizer, weights
                -> HF model dir (a real config, real vocabulary, random peaked bf16 weights written streamed;
                builders/models/synthetic.py; gguf image, like tiny-vocab-model)
    reference   inputs {"model"}                step  logits                          -> reference.npz/json

The planner builds these nodes itself with `tiny_node()` and `reference_node()`; `expand()` is never
asked for them. Heavy packages (torch, transformers, sentencepiece) are imported inside the steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from builders.backends.base import Cell, ModelRef, NodeContext, NodeDef
from builders.errors import NodeFailed
from builders.models import synthetic, tiny

IMAGE = "base"
VOCAB_IMAGE = "gguf"  # keeps llama.cpp's ggml-vocab-*.gguf + .inp/.out at /opt/llama.cpp/models


def tiny_node(arch: str, train_steps: int = tiny.TRAIN_STEPS) -> NodeDef:
    """The node generating `tiny:<arch>` (raises ModelError for an unknown arch)."""
    tiny.tiny_config(arch)
    if arch in tiny.VOCAB_ARCHS:
        return NodeDef(key=f"tiny-{arch}.model", kind="tiny-vocab-model", backend="model", image=VOCAB_IMAGE,
                       params={"arch": arch, "vocab": tiny.VOCAB_ARCHS[arch].vocab}, publish=None,
                       uses_model=False, outputs=("config.json", "*.safetensors", "tokenizer.json",
                                                  "tokenizer_config.json"))
    return NodeDef(key=f"tiny-{arch}.model", kind="tiny-model", backend="model", image=IMAGE,
                   params={"arch": arch, "train_steps": train_steps}, publish=None, uses_model=False,
                   outputs=("config.json", "*.safetensors", "tokenizer.model", "tokenizer.json"))


def synthetic_node(spec: str) -> NodeDef:
    """The node generating `synthetic:<spec>` (raises ModelError for an unknown config or override). Its
    digest covers the whole config, the seed and the generator's code (params)."""
    params = {"spec": spec, "config": synthetic.synthetic_config(spec), "vocab": synthetic.vocab_of(spec),
              "seed": synthetic.SEED, "generator": synthetic.generator_code()}
    return NodeDef(key=f"{synthetic.display_name(spec)}.model", kind="synthetic-model", backend="model",
                   image=VOCAB_IMAGE, params=params, publish=None, uses_model=False,
                   outputs=("config.json", synthetic.WEIGHTS_FILE, "tokenizer.json", "tokenizer_config.json"))


def reference_node(model_name: str) -> NodeDef:
    """The reference-logits node of a model; the planner adds the "model" role (the snapshot or the
    generating node) itself."""
    return NodeDef(key=f"{model_name}.reference", kind="reference", backend="model", image=IMAGE,
                   params={}, parents={}, publish=None, outputs=("reference.npz", "reference.json"))


# ---- run side ---------------------------------------------------------------------------------------

def _corpus_txt(ctx: NodeContext) -> Path:
    return ctx.work / "corpus.txt"


def _state(ctx: NodeContext) -> Path:
    return ctx.work / "state.pt"


def _arch(ctx: NodeContext) -> str:
    arch = ctx.params.get("arch")
    if arch not in tiny.TINY_ARCHS:
        raise NodeFailed(f"params.arch {arch!r}: not a tiny architecture ({', '.join(tiny.TINY_ARCHS)})")
    return arch


def _vocab_arch(ctx: NodeContext) -> str:
    arch = ctx.params.get("arch")
    if arch not in tiny.VOCAB_ARCHS:
        raise NodeFailed(f"params.arch {arch!r}: not a real-vocabulary tiny model ({', '.join(tiny.VOCAB_ARCHS)})")
    return arch


def step_vocab_tokenizer(ctx: NodeContext) -> None:
    info = tiny.write_vocab_tokenizer(_vocab_arch(ctx), ctx.out)
    ctx.result["tokenizer"] = info
    ctx.log(f"tokenizer {info['vocab']}: {info['size']} tokens, {info['tests']} llama.cpp test strings agree "
            f"({', '.join(info['encoders'])})")


def step_vocab_weights(ctx: NodeContext) -> None:
    ctx.result["weights"] = tiny.write_vocab_weights(_vocab_arch(ctx), ctx.work, ctx.out)
    from builders.verify.reference import tool_versions

    ctx.result["tool_versions"] = tool_versions()


def _synthetic_params(ctx: NodeContext) -> tuple[str, dict]:
    spec, config = ctx.params.get("spec"), ctx.params.get("config")
    if not isinstance(spec, str) or not isinstance(config, dict):
        raise NodeFailed(f"synthetic-model: params.spec {spec!r} / params.config must be a string and a mapping")
    if ctx.params.get("generator") != synthetic.generator_code():
        raise NodeFailed("synthetic-model: params.generator is not the sha256 of builders/models/synthetic.py "
                         "this node runs; plan the build again")
    return spec, config


def step_synthetic_tokenizer(ctx: NodeContext) -> None:
    from builders.models import vocab

    _synthetic_params(ctx)
    info = vocab.write_checked(str(ctx.params["vocab"]), ctx.out)
    ctx.result["tokenizer"] = info
    ctx.log(f"tokenizer {info['vocab']}: {info['size']} tokens, {info['tests']} llama.cpp test strings agree")


def step_synthetic_weights(ctx: NodeContext) -> None:
    spec, config = _synthetic_params(ctx)
    tiny.write_json(ctx.out / "config.json", config)
    tiny.write_json(ctx.out / "generation_config.json", synthetic.generation_config(config))
    figures = synthetic.write_weights(config, ctx.out, int(ctx.params.get("seed", synthetic.SEED)))
    ctx.result["weights"] = figures
    ctx.log(f"synthetic:{spec}: {figures['parameters']} parameters, {figures['bytes']} bytes bf16")
    from builders.verify.reference import tool_versions

    ctx.result["tool_versions"] = tool_versions()


def step_corpus(ctx: NodeContext) -> None:
    path = tiny.write_corpus(ctx.work)
    ctx.result.setdefault("notes", []).append(f"corpus: {path.stat().st_size} bytes")


def step_tokenizer(ctx: NodeContext) -> None:
    tiny.train_tokenizer(_corpus_txt(ctx), ctx.out, _arch(ctx))


def step_train(ctx: NodeContext) -> None:
    figures = tiny.train_pinned(_arch(ctx), _corpus_txt(ctx), ctx.out / "tokenizer.model", _state(ctx),
                                int(ctx.params.get("train_steps", tiny.TRAIN_STEPS)))
    ctx.result["training"] = figures


def step_save(ctx: NodeContext) -> None:
    tiny.save(_arch(ctx), _state(ctx), ctx.out)
    from builders.verify.reference import tool_versions

    ctx.result["tool_versions"] = tool_versions()


def step_logits(ctx: NodeContext) -> None:
    from builders.verify.reference import compute_reference

    model_dir = ctx.inputs.get("model")
    if model_dir is None or not (Path(model_dir) / "config.json").is_file():
        raise NodeFailed(f"reference: input 'model' ({model_dir}) has no config.json")
    info = compute_reference(Path(model_dir), ctx.out)
    ctx.result["tool_versions"] = info["tool_versions"]
    ctx.result.setdefault("notes", []).append(f"reference perplexity {info['ppl']:.4f} over {info['text_tokens']} tokens")


STEPS: dict[str, list[tuple[str, Callable[[NodeContext], None]]]] = {
    "tiny-model": [("corpus", step_corpus), ("tokenizer", step_tokenizer), ("train", step_train),
                   ("save", step_save)],
    "tiny-vocab-model": [("tokenizer", step_vocab_tokenizer), ("weights", step_vocab_weights)],
    "synthetic-model": [("tokenizer", step_synthetic_tokenizer), ("weights", step_synthetic_weights)],
    "reference": [("logits", step_logits)],
}


class ModelBackend:
    name = "model"
    image = IMAGE
    quants: Mapping[str, Any] = {}
    targets: tuple[str, ...] = ()
    archs: tuple[str, ...] = tuple(sorted(a.hf_arch for a in tiny.TINY_ARCHS.values()))
    code: tuple[str, ...] = ("models/corpus.py", "models/tiny.py", "models/vocab.py", "models/nodes.py",
                             "models/synthetic.py", "gguf_file.py",
                             "verify/prompts.py", "verify/reference.py", "verify/metrics.py",
                             "verify/fp32_compute.py")

    def normalize_options(self, options: Mapping[str, Any], where: str) -> dict[str, Any]:
        return dict(options)

    def unavailable(self, cell: Cell) -> str | None:
        return None

    def expand(self, cell: Cell, model: ModelRef) -> list[NodeDef]:
        return []

    def steps(self, kind: str) -> list[tuple[str, Callable[[NodeContext], None]]]:
        if kind not in STEPS:
            raise NodeFailed(f"backend 'model' has no node kind '{kind}' (kinds: {', '.join(STEPS)})")
        return STEPS[kind]


BACKEND = ModelBackend()
