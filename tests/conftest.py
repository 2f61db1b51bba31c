"""Shared fixtures. Tests marked `docker` get a reachable Docker engine: it is started (dockerd) when none
answers, and when that is impossible those tests FAIL - they are never skipped."""

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

# A run started in the background by a non-interactive shell (`cmd &`, CI wrappers) inherits SIGINT ignored,
# and so would every build a test interrupts with Ctrl-C. Python's own handler back: a handled signal is
# reset to the default in the children at exec, so they get their KeyboardInterrupt again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
DOCKERD_LOG = Path("/tmp/buildmatrix-tests-dockerd.log")
DOCKERD_WAIT_S = 60


def _engine_answers() -> bool:
    import docker

    try:
        docker.from_env(timeout=10).ping()
        return True
    except Exception:  # any failure to talk to the engine means "not reachable"
        return False


@pytest.fixture(scope="session")
def docker_engine():
    """A docker SDK client of a running engine; starts dockerd if needed (left running afterwards)."""
    import docker

    if not _engine_answers():
        if not shutil.which("dockerd"):
            pytest.fail("no Docker engine answers and dockerd is not installed: run `bash scripts/setup.sh`")
        with open(DOCKERD_LOG, "ab") as log:
            subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        deadline = time.monotonic() + DOCKERD_WAIT_S
        while not _engine_answers():
            if time.monotonic() > deadline:
                pytest.fail(f"started dockerd but no engine answered within {DOCKERD_WAIT_S} s; log: {DOCKERD_LOG}")
            time.sleep(1)
    return docker.from_env(timeout=900)


@pytest.fixture(autouse=True)
def _engine_for_docker_tests(request):
    if request.node.get_closest_marker("docker"):
        request.getfixturevalue("docker_engine")


@pytest.fixture(scope="session")
def pins() -> dict:
    """The `images:` section of the project's matrix.yaml."""
    return yaml.safe_load((ROOT / "matrix.yaml").read_text())["images"]


@pytest.fixture(scope="session")
def base_image(docker_engine, pins) -> dict:
    """The real base toolchain image ({name, ref, id, tools}), built if missing."""
    from builders import images

    return images.ensure(["base"], pins)["base"]


SEED_GGUF_ARCHS = ("llama", "qwen2")  # seeded with their F16 GGUF through the real CLI
SEED_MODEL_ONLY_ARCHS = ("mistral",)  # no GGUF (its sliding window is unsupported): model + reference only


def seed_model_nodes(out: Path, arch: str) -> None:
    """Build only the tiny:<arch> model node and its reference node into `out`, through the real planner,
    builder and docker executor: the plan of a cell that needs them (mlc q0f32 cpu), cut to the reference."""
    from dataclasses import replace

    from builders import matrix as matrix_mod
    from builders.build import Builder
    from builders.plan import make_plan
    from builders.store import Store

    m = matrix_mod.load(ROOT / "matrix.yaml")
    sel = matrix_mod.select(m, model=f"tiny:{arch}", backends_="mlc", quants="q0f32", targets="cpu")
    store = Store(out, cache_from=[])
    plan = make_plan(m, sel, store)
    ref = next(k for k, pn in plan.nodes.items() if pn.node.kind == "reference")
    plan.cells = [replace(plan.cells[0], nodes=[ref])]
    report = Builder(plan, store, m).run()
    if [c.status for c in report.cells] not in (["built"], ["cached"]):
        pytest.fail(f"seed build of tiny:{arch}'s model and reference failed: {report.cells} {report.nodes}")


@pytest.fixture(scope="session")
def seed_store(docker_engine, tmp_path_factory) -> Path:
    """One output root holding the tiny models and their reference logits (and the F16 GGUF of those GGUF
    supports), built once per session; other docker tests import those nodes by digest from it
    (BUILDMATRIX_CACHE_FROM) instead of retraining the same tiny model in every output dir."""
    import sys

    out = tmp_path_factory.mktemp("seed")
    for arch in SEED_GGUF_ARCHS:
        proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--out", str(out), "--model", f"tiny:{arch}",
                               "--backends", "gguf", "--quants", "F16"], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"seed build of tiny:{arch} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    for arch in SEED_MODEL_ONLY_ARCHS:
        seed_model_nodes(out, arch)
    return out


@pytest.fixture(autouse=True)
def _seeded_cache(request, monkeypatch):
    """Docker tests share the seed store unless marked `fresh_store` (they need to run model nodes)."""
    if request.node.get_closest_marker("docker") and not request.node.get_closest_marker("fresh_store"):
        from builders.store import CACHE_FROM_ENV

        monkeypatch.setenv(CACHE_FROM_ENV, str(request.getfixturevalue("seed_store")))
