"""A backend used only by the executor tests: real nodes (run through `python -m builders.node run`) whose steps
report what the node process sees - its inputs, whether it can write them, the network, its user - or sleep
so a test can interrupt it. Registered at runtime (tests/conftest.py `exec_site`), never in the product."""

import errno
import json
import os
import socket
import time
from pathlib import Path

from builders.backends.base import NodeDef
from stepbackend import StepBackend


def _try_write(directory: Path) -> str:
    try:
        (directory / "written-by-node").write_text("x")
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def _try_connect() -> str:
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=3).close()
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__


def inputs(ctx):
    config = json.loads((ctx.model_dir / "config.json").read_text())
    (ctx.out / "copied.json").write_text(json.dumps(config))
    ctx.result["probe"] = {"model_write": _try_write(ctx.model_dir), "model_dir": str(ctx.model_dir)}


def _status(field: str) -> str | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return None


def _cgroup(*paths: str) -> str | None:
    """The first readable cgroup file of `paths` (v1 or v2 layout), stripped."""
    for path in paths:
        try:
            return Path(path).read_text().strip()
        except OSError:
            continue
    return None


def environment(ctx):
    code_dir = Path(__import__("builders").__file__).parent
    interfaces = [line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]]
    ctx.result["probe"].update({
        "uid": os.getuid(), "gid": os.getgid(), "home": os.environ.get("HOME"), "cwd": os.getcwd(),
        "code_write": _try_write(code_dir) if ctx.params.get("try_code_write") else None, "network": _try_connect(), "interfaces": interfaces,
        "source_date_epoch": os.environ.get("SOURCE_DATE_EPOCH"), "out": str(ctx.out),
        "cap_eff": _status("CapEff"), "cap_prm": _status("CapPrm"), "no_new_privs": _status("NoNewPrivs"),
        "memory_limit": _cgroup("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        "pids_limit": _cgroup("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"),
        "work_writable": os.access(ctx.work, os.W_OK)})
    (ctx.out / "owner.txt").write_text(f"{os.getuid()}:{os.getgid()}")


def sleep(ctx):
    (ctx.out / "pid").write_text(str(os.getpid()))
    ctx.log("sleeping")
    time.sleep(float(ctx.params.get("seconds", 120)))


def hog(ctx):
    """Touch params["mb"] MiB of memory (zero pages would not count against a limit)."""
    (ctx.out / "started").write_text("1")
    ctx.log(f"allocating {ctx.params['mb']} MiB")
    blocks = [b"\x01" * (1 << 20) for _ in range(int(ctx.params["mb"]))]
    (ctx.out / "allocated").write_text(str(len(blocks)))


STEPS = {"probe": [("inputs", inputs), ("environment", environment)], "sleep": [("sleep", sleep)],
         "hog": [("hog", hog)]}


class ExecTestBackend(StepBackend):
    """The runner test backend's plan side, with steps that probe the executor."""

    name = "exectest"

    def expand(self, cell, model):
        return [NodeDef(f"{model.name}.exectest", "probe", "exectest", "base", {}, outputs=("copied.json", "owner.txt"))]

    def steps(self, kind):
        return STEPS[kind]


BACKEND = ExecTestBackend()
