"""CI stages hand nodes on by digest: a models job builds the model and its reference once and exports
them; a later job (another output root, as on another runner) imports them with --cache-from and builds
nothing again; the release stage builds nothing and refuses when a node was not handed off."""

import json

import pytest

from helpers import invoke

SELECT = ("--backends", "gguf", "--quants", "F16", "--targets", "cpu")


@pytest.mark.docker
@pytest.mark.fresh_store
def test_models_stage_exports_and_the_next_job_imports_without_rebuilding(tmp_path):
    first, handoff, second, handoff2 = (tmp_path / n for n in ("run1", "handoff", "run2", "handoff2"))
    proc = invoke("ci-stage", "--group", "tiny-llama.model", "--out", str(first), "--export", str(handoff),
                  *SELECT, check=0)
    assert "exported 2 nodes" in proc.stderr and "run tiny-llama.reference" in proc.stderr
    exported = sorted(p.name for p in (handoff / ".store").iterdir())
    assert len(exported) == 2
    for d in exported:
        m = json.loads((handoff / ".store" / d / "manifest.json").read_text())
        assert m["node"]["key"] in ("tiny-llama.model", "tiny-llama.reference")

    proc = invoke("ci-stage", "--group", "tiny-llama.model", "--out", str(second), "--cache-from", str(handoff),
                  "--export", str(handoff2), *SELECT, check=0)
    assert "run tiny-llama" not in proc.stderr, "a handed-off node was built again"
    assert sorted(p.name for p in (handoff2 / ".store").iterdir()) == exported

    proc = invoke("ci-stage", "--group", "release", "--out", str(tmp_path / "rel"), "--cache-from", str(handoff),
                  *SELECT)
    assert proc.returncode == 2 and "not in the handed-off stores" in proc.stderr
    assert "Traceback" not in proc.stderr
