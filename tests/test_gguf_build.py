"""End to end through the real CLI, real Docker engine and llama.cpp's own tools (GGUF backend)."""

import json
import os
import signal
import subprocess
import sys
import time

import docker
import pytest

from builders.store import CACHE_FROM_ENV
from helpers import ROOT, assert_outputs_match_manifest, invoke, manifests, plan_json

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def llama_out(tmp_path_factory):
    """The README's main job: `invoke build` on the embedded default (tiny Llama, F16/Q8_0/Q4_K_M)."""
    out = tmp_path_factory.mktemp("dist-llama")
    proc = invoke("build", "--out", str(out), check=0)
    return out, proc


def test_default_build_produces_verified_gguf_with_manifests(llama_out):
    out, proc = llama_out
    ms = manifests(out)
    for quant in ("F16", "Q8_0", "Q4_K_M"):
        m = ms[f"tiny-llama.gguf.{quant}"]
        assert_outputs_match_manifest(out, m)
        assert m["image"]["ref"].startswith("buildmatrix/gguf:"), "built inside the gguf toolchain container"
        assert m["tool_versions"]["llama.cpp"], "the exact llama.cpp version is recorded"
        assert m["runtime_abi"]["gguf_version"] == 3
        assert m["verification"]["passed"] is True
        (gguf_file,) = [o["path"] for o in m["outputs"]]
        assert gguf_file.endswith(f"-{quant}.gguf") and gguf_file.startswith("tiny-llama-")
        published = out / "tiny-llama" / m["model"]["revision"].split("-")[-1][:7]
        assert any(p.name == gguf_file for p in out.glob(f"tiny-llama/*/gguf/{gguf_file}")), published
    f16 = ms["tiny-llama.gguf.F16"]["verification"]["checks"]
    assert f16["top1"] == 1.0 and f16["rel_l2"] <= 5e-3 and f16["runtime_rel_l2"] <= 5e-3
    assert ms["tiny-llama.gguf.Q8_0"]["verification"]["checks"]["top1"] >= 0.98
    q4 = ms["tiny-llama.gguf.Q4_K_M"]["verification"]["checks"]
    # no default threshold reads perplexity: the text is not scored (verify/budget.py), only the prompts
    assert "ppl_delta" not in q4 and q4["positions"] == ms["tiny-llama.gguf.F16"]["verification"]["checks"]["positions"]
    # one F16 conversion feeds the quantization
    assert ms["tiny-llama.gguf.Q4_K_M"]["parents"]["source"]["key"] == "tiny-llama.gguf.F16"
    index = json.loads((out / "index.json").read_text())
    assert {a["cell"] for a in index["artifacts"]} == {
        "tiny-llama.gguf.F16.cpu", "tiny-llama.gguf.Q8_0.cpu", "tiny-llama.gguf.Q4_K_M.cpu"}
    for a in index["artifacts"]:
        assert (out / a["manifest"]).is_file()
        for f in a["files"]:
            assert (out / f["path"]).is_file()
    for m in ms.values():
        text = json.dumps(m)
        assert str(out) not in text and "/tmp/" not in text, "no host paths in manifests"


def test_rebuild_is_all_cache_hits_and_runs_no_container(llama_out):
    out, _ = llama_out
    client = docker.from_env()
    since = int(time.time())
    plan = plan_json(out)
    assert plan["summary"]["to_run"] == 0 and all(n["cached"] for n in plan["nodes"])
    proc = invoke("build", "--out", str(out), check=0)
    events = client.events(since=since, until=int(time.time()) + 1, decode=True,
                           filters={"type": "container", "event": "create"})
    assert [e for e in events] == [], "a cached rebuild must not create containers"
    assert "cached" in proc.stdout


def test_plan_ids_and_digests_are_stable_across_runs_and_output_dirs(llama_out, tmp_path, monkeypatch):
    out, _ = llama_out
    a = plan_json(out)
    monkeypatch.delenv(CACHE_FROM_ENV, raising=False)  # an empty output dir with no store to import from
    b = plan_json(tmp_path / "elsewhere")
    strip = lambda p: [(c["id"], c["digest"], c["nodes"]) for c in p["cells"]]  # noqa: E731
    assert strip(a) == strip(b)
    assert [n["digest"] for n in a["nodes"]] == [n["digest"] for n in b["nodes"]]
    assert all(not n["cached"] for n in b["nodes"])


def test_headline_targets_build_what_gguf_can_and_say_what_is_not_available(llama_out):
    out, _ = llama_out
    proc = invoke("build", "--out", str(out), "--backends", "gguf", "--quants", "F16",
                  "--targets", "cuda,android,webgpu", check=0)
    lines = proc.stdout
    assert "tiny-llama.gguf.F16.cuda" in lines and "tiny-llama.gguf.F16.android" in lines
    assert "unsupported" in lines and "webgpu" in lines


