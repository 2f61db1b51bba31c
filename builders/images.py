"""Toolchain images: docker/<name>.Dockerfile.j2 rendered with jinja2 from matrix.yaml `images:` pins,
tagged by content hash, built through the docker SDK.

The tag of an image is a hash of its recipe - the rendered Dockerfile (which names the parent's tag
in FROM) and the context files - so the planner knows it without Docker and it is the same on every
machine. No registry is assumed: the root image is bootstrapped (builders/rootfs.py).

Build context of image NAME: Dockerfile, docker/write-tools.py, every file in docker/NAME.context/
(e.g. a pip constraints lock) - all part of the tag - and, not part of the tag, the host's trust
configuration: its CA bundle (host-ca.crt) and pip index/proxy settings (build args), so pip reaches
the registries behind corporate proxies. Wheels the host keeps for pinned packages (the CPU torch wheel
in /opt/wheels) are served to the build over 127.0.0.1 instead of being copied into a layer.
"""

from __future__ import annotations

import configparser
import fcntl
import functools
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tarfile
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import jinja2

from builders import rootfs
from builders.errors import MatrixError, NoDockerEngine, ToolchainError

DOCKER_DIR = Path(__file__).resolve().parents[1] / "docker"
COMMON_CONTEXT = ("write-tools.py", "host-pip.sh")  # copied into every build context (part of the tag)
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # unless PIP_CERT / REQUESTS_CA_BUNDLE / SSL_CERT_FILE names one
CA_ENV = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
HOST_WHEELS = Path(os.environ.get("BUILDMATRIX_WHEELS_DIR", "/opt/wheels"))  # pinned wheels kept by this host
CACHE = Path(os.environ.get("BUILDMATRIX_CACHE", Path.home() / ".cache" / "buildmatrix"))
LOG_DIR = CACHE / "logs"
LOG_TAIL = 40  # lines of a failed build's log quoted in <log>.tail

# pip settings a container can use (pip config key -> env var); host paths and file:// indexes are dropped
PIP_KEYS = {"index-url": "PIP_INDEX_URL", "extra-index-url": "PIP_EXTRA_INDEX_URL",
            "trusted-host": "PIP_TRUSTED_HOST", "timeout": "PIP_DEFAULT_TIMEOUT",
            "default-timeout": "PIP_DEFAULT_TIMEOUT", "retries": "PIP_RETRIES", "proxy": "PIP_PROXY"}
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")  # docker's own ARGs
PIP_CONFIG_FILES = (Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"), Path.home() / ".pip" / "pip.conf",
                    Path.home() / ".config" / "pip" / "pip.conf")

BUILT: list[str] = []  # tags this process built (tests assert a warm ensure() builds nothing)


def parent_of(name: str, pins: dict) -> str:
    """The image `name` is built FROM; a chain that loops or names a missing image is a MatrixError
    (matrix.load reports it with its line first; this guards callers that pass pins directly)."""
    if name == "base":
        return rootfs.NAME
    chain = [name]
    while chain[-1] != "base":
        if chain[-1] not in pins:
            field = f"images.{chain[-2]}.from" if len(chain) > 1 else "images"
            raise MatrixError(f"matrix.yaml {field}: no image '{chain[-1]}' under `images:`; "
                              "write `from: base` or add that image")
        nxt = (pins[chain[-1]] or {}).get("from", "base")
        if not isinstance(nxt, str):
            raise MatrixError(f"matrix.yaml images.{chain[-1]}.from: must name another image, got {nxt!r}")
        if nxt in chain:
            raise MatrixError(f"matrix.yaml images.{chain[-1]}.from: cycle {' -> '.join(chain + [nxt])}; "
                              "one of them must come `from: base`")
        chain.append(nxt)
    return chain[1]


