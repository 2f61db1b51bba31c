"""Toolchain images: docker/<name>.Dockerfile.j2 rendered with jinja2 from matrix.yaml pins, tagged by
content hash, built through the docker SDK.

No registry is assumed: the root image is bootstrapped with `debootstrap --variant=minbase` and
`docker import`. The tag of an image is a hash of its recipe — the rendered Dockerfile, the context
files, the parent's tag — so the planner knows it without Docker and it is the same on every machine.
Host trust configuration (CA bundle, pip index/proxy settings) is passed into builds so pip reaches
the registries behind corporate proxies, and deliberately kept out of the tag.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jinja2

from builders.errors import MatrixError, ToolchainError

DOCKER_DIR = Path(__file__).resolve().parents[1] / "docker"
ROOTFS = "rootfs"  # the bootstrapped root image; `base` builds FROM it
ROOTFS_PACKAGES = ("python3", "python3-venv", "ca-certificates")
CONTEXT_FILES = ("write-tools.py",)  # copied into every build context (part of the tag)
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
PASSED_ENV = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
              "http_proxy", "https_proxy", "no_proxy")
LOG_DIR = Path(os.environ.get("BUILDMATRIX_LOGS", Path.home() / ".cache" / "buildmatrix" / "logs"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parent_of(name: str, pins: dict) -> str:
    if name == "base":
        return ROOTFS
    return pins[name].get("from", "base")


def _rootfs_tag(pins: dict) -> str:
    base = pins["base"]
    recipe = {"suite": base.get("suite", "bookworm"), "mirror": base.get("mirror", "http://deb.debian.org/debian"),
              "variant": "minbase", "include": ROOTFS_PACKAGES}
    return f"buildmatrix/{ROOTFS}:{_sha(json.dumps(recipe, sort_keys=True).encode())[:12]}"


def render(name: str, pins: dict) -> str:
    template = DOCKER_DIR / f"{name}.Dockerfile.j2"
    if name not in pins:
        raise MatrixError(f"matrix.yaml images: no entry '{name}'; add `images.{name}:` with its pins")
    if not template.is_file():
        raise MatrixError(f"matrix.yaml images.{name}: no template docker/{name}.Dockerfile.j2")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        return env.from_string(template.read_text()).render(pins=pins[name], parent=image_tag(parent_of(name, pins),
                                                                                                  pins))
    except jinja2.UndefinedError as e:
        raise MatrixError(f"matrix.yaml images.{name}: docker/{name}.Dockerfile.j2 needs a pin that is missing "
                          f"({e.message})") from None


def image_tag(name: str, pins: dict) -> str:
    """buildmatrix/<name>:<12 hex> from the recipe alone (no Docker needed)."""
    if name == ROOTFS:
        return _rootfs_tag(pins)
    h = hashlib.sha256(render(name, pins).encode())
    for f in CONTEXT_FILES:
        h.update(f.encode() + b"\0" + (DOCKER_DIR / f).read_bytes())
    return f"buildmatrix/{name}:{h.hexdigest()[:12]}"


def _client():
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except Exception as e:  # docker raises several unrelated types for "no engine"
        raise ToolchainError(f"no Docker engine reachable ({type(e).__name__}); run `bash scripts/setup.sh` or "
                             "start dockerd, or use --executor native") from None


def _exists(client, tag: str) -> dict | None:
    import docker

    try:
        return client.images.get(tag).attrs
    except docker.errors.ImageNotFound:
        return None


def _bootstrap_rootfs(client, pins: dict, tag: str, log) -> None:
    base = pins["base"]
    suite, mirror = base.get("suite", "bookworm"), base.get("mirror", "http://deb.debian.org/debian")
    if not shutil.which("debootstrap"):
        raise ToolchainError("debootstrap is not installed; run `bash scripts/setup.sh` (apt-get install debootstrap)")
    log(f"bootstrapping {tag}: debootstrap --variant=minbase {suite} ({mirror})")
    with tempfile.TemporaryDirectory(prefix="buildmatrix-rootfs-") as tmp:
        root = Path(tmp) / "root"
        logf = LOG_DIR / "rootfs.log"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with open(logf, "w") as fh:
            rc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}",
                                 suite, str(root), mirror], stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise ToolchainError(f"debootstrap {suite} failed (exit {rc}); log: {logf}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
            shutil.rmtree(root / junk, ignore_errors=True)
            (root / junk).mkdir(parents=True, exist_ok=True)
        tar = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "--sort=name", "-C", str(root), "-cf", str(tar), "."], check=True)
        repo, _, version = tag.partition(":")
        client.api.import_image(src=str(tar), repository=repo, tag=version)


def _context(name: str, pins: dict, tmp: Path) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(render(name, pins))
    for f in CONTEXT_FILES:
        shutil.copy2(DOCKER_DIR / f, ctx / f)
    # host trust configuration: not part of the tag
    if HOST_CA.is_file():
        shutil.copy2(HOST_CA, ctx / "host-ca.crt")
    else:
        (ctx / "host-ca.crt").write_text("")
    (ctx / "wheels").mkdir()
    torch_pin = (pins.get("base", {}).get("pip") or {}).get("torch")
    if name == "base" and torch_pin:
        for wheel in sorted(Path("/opt/wheels").glob(f"torch-{torch_pin}+cpu-*.whl")):
            os.link(wheel, ctx / "wheels" / wheel.name) if wheel.stat().st_dev == ctx.stat().st_dev \
                else shutil.copy2(wheel, ctx / "wheels" / wheel.name)
    return ctx


def _build(client, name: str, pins: dict, tag: str, log) -> None:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    logf = LOG_DIR / f"image-{name}.log"
    log(f"building image {tag} (log: {logf})")
    buildargs = {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}
    with tempfile.TemporaryDirectory(prefix=f"buildmatrix-{name}-") as tmp, open(logf, "w") as fh:
        ctx = _context(name, pins, Path(tmp))
        error = None
        for chunk in client.api.build(path=str(ctx), tag=tag, rm=True, forcerm=True, decode=True,
                                      network_mode="host", buildargs=buildargs, labels={"buildmatrix.image": name}):
            if "stream" in chunk:
                fh.write(chunk["stream"])
            if "error" in chunk:
                error = chunk["error"].strip()
                fh.write(error + "\n")
        if error:
            raise ToolchainError(f"building image '{name}' failed: {error.splitlines()[-1][:200]}; log: {logf}")


def ensure(names: list[str], pins: dict, log=print) -> dict[str, dict]:
    """Build each named image (and its parents) that is missing; returns {name: {ref, id, tools}}."""
    client = _client()
    order: list[str] = []

    def visit(n: str) -> None:
        if n in order:
            return
        if n != ROOTFS:
            visit(parent_of(n, pins))
        order.append(n)

    for n in names:
        visit(n)
    info = {}
    for n in order:
        tag = image_tag(n, pins)
        attrs = _exists(client, tag)
        if attrs is None:
            if n == ROOTFS:
                _bootstrap_rootfs(client, pins, tag, log)
            else:
                _build(client, n, pins, tag, log)
            ensure.builds += 1
            attrs = _exists(client, tag)
        info[n] = {"name": n, "ref": tag, "id": attrs["Id"], "tools": _tools(client, tag) if n in names else {}}
    return {n: info[n] for n in names}


ensure.builds = 0  # how many images this process built (tests assert a warm ensure() builds none)

_tools_cache: dict[str, dict] = {}


def _tools(client, tag: str) -> dict:
    """/etc/buildmatrix/tools.json of an image (read once per process)."""
    if tag not in _tools_cache:
        raw = client.containers.run(tag, ["cat", "/etc/buildmatrix/tools.json"], remove=True, network_mode="none")
        _tools_cache[tag] = json.loads(raw)
    return _tools_cache[tag]
