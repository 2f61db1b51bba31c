"""The one small interface every backend implements.

A backend is a module (or package) in builders/backends/ that exposes a module-level object
`BACKEND` satisfying the `Backend` protocol below. The planner and executors never branch on the
backend: they only call these members.

Two halves:
- plan side (host):   `quants`, `targets`, `archs`, `options`, `image`, `unsupported()`, `unavailable()`,
                      `normalize_options()` (the matrix checks each option with its matrix.yaml line), `expand()`
- run side (inside the toolchain container, or natively):  `steps(kind)` returns the ordered named
  steps of a node kind; each step is `fn(ctx: NodeContext) -> None` and writes into `ctx.out`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from builders.archs import DecoderConfig
from builders.options import OptionSet


@dataclass(frozen=True)
class Cell:
    """One (model, backend, quant, target) the user asked for. `id` is stable and printable."""

    model: str  # model name, e.g. "tiny-llama"
    backend: str
    quant: str
    target: str
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # `matrix.yaml:<line>: <keys> (for <id>)` the options come from (the planner sets it): plan-time errors
    # a backend finds only with the model at hand (Core ML chunk sizes) name that line too
    options_where: str = field(default="", compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"{self.model}.{self.backend}.{self.quant}.{self.target}"


class Reference:
    """The parent marker for "the reference-logits node of this node's model" (the planner adds that node)."""

    def __repr__(self) -> str:
        return "REFERENCE"


REFERENCE = Reference()


@dataclass
class NodeDef:
    """A unit of work in the build graph, as a backend declares it.

    key       printable node name, e.g. "tiny-llama.gguf.F16" or "tiny-llama.mlc.q4f16_1.lib.cpu"; a node is
              identified by its inputs digest (builders/plan.py): equal inputs are one node whatever declared them
    kind      what to run, e.g. "gguf-convert"; `steps(kind)` of the backend gives its steps
    image     toolchain image name (docker/<image>.Dockerfile.j2)
    params    everything (JSON-able) that determines the output besides model, parents, image, code;
              it is part of the inputs digest and is passed to the node as spec["params"]
    parents   role -> the parent NodeDef (declared by the same expand(), or shared by equal inputs), or
              REFERENCE for the model's reference-logits node; the parent's output dir is mounted at
              spec["inputs"][role]. The planner adds "model" (the model snapshot) itself.
    verify_quant  the quant whose `verify.thresholds.<backend>.<quant>` of matrix.yaml this node's
              verification uses (the planner puts them in params["thresholds"]); None: no numeric check
    publish   directory under dist/<model>/<rev7>/ where this node's outputs are linked for humans
              (e.g. "gguf", "mlc/tiny-llama-q4f16_1-MLC", "mlc/libs"), or None to keep it in the store only
    unavailable  if set, the node is not run and fails at once with this one-line reason
    uses_model   False for a node that never reads the model snapshot (a generated model, or a model
              library compiled from the architecture and config alone): its digest leaves the model
              out, so models with equal inputs share it, and no model is mounted
    outputs   glob patterns (relative to the node's out/, see builders/outputs.py) that each must match
              at least one file of a finished run, e.g. ("*.gguf",); a run that misses one, or writes
              nothing, fails and is not promoted. Every node must declare its outputs.
    """

    key: str
    kind: str
    backend: str
    image: str
    params: dict[str, Any] = field(default_factory=dict)
    parents: "dict[str, NodeDef | Reference]" = field(default_factory=dict)
    publish: str | None = None
    unavailable: str | None = None
    uses_model: bool = True
    outputs: tuple[str, ...] = ()
    verify_quant: str | None = None


class Backend(Protocol):
    name: str
    image: str  # default toolchain image of this backend's nodes
    quants: Mapping[str, Any]  # quant code -> description/table row (the README's table is generated from it)
    targets: tuple[str, ...]  # targets this backend can produce artifacts for
    archs: tuple[str, ...]  # HF `architectures` values supported: archs.supported(name) (builders/archs.py)
    options: OptionSet  # the options matrix.yaml may set (builders/options.py); README table from it
    code: tuple[str, ...]  # source paths (relative to builders/) whose content is part of every node digest
    # optional: kind_code: Mapping[str, tuple[str, ...]] - more source paths a node kind runs (part of the
    # digest of that kind's nodes only), e.g. gguf's runtime node code, so editing it leaves the files alone

    def normalize_options(self, options: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Validate/complete backend options from matrix.yaml/CLI; raise MatrixError naming `where`."""

    def unsupported(self, cell: Cell, model: "ModelRef") -> str | None:
        """One-line reason this backend builds no faithful artifact of this model for this cell (a feature of
        the model its format or converter drops), else None. The cell is listed `unsupported`, never failed."""

    def unavailable(self, cell: Cell) -> str | None:
        """One-line reason this cell can't be built with the toolchains we have, else None."""

    # optional: built_on_ci(cell, images) -> str | None: the cell's toolchain image builds only on CI runners
    # (e.g. from a source fetched there); the planner lists it `ci-runner` with that reason - not a failure,
    # not verified. `images` is matrix.yaml `images:`.

    def expand(self, cell: Cell, model: "ModelRef") -> list[NodeDef]:
        """Nodes for this cell; the last one is the cell's artifact node. Shared nodes use equal keys."""

    def steps(self, kind: str) -> list[tuple[str, Callable[["NodeContext"], None]]]:
        """Ordered (step name, function) pairs for a node kind. Runs inside the toolchain image."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model as the planner passes it to backends (plan side)."""

    name: str  # printable name used in cell ids and paths, e.g. "tiny-llama", "Llama-3.2-1B"
    source: str  # "tiny:llama", "meta-llama/Llama-3.2-1B", or a local path
    revision: str  # commit sha (hub), "local-<sha7>" or "tiny-<sha7>"
    digest: str  # snapshot digest (sha256 over per-file sha256s, or the generating node's digest)
    config: Mapping[str, Any]  # the model's config.json (empty if not yet generated for tiny: ones)
    arch: str  # config["architectures"][0]
    node: str | None = None  # inputs digest of the node generating it (tiny: and synthetic: models), else None

    @property
    def decoder(self) -> DecoderConfig:
        """The normalized config (builders/archs.py); raises ModelError for an unknown architecture."""
        return DecoderConfig.from_hf(self.config, f"model '{self.source}' config.json")


class NodeContext:
    """What a step sees when it runs (inside the container or natively).

    spec       the node spec (plain JSON, see builders/node.py for fields)
    out        directory for this node's artifacts (only artifacts go here: every file is listed in
               the manifest with size and sha256)
    work       scratch directory, kept across a failed run so `--restart STEP` can resume
    inputs     role -> directory (parent outputs, "model" = model snapshot, read-only)
    result     dict the steps fill; merged into the manifest:
               result["verification"] = {"passed": bool, "checks": {...figures...}, "failures": [str]}
               result["tool_versions"] = {...}; result["runtime_abi"] = {...}
               result["deferred"] = [{"step": ..., "reason": ...}]; result["notes"] = [...]
    """

    def __init__(self, spec: dict, out: Path, work: Path, inputs: dict[str, Path]):
        self.spec = spec
        self.out = out
        self.work = work
        self.inputs = inputs
        self.result: dict[str, Any] = {}

    @property
    def params(self) -> dict:
        return self.spec["params"]

    @property
    def model_dir(self) -> Path:
        return self.inputs["model"]

    def log(self, msg: str) -> None:
        print(f"[{self.spec['key']}] {msg}", file=sys.stderr, flush=True)

    def load_json(self, path: Path) -> Any:
        return json.loads(Path(path).read_text())
