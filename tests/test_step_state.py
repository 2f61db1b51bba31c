"""The node runner's keyed step state: a resume trusts only done steps whose outputs are still in out/,
never a state of another digest; --only/--restart keep working. Fast: no docker (the steptest backend)."""

import json

import pytest

from builders import backends, node
from test_node_runner import runs, spec


@pytest.fixture(autouse=True)
def steptest_backend(monkeypatch):
    monkeypatch.setitem(backends.REGISTRY, "steptest", "stepbackend")


def outputs(tmp_path):
    return sorted(p.name for p in (tmp_path / "out").iterdir())


def test_state_records_digest_and_a_fingerprint_per_step(tmp_path):
    assert node.run(spec(tmp_path))["status"] == "ok"
    state = json.loads((tmp_path / "work" / ".steps.json").read_text())
    assert state["digest"] == "d" and state["done"] == ["one", "two", "three", "four"]
    assert len(set(state["after"].values())) == 4, "each step left out/ different"


def test_outputs_promoted_away_are_rebuilt_not_skipped(tmp_path):
    """The store entry was deleted and staging kept: out/ is empty, so every step runs again."""
    assert node.run(spec(tmp_path))["status"] == "ok"
    for f in (tmp_path / "out").iterdir():  # what promotion does: out/ moves to the store
        f.unlink()
    r = node.run(spec(tmp_path))
    assert r["status"] == "ok" and r["steps_done"] == ["one", "two", "three", "four"]
    assert runs(tmp_path) == {"one": 2, "two": 2, "three": 2, "four": 2}
    assert outputs(tmp_path) == ["four.txt", "one.txt", "three.txt", "two.txt"]


def test_a_state_of_another_digest_starts_over_with_an_empty_out(tmp_path):
    s = spec(tmp_path, fail_at="three")
    node.run(s)
    (tmp_path / "out" / "stray.bin").write_text("from the other node")
    s2 = {**spec(tmp_path), "digest": "other"}
    assert node.run(s2)["status"] == "ok"
    assert runs(tmp_path) == {"one": 2, "two": 2, "three": 1, "four": 1}
    assert "stray.bin" not in outputs(tmp_path)


def test_resume_trusts_steps_up_to_the_outputs_still_there(tmp_path):
    s = spec(tmp_path, fail_at="four")
    node.run(s)
    (tmp_path / "out" / "three.txt").unlink()  # out/ is now what step two left
    (tmp_path / "work" / "fixed").write_text("")
    r = node.run(s)
    assert r["status"] == "ok"
    assert runs(tmp_path) == {"one": 1, "two": 1, "three": 2, "four": 1}


def test_edited_outputs_start_over(tmp_path):
    s = spec(tmp_path, fail_at="four")
    node.run(s)
    (tmp_path / "out" / "one.txt").write_text("edited")
    (tmp_path / "work" / "fixed").write_text("")
    assert node.run(s)["status"] == "ok"
    assert runs(tmp_path) == {"one": 2, "two": 2, "three": 2, "four": 1}
    assert (tmp_path / "out" / "one.txt").read_text() == "one"


def test_only_after_a_full_run_still_reruns_one_step(tmp_path):
    assert node.run(spec(tmp_path))["status"] == "ok"
    s = spec(tmp_path)
    s["steps"] = {"only": "two"}
    r = node.run(s)
    assert r["status"] == "ok" and runs(tmp_path) == {"one": 1, "two": 2, "three": 1, "four": 1}


def test_an_old_unkeyed_state_is_not_trusted(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / ".steps.json").write_text(json.dumps({"done": ["one", "two", "three", "four"],
                                                                "result": {}}))
    r = node.run(spec(tmp_path))
    assert r["status"] == "ok" and runs(tmp_path) == {"one": 1, "two": 1, "three": 1, "four": 1}
