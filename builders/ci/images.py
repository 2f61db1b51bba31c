"""Toolchain images in CI, by their content-hash tag (builders/images.py), fastest source first:
already in the engine -> a `docker save` tar restored by actions/cache -> a registry (GHCR) -> build.
Afterwards the tar is written (for actions/cache, which works for forks too) and, when asked, the images
are pushed to the registry. Every image is checked to carry its expected tag before it is used."""

from __future__ import annotations

import subprocess
from pathlib import Path

from builders import images as images_mod
from builders.errors import ToolchainError


def registry_ref(registry: str, ref: str) -> str:
    """buildmatrix/gguf:<hash> -> <registry>/buildmatrix-gguf:<hash>."""
    repo, _, tag = ref.partition(":")
    return f"{registry.rstrip('/')}/{repo.replace('/', '-')}:{tag}"


def tar_path(directory: Path, names: list[str], pins: dict) -> Path:
    leaf = "-".join(sorted(names))
    tags = "-".join(images_mod.image_tag(n, pins).rpartition(":")[2] for n in sorted(names))
    return Path(directory) / f"images-{leaf}-{tags}.tar"


def _docker(*args: str) -> None:
    r = subprocess.run(["docker", *args], capture_output=True, text=True)
    if r.returncode:
        raise ToolchainError(f"docker {args[0]} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def _present(c, ref: str) -> bool:
    try:
        c.images.get(ref)
        return True
    except Exception:  # docker.errors.ImageNotFound and API errors alike: not usable here
        return False


def ensure(names: list[str], pins: dict, directory: Path, registry: str | None = None, push: bool = False,
           log=print) -> dict[str, str]:
    """Make every image in `names` (and its parents) present; returns {name: how it got here}."""
    c = images_mod.client()
    order = images_mod.build_order(names, pins)
    refs = {n: images_mod.image_tag(n, pins) for n in order}
    how: dict[str, str] = {}
    tar = tar_path(directory, names, pins)
    if not all(_present(c, r) for r in refs.values()) and tar.is_file():
        _docker("load", "-q", "-i", str(tar))
        log(f"loaded {tar}")
    for n in order:
        ref = refs[n]
        if _present(c, ref):
            how.setdefault(n, "present")
            continue
        if registry:
            remote = registry_ref(registry, ref)
            try:
                img = c.images.pull(remote)
                img.tag(*ref.split(":"))
                how[n] = f"pulled {remote}"
                continue
            except Exception as e:  # absent from the registry (or no access): build it instead
                log(f"{remote} not pulled ({type(e).__name__}); building")
        images_mod.ensure([n], pins, log=log)
        how[n] = "built"
    missing = [r for r in refs.values() if not _present(c, r)]
    if missing:
        raise ToolchainError(f"images {', '.join(missing)} are missing after load/pull/build")
    if not tar.is_file():
        tar.parent.mkdir(parents=True, exist_ok=True)
        tmp = tar.with_suffix(".tmp")
        _docker("save", "-o", str(tmp), *refs.values())
        tmp.replace(tar)
        log(f"saved {tar}")
    if push and registry:
        for n, ref in refs.items():
            if how[n] == "built":
                remote = registry_ref(registry, ref)
                c.images.get(ref).tag(remote)
                for line in c.images.push(remote, stream=True, decode=True):
                    if "error" in line:
                        raise ToolchainError(f"push {remote}: {line['error']}")
                log(f"pushed {remote}")
    return how
