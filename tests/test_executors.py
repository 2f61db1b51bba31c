"""Executors run real nodes through `python -m builders.node run`: in the base toolchain container (mounts,
read-only inputs, no network, never root, no capabilities, memory/pids limits) and natively; Ctrl-C /
SIGTERM leave no container or child behind.

The nodes belong to tests/execbackend.py, a test-only backend registered at runtime through a sitecustomize
module put on the node process's PYTHONPATH (mounted into the container, or via PYTHONPATH natively)."""

import json
import os
import signal
import threading
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from builders.contract import SCHEMA
from builders.container_limits import ContainerLimits
from builders.executors import Mount, get_executor
from builders.executors.docker import LABEL, cleanup_stale
from builders.executors.node_user import UNPRIVILEGED_ID, container_user
from builders.executors.native import native_spec
from builders.errors import MatrixError, ModelError, ToolchainError

ROOT = Path(__file__).resolve().parents[1]
SITE_MODULES = ("execbackend.py", "stepbackend.py")
SITECUSTOMIZE = "from builders import backends\nbackends.REGISTRY['exectest'] = 'execbackend'\n"
pytestmark = pytest.mark.fresh_store  # these nodes use no store: the seed store is not needed


@pytest.fixture(scope="session")
def exec_site(tmp_path_factory) -> Path:
    """A directory holding sitecustomize.py (registers the exectest backend), execbackend.py and the
    stepbackend.py it builds on."""
    d = tmp_path_factory.mktemp("exec-site")
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    for name in SITE_MODULES:
        (d / name).write_text((ROOT / "tests" / name).read_text())
    return d


def site_mounts(site: Path) -> list[Mount]:
    return [Mount(site / f, f"/opt/buildmatrix/{f}", True) for f in ("sitecustomize.py", *SITE_MODULES)]


def make_node(tmp_path: Path, kind: str, **params) -> tuple[dict, list[Mount], Path]:
    key = f"exec-{kind}-{uuid.uuid4().hex[:8]}"
    stage, model = tmp_path / "stage", tmp_path / "model"
    stage.mkdir()
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8}))
    spec = {"schema": SCHEMA, "key": key, "kind": kind, "backend": "exectest", "digest": "d" * 64, "params": params,
            "model": {"name": "m", "source": "local", "revision": "local-0000000", "digest": "0" * 64},
            "inputs": {"model": "/in/model"}, "parents": {}, "out": "/node/out", "work": "/node/work",
            "result": "/node/result.json", "steps": {}, "env": {"SOURCE_DATE_EPOCH": "315532800"}}
    return spec, [Mount(stage, "/node", False), Mount(model, "/in/model", True)], stage


def containers_of(client, key: str) -> list:
    return client.containers.list(all=True, filters={"label": f"{LABEL}={key}"})


def test_unknown_executor_is_a_one_line_error():
    with pytest.raises(MatrixError, match=r"^--executor podman: unknown executor; choose docker or native$"):
        get_executor("podman")


def test_native_spec_maps_container_paths_to_mount_hosts(tmp_path):
    spec, mounts, stage = make_node(tmp_path, "probe")
    mapped = native_spec(spec, mounts + [Mount(tmp_path / "ref", "/in/reference", True)])
    assert mapped["out"] == str(stage / "out") and mapped["result"] == str(stage / "result.json")
    assert mapped["inputs"] == {"model": str(tmp_path / "model")}
    assert spec["out"] == "/node/out", "the caller's spec is not changed"


