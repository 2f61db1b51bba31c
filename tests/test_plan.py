"""The planner: shared nodes, target-independent GGUF nodes, digests that move only when inputs move."""

import copy
import dataclasses

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
    # parents are named by digest, the node's identity
    assert nodes["tiny-llama.gguf.Q4_K_M"]["parents"] == {"reference": nodes["tiny-llama.reference"]["digest"],
                                                         "source": nodes["tiny-llama.gguf.F16"]["digest"]}
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
    from builders.archs import DecoderConfig
    from builders.backends.gguf import sliding_window_reason
    from builders.models.tiny import tiny_config

    base = {k: v for k, v in tiny_config("mistral").items() if k not in ("sliding_window", "max_position_embeddings")}
    assert (sliding_window_reason(DecoderConfig.from_hf({**base, **config})) is not None) == unsupported


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


def test_nodes_are_identified_by_digest_and_parents_resolve_to_their_own_declaration(tmp_path):
    """A per-cell option gives the cuda cell MLC weights of the same name but other inputs: two nodes, told
    apart by digest (printed key@digest8), each library depending on the weights its own cell declared."""
    m = copy.deepcopy(matrix.load(ROOT / "matrix.yaml"))
    m.cell_overrides = {"tiny-llama.mlc.q4f16_1.cuda": {"prefill_chunk_size": 64}}
    p = plan(tmp_path, m, backends_="mlc", quants="q4f16_1", targets="cpu,cuda")
    nodes = {n["digest"]: n for n in p["nodes"]}
    weights = [n for n in p["nodes"] if n["kind"] == "mlc-weights"]
    assert len({w["digest"] for w in weights}) == len(weights) == 2
    other = next(w for w in weights if w["key"] != "tiny-llama.mlc.q4f16_1.weights")
    assert other["key"] == f"tiny-llama.mlc.q4f16_1.weights@{other['digest'][:8]}"
    assert not any("~" in n["key"] for n in p["nodes"])
    cells = {c["target"]: c for c in p["cells"]}
    cuda_nodes = [nodes[d] for d in cells["cuda"]["nodes"]]
    assert {n["parents"].get("weights") for n in cuda_nodes if n["kind"] == "mlc-lib"} == {other["digest"]}
    cpu_weights = nodes[nodes[cells["cpu"]["nodes"][-1]]["parents"]["weights"]]
    assert cpu_weights["key"] == "tiny-llama.mlc.q4f16_1.weights" and cpu_weights["digest"] != other["digest"]
    # the cells name the artifact node by key for display, by digest for identity
    assert nodes[cells["cuda"]["digest"]]["key"] == cells["cuda"]["artifact_node"] == cuda_nodes[-1]["key"]


def test_thresholds_go_where_a_node_names_its_verify_quant(tmp_path):
    p = plan(tmp_path, backends_="gguf,mlc", quants="Q4_K_M,q4f16_1", targets="cpu")
    m = matrix.load(ROOT / "matrix.yaml")
    for n in p["nodes"]:
        if n["kind"] in ("mlc-compile", "reference", "tiny-model"):
            assert "thresholds" not in n["params"], n["key"]  # no numeric check: no thresholds in its digest
        elif n["backend"] in ("gguf", "mlc"):
            quant = n["params"]["quant"]
            assert n["params"]["thresholds"] == m.thresholds_for(n["backend"], quant), n["key"]


def test_a_parent_that_is_no_nodedef_is_refused(tmp_path, monkeypatch):
    from builders import backends
    from builders.backends.base import NodeDef

    gguf = backends.get("gguf")
    monkeypatch.setattr(type(gguf), "expand", lambda self, cell, model: [
        NodeDef("x", "gguf-convert", "gguf", "gguf", {"quant": "F16"}, parents={"source": "tiny-llama.gguf.F16"})])
    with pytest.raises(TypeError, match="parent source='tiny-llama.gguf.F16' must be a NodeDef or REFERENCE"):
        plan(tmp_path, backends_="gguf", quants="F16", targets="cpu")


def test_phi3_plans_every_backend(tmp_path):
    """The family added as a row of builders/archs.py: its GGUF, MLC and Core ML cells are planned."""
    m = copy.deepcopy(matrix.load(ROOT / "matrix.yaml"))
    m.models["tiny-phi3"] = dataclasses.replace(m.models["tiny-llama"], name="tiny-phi3", source="tiny:phi3",
                                                arch="phi3")
    p = plan(tmp_path, m, model="tiny-phi3", backends_="gguf,mlc,coreml", quants="F16,q4f16_1,lut4",
             targets="cpu,ane")
    status = {(c["backend"], c["target"]): (c["status"], c["reason"]) for c in p["cells"]}
    assert status[("gguf", "cpu")] == status[("mlc", "cpu")] == status[("coreml", "ane")] == ("planned", None)
    assert p["models"]["tiny-phi3"]["arch"] == "Phi3ForCausalLM"


def test_plan_table_keeps_one_row_per_cell_when_piped(tmp_path):
    """Not a TTY (a CI log, a pipe) and no COLUMNS: the table is not folded at rich's default 80 columns."""
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run([sys.executable, "-m", "invoke", "plan", "--out", str(tmp_path), "--backends", "gguf",
                           "--quants", "Q4_K_M", "--targets", "cpu"], cwd=ROOT, capture_output=True, text=True,
                          env=env, check=True)
    (row,) = [line for line in proc.stdout.splitlines() if "tiny-llama.gguf.Q4_K_M.cpu" in line]
    assert len(row) > 80 and "planned │ tiny-llama.gguf.F16, tiny-llama.gguf.Q4_K_M │" in row
