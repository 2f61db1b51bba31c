"""Run a node in its toolchain container through the docker SDK.

The project's builders/ package is mounted read-only at /opt/buildmatrix/builders (PYTHONPATH=/opt/buildmatrix);
inputs are mounted read-only, the network is off, HOME and caches live in the node's work dir. The node
never runs as root: it runs as the host user, or - when the build runs as root - as the unprivileged uid
65532, which gets the node's staging dir for the run; afterwards the staging dir is handed back to the host
user, so every file belongs to whoever runs the build. No capabilities, no-new-privileges, and the memory
and pids limits of matrix.yaml `containers:` (builders/container_limits.py; no swap on top). A node the
kernel killed for exceeding the memory limit fails with that one line. Nodes whose outputs follow heap
addresses (TVM's shape lowering) run with ASLR off under a generated seccomp profile (fixed_addresses.py).
Ctrl-C or SIGTERM kills and removes the container before the interrupt propagates: no container outlives
its build. The container's peak memory (engine stats, builders/executors/container_memory.py) is
added to the node's result.json.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from pathlib import Path

from builders.container_limits import ContainerLimits, default_limits
from builders.contract import StepResult
from builders.errors import ToolchainError
from builders.executors import MALLOC_ENV, Mount, echo, fixed_addresses, node_dir, sigterm_raises, signals_deferred
from builders.executors.container_memory import MemorySampler
from builders.executors.node_user import chown_tree, container_user, require_readable

PROJECT = Path(__file__).resolve().parents[2]
LABEL = "buildmatrix.node"  # value: the node key
OWNER_LABELS = ("buildmatrix.pid", "buildmatrix.host")  # which process started the container
ROOT_LABEL = "buildmatrix.root"  # the resolved output root whose staging dir the container writes ("" if none)
STAGING_LABEL = "buildmatrix.staging"  # that staging dir (host path)
MARKER = "container.json"  # in the staging dir while a container may be writing it (see stop_orphans)
CONTAINER_ENV = {
    "PYTHONPATH": "/opt/buildmatrix",
    "PYTHONUNBUFFERED": "1",
    "HOME": "/node/work/home",
    "XDG_CACHE_HOME": "/node/work/cache",
    "HF_HOME": "/node/work/cache/huggingface",
    "TORCH_HOME": "/node/work/cache/torch",
    "MPLCONFIGDIR": "/node/work/cache/matplotlib",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    **MALLOC_ENV,
}


def _client():
    from builders.images import client  # one place that turns "no engine" into a one-line ToolchainError

    return client()


def _name(key: str) -> str:
    return f"buildmatrix-{re.sub(r'[^a-zA-Z0-9_.-]', '-', key)[:80]}-{uuid.uuid4().hex[:8]}"


def _remove(client, name: str) -> None:
    import docker

    try:
        client.containers.get(name).remove(force=True)  # kills it if still running
    except docker.errors.NotFound:
        pass


def _fail_for_oom(result_path: Path, rc: int, reason: str) -> int:
    """The kernel killed a process of the node for the memory limit: unless the node still finished ok (the
    killed process was a child it recovered from), its result says it failed for that reason. Returns the rc."""
    try:
        result = StepResult.from_json(json.loads(result_path.read_text()), str(result_path)).to_json()
    except (OSError, ValueError):  # none written (killed first), or not one of ours (ContractError)
        result = StepResult(status="failed").to_json()
    if rc == 0 and result.get("status") == "ok":
        return rc
    result.update(status="failed", reason=reason)
    result_path.write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    return rc or 1


def _record_memory(result_path: Path, figures: dict) -> None:
    """Add the container's peak memory (container_memory.py) to the node's result.json, if it wrote one."""
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        return
    result.update(figures)
    result_path.write_text(json.dumps(result, indent=1, sort_keys=True, default=str))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cleanup_stale(client=None) -> list[str]:
    """Remove buildmatrix node containers started by a process of this host that no longer exists (whatever
    their state). Containers of live builds (other users' too, and exited ones their build still waits on)
    are left alone."""
    import docker

    client = client or _client()
    removed = []
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        labels = c.labels or {}
        pid, host = labels.get(OWNER_LABELS[0], ""), labels.get(OWNER_LABELS[1])
        if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                continue
            removed.append(c.name)
    return removed


def _root_of(stage: Path) -> str:
    return str(stage.parent.parent) if stage.parent.name == ".staging" else ""


def stop_orphans(root: Path, client=None) -> list[Path]:
    """Stop and remove the containers an earlier, killed build left writing into this output root (found by
    ROOT_LABEL and by the MARKER files in its staging dirs); returns the staging dirs they wrote, which the
    caller resets. Call it holding the root's lock: then no live build on this root owns such a container."""
    import docker

    root = Path(root).resolve()
    markers = sorted((root / ".staging").glob(f"*/{MARKER}"))
    staging = {m.parent for m in markers}
    names = []
    for m in markers:
        try:
            names.append(json.loads(m.read_text())["name"])
        except (OSError, ValueError, KeyError):
            pass
    client = client or _client()
    mine = (str(os.getpid()), socket.gethostname())
    for c in client.containers.list(all=True, filters={"label": f"{ROOT_LABEL}={root}"}):
        labels = c.labels or {}
        if (labels.get(OWNER_LABELS[0]), labels.get(OWNER_LABELS[1])) == mine:
            continue
        staging.add(Path(labels.get(STAGING_LABEL) or root / ".staging" / "-"))
        names.append(c.name)
    for name in names:
        try:
            client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
    return sorted(s for s in staging if s.parent == root / ".staging")


class DockerExecutor:
    name = "docker"

    def __init__(self, echo: bool = False, client=None, limits: ContainerLimits | None = None):
        self.client = client or _client()
        self.echo = echo
        self.limits = limits or default_limits()

    def run(self, spec: dict, mounts: list[Mount], image_ref: str | None, log_path: Path) -> int:
        import docker

        if not image_ref:
            raise ValueError(f"{spec['key']}: the docker executor needs an image ref")
        try:
            self.client.images.get(image_ref)
        except docker.errors.ImageNotFound:
            raise ToolchainError(f"{spec['key']}: toolchain image {image_ref} is not built; run `invoke images`") \
                from None
        host_node = node_dir(mounts)
        (host_node / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
        (host_node / "work" / "home").mkdir(parents=True, exist_ok=True)
        volumes = {str(m.host): {"bind": m.container, "mode": "ro" if m.read_only else "rw"} for m in mounts}
        volumes[str(PROJECT / "builders")] = {"bind": "/opt/buildmatrix/builders", "mode": "ro"}
        labels = {LABEL: spec["key"], OWNER_LABELS[0]: str(os.getpid()), OWNER_LABELS[1]: socket.gethostname(),
                  ROOT_LABEL: _root_of(host_node), STAGING_LABEL: str(host_node)}
        name = _name(spec["key"])
        uid, gid = container_user()
        handed_over = (uid, gid) != (os.getuid(), os.getgid())
        if handed_over:
            require_readable([PROJECT / "builders"] + [Path(m.host) for m in mounts if m.read_only], uid)
        command, env, security = ["python", "-m", "builders.node", "run", "/node/spec.json"], CONTAINER_ENV, \
            ["no-new-privileges"]
        if fixed_addresses.wanted(spec):  # outputs that follow heap addresses: see fixed_addresses.py
            command, env = fixed_addresses.command(command), {**env, "PYTHONHASHSEED": "0"}
            security = security + [fixed_addresses.security_opt()]
        marker = host_node / MARKER
        with sigterm_raises():
            try:
                marker.write_text(json.dumps({"name": name, "pid": os.getpid()}))
                if handed_over:
                    chown_tree(host_node, uid, gid)
                container = self.client.containers.create(
                    image_ref, command, name=name,
                    volumes=volumes, environment=env, network_mode="none", labels=labels,
                    user=f"{uid}:{gid}", working_dir="/node/work", cap_drop=["ALL"],
                    security_opt=security, mem_limit=self.limits.memory,
                    memswap_limit=self.limits.memory, pids_limit=self.limits.pids)
                container.start()
                sampler = MemorySampler(container).start()
                with open(log_path, "ab") as log:
                    for chunk in container.logs(stream=True, follow=True):
                        log.write(chunk)
                        log.flush()
                        if self.echo:
                            echo(chunk)
                rc = int(container.wait().get("StatusCode", 1))
                _record_memory(host_node / Path(spec["result"]).relative_to("/node"), sampler.figures())
                container.reload()
                if container.attrs["State"].get("OOMKilled"):
                    rc = _fail_for_oom(host_node / Path(spec["result"]).relative_to("/node"), rc,
                                       self.limits.oom_reason())
                return rc
            finally:
                with signals_deferred():
                    _remove(self.client, name)
                    if handed_over:
                        chown_tree(host_node, os.getuid(), os.getgid())
                    marker.unlink(missing_ok=True)
