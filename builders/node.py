"""The node entry point, the same in a container and on the host:

    python -m builders.node run <spec.json>

A node spec is plain JSON holding everything the node needs, typed as builders/contract.py `NodeSpec`:
  schema, key, kind, backend, digest     identity
  params                                 backend-specific, JSON-able (quant, target, options, thresholds ...)
  model {name, source, revision, digest} the model this node derives from
  inputs {role: dir}                     "model" (snapshot, read-only), "reference", parent node outputs
  parents {role: {key, digest, built_for}}  what a step may know of its parents
  out, work, result                      artifact dir, scratch dir, result JSON path
  steps {only, restart}                  step selection (names or 1-based numbers)
  env {SOURCE_DATE_EPOCH, ...}           environment set before any step runs

Steps are run in order; completed steps are recorded in <work>/.steps.json so a failed node resumes
at its first unfinished step (or at `restart`), and `only` runs exactly one step. The state is keyed:
it holds the node digest and, per done step, a fingerprint of out/ (names, sizes, sha256) taken right
after it. A run trusts the done steps up to the last one whose fingerprint equals out/ as it is now;
a state of another digest, or an out/ matching no done step (promoted away, edited, written by
someone else), starts over with an empty out/ - a step is never skipped for outputs that are gone.
The result JSON (contract.py `StepResult`) says status ok/failed, the one-line reason, per-step timings
and what steps reported; a verification block with a field the contract does not declare fails the node.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from builders import rss
from builders.backends import get as get_backend
from builders.backends.base import NodeContext
from builders.contract import ContractError, NodeSpec, StepResult
from builders.errors import NodeFailed
from builders.hashcache import HashCache
from builders.outputs import fingerprint


def _select(steps: list[str], value, field: str) -> str | None:
    if value in (None, ""):
        return None
    value = str(value)
    if value.isdigit() and 1 <= int(value) <= len(steps):
        return steps[int(value) - 1]
    if value in steps:
        return value
    numbered = ", ".join(f"{i + 1}={s}" for i, s in enumerate(steps))
    raise NodeFailed(f"--{field} {value}: no such step; steps are {numbered}")


def _read_state(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(state, dict) and isinstance(state.get("done"), list) and isinstance(state.get("after"), dict)
    return state if ok else None


def _empty(out: Path) -> None:
    for p in out.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def trusted_state(state: dict | None, digest: str | None, names: list[str], out: Path, hashes: HashCache,
                  log) -> dict:
    """The part of a saved step state this run may rely on (see the module doc); empties out/ otherwise."""
    fresh = {"digest": digest, "done": [], "after": {}, "result": {}}
    if state is not None and state.get("digest") != digest:
        log("step state belongs to another node digest: starting over")
        state = None
    done = [n for n in names if state and n in state["done"] and n in state["after"]]
    if done:
        now = fingerprint(out, hashes)
        kept = next((i for i in range(len(done) - 1, -1, -1) if state["after"][done[i]] == now), None)
        if kept is not None:
            if kept < len(done) - 1:
                log(f"out/ holds the outputs of step {done[kept]}: later steps run again")
            trusted = done[: kept + 1]
            return {**state, "done": trusted, "after": {n: state["after"][n] for n in trusted}}
        log("out/ no longer holds what the done steps wrote: starting over")
    if any(out.iterdir()):
        _empty(out)
    return fresh


def run(spec: dict) -> dict:
    """Run the node of `spec` (NodeSpec JSON); return its StepResult JSON."""
    NodeSpec.from_json(spec)  # ContractError: the caller's spec does not match this node's code
    for k, v in (spec.get("env") or {}).items():
        os.environ[k] = str(v)
    out, work = Path(spec["out"]), Path(spec["work"])
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    ctx = NodeContext(spec, out, work, {k: Path(v) for k, v in spec["inputs"].items()})
    state_file = work / ".steps.json"
    hashes = HashCache(work / ".out-sha256.json")
    timings: dict[str, dict] = {}
    status, reason = "ok", None
    state = None
    try:
        steps = get_backend(spec["backend"]).steps(spec["kind"])
        names = [n for n, _ in steps]
        state = trusted_state(_read_state(state_file), spec.get("digest"), names, out, hashes, ctx.log)
        ctx.result = state["result"]
        sel = spec.get("steps") or {}
        only = _select(names, sel.get("only"), "only")
        restart = _select(names, sel.get("restart"), "restart")
        if restart:
            state["done"] = [n for n in state["done"] if names.index(n) < names.index(restart)]
        for name, fn in steps:
            if only and name != only:
                timings[name] = {"status": "not selected" if name not in state["done"] else "done earlier"}
                continue
            if not only and name in state["done"]:
                timings[name] = {"status": "done earlier"}
                continue
            t0, cpu0 = time.monotonic(), rss.cpu_seconds()
            ctx.log(f"step {names.index(name) + 1}/{len(names)} {name}")
            fn(ctx)
            # the process's high-water mark after the step: the step where it grows is where the peak is
            timings[name] = {"status": "ran", "seconds": round(time.monotonic() - t0, 3),
                             "cpu_seconds": round(rss.cpu_seconds() - cpu0, 2), "peak_rss_mb": rss.peak_mb()}
            if name not in state["done"]:
                state["done"].append(name)
            state["after"][name] = fingerprint(out, hashes)
            state["result"] = ctx.result
            hashes.save()
            state_file.write_text(json.dumps(state, indent=1, sort_keys=True, default=str))
        ver = ctx.result.get("verification")
        if ver is not None and not ver.get("passed", False):
            status = "failed"
            reason = "verification failed: " + "; ".join(ver.get("failures") or ["see manifest"])
        elif any(n not in state["done"] for n in names):
            status = "partial"
            reason = f"only step '{only}' was run and earlier steps never ran; run without --only-step"
    except NodeFailed as e:
        status, reason = "failed", str(e)
    except Exception as e:  # a bug or a tool failure: keep the traceback in the log, one line in the result
        traceback.print_exc()
        line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        status, reason = "failed", f"{type(e).__name__}: {line}"[:300]
    peak = rss.peak_mb()
    done = state["done"] if state else []
    try:
        result = StepResult.from_steps(status, reason, timings, done, peak, ctx.result)
    except ContractError as e:  # a step reported a field the contract does not know: fail, keep nothing silent
        filled = {k: v for k, v in ctx.result.items() if k != "verification"}
        result = StepResult.from_steps("failed", f"result of step code: {e}", timings, done,
                                       peak, filled)
    return result.to_json()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m builders.node run <spec.json>", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    try:
        NodeSpec.from_json(spec, argv[1])
    except ContractError as e:
        print(str(e), file=sys.stderr)
        return 2
    result = run(spec)
    Path(spec["result"]).write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    print(f"[{spec['key']}] {result['status']}" + (f": {result['reason']}" if result["reason"] else ""),
          file=sys.stderr)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