def test_failing_cell_leaves_others_built_and_exits_1(tmp_path, llama_out):
    matrix = tmp_path / "matrix.yaml"
    text = (ROOT / "matrix.yaml").read_text().replace("      Q4_K_M: {top1_min: 0.7,",
                                                       "      Q4_K_M: {max_abs_logit: 1.0e-6, top1_min: 0.7,")
    assert text != (ROOT / "matrix.yaml").read_text()
    matrix.write_text(text)
    out = tmp_path / "dist"
    proc = invoke("build", "--matrix", str(matrix), "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "verification failed" in proc.stdout
    ms = manifests(out)
    assert "tiny-llama.gguf.F16" in ms and "tiny-llama.gguf.Q8_0" in ms
    assert "tiny-llama.gguf.Q4_K_M" not in ms, "a failed artifact is never promoted"
    assert not list(out.glob("tiny-llama/*/gguf/*Q4_K_M*.gguf"))
    # Q8_0 was built independently here and in the default build: same bytes (reproducible build)
    first = manifests(llama_out[0])["tiny-llama.gguf.Q8_0"]["outputs"]
    assert [o["sha256"] for o in ms["tiny-llama.gguf.Q8_0"]["outputs"]] == [o["sha256"] for o in first]


@pytest.mark.fresh_store
def test_interrupt_leaves_nothing_partial_and_no_container(tmp_path):
    out = tmp_path / "dist"
    client = docker.from_env()
    mine = f"buildmatrix.root={out.resolve()}"  # this build's containers (other builds may share the engine)
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "build", "--out", str(out), "--model", "tiny:qwen2",
                             "--quants", "F16"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 1200
    while time.time() < deadline:
        running = client.containers.list(filters={"label": mine})
        if running:
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    else:
        pytest.fail("no node container started")
    key = running[0].labels["buildmatrix.node"]
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert client.containers.list(all=True, filters={"label": mine}) == []
    assert key not in manifests(out), "an interrupted node is not in the store"
    rerun = invoke("build", "--out", str(out), "--model", "tiny:qwen2", "--quants", "F16", check=0)
    assert key in manifests(out)
    assert "tiny-qwen2.gguf.F16.cpu" in rerun.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--targets", "toaster"], "unknown target 'toaster'"),
    (["--backends", "onnx"], "unknown backend 'onnx'"),
    (["--quants", "Q9_9"], "unknown quant 'Q9_9'"),
    (["--model", "./does-not-exist"], "does not exist"),
    (["--model", "org/../etc"], "no '..'"),
])
def test_bad_input_exits_2_with_one_line(args, fragment, tmp_path):
    proc = invoke("build", "--out", str(tmp_path), *args)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_malformed_matrix_exits_2(tmp_path):
    bad = tmp_path / "matrix.yaml"
    bad.write_text("schema: 1\nmodels: [unclosed\n")
    proc = invoke("build", "--matrix", str(bad), "--out", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "matrix.yaml:" in proc.stderr


def test_unsupported_architecture_exits_2(tmp_path):
    model = tmp_path / "gpt2ish"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    (model / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (model / "tokenizer.json").write_text("{}")
    proc = invoke("build", "--model", str(model), "--out", str(tmp_path / "dist"))
    assert proc.returncode == 2 and "GPT2LMHeadModel is not supported" in proc.stderr, proc.stderr


@pytest.mark.parametrize("arch", ["qwen2"])
def test_other_architectures_convert_and_verify(arch, tmp_path_factory):
    """A second architecture; its Q4_K_M cell also has a perplexity threshold, so that check scores the
    perplexity text too (llama.cpp decodes the prompts and the text in one batch) and the others do not."""
    out = tmp_path_factory.mktemp(f"dist-{arch}")
    matrix = out.parent / f"matrix-{arch}.yaml"
    text = (ROOT / "matrix.yaml").read_text().replace("      Q4_K_M: {top1_min: 0.7,",
                                                       "      Q4_K_M: {top1_min: 0.7, ppl_delta_max: 0.5,")
    assert text != (ROOT / "matrix.yaml").read_text()
    matrix.write_text(text)
    invoke("build", "--matrix", str(matrix), "--model", f"tiny:{arch}", "--quants", "F16,Q8_0,Q4_K_M",
           "--out", str(out), check=0)
    ms = manifests(out)
    f16 = ms[f"tiny-{arch}.gguf.F16"]["verification"]["checks"]
    assert f16["top1"] == 1.0 and f16["rel_l2"] <= 5e-3 and f16["runtime_rel_l2"] <= 5e-3
    assert "ppl_delta" not in f16
    assert ms[f"tiny-{arch}.gguf.Q8_0"]["verification"]["checks"]["top1"] >= 0.98
    q4 = ms[f"tiny-{arch}.gguf.Q4_K_M"]["verification"]
    assert q4["thresholds"]["ppl_delta_max"] == 0.5 and q4["passed"] is True, q4["failures"]
    assert q4["checks"]["ppl_ref"] > 1 and abs(q4["checks"]["ppl_delta"]) <= 0.5
    assert q4["checks"]["positions"] == f16["positions"], "the text adds perplexity, not compared positions"
    for m in ms.values():
        assert_outputs_match_manifest(out, m)
