"""The planner: shared nodes, target-independent GGUF nodes, digests that move only when inputs move."""

import copy

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
    p = plan(tmp_path, backends_="gguf", quants="Q8_0", targets="cpu,cuda,android")
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
