"""The root image every toolchain image builds on, made without a registry:
`debootstrap --variant=minbase SUITE DIR MIRROR` -> sorted tar -> `docker import`.

Its tag is a hash of the recipe (suite, mirror, variant, packages), so it is known without Docker.
For bit-for-bit identical roots, point `images.base.mirror` at a dated snapshot mirror
(http://snapshot.debian.org/archive/debian/<YYYYMMDDTHHMMSSZ>): a plain mirror follows point releases.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from builders.errors import ToolchainError

NAME = "rootfs"
PACKAGES = ("python3", "python3-venv", "ca-certificates")  # what every image needs; the rest is in Dockerfiles
DEFAULTS = {"suite": "bookworm", "mirror": "http://deb.debian.org/debian"}
EMPTIED = ("var/cache/apt/archives", "var/lib/apt/lists", "var/log", "tmp")  # emptied before the tar


def recipe(base_pins: dict) -> dict:
    return {"suite": base_pins.get("suite", DEFAULTS["suite"]), "mirror": base_pins.get("mirror", DEFAULTS["mirror"]),
            "variant": "minbase", "include": list(PACKAGES)}


def tag(base_pins: dict) -> str:
    digest = hashlib.sha256(json.dumps(recipe(base_pins), sort_keys=True).encode()).hexdigest()
    return f"buildmatrix/{NAME}:{digest[:12]}"


def bootstrap(client, base_pins: dict, log_file: Path, log=print) -> None:
    """debootstrap the root filesystem and `docker import` it as tag(base_pins)."""
    r = recipe(base_pins)
    if not shutil.which("debootstrap"):
        raise ToolchainError("debootstrap is not installed; run `bash scripts/setup.sh` (apt-get install debootstrap)")
    ref = tag(base_pins)
    log(f"bootstrapping {ref}: debootstrap --variant=minbase {r['suite']} ({r['mirror']}); log: {log_file}")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="buildmatrix-rootfs-") as tmp:
        root = Path(tmp) / "root"
        with open(log_file, "w") as fh:
            rc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(r['include'])}",
                                 r["suite"], str(root), r["mirror"]], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            raise ToolchainError(f"debootstrap {r['suite']} {r['mirror']} failed (exit {rc}); log: {log_file}")
        for rel in EMPTIED:
            shutil.rmtree(root / rel, ignore_errors=True)
            (root / rel).mkdir(parents=True, exist_ok=True)
        (root / "tmp").chmod(0o1777)
        tar = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "--sort=name", "-C", str(root), "-cf", str(tar), "."], check=True)
        repo, _, version = ref.partition(":")
        try:
            client.api.import_image(src=str(tar), repository=repo, tag=version)
        except Exception as e:  # docker.errors.APIError and transport errors alike
            raise ToolchainError(f"docker import of the {r['suite']} root filesystem as {ref} failed: "
                                 f"{' '.join(str(e).split())[:200]}") from None
