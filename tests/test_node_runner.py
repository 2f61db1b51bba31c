"""The node entry point's step semantics: resume after failure, --only, --restart, verification gate."""

import json
import subprocess
import sys

import pytest

from builders import backends, node
from builders.contract import SCHEMA
from helpers import ROOT


@pytest.fixture(autouse=True)
def steptest_backend(monkeypatch):
    monkeypatch.setitem(backends.REGISTRY, "steptest", "stepbackend")


def spec(tmp_path, **params):
    return {"schema": SCHEMA, "key": "m.steptest", "kind": "steps", "backend": "steptest", "digest": "d",
            "params": {"quant": "x", **params}, "inputs": {}, "parents": {},
            "model": {"name": "m", "source": "tiny:llama", "revision": "tiny-0000000", "digest": "0" * 64},
            "out": str(tmp_path / "out"), "work": str(tmp_path / "work"), "result": str(tmp_path / "r.json"),
            "steps": {}, "env": {"SOURCE_DATE_EPOCH": "315532800"}}


def runs(tmp_path):
    return {n: int((tmp_path / "work" / f"{n}.runs").read_text()) if (tmp_path / "work" / f"{n}.runs").exists()
            else 0 for n in ("one", "two", "three", "four")}


def test_failure_then_rerun_resumes_at_the_failed_step(tmp_path):
    s = spec(tmp_path, fail_at="four")
    r = node.run(s)
    assert r["status"] == "failed" and r["reason"] == "step four failed on purpose"
    assert runs(tmp_path) == {"one": 1, "two": 1, "three": 1, "four": 0}
    (tmp_path / "work" / "fixed").write_text("")
    r = node.run(s)
    assert r["status"] == "ok"
    assert runs(tmp_path) == {"one": 1, "two": 1, "three": 1, "four": 1}


def test_only_reruns_exactly_one_step_by_number(tmp_path):
    assert node.run(spec(tmp_path))["status"] == "ok"
    s = spec(tmp_path)
    s["steps"] = {"only": "3"}
    r = node.run(s)
    assert r["status"] == "ok"
    assert runs(tmp_path) == {"one": 1, "two": 1, "three": 2, "four": 1}


def test_restart_reruns_from_a_step_on(tmp_path):
    assert node.run(spec(tmp_path))["status"] == "ok"
    s = spec(tmp_path)
    s["steps"] = {"restart": "two"}
    assert node.run(s)["status"] == "ok"
    assert runs(tmp_path) == {"one": 1, "two": 2, "three": 2, "four": 2}


def test_unknown_step_is_a_one_line_failure(tmp_path):
    s = spec(tmp_path)
    s["steps"] = {"only": "9"}
    r = node.run(s)
    assert r["status"] == "failed" and "no such step; steps are 1=one, 2=two" in r["reason"]


def test_failed_verification_fails_the_node(tmp_path):
    r = node.run(spec(tmp_path, verify_fails=True))
    assert r["status"] == "failed" and r["reason"] == "verification failed: top1=0.5 not >= 0.9"


def test_entry_point_process_writes_result_and_exit_code(tmp_path):
    s = spec(tmp_path, fail_at="two")
    (tmp_path / "spec.json").write_text(json.dumps(s))
    code = ("import sys; from builders import backends, node; backends.REGISTRY['steptest']='stepbackend'; "
            "sys.exit(node.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "run", str(tmp_path / "spec.json")], cwd=ROOT,
                          capture_output=True, text=True, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert proc.returncode == 1
    assert json.loads((tmp_path / "r.json").read_text())["reason"] == "step two failed on purpose"


def test_spec_of_another_schema_is_refused_with_one_line(tmp_path):
    s = {**spec(tmp_path), "schema": 1}
    (tmp_path / "spec.json").write_text(json.dumps(s))
    code = ("import sys; from builders import backends, node; backends.REGISTRY['steptest']='stepbackend'; "
            "sys.exit(node.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "run", str(tmp_path / "spec.json")], cwd=ROOT,
                          capture_output=True, text=True, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert proc.returncode == 2 and "schema 1 is not 2" in proc.stderr and not (tmp_path / "r.json").exists()


def test_result_is_typed_and_an_undeclared_verification_field_fails_the_node(tmp_path):
    from builders.contract import StepResult

    r = node.run(spec(tmp_path))
    typed = StepResult.from_json(r)  # what the host reads: every field declared
    assert typed.status == "ok" and typed.steps_done == ["one", "two", "three", "four"] and typed.reports == {}
    r = node.run(spec(tmp_path / "b", verify_extra=True))
    assert r["status"] == "failed" and "unknown field(s) colour" in r["reason"] and "Verification" in r["reason"]
    assert r["verification"] is None  # nothing half-typed is passed on


def test_each_step_that_ran_records_wall_cpu_and_peak(tmp_path):
    r = node.run(spec(tmp_path))
    for name in ("one", "two", "three", "four"):
        t = r["steps"][name]
        assert t["status"] == "ran" and t["seconds"] >= 0 and t["cpu_seconds"] >= 0 and t["peak_rss_mb"] > 0
    s = spec(tmp_path)
    s["steps"] = {"only": "two"}
    r = node.run(s)
    assert "cpu_seconds" in r["steps"]["two"] and "cpu_seconds" not in r["steps"]["one"]
