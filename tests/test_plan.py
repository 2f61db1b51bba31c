"""The planner: shared nodes, target-independent GGUF nodes, digests that move only when inputs move."""

import copy

import pytest

from builders import matrix
from builders.plan import make_plan
from builders.store import Store
from helpers import ROOT


def plan(tmp_path, m=None, **filters):
    m = m or matrix.load(ROOT / "matrix.yaml")
    return make_plan(m, matrix.select(m, **filters), Store(tmp_path)).to_json()


def test_one_f16_conversion_feeds_every_quantization(tmp_path):
    p = plan(tmp_path)
    nodes = {n["key"]: n for n in p["nodes"]}
    assert set(nodes) == {"tiny-llama.model", "tiny-llama.reference", "tiny-llama.gguf.F16",
                          "tiny-llama.gguf.Q8_0", "tiny-llama.gguf.Q4_K_M"}
    assert nodes["tiny-llama.gguf.Q4_K_M"]["parents"] == {"reference": "tiny-llama.reference",
                                                         "source": "tiny-llama.gguf.F16"}
    assert sorted(nodes["tiny-llama.gguf.F16"]["cells"]) == ["tiny-llama.gguf.F16.cpu", "tiny-llama.gguf.Q4_K_M.cpu"]
    assert p["summary"] == {"cells": 3, "nodes": 5, "cached": 0, "to_run": 5, "to_import": 0, "damaged": 0}


def test_gguf_files_are_target_independent(tmp_path):
    p = plan(tmp_path, backends_="gguf", quants="Q8_0", targets="cpu,cuda,metal")
    digests = {c["digest"] for c in p["cells"]}
    assert len(p["cells"]) == 3 and len(digests) == 1


def test_unsupported_target_is_listed_with_a_reason(tmp_path):
    p = plan(tmp_path, backends_="gguf", quants="F16", targets="cpu,webgpu")
    web = next(c for c in p["cells"] if c["target"] == "webgpu")
    assert web["status"] == "unsupported" and "gguf builds no artifact for webgpu" in web["reason"]


def test_digests_change_only_with_inputs(tmp_path):
    m = matrix.load(ROOT / "matrix.yaml")
    base = {n["key"]: n["digest"] for n in plan(tmp_path, m)["nodes"]}
    assert base == {n["key"]: n["digest"] for n in plan(tmp_path / "other", m)["nodes"]}

    m2 = copy.deepcopy(m)
    m2.thresholds["gguf"]["Q8_0"]["top1_min"] = 0.99
    changed = {n["key"]: n["digest"] for n in plan(tmp_path, m2)["nodes"]}
    assert [k for k in base if base[k] != changed[k]] == ["tiny-llama.gguf.Q8_0"]

    m3 = copy.deepcopy(m)
    m3.images["gguf"]["llama_cpp_python"] = "0.3.35"
    changed = {n["key"]: n["digest"] for n in plan(tmp_path, m3)["nodes"]}
    assert {k for k in base if base[k] != changed[k]} == {
        "tiny-llama.gguf.F16", "tiny-llama.gguf.Q8_0", "tiny-llama.gguf.Q4_K_M"}


def test_mistral_sliding_window_makes_gguf_cells_unsupported_not_failed(tmp_path):
    p = plan(tmp_path, model="tiny-mistral", backends_="gguf,mlc", quants="F16,Q4_K_M,q0f32", targets="cpu,cuda")
    gguf = [c for c in p["cells"] if c["backend"] == "gguf"]
    assert len(gguf) == 4 and {c["status"] for c in gguf} == {"unsupported"}
    assert all(c["nodes"] == [] for c in gguf), "nothing is planned for an unsupported cell"
    assert gguf[0]["reason"] == ("llama.cpp's converter drops the sliding window (sliding_window 1024 < "
                                 "max_position_embeddings 4096): outputs differ beyond 1024 tokens")
    assert not any(n["backend"] == "gguf" for n in p["nodes"])
    mlc = [c for c in p["cells"] if c["backend"] == "mlc"]
    assert {c["status"] for c in mlc} == {"planned"}, "MLC attends within the window: still built"


@pytest.mark.parametrize("config, unsupported", [
    ({"sliding_window": 1024, "max_position_embeddings": 4096}, True),
    ({"sliding_window": 1024}, True),  # no context length given: the window may matter, refuse
    ({"sliding_window": 4096, "max_position_embeddings": 4096}, False),  # the window covers every position
    ({"sliding_window": 1024, "max_position_embeddings": 4096, "use_sliding_window": False}, False),  # Qwen2
    ({"sliding_window": None, "max_position_embeddings": 32768}, False),  # Mistral v0.2+
    ({"max_position_embeddings": 4096}, False),  # Llama
])
def test_gguf_sliding_window_rule(config, unsupported):
    from builders.backends.gguf import sliding_window_reason

    assert (sliding_window_reason(config) is not None) == unsupported


def test_container_limits_do_not_change_digests(tmp_path):
    from dataclasses import replace

    from builders.container_limits import ContainerLimits

    m = matrix.load(ROOT / "matrix.yaml")
    base = {n["key"]: n["digest"] for n in plan(tmp_path, m)["nodes"]}
    limited = replace(m, containers=ContainerLimits(memory=512 << 20, pids=128))
    assert {n["key"]: n["digest"] for n in plan(tmp_path, limited)["nodes"]} == base


def test_building_only_unsupported_mistral_gguf_cells_reports_them_and_exits_0(tmp_path):
    from helpers import invoke

    proc = invoke("build", "--out", str(tmp_path), "--model", "tiny-mistral", "--backends", "gguf",
                  "--quants", "F16,Q8_0", check=0)
    rows = [ln for ln in proc.stdout.splitlines() if "tiny-mistral.gguf." in ln]
    assert len(rows) == 2 and all("unsupported" in r and "drops the sliding window" in r for r in rows), proc.stdout
    assert not list(tmp_path.glob(".store/*")), "nothing was built"
