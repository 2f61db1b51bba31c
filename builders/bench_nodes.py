"""`invoke bench --model M [--backends ..]`: per-node figures of one model's build.

Builds the selection with the real CLI (a no-op where it is already built), then reads the manifest of
every node of that plan - found by the node's digest, never by kind - and prints per node:

    wall        the node's time in its container (manifest timings.seconds)
    phases      the seconds of each step the node ran (manifest timings.steps), and in bench-nodes.json
                each step's CPU seconds (process and finished children): on a shared machine they move
                less with other work than wall times do
    peak RSS    the container's peak resident memory sampled from its cgroup each second (container_peak_rss_mb,
                builders/executors/container_memory.py) or, where larger (a spike between samples, or a
                node built before the sampler), the largest single process's own peak (peak_rss_mb),
                marked `proc`
    x model     peak RSS / the model's size in bfloat16 (2 bytes x the elements of its safetensors)
    rule        the memory rule (builders/memory_rule.py): peak RSS <= 1.5 x the bf16 model + the node's
                output; `ok` or `OVER` with the limit
    upstream    for conversion steps: the step's seconds / the same conversion by the upstream tool called
                directly in the same image with the same container limits (DIRECT below), and that run's
                own peak RSS. One sample of each is noise on a busy 2-CPU machine (single samples of the same
                steps gave 0.53-1.68x), so with --repeat N the conversion nodes are built N times (each
                round removes their store entries and builds the selection again: their parents stay
                cached) with one direct run after each round, and the ratio is median / median, the samples
                listed beside it

Figures come from the runs, and are written to <out>/bench-nodes.json. Not a test: nothing asserts a speed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from builders import memory_rule

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
# node kind -> (step, what the direct run is): the upstream tool each conversion step wraps
DIRECT = {
    "gguf-convert": ("convert", "llama.cpp convert_hf_to_gguf.py --outtype <same> (python, same image)"),
    "gguf-quantize": ("quantize", "llama.cpp llama_model_quantize (libllama via llama_cpp, nthread 2, same image)"),
}


def safetensors_elements(model_dir: Path) -> int:
    """Elements of every tensor in the model dir's *.safetensors (headers only)."""
    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def _plan(out: Path, model: str, backends: str | None, quants: str | None, targets: str | None):
    from builders import matrix as matrix_mod
    from builders.plan import make_plan
    from builders.store import Store

    m = matrix_mod.load(ROOT / "matrix.yaml")
    sel = matrix_mod.select(m, model=model, backends_=backends, quants=quants, targets=targets)
    return make_plan(m, sel, Store(out, cache_from=[]))


def _direct_command(kind: str, manifest: dict) -> list[str] | None:
    from builders.backends.gguf import CONVERTER, QUANTS

    quant = manifest.get("quant")
    if quant not in QUANTS:
        return None
    q = QUANTS[quant]
    if kind == "gguf-convert":
        return ["python", str(CONVERTER), "/in/model", "--outtype", q.arg, "--outfile", "/w/direct.gguf"]
    if kind == "gguf-quantize":
        code = ("import glob, llama_cpp; p = llama_cpp.llama_model_quantize_default_params(); "
                f"p.ftype = llama_cpp.{q.arg}; p.nthread = 2; "
                "src = glob.glob('/in/source/*.gguf')[0]; "
                "raise SystemExit(llama_cpp.llama_model_quantize(src.encode(), b'/w/direct.gguf', p))")
        return ["python", "-c", code]
    return None


# runs the direct command as a child and prints its CPU seconds (user + system, getrusage of the children)
# as the last line of stderr: the same measure as a node step's cpu_seconds (builders/rss.cpu_seconds)
CPU_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "print(f'BENCH_CPU_SECONDS {r.ru_utime + r.ru_stime:.3f}', file=sys.stderr); raise SystemExit(rc)")


def _cpu_from_log(text: str) -> float | None:
    for line in reversed(text.splitlines()):
        if line.startswith("BENCH_CPU_SECONDS "):
            return float(line.split()[1])
    return None