@pytest.mark.docker
def test_docker_executor_runs_a_node_read_only_inputs_no_network_unprivileged(tmp_path, base_image, exec_site,
                                                                              docker_engine, capfd):
    spec, mounts, stage = make_node(tmp_path, "probe", try_code_write=True)
    log = stage / "log.txt"
    rc = get_executor("docker", echo=True).run(spec, mounts + site_mounts(exec_site), base_image["ref"], log)
    result = json.loads((stage / "result.json").read_text())
    assert (rc, result["status"]) == (0, "ok"), log.read_text()
    assert json.loads((stage / "spec.json").read_text()) == spec, "the spec the container ran is kept"
    probe = result["reports"]["probe"]
    assert probe["model_dir"] == "/in/model" and probe["out"] == "/node/out"
    assert probe["model_write"] == "EROFS", "the model input is mounted read-only"
    assert probe["code_write"] == "EROFS", "the project's builders/ package is mounted read-only"
    assert probe["network"] == "ENETUNREACH" and probe["interfaces"] == ["lo"], "no network in the container"
    assert (probe["uid"], probe["gid"]) == container_user() and probe["uid"] != 0, "never root in the container"
    if os.getuid() == 0:
        assert (probe["uid"], probe["gid"]) == (UNPRIVILEGED_ID, UNPRIVILEGED_ID)
    else:
        assert (probe["uid"], probe["gid"]) == (os.getuid(), os.getgid()), "the host user, when it is not root"
    assert probe["work_writable"], "the node may write its staging dir"
    assert probe["cap_eff"] == probe["cap_prm"] == "0000000000000000", "no capabilities"
    assert probe["no_new_privs"] == "1", "no-new-privileges"
    assert probe["home"].startswith("/node/work/") and probe["source_date_epoch"] == "315532800"
    assert json.loads((stage / "out" / "copied.json").read_text())["hidden_size"] == 8
    assert (stage / "out" / "owner.txt").read_text() == f"{probe['uid']}:{probe['gid']}"
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [stage, *stage.rglob("*")]}
    assert owners == {(os.getuid(), os.getgid())}, "afterwards every staged file belongs to the host user again"
    assert not (tmp_path / "model" / "written-by-node").exists()
    text = log.read_text()
    assert f"[{spec['key']}] step 1/2 inputs" in text and f"[{spec['key']}] ok" in text
    assert f"[{spec['key']}] step 2/2 environment" in capfd.readouterr().err, "echo=True streams to the terminal"
    assert containers_of(docker_engine, spec["key"]) == [], "the container is removed after the node"


@pytest.mark.docker
def test_docker_executor_returns_the_node_exit_code(tmp_path, base_image, exec_site):
    spec, mounts, stage = make_node(tmp_path, "probe")
    (tmp_path / "model" / "config.json").unlink()  # the inputs step fails
    rc = get_executor("docker").run(spec, mounts + site_mounts(exec_site), base_image["ref"], stage / "log.txt")
    result = json.loads((stage / "result.json").read_text())
    assert rc == 1 and result["status"] == "failed" and "config.json" in result["reason"]


def test_native_executor_runs_the_same_node_with_host_paths(tmp_path, exec_site, monkeypatch, capfd):
    monkeypatch.setenv("PYTHONPATH", str(exec_site))
    spec, mounts, stage = make_node(tmp_path, "probe")
    rc = get_executor("native", echo=True).run(spec, mounts, None, stage / "log.txt")
    assert f"[{spec['key']}] step 2/2 environment" in capfd.readouterr().err
    result = json.loads((stage / "result.json").read_text())
    assert (rc, result["status"]) == (0, "ok"), (stage / "log.txt").read_text()
    assert result["reports"]["probe"]["model_dir"] == str(tmp_path / "model")
    assert result["reports"]["probe"]["out"] == str(stage / "out")
    assert json.loads((stage / "spec.native.json").read_text())["work"] == str(stage / "work")
    assert result["reports"]["probe"]["code_write"] is None, "natively the probe leaves the project's files alone"
    assert f"[{spec['key']}] ok" in (stage / "log.txt").read_text()


@pytest.mark.docker
def test_docker_executor_names_a_missing_image(tmp_path, exec_site):
    spec, mounts, stage = make_node(tmp_path, "probe")
    with pytest.raises(ToolchainError, match=r"buildmatrix/base:000000000000 is not built; run `invoke images`"):
        get_executor("docker").run(spec, mounts, "buildmatrix/base:000000000000", stage / "log.txt")


RUNNER = """
import sys
from pathlib import Path
from builders.executors import Mount, get_executor
spec, mounts, image = {spec!r}, [Mount(Path(h), c, r) for h, c, r in {mounts!r}], {image!r}
sys.exit(get_executor({executor!r}).run(spec, mounts, image, Path({log!r})))
"""


