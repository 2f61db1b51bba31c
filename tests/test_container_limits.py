"""matrix.yaml `containers:` (memory/pids limits of node containers): parsing, defaults, one-line errors."""

import subprocess
import sys

import pytest

from builders import matrix
from builders.container_limits import ContainerLimits, default_limits, machine_memory, parse_size
from builders.errors import MatrixError
from helpers import ROOT

HEADER = "schema: 1\nimages:\n  base: {suite: bookworm}\n"


def load(tmp_path, containers: str):
    p = tmp_path / "matrix.yaml"
    p.write_text(HEADER + containers)
    return matrix.load(p)


@pytest.mark.parametrize("text, size", [
    ("16g", 16 << 30), ("512m", 512 << 20), ("1.5g", 3 << 29), ("2G", 2 << 30), ("512MiB", 512 << 20),
    ("1t", 1 << 40), ("16", None), ("16x", None), ("lots", None), ("", None), (16, None), (True, None),
])
def test_sizes_need_a_unit(text, size):
    assert parse_size(text) == size


def test_limits_from_matrix_yaml(tmp_path):
    m = load(tmp_path, "containers: {memory: 6g, pids: 512}\n")
    assert m.containers == ContainerLimits(memory=6 << 30, pids=512)
    assert m.containers.oom_reason() == "container exceeded memory limit 6g; raise containers.memory"


def test_defaults_come_from_this_machine(tmp_path):
    d = default_limits()
    assert load(tmp_path, "").containers == d
    assert load(tmp_path, "containers: {pids: 100}\n").containers == ContainerLimits(d.memory, 100)
    assert d.pids == 4096 and d.memory % (1 << 30) == 0
    assert (1 << 30) <= d.memory <= machine_memory(), "a whole number of GiB, at most what this machine has"
    assert d.memory >= int(machine_memory() * 0.75) - (1 << 30)


def test_the_project_matrix_sets_no_limit_it_cannot_meet():
    assert matrix.load(ROOT / "matrix.yaml").containers.memory <= machine_memory()


@pytest.mark.parametrize("containers, line, message", [
    ("containers: {memory: 16}\n", 4, "containers.memory: 16 is not a size; write a number with a unit k, m, g "
                                      "or t, e.g. 16g"),
    ("containers:\n  pids: 4096\n  memory: 16x\n", 6, "containers.memory: '16x' is not a size"),
    ("containers:\n  memory: 64m\n", 5, "containers.memory: '64m' is below the minimum 128m"),
    ("containers:\n  pids: 8\n", 5, "containers.pids: 8 must be a whole number >= 64, e.g. 4096"),
    ("containers:\n  pids: many\n", 5, "containers.pids: 'many' must be a whole number"),
    ("containers:\n  pids: true\n", 5, "containers.pids: True must be a whole number"),
    ("containers:\n  cpus: 2\n", 5, "containers.cpus: unknown key; use memory or pids"),
    ("containers: 16g\n", 4, "containers: must be a mapping like {memory: 16g, pids: 4096}, got str"),
])
def test_bad_limits_name_the_line_field_value_and_fix(tmp_path, containers, line, message):
    with pytest.raises(MatrixError) as e:
        load(tmp_path, containers)
    assert str(e.value).startswith(f"matrix.yaml:{line}: ") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_bad_limit_is_one_line_and_exit_2_from_the_cli(tmp_path):
    p = tmp_path / "matrix.yaml"
    p.write_text((ROOT / "matrix.yaml").read_text() + "containers:\n  memory: 16\n")
    proc = subprocess.run([sys.executable, "-m", "invoke", "plan", "--matrix", str(p), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "containers.memory: 16 is not a size" in proc.stderr


@pytest.mark.docker
def test_a_node_over_the_memory_limit_fails_its_cell_with_one_line_in_the_summary(tmp_path):
    from helpers import invoke

    text = (ROOT / "matrix.yaml").read_text() + "\ncontainers: {memory: 200m}\n"
    (tmp_path / "matrix.yaml").write_text(text)
    proc = invoke("build", "--matrix", str(tmp_path / "matrix.yaml"), "--out", str(tmp_path / "dist"), "--model",
                  "tiny-mistral", "--backends", "coreml", "--quants", "fp16", "--targets", "ane")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if "tiny-mistral.coreml.fp16.ane" in ln)
    assert "failed" in row and "container exceeded memory limit 200m; raise containers.memory" in row, proc.stdout
    assert not list((tmp_path / "dist").glob(".store/*/out/*.mlpackage")), "nothing of the killed node is promoted"
