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
    plan = Plan([PlanCell(cell, [digest])], {digest: PlanNode(nd, digest, "native:test", "m", [cell.id])},
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


def test_a_failed_rebuild_keeps_the_earlier_index_entry_marked(tmp_path, steptest_site):
    """Never lose what was built: when every cell of a build fails, index.json still lists the cell's earlier
    good artifact (its node is still in the store), marked `earlier` with why - and a release refuses it."""
    from builders.release import ReleaseError
    from builders.release.collect import _check_verified

    report, store, good = run_one(tmp_path)
    (before,) = json.loads(report.index.read_text())["artifacts"]
    report, _, bad = run_one(tmp_path, no_output=True)  # other inputs, same cell: the run writes nothing
    assert bad != good and [c.status for c in report.cells] == ["failed"] and report.exit_code == 1
    (kept,) = json.loads(report.index.read_text())["artifacts"]
    assert kept["status"] == "earlier" and "the node produced no outputs" in kept["kept_because"]
    assert {k: v for k, v in kept.items() if k not in ("status", "kept_because")} == before
    with pytest.raises(ReleaseError, match="m.steptest.x.cpu is an earlier build's entry"):
        _check_verified(kept, store.manifest(good))
    # an entry whose node left the store is not kept
    store.set_aside(good, "test")
    report, _, _ = run_one(tmp_path, no_output=True)
    assert json.loads(report.index.read_text())["artifacts"] == []
