"""CI stages hand nodes on by digest, each job in its own output root as on its own runner: the models
job builds the model and its reference once and exports them; the next job imports them (--cache-from)
without rebuilding and builds its group; the release builds nothing, refuses a node that was not handed
off, and publishes the tree; the macOS finisher off macOS fails closed."""

import json

import pytest

from helpers import invoke

SELECT = ("--backends", "coreml", "--targets", "ane")
CELL = "tiny-llama.coreml.fp16.ane"


@pytest.mark.docker
@pytest.mark.fresh_store
def test_stages_hand_nodes_on_by_digest_and_the_release_builds_nothing(tmp_path):
    models, group = tmp_path / "handoff-models", tmp_path / "handoff-coreml"
    proc = invoke("ci-stage", "--group", "tiny-llama.model", "--out", str(tmp_path / "run1"), "--export",
                  str(models), *SELECT, check=0)
    assert "exported 2 nodes" in proc.stderr and "run tiny-llama.reference" in proc.stderr
    exported = sorted(p.name for p in (models / ".store").iterdir())
    keys = {json.loads((models / ".store" / d / "manifest.json").read_text())["node"]["key"] for d in exported}
    assert keys == {"tiny-llama.model", "tiny-llama.reference"}

    proc = invoke("ci-stage", "--group", "release", "--out", str(tmp_path / "early"), "--cache-from", str(models),
                  *SELECT)
    assert proc.returncode == 2 and "not in the handed-off stores" in proc.stderr and "Traceback" not in proc.stderr

    proc = invoke("ci-stage", "--group", "tiny-llama.coreml.fp16", "--out", str(tmp_path / "run2"), "--cache-from",
                  str(models), "--export", str(group), *SELECT, check=0)
    assert "run tiny-llama.model" not in proc.stderr and "run tiny-llama.reference" not in proc.stderr
    assert f"run {CELL}" in proc.stderr and "exported 1 nodes" in proc.stderr

    rel = tmp_path / "release"
    proc = invoke("ci-stage", "--group", "release", "--out", str(rel), "--cache-from", f"{models},{group}", *SELECT,
                  check=0)
    assert "run " not in proc.stderr.replace("rerun", "")
    index = json.loads((rel / "index.json").read_text())["artifacts"]
    assert [a["cell"] for a in index] == [CELL]
    assert [d["step"] for d in index[0]["deferred"]] == ["compile"]
    assert all((rel / f["path"]).is_file() for f in index[0]["files"])

    proc = invoke("ci-finish", "--group", "tiny-llama.coreml.fp16", "--out", str(tmp_path / "mac"), "--cache-from",
                  f"{models},{group}", *SELECT)
    record = json.loads((tmp_path / "mac" / "finished" / f"{CELL}.json").read_text())
    assert proc.returncode == 1 and record["status"] == "failed" and "must run on macOS" in record["reason"]