def direct_run(image: str, cmd: list[str], mounts: dict[str, str]) -> dict:
    """Run `cmd` in `image` as a node would (no network, the matrix's memory limit, scratch /w), timed,
    with the container's peak memory sampled the same way and the command's CPU seconds."""
    import tempfile

    import docker

    from builders.container_limits import default_limits
    from builders.executors.container_memory import MemorySampler
    from builders.executors.node_user import container_user

    client = docker.from_env()
    limits = default_limits()
    uid, gid = container_user()
    with tempfile.TemporaryDirectory(dir=ROOT) as scratch:
        Path(scratch).chmod(0o777)
        volumes = {host: {"bind": dest, "mode": "ro"} for dest, host in mounts.items()}
        volumes[scratch] = {"bind": "/w", "mode": "rw"}
        t0 = time.monotonic()
        c = client.containers.run(image, ["python", "-c", CPU_WRAPPER, *cmd], detach=True, volumes=volumes, network_mode="none",
                                  user=f"{uid}:{gid}", mem_limit=limits.memory, memswap_limit=limits.memory,
                                  environment={"PYTHONPATH": "", "HOME": "/w"}, working_dir="/w")
        try:
            sampler = MemorySampler(c).start()
            rc = int(c.wait().get("StatusCode", 1))
            seconds = time.monotonic() - t0
            mem = sampler.figures()
            tail = c.logs(tail=5).decode(errors="replace")
        finally:
            c.remove(force=True)
    return {"seconds": round(seconds, 2), "rc": rc, "cpu_seconds": _cpu_from_log(tail), **mem,
            **({"log_tail": tail} if rc else {})}


def node_rows(out: Path, plan, direct: dict | None = None) -> list[dict]:
    """One row per node of the plan; `direct` ({node key: [direct run, ...]}, see direct_rounds) adds the
    upstream comparison to the conversion nodes."""
    store = out / ".store"
    model_elements: dict[str, int] = {}
    rows = []
    for pn in plan.nodes.values():
        key = pn.key
        entry = store / pn.digest
        mf = entry / "manifest.json"
        if not mf.is_file():
            rows.append({"node": key, "kind": pn.node.kind, "missing": "not built"})
            continue
        manifest = json.loads(mf.read_text())
        timings = manifest.get("timings", {})  # peak memory figures (contract.StepResult)
        model = plan.models.get(pn.model)
        if model is not None and model.name not in model_elements:
            src = store / plan.nodes[model.node].digest / "out" if model.node else plan.model_dirs[model.name]
            model_elements[model.name] = safetensors_elements(src)
        bf16_mb = model_elements.get(model.name, 0) * 2 / MB if model is not None else 0
        # the sampled cgroup figure can miss a spike shorter than its 1 s period; the largest process's own
        # high-water mark cannot: the larger of the two, and which one it was
        sampled, proc = timings.get("container_peak_rss_mb"), timings.get("peak_rss_mb")
        peak, how = max(((v, k) for k, v in (("cgroup", sampled), ("proc", proc)) if v is not None),
                        default=(None, "none"))
        row: dict[str, Any] = {
            "node": key, "kind": pn.node.kind, "wall_s": manifest["timings"]["seconds"],
            "steps_s": {k: v.get("seconds") for k, v in manifest["timings"]["steps"].items()},
            "steps_cpu_s": {k: v.get("cpu_seconds") for k, v in manifest["timings"]["steps"].items()
                            if v.get("cpu_seconds") is not None},
            "peak_rss_mb": peak, "peak_rss_source": how, "container_peak_mem_mb": timings.get("container_peak_mem_mb"),
            "model_bf16_mb": round(bf16_mb, 1),
            "peak_over_model": round(peak / bf16_mb, 2) if peak and bf16_mb else None,
            "output_mb": round(sum(o.get("size", 0) for o in manifest.get("outputs", [])) / MB, 1),
        }
        row["memory_rule"] = memory_rule.check(row)
        if direct is not None and key in direct:
            row.update(_upstream(pn.node.kind, direct[key]))
        rows.append(row)
    return rows