@functools.lru_cache(maxsize=4)
def _template_env(directory: str) -> jinja2.Environment:
    """One environment per template directory and process: jinja2 keeps each compiled template (recompiled if
    its file changes). Keyed by the directory, so a different DOCKER_DIR (tests use a copy) gets its own."""
    return jinja2.Environment(loader=jinja2.FileSystemLoader(directory), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render(name: str, pins: dict) -> str:
    """The Dockerfile of image `name` (pins[name] as `pins`, the parent's tag as `parent`)."""
    if name not in pins:
        raise MatrixError(f"matrix.yaml images: no entry '{name}'; add `images.{name}:` with its pins")
    if not (DOCKER_DIR / f"{name}.Dockerfile.j2").is_file():
        raise MatrixError(f"matrix.yaml images.{name}: no template docker/{name}.Dockerfile.j2")
    parent = image_tag(parent_of(name, pins), pins)
    try:
        template = _template_env(str(DOCKER_DIR)).get_template(f"{name}.Dockerfile.j2")
        return template.render(pins=pins[name], parent=parent, name=name)
    except jinja2.UndefinedError as e:
        raise MatrixError(f"matrix.yaml images.{name}: docker/{name}.Dockerfile.j2 needs a pin that is missing "
                          f"({e.message})") from None


def context_files(name: str, pins: dict | None = None) -> dict[str, Path]:
    """File name in the build context -> source file (all part of the tag); for mlc-vulkan also the local TVM
    source tarball its pins name (builders/backends/mlc/tvm_source.py)."""
    from builders.backends.mlc import tvm_source

    files = {f: DOCKER_DIR / f for f in COMMON_CONTEXT}
    extra = DOCKER_DIR / f"{name}.context"
    if extra.is_dir():
        files.update({p.name: p for p in sorted(extra.iterdir()) if p.is_file()})
    if name == tvm_source.IMAGE and pins is not None:
        tarball = tvm_source.context_file(pins)
        if tarball is not None:
            files[tvm_source.TARBALL_NAME] = tarball
    return dict(sorted(files.items()))


def image_tag(name: str, pins: dict) -> str:
    """buildmatrix/<name>:<12 hex> from the recipe alone (no Docker needed)."""
    if name == rootfs.NAME:
        return rootfs.tag(pins.get("base", {}))
    h = hashlib.sha256(render(name, pins).encode())
    for rel, src in context_files(name, pins).items():
        h.update(rel.encode() + b"\0" + hashlib.sha256(src.read_bytes()).digest())
    return f"buildmatrix/{name}:{h.hexdigest()[:12]}"


# -- host trust configuration passed into builds (never part of the tag) -------------------------------
def _container_usable(key: str, value: str) -> str | None:
    if key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        urls = [u for u in value.split() if u.startswith(("http://", "https://"))]
        return " ".join(urls) or None
    return None if value.startswith(("/", "file:", "~")) else value


def build_args(environ: dict | None = None, config_files=PIP_CONFIG_FILES) -> dict[str, str]:
    """pip index/proxy settings of this host that make sense in a container (env wins over pip.conf)."""
    environ = os.environ if environ is None else environ
    found: dict[str, str] = {}
    if environ.get("PIP_CONFIG_FILE"):
        config_files = (*config_files, Path(environ["PIP_CONFIG_FILE"]))
    for path in config_files:
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read(path)
        except configparser.Error:
            continue
        for section in ("global", "install", "download"):
            for key, env in PIP_KEYS.items():
                if cp.has_option(section, key):
                    found[env] = " ".join(cp.get(section, key).split())
    for env in set(PIP_KEYS.values()) | set(PROXY_ENV):
        if environ.get(env):
            found[env] = environ[env]
    usable = {k: _container_usable(k, v) for k, v in found.items()}
    return {k: v for k, v in sorted(usable.items()) if v}


LOCAL_HOSTS = ("127.0.0.1", "localhost")  # the build server (_build_server) must never be reached through a proxy


def local_bypass(proxies: dict[str, str]) -> dict[str, str]:
    """Proxy build args plus NO_PROXY/no_proxy naming the local build server, when any proxy is set: a RUN
    step fetches its pip.conf and wheels from 127.0.0.1, which a proxy cannot reach."""
    if not any(k.lower() in ("http_proxy", "https_proxy") for k in proxies):
        return proxies
    out = dict(proxies)
    for key in ("NO_PROXY", "no_proxy"):
        have = [h.strip() for h in out.get(key, "").split(",") if h.strip()]
        out[key] = ",".join(have + [h for h in LOCAL_HOSTS if h not in have])
    return out


def host_ca(environ: dict | None = None) -> Path | None:
    """The CA bundle this host's pip trusts (a corporate proxy's CA included), or None."""
    environ = os.environ if environ is None else environ
    for candidate in [environ.get(k) for k in CA_ENV] + [str(HOST_CA)]:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _context(name: str, pins: dict, ctx: Path) -> None:
    """Write the build context: Dockerfile + context_files (tagged) + the host CA bundle (not tagged)."""
    ctx.mkdir(parents=True)
    (ctx / "Dockerfile").write_text(render(name, pins))
    for rel, src in context_files(name, pins).items():
        shutil.copy2(src, ctx / rel)
    ca = host_ca()
    if ca:
        shutil.copy2(ca, ctx / "host-ca.crt")
    else:  # the Dockerfile falls back to the image's own ca-certificates bundle
        (ctx / "host-ca.crt").write_text("")


def host_wheels(name: str, pins: dict) -> list[Path]:
    """Wheels in HOST_WHEELS for this image's exact pip pins (e.g. torch-2.13.0+cpu-...whl)."""
    found = []
    for pkg, ver in (pins[name].get("pip") or {}).items():
        stem = pkg.replace("-", "_")
        found += [w for w in sorted(HOST_WHEELS.glob(f"{stem}-{ver}*.whl"))
                  if w.name.split("-")[1].split("+")[0] == str(ver).split("+")[0]]
    return found


def pip_conf(settings: dict[str, str]) -> str:
    """A pip.conf with this host's container-usable pip settings (env-style keys from build_args())."""
    env_to_key = {env: key for key, env in PIP_KEYS.items() if key != "default-timeout"}
    lines = ["[global]"] + [f"{env_to_key[k]} = {v}" for k, v in sorted(settings.items()) if k in env_to_key]
    return "\n".join(lines) + "\n"


@contextmanager
def _build_server(wheels: list[Path], pip_settings: dict[str, str]):
    """Serve, on 127.0.0.1 for the duration of one build (builds use the host network), this host's pinned
    `wheels` and its pip settings as a pip.conf under a random path. Yields (wheels URL or None, pip.conf URL
    or None). The URLs are build args; they hold no setting, and stop working when the build ends."""
    import http.server  # noqa: PLC0415  (only an image build serves; a plan or a no-op build does not)

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    with tempfile.TemporaryDirectory(prefix="buildmatrix-serve-") as tmp:
        token = secrets.token_hex(16)
        (Path(tmp) / token).mkdir()
        for w in wheels:
            (Path(tmp) / token / w.name).symlink_to(w.resolve())
        (Path(tmp) / f"{token}.conf").write_text(pip_conf(pip_settings))
        handler = functools.partial(QuietHandler, directory=tmp)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            yield (f"{base}/{token}/" if wheels else None), (f"{base}/{token}.conf" if pip_settings else None)
        finally:
            server.shutdown()
            server.server_close()


# -- docker ---------------------------------------------------------------------------------------------
def client():
    """A docker SDK client that answered a ping, or ToolchainError."""
    import docker

    try:
        c = docker.from_env(timeout=900)
        c.ping()
        return c
    except Exception as e:  # docker raises several unrelated types for "no engine"
        raise NoDockerEngine(f"no Docker engine reachable ({type(e).__name__}); run `bash scripts/setup.sh` "
                             "(starts dockerd) or use --executor native") from None


def _inspect(c, ref: str) -> dict | None:
    import docker

    try:
        return c.images.get(ref).attrs
    except docker.errors.ImageNotFound:
        return None


@contextmanager
def _lock(name: str):
    """One builder per image name on this machine (parallel `invoke build`s wait instead of building twice)."""
    (CACHE / "locks").mkdir(parents=True, exist_ok=True)
    with open(CACHE / "locks" / f"image-{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fail(name: str, reason: str, log_file: Path) -> ToolchainError:
    lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
    tail = log_file.with_suffix(".tail")
    tail.write_text("\n".join(lines[-LOG_TAIL:]) + "\n")
    code = re.search(r"returned a non-zero code: (\d+)", reason)
    if code:  # the message quotes the whole RUN command; name the step instead
        steps = [line.split(" : ")[0] for line in lines if re.match(r"Step \d+/\d+ : ", line)]
        reason = f"{steps[-1] if steps else 'a RUN step'} exited with code {code.group(1)}"
    reason = " ".join(reason.split())[:200]
    return ToolchainError(f"building image '{name}' failed: {reason}; last lines: {tail} (full log: {log_file})")


def _build(c, name: str, pins: dict, ref: str, log) -> None:
    import docker

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_file = LOG_DIR / f"image-{name}-{ref.rpartition(':')[2]}.log"
    log(f"building image {ref} (log: {log_file})")
    error = None
    host = build_args()
    proxies = local_bypass({k: v for k, v in host.items() if k in PROXY_ENV})  # docker's own ARGs: not in history
    pip_settings = {k: v for k, v in host.items() if k not in PROXY_ENV}
    with tempfile.TemporaryDirectory(prefix=f"buildmatrix-{name}-") as tmp, open(log_file, "w") as fh, \
            _build_server(host_wheels(name, pins), pip_settings) as (wheels_url, conf_url):
        ctx = Path(tmp) / "ctx"
        _context(name, pins, ctx)
        args = proxies | ({"BUILDMATRIX_WHEELS": wheels_url} if wheels_url else {}) \
            | ({"BUILDMATRIX_PIP_CONF": conf_url} if conf_url else {})
        try:
            for chunk in c.api.build(path=str(ctx), tag=ref, rm=True, forcerm=True, decode=True, pull=False,
                                     network_mode="host", buildargs=args, labels={"buildmatrix.image": name}):
                if "stream" in chunk:
                    fh.write(chunk["stream"])
                    fh.flush()
                if "error" in chunk:
                    error = chunk["error"].strip()
                    fh.write(error + "\n")
        except docker.errors.APIError as e:
            error = str(e.explanation or e)
            fh.write(error + "\n")
    if error:
        raise _fail(name, error.splitlines()[-1], log_file)


def _tools(c, name: str, attrs: dict) -> dict:
    """/etc/buildmatrix/tools.json of an image; cached on disk by image id (an id never changes content)."""
    cached = CACHE / "tools" / f"{attrs['Id'].replace(':', '-')}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    container = c.containers.create(attrs["Id"], ["true"], network_disabled=True,
                                    labels={"buildmatrix.tools": name})
    try:
        bits, _ = container.get_archive("/etc/buildmatrix/tools.json")
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
            raw = tar.extractfile(tar.getmembers()[0]).read()
    finally:
        container.remove(force=True)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(raw)
    return json.loads(raw)


def build_order(names: list[str], pins: dict) -> list[str]:
    """The images to have, parents first (the root image included)."""
    order: list[str] = []

    def visit(n: str) -> None:
        if n in order:
            return
        if n != rootfs.NAME:
            if n not in pins:
                raise MatrixError(f"matrix.yaml images: no entry '{n}'; add `images.{n}:` with its pins")
            visit(parent_of(n, pins))
        order.append(n)

    for n in names:
        visit(n)
    return order


def ensure(names: list[str], pins: dict, log=print) -> dict[str, dict]:
    """Build each named image (and its parents) that is missing; returns {name: {name, ref, id, tools}}.
    With nothing changed it only inspects the images (no build work)."""
    c = client()
    info = {}
    for n in build_order(names, pins):
        ref = image_tag(n, pins)
        attrs = _inspect(c, ref)
        if attrs is None:
            with _lock(n):
                attrs = _inspect(c, ref)  # another process may have built it while we waited
                if attrs is None:
                    if n == rootfs.NAME:
                        rootfs.bootstrap(c, pins.get("base", {}), LOG_DIR / f"rootfs-{ref.rpartition(':')[2]}.log",
                                         log)
                    else:
                        _build(c, n, pins, ref, log)
                    BUILT.append(ref)
                    attrs = _inspect(c, ref)
            if attrs is None:
                raise ToolchainError(f"image {ref} is missing after its build; see {LOG_DIR}")
        if n in names:
            info[n] = {"name": n, "ref": ref, "id": attrs["Id"], "tools": _tools(c, n, attrs)}
    return {n: info[n] for n in names}
