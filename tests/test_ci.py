"""The generated GitHub Actions workflow routes cells to Linux container jobs or macOS runner jobs."""

import yaml

from helpers import ROOT, invoke


def test_workflow_routes_macos_targets_to_macos_runners(tmp_path):
    path = tmp_path / "wf.yml"
    invoke("ci", "--backends", "gguf", "--quants", "F16", "--targets", "cpu,metal", "--path", str(path), check=0)
    wf = yaml.safe_load(path.read_text())
    jobs = wf["jobs"]
    assert jobs["linux"]["strategy"]["matrix"]["cell"] == ["tiny-llama.gguf.F16.cpu"]
    assert jobs["macos"]["strategy"]["matrix"]["cell"] == ["tiny-llama.gguf.F16.metal"]
    assert jobs["macos"]["runs-on"].startswith("macos")
    mac_run = " ".join(s.get("run", "") for s in jobs["macos"]["steps"])
    assert "--executor native" in mac_run and "--targets cpu,metal" in mac_run
    linux_run = " ".join(s.get("run", "") for s in jobs["linux"]["steps"])
    assert "scripts/setup.sh" in linux_run and "invoke build" in linux_run
    assert jobs["release"]["needs"] == ["linux", "macos"]


def test_workflow_without_macos_cells_has_no_macos_job(tmp_path):
    path = tmp_path / "wf.yml"
    invoke("ci", "--backends", "gguf", "--path", str(path), check=0)
    wf = yaml.safe_load(path.read_text())
    assert "macos" not in wf["jobs"] and wf["jobs"]["release"]["needs"] == ["linux"]
    assert (ROOT / "ci" / "github-actions.yml.j2").is_file()


def test_coreml_ane_cell_runs_on_a_macos_runner_with_the_native_executor(tmp_path):
    """Step 6 (.mlmodelc) and the Core ML smoke test need macOS: the ane cell goes to the macOS job,
    whose build runs the same node natively there; the release publishes each cell's tree."""
    path = tmp_path / "wf.yml"
    invoke("ci", "--backends", "coreml", "--targets", "ane", "--path", str(path), check=0)
    wf = yaml.safe_load(path.read_text())
    assert "linux" not in wf["jobs"]
    mac = wf["jobs"]["macos"]
    assert mac["strategy"]["matrix"]["cell"] == ["tiny-llama.coreml.fp16.ane"]
    run = " ".join(s.get("run", "") for s in mac["steps"])
    assert "requirements-macos.txt" in run and "--executor native" in run
    release = " ".join(s.get("run", "") for s in wf["jobs"]["release"]["steps"])
    assert "dist-*" in release and "tar --sort=name" in release