def conversion_nodes(plan) -> list:
    """The plan's nodes whose step wraps an upstream tool (DIRECT)."""
    return [pn for pn in plan.nodes.values() if pn.node.kind in DIRECT]


def _direct_once(out: Path, plan, pn) -> dict:
    """The node's conversion step (its seconds from the manifest as built now) and one direct run of the
    upstream tool on the same inputs."""
    step, what = DIRECT[pn.node.kind]
    manifest = json.loads((out / ".store" / pn.digest / "manifest.json").read_text())
    cmd = _direct_command(pn.node.kind, manifest)
    timed = manifest["timings"]["steps"].get(step, {})
    step_s, step_cpu = timed.get("seconds"), timed.get("cpu_seconds")
    if cmd is None or step_s is None:
        return {"skip": f"no direct run for {pn.node.kind} ({step} step {step_s})"}
    mounts = {}
    model = plan.models[pn.model]
    mounts["/in/model"] = str(out / ".store" / plan.nodes[model.node].digest / "out") if model.node \
        else str(plan.model_dirs[model.name])
    for role, digest in pn.parents.items():
        mounts[f"/in/{role}"] = str(out / ".store" / digest / "out")
    return {"step_s": step_s, "step_cpu_s": step_cpu, "direct": direct_run(manifest["image"]["ref"], cmd, mounts)}


def _upstream(kind: str, samples: list[dict]) -> dict:
    """The upstream comparison of one conversion node from its rounds: medians, ratio, the samples."""
    step, what = DIRECT[kind]
    if any("skip" in s for s in samples):
        return {"upstream": next(s["skip"] for s in samples if "skip" in s)}
    failed = [s["direct"] for s in samples if s["direct"]["rc"] != 0]
    if failed:
        return {"upstream": what, "upstream_failed": failed[0]}
    steps = [s["step_s"] for s in samples]
    ups = [s["direct"]["seconds"] for s in samples]
    step_s, up_s = statistics.median(steps), statistics.median(ups)
    row = {"upstream": what, "step": step, "step_s": round(step_s, 2), "upstream_s": round(up_s, 2),
           "step_over_upstream": round(step_s / up_s, 2), "samples": len(samples),
           "step_samples_s": steps, "upstream_samples_s": ups}
    # CPU seconds of both sides, where both were measured: less moved by other work on the machine
    cpu = [(s.get("step_cpu_s"), s["direct"].get("cpu_seconds")) for s in samples]
    if cpu and all(a is not None and b for a, b in cpu):
        step_cpu, up_cpu = statistics.median(a for a, _ in cpu), statistics.median(b for _, b in cpu)
        row.update({"step_cpu_s": round(step_cpu, 2), "upstream_cpu_s": round(up_cpu, 2),
                    "step_over_upstream_cpu": round(step_cpu / up_cpu, 2),
                    "step_cpu_samples_s": [a for a, _ in cpu], "upstream_cpu_samples_s": [b for _, b in cpu]})
    return {**row,
            "upstream_peak_rss_mb": max((s["direct"].get("container_peak_rss_mb") or 0) for s in samples) or None}


