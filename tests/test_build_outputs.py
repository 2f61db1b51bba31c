"""The builder refuses a node run that wrote nothing, or not what its kind declares: the cell fails, nothing
is promoted, index.json never lists an empty artifact. Real node processes (native executor, the steptest
backend registered through sitecustomize); no docker."""

import json

import pytest

from builders.backends.base import Cell, ModelRef, NodeDef
from builders.build import Builder
from builders.plan import Plan, PlanCell, PlanNode
from builders.store import Store
from helpers import ROOT

OUTPUTS = tuple(f"{n}.txt" for n in ("one", "two", "three", "four"))


@pytest.fixture
def steptest_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("from builders import backends\nbackends.REGISTRY['steptest'] = 'stepbackend'\n")
    monkeypatch.setenv("PYTHONPATH", f"{site}:{ROOT / 'tests'}")
    monkeypatch.setitem(__import__("builders.backends", fromlist=["REGISTRY"]).REGISTRY, "steptest", "stepbackend")


def run_one(tmp_path, outputs=OUTPUTS, **params):
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"]}
    (model / "config.json").write_text(json.dumps(config))
    cell = Cell("m", "steptest", "x", "cpu")
    nd = NodeDef("m.steptest", "steps", "steptest", "base", {"quant": "x", **params}, outputs=outputs)
    digest = json.dumps(params, sort_keys=True).encode().hex()[:64].ljust(64, "0")
    plan = Plan([PlanCell(cell, [nd.key])], {nd.key: PlanNode(nd, digest, "native:test", "m", [cell.id])},
                {"m": ModelRef("m", str(model), "local-0000000", "0" * 64, config, "LlamaForCausalLM")},
                {"m": model}, {"m": {"config.json": "0" * 64}})
    store = Store(tmp_path / "out")
    lines = []
    report = Builder(plan, store, None, executor="native", log=lines.append).run()
    return report, store, digest


def test_a_run_that_writes_nothing_fails_unpromoted(tmp_path, steptest_site):
    report, store, digest = run_one(tmp_path, no_output=True)
    (cell,) = report.cells
    assert cell.status == "failed" and "the node produced no outputs" in cell.reason
    assert report.exit_code == 1
    assert not store.node_dir(digest).exists()
    assert json.loads(report.index.read_text())["artifacts"] == []


def test_a_run_missing_a_declared_output_fails_unpromoted(tmp_path, steptest_site):
    report, store, digest = run_one(tmp_path, outputs=OUTPUTS + ("*.gguf",))
    (cell,) = report.cells
    assert cell.status == "failed" and "did not produce *.gguf (declared outputs of steps)" in cell.reason
    assert not store.node_dir(digest).exists()


def test_a_run_with_its_declared_outputs_is_promoted(tmp_path, steptest_site):
    report, store, digest = run_one(tmp_path)
    assert [c.status for c in report.cells] == ["built"]
    assert [o["path"] for o in store.manifest(digest)["outputs"]] == sorted(OUTPUTS)
    (entry,) = json.loads(report.index.read_text())["artifacts"]
    assert len(entry["files"]) == 4
