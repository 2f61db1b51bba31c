"""GGUF per target, end to end through the real CLI and Docker engine: the quant node's file plus llama.cpp
compiled for the target in its own image, verified by running that build here (lavapipe, wine64, qemu-aarch64).
The module shares one output root: the quant node is built once, each runtime cell on first use (so `-k android`
builds only that image); the seed store supplies model, reference, F16."""

import json
from pathlib import Path

import pytest

from helpers import assert_outputs_match_manifest, invoke, manifests

pytestmark = [pytest.mark.docker, pytest.mark.toolchains]

TARGETS = ("vulkan", "vulkan-windows", "android")


@pytest.fixture(scope="module")
def runtime_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist-gguf-runtimes")
    done = {}

    def build(target: str):
        if target not in done:
            done[target] = invoke("build", "--out", str(out), "--model", "tiny:llama", "--backends", "gguf",
                                  "--quants", "Q4_K_M", "--targets", target)
        return out, done[target], manifests(out)

    return build


def _checked(runtime_out, target: str, bundle: str, device: str, binary: str) -> dict:
    out, proc, ms = runtime_out(target)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    quant = ms["tiny-llama.gguf.Q4_K_M"]
    m = ms[f"tiny-llama.gguf.Q4_K_M.{target}"]
    assert_outputs_match_manifest(out, m)
    outputs = {o["path"]: o["sha256"] for o in m["outputs"]}
    (gguf,) = [o for o in quant["outputs"] if o["path"].endswith(".gguf")]
    assert outputs[gguf["path"]] == gguf["sha256"], "the runtime cell ships the quant node's file, not a new one"
    assert binary in outputs and any(p.startswith("runtime/lib/") for p in outputs)
    assert m["tool_versions"]["runtime"]["target"] == bundle
    assert m["runtime_abi"]["llama.cpp"] == quant["tool_versions"]["llama.cpp"]["commit"]
    v = m["verification"]
    assert v["passed"] is True, v
    assert any(d.startswith(device) for d in v["ran_on"]["devices"]), v["ran_on"]
    for fig in ("top1", "kl", "runtime_rel_l2", "runtime_kl"):
        assert fig in v["checks"], fig
    index = json.loads((out / "index.json").read_text())
    assert any(a["cell"] == f"tiny-llama.gguf.Q4_K_M.{target}" for a in index["artifacts"])
    return m


def test_vulkan_cell_runs_ggml_vulkan_on_lavapipe(runtime_out):
    m = _checked(runtime_out, "vulkan", "vulkan", "Vulkan", "runtime/bin/bm-logits")
    assert any("llvmpipe" in d for d in m["verification"]["ran_on"]["devices"])
    assert any(Path(p).name.startswith("libggml-vulkan") for p in (o["path"] for o in m["outputs"]))


def test_vulkan_windows_cell_runs_the_windows_build_under_wine(runtime_out):
    m = _checked(runtime_out, "vulkan-windows", "windows-x86_64", "CPU", "runtime/bin/bm-logits.exe")
    assert any(o["path"].endswith("llama.dll") for o in m["outputs"])
    assert any("Vulkan" in e for e in m["reports"]["runs_elsewhere"]), "the Vulkan .dll's run is named as left"


def test_android_cell_runs_the_arm64_build_under_qemu(runtime_out):
    m = _checked(runtime_out, "android", "android-arm64", "CPU", "runtime/bin/bm-logits")
    assert "aarch64" in m["runtime_abi"]["toolchain"] or "NDK" in m["runtime_abi"]["toolchain"]
    elf = Path(runtime_out("android")[0]) / ".store" / m["node"]["digest"] / "out" / "runtime" / "bin" / "bm-logits"
    assert elf.read_bytes()[18] == 0xB7, "an aarch64 ELF (e_machine EM_AARCH64)"
