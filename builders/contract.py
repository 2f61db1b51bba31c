"""The host <-> node contract, typed and versioned in one place (SCHEMA).

NodeSpec      what the host (build.py) hands a node (node.py): written as spec.json, plain JSON.
StepResult    what a node run reports back (result.json): status, timings, and the typed fields the steps
              fill through NodeContext.result; backend-specific named reports (an MLC library's facts, a
              Core ML preflight, a tiny model's training record) go to `reports`.
Verification  the verdict block of a StepResult and of the manifest (builders/verify/metrics.py `verdict`
              writes it): a field not declared here fails the node instead of vanishing into a catch-all.

Each `from_json` refuses another schema or a missing field with one line naming it (ContractError), so
a node image built from other code, or a result written by a newer builder, is never half-read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

SCHEMA = 2  # of spec.json and result.json; 2: typed NodeSpec / StepResult / Verification (was untyped 1)


class ContractError(ValueError):
    """A spec or result that does not match this contract (one line naming the field)."""


def _known(cls, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ContractError(f"{what}: unknown field(s) {', '.join(unknown)}; declare them in builders/contract.py "
                            f"{cls.__name__} (known: {', '.join(sorted(names))})")
    return dict(data)


def _schema(data: Mapping[str, Any], what: str) -> None:
    if not isinstance(data, Mapping):
        raise ContractError(f"{what}: not a JSON object")
    if data.get("schema") != SCHEMA:
        raise ContractError(f"{what}: schema {data.get('schema')!r} is not {SCHEMA}; the node and the host run "
                            "different builder versions (rebuild the toolchain image or rerun the build)")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    revision: str
    digest: str


@dataclass(frozen=True)
class ParentInfo:
    """What a step may know of a parent node: its key, digest and the model it was built for."""

    key: str
    digest: str
    built_for: str


@dataclass
class NodeSpec:
    key: str
    kind: str
    backend: str
    digest: str
    params: dict[str, Any]
    model: ModelInfo
    inputs: dict[str, str]  # role -> directory ("model" = snapshot, parent roles = their out/)
    parents: dict[str, ParentInfo]
    out: str
    work: str
    result: str
    steps: dict[str, Any] = field(default_factory=dict)  # {"only": step, "restart": step}
    env: dict[str, str] = field(default_factory=dict)
    schema: int = SCHEMA

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], what: str = "node spec") -> "NodeSpec":
        _schema(data, what)
        d = _known(cls, data, what)
        try:
            d["model"] = ModelInfo(**d["model"])
            d["parents"] = {r: ParentInfo(**p) for r, p in (d.get("parents") or {}).items()}
            return cls(**d)
        except (TypeError, KeyError) as e:
            raise ContractError(f"{what}: {e}") from None


VERIFICATION_NOTE = "this node has no numeric check"


@dataclass
class Verification:
    passed: bool | None  # None: the node has no check (see note)
    checks: dict[str, Any] = field(default_factory=dict)  # figures by check name
    thresholds: dict[str, Any] | None = None  # the limits the figures were held to
    failures: list[str] = field(default_factory=list)  # one line each
    warnings: list[str] = field(default_factory=list)  # kept in the manifest, do not fail
    runtime_check: dict[str, Any] | None = None  # GGUF: llama.cpp vs transformers on the file's own weights
    verified_by: str | None = None  # key of the node whose figures this one carries (MLC non-cpu library)
    not_run: str | None = None  # what was not run here and why
    budget: dict[str, Any] | None = None  # positions checked, threads, seconds (MLC library check)
    ran_on: dict[str, Any] | None = None  # GGUF per-target runtime: target, how it ran (lavapipe/wine/qemu), devices
    note: str | None = None

    @classmethod
    def none(cls) -> "Verification":
        return cls(passed=None, note=VERIFICATION_NOTE)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], what: str = "verification") -> "Verification":
        if not isinstance(data, Mapping) or "passed" not in data:
            raise ContractError(f"{what}: must be an object with `passed`")
        return cls(**_known(cls, data, what))

    def to_json(self) -> dict[str, Any]:
        """passed, checks, thresholds, failures always; the optional fields when set."""
        always = ("passed", "checks", "thresholds", "failures")
        return {k: v for k, v in asdict(self).items() if k in always or v not in (None, [])}


@dataclass
class StepResult:
    status: str  # ok | failed | partial
    reason: str | None = None  # one line when not ok
    steps: dict[str, Any] = field(default_factory=dict)  # step -> {"status", "seconds", "cpu_seconds", "peak_rss_mb"}
    steps_done: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None
    # docker executor (executors/container_memory.py): the container's sampled peak RSS, the cgroup's
    # high-water mark incl. page cache, and how many samples they come from
    container_peak_rss_mb: float | None = None
    container_peak_mem_mb: float | None = None
    container_samples: int | None = None
    verification: Verification | None = None
    tool_versions: dict[str, Any] = field(default_factory=dict)
    runtime_abi: dict[str, Any] = field(default_factory=dict)
    deferred: list[dict[str, Any]] = field(default_factory=list)  # [{"step", "reason"}]: steps left to a finisher
    notes: list[str] = field(default_factory=list)
    tensor_types: dict[str, int] | None = None  # GGUF: tensor type histogram
    quant_fallback: dict[str, Any] | None = None  # GGUF: llama.cpp's type fallbacks
    reports: dict[str, Any] = field(default_factory=dict)  # backend-specific named reports (library, preflight ...)
    schema: int = SCHEMA

    # keys of NodeContext.result that are fields here; every other key a step sets is a named report
    STEP_FIELDS = ("verification", "tool_versions", "runtime_abi", "deferred", "notes", "tensor_types",
                   "quant_fallback")

    @classmethod
    def from_steps(cls, status: str, reason: str | None, steps: dict, steps_done: list[str], peak_rss_mb: float,
                   filled: Mapping[str, Any]) -> "StepResult":
        """The result of a run from what its steps put in NodeContext.result (`filled`)."""
        typed = {k: v for k, v in filled.items() if k in cls.STEP_FIELDS}
        reports = {k: v for k, v in filled.items() if k not in cls.STEP_FIELDS}
        ver = typed.pop("verification", None)
        return cls(status=status, reason=reason, steps=steps, steps_done=steps_done, peak_rss_mb=peak_rss_mb,
                   verification=Verification.from_json(ver) if ver is not None else None, reports=reports,
                   **{k: v for k, v in typed.items() if v is not None})

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["verification"] = self.verification.to_json() if self.verification else None
        return d

    @classmethod
    def from_json(cls, data: Mapping[str, Any], what: str = "node result") -> "StepResult":
        _schema(data, what)
        d = _known(cls, data, what)
        if d.get("verification") is not None:
            d["verification"] = Verification.from_json(d["verification"], f"{what}: verification")
        try:
            return cls(**d)
        except TypeError as e:
            raise ContractError(f"{what}: {e}") from None