def start_runner(tmp_path, executor: str, image, exec_site: Path) -> tuple[subprocess.Popen, dict, Path]:
    """The executor in its own Python process, running a node that sleeps; returns once the node sleeps."""
    spec, mounts, stage = make_node(tmp_path, "sleep", seconds=300)
    if executor == "docker":
        mounts += site_mounts(exec_site)
    code = RUNNER.format(spec=spec, mounts=[(str(m.host), m.container, m.read_only) for m in mounts], image=image,
                         executor=executor, log=str(stage / "log.txt"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{exec_site}"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (stage / "out" / "pid").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the node never started sleeping"
        time.sleep(0.2)
    return proc, spec, stage


@pytest.mark.docker
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_the_docker_executor_removes_the_container(tmp_path, base_image, exec_site, docker_engine, sig):
    proc, spec, stage = start_runner(tmp_path, "docker", base_image["ref"], exec_site)
    assert [c.status for c in containers_of(docker_engine, spec["key"])] == ["running"]
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and ("KeyboardInterrupt" in out or "Terminated" in out), out
    assert containers_of(docker_engine, spec["key"]) == [], "no container is left after the interrupt"
    assert not (stage / "result.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_the_native_executor_stops_the_node_process(tmp_path, exec_site, sig):
    proc, spec, stage = start_runner(tmp_path, "native", None, exec_site)
    child = int((stage / "out" / "pid").read_text())
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and ("KeyboardInterrupt" in out or "Terminated" in out), out
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


@pytest.mark.docker
def test_cleanup_stale_removes_orphans_and_leaves_live_builds(base_image, docker_engine):
    def make(pid: int, start: bool):
        c = docker_engine.containers.create(
            base_image["ref"], ["sleep", "300"], network_mode="none",
            labels={LABEL: f"stale-test-{uuid.uuid4().hex[:8]}", "buildmatrix.pid": str(pid),
                    "buildmatrix.host": os.uname().nodename})
        if start:
            c.start()
        return c

    dead = subprocess.Popen(["true"])  # a process id that no longer exists
    dead.wait()
    live, orphan, exited = make(os.getpid(), True), make(dead.pid, True), make(os.getpid(), False)
    try:
        removed = cleanup_stale(docker_engine)
        assert orphan.name in removed
        assert live.name not in removed and exited.name not in removed, \
            "a live build's containers stay, exited ones too: it may be about to read their exit code"
        live.reload()
        assert live.status == "running"
    finally:
        for c in (live, orphan, exited):
            try:
                c.remove(force=True)
            except Exception:  # already removed by cleanup_stale
                pass


def _run_in_thread(executor, spec, mounts, image, log) -> tuple[threading.Thread, dict]:
    done: dict = {}

    def target():
        try:
            done["rc"] = executor.run(spec, mounts, image, log)
        except BaseException as e:  # reported by the test
            done["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    return thread, done


@pytest.mark.docker
def test_node_container_has_the_limits_of_matrix_yaml_in_its_host_config(tmp_path, base_image, exec_site,
                                                                        docker_engine):
    limits = ContainerLimits(memory=768 << 20, pids=321)
    spec, mounts, stage = make_node(tmp_path, "sleep", seconds=60)
    executor = get_executor("docker", limits=limits)
    thread, done = _run_in_thread(executor, spec, mounts + site_mounts(exec_site), base_image["ref"],
                                  stage / "log.txt")
    try:
        deadline = time.monotonic() + 120
        while not (stage / "out" / "pid").exists():
            assert thread.is_alive(), done
            assert time.monotonic() < deadline, "the node never started sleeping"
            time.sleep(0.2)
        (container,) = containers_of(docker_engine, spec["key"])
        host = container.attrs["HostConfig"]
        assert (host["Memory"], host["MemorySwap"], host["PidsLimit"]) == (768 << 20, 768 << 20, 321), \
            "memory limit with no swap on top, and the pids limit"
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"] and not host["Privileged"]
        assert host["SecurityOpt"] == ["no-new-privileges"] and host["NetworkMode"] == "none"
        assert container.attrs["Config"]["User"] == "{}:{}".format(*container_user())
    finally:
        container = containers_of(docker_engine, spec["key"])
        for c in container:
            c.kill()  # the node ends (exit 137, no result); the executor removes the container
        thread.join(timeout=60)
    assert containers_of(docker_engine, spec["key"]) == []


@pytest.mark.docker
def test_node_killed_by_the_memory_limit_fails_with_one_line_naming_it(tmp_path, base_image, exec_site,
                                                                     docker_engine):
    limits = ContainerLimits(memory=256 << 20, pids=4096)
    spec, mounts, stage = make_node(tmp_path, "hog", mb=1024)
    rc = get_executor("docker", limits=limits).run(spec, mounts + site_mounts(exec_site), base_image["ref"],
                                                   stage / "log.txt")
    result = json.loads((stage / "result.json").read_text())
    assert (stage / "out" / "started").exists() and not (stage / "out" / "allocated").exists(), \
        "the node ran and was killed while allocating"
    assert rc != 0 and result["status"] == "failed"
    assert result["reason"] == "container exceeded memory limit 256m; raise containers.memory"
    assert containers_of(docker_engine, spec["key"]) == []


@pytest.mark.docker
def test_a_node_within_the_memory_limit_is_not_reported_as_oom(tmp_path, base_image, exec_site):
    spec, mounts, stage = make_node(tmp_path, "hog", mb=32)
    rc = get_executor("docker", limits=ContainerLimits(memory=512 << 20, pids=4096)).run(
        spec, mounts + site_mounts(exec_site), base_image["ref"], stage / "log.txt")
    result = json.loads((stage / "result.json").read_text())
    assert (rc, result["status"], result["reason"]) == (0, "ok", None), (stage / "log.txt").read_text()
    assert (stage / "out" / "allocated").read_text() == "32"


def test_unreadable_by_others_finds_what_an_unprivileged_node_could_not_read(tmp_path):
    from builders.executors.node_user import unreadable_by_others

    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    for f in ("config.json", "sub/model.safetensors"):
        (model / f).write_text("{}")
        (model / f).chmod(0o644)
    model.chmod(0o755)
    (model / "sub").chmod(0o755)
    (model / "dangling").symlink_to(tmp_path / "nowhere")
    assert unreadable_by_others(model) is None
    (model / "sub" / "model.safetensors").chmod(0o600)
    assert unreadable_by_others(model) == model / "sub" / "model.safetensors"
    (model / "sub").chmod(0o750)
    assert unreadable_by_others(model) == model / "sub"


@pytest.mark.docker
@pytest.mark.skipif(os.getuid() != 0, reason="as a non-root user the node runs as that user and reads its files")
def test_an_input_the_unprivileged_node_cannot_read_is_a_one_line_error_before_any_container(
        tmp_path, base_image, exec_site, docker_engine):
    spec, mounts, stage = make_node(tmp_path, "probe")
    (tmp_path / "model" / "config.json").chmod(0o600)
    with pytest.raises(ModelError) as e:
        get_executor("docker").run(spec, mounts + site_mounts(exec_site), base_image["ref"], stage / "log.txt")
    assert str(e.value) == (f"{tmp_path / 'model' / 'config.json'}: not readable by the node's uid 65532 (node "
                            f"containers never run as root); make it readable: chmod -R a+rX {tmp_path / 'model'}")
    assert containers_of(docker_engine, spec["key"]) == [] and not (stage / "result.json").exists()


def test_a_node_killed_before_its_result_gets_a_typed_failed_result(tmp_path):
    """The OOM rewrite of result.json is a StepResult the build can read (not a bare {status, reason})."""
    from builders.contract import StepResult
    from builders.executors.docker import _fail_for_oom

    path = tmp_path / "result.json"
    assert _fail_for_oom(path, 137, "container exceeded memory limit 256m; raise containers.memory") == 137
    r = StepResult.from_json(json.loads(path.read_text()))
    assert (r.status, r.reason) == ("failed", "container exceeded memory limit 256m; raise containers.memory")