def direct_rounds(out: Path, plan, build: list[str], repeat: int, log=print) -> dict[str, list[dict]]:
    """{node key: [round sample, ...]} for every conversion node: after the build that already ran, one
    direct run each; then repeat-1 more rounds, each removing the conversion nodes' store entries,
    building the selection again (parents stay cached; outputs are bit-identical, so digests and children
    are unchanged) and running each direct command once. Alternating rounds put both sides under the
    same load drift."""
    nodes = conversion_nodes(plan)
    samples: dict[str, list[dict]] = {pn.key: [] for pn in nodes}
    for r in range(max(1, repeat) if nodes else 0):
        if r:
            for pn in nodes:
                shutil.rmtree(out / ".store" / pn.digest, ignore_errors=False)
            rc = subprocess.run(build, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
            if rc != 0:
                log(f"round {r + 1}: the rebuild failed (exit {rc}); stopping the rounds at {r}")
                break
        for pn in nodes:
            samples[pn.key].append(_direct_once(out, plan, pn))
        log(f"round {r + 1}/{repeat}: " + ", ".join(
            f"{pn.key.rsplit('.', 1)[-1]} {s[-1].get('step_s')}/{s[-1].get('direct', {}).get('seconds')}"
            for pn, s in ((pn, samples[pn.key]) for pn in nodes)))
    return samples


def _fmt(v, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    lines = [f"{'node':44} {'wall s':>7}  {'peak RSS MB':>12} {'x model':>7} {'rule (limit MB)':>16}  "
             f"{'step/upstream':>32}  phases (s)"]
    for r in rows:
        if "missing" in r:
            lines.append(f"{r['node']:44} {r['missing']}")
            continue
        up = (f"{r['step']} {r['step_s']:.1f}/{r['upstream_s']:.1f}={r['step_over_upstream']:.2f}"
              + (f" cpu {r['step_over_upstream_cpu']:.2f}" if "step_over_upstream_cpu" in r else "")
              + (f" (n={r['samples']})" if r.get("samples", 1) > 1 else "")
              if "step_over_upstream" in r else ("FAILED" if "upstream_failed" in r else ""))
        peak = f"{_fmt(r['peak_rss_mb'], '.0f')}{' proc' if r['peak_rss_source'] == 'proc' else ''}"
        phases = " ".join(f"{k} {v:.1f}" for k, v in r["steps_s"].items() if v is not None)
        rule = r.get("memory_rule") or {}
        verdict = "-" if rule.get("within") is None else f"{'ok' if rule['within'] else 'OVER'} ({rule['limit_mb']:.0f})"
        lines.append(f"{r['node']:44} {r['wall_s']:7.1f}  {peak:>12} {_fmt(r['peak_over_model'], '.2f'):>7} "
                     f"{verdict:>16}  {up:>32}  {phases}")
    return "\n".join(lines)


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def clean(out_path: Path) -> None:
    """Remove what the bench built under out_path (the store and published artifacts: several GB per
    real-size model), keeping bench-nodes.json."""
    for child in out_path.iterdir():
        if child.name == "bench-nodes.json":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def main(out: str, model: str, backends: str | None, quants: str | None, targets: str | None,
         direct: bool = True, repeat: int = 3, keep: bool = True) -> None:
    out_path = (ROOT / out).resolve()
    build = [sys.executable, "-m", "invoke", "build", "--out", str(out_path), "--model", model]
    for flag, value in (("--backends", backends), ("--quants", quants), ("--targets", targets)):
        if value:
            build += [flag, value]
    t0, load_before = time.monotonic(), _load()
    rc = subprocess.run(build, cwd=ROOT).returncode
    build_s, load_after = time.monotonic() - t0, _load()
    plan = _plan(out_path, model, backends, quants, targets)
    samples = direct_rounds(out_path, plan, build, repeat) if direct and rc == 0 else None
    rows = node_rows(out_path, plan, samples)
    # timings are only comparable on a quiet machine: the 1-minute load average before and after the build
    # and after the direct rounds (on 2 CPUs, other work above ~0.5 shows in every wall time and ratio)
    loads = [load_before, load_after] + ([_load()] if samples else [])
    figures = {"model": model, "build_rc": rc, "build_s": round(build_s, 1), "load_avg_1m": loads,
               "cpus": os.cpu_count(), "repeat": repeat if samples else 0, "nodes": rows}
    (out_path / "bench-nodes.json").write_text(json.dumps(figures, indent=2))
    print(table(rows))
    print(f"build exit {rc} in {build_s:.1f} s (load average {' / '.join(map(str, loads))}: before, after"
          f"{', after the direct rounds' if samples else ''}; "
          f"{os.cpu_count()} CPUs); upstream: "
          + "; ".join(f"{k}: {v[1]}" for k, v in DIRECT.items()) + f"; figures in {out_path / 'bench-nodes.json'}")
    if not keep:
        clean(out_path)
        print(f"removed the bench's store and artifacts under {out_path} (kept bench-nodes.json)")
    if rc != 0:
        sys.exit(f"the build failed (exit {rc}); figures above are for the nodes it built")
