"""mlc end to end through the real CLI and the real Docker engine (mlc image: apache-tvm from PyPI,
CUDA toolkit wheels, stub libcuda): weights + libraries for cpu/cuda/android/iphone, the cpu
library run with TVM's runtime against transformers, structural checks of the other targets read
here from the files themselves, vulkan listed as built on CI runners, caching, and the other architectures.
The webgpu .wasm (its own toolchain image) is tests/test_mlc_webgpu.py."""

import json
import shutil
import struct
import tarfile

import pytest

from helpers import ROOT, assert_outputs_match_manifest, invoke, manifests, plan_json, readable_by_nodes

pytestmark = pytest.mark.docker

TARGETS = "cpu,cuda,android,iphone,vulkan"  # webgpu: tests/test_mlc_webgpu.py (toolchains)
ARGS = ("--backends", "mlc", "--quants", "q0f32,q4f16_1")


@pytest.fixture(scope="module")
def llama_out(tmp_path_factory, docker_engine):
    out = tmp_path_factory.mktemp("dist-mlc")
    proc = invoke("build", "--model", "tiny:llama", *ARGS, "--targets", TARGETS, "--out", str(out))
    return out, proc


def _file(out, m, suffix):
    (rel,) = [o["path"] for o in m["outputs"] if o["path"].endswith(suffix)]
    return out / ".store" / m["node"]["digest"] / "out" / rel


def test_one_weights_node_per_quant_and_one_lib_per_target(llama_out):
    out, proc = llama_out
    ms = manifests(out)
    for quant in ("q0f32", "q4f16_1"):
        w = ms[f"tiny-llama.mlc.{quant}.weights"]
        assert_outputs_match_manifest(out, w)
        files = {o["path"] for o in w["outputs"]}
        assert {"tensor-cache.json", "mlc-chat-config.json", "params_shard_0.bin", "tokenizer.model"} <= files
        assert w["image"]["ref"].startswith("buildmatrix/mlc:")
        assert w["verification"]["passed"] and w["verification"]["checks"]["quantization"]["max_err_over_bound"] <= 1
        for target in ("cpu", "cuda", "android", "iphone"):
            m = ms[f"tiny-llama.mlc.{quant}.lib.{target}"]
            assert_outputs_match_manifest(out, m)
            assert m["runtime_abi"]["tvm"] == "0.27.0.post1"
            (lib,) = [o["path"] for o in m["outputs"] if not o["path"].endswith(".verification.json")]
            assert lib.startswith(f"tiny-llama-{quant}-ctx512-{target}.")
        assert list(out.glob(f"tiny-llama/*/mlc/tiny-llama-{quant}-MLC/mlc-chat-config.json"))
    assert list(out.glob("tiny-llama/*/mlc/libs/tiny-llama-q4f16_1-ctx512-cpu.so"))


def test_cpu_libraries_match_transformers(llama_out):
    out, _ = llama_out
    ms = manifests(out)
    exact = ms["tiny-llama.mlc.q0f32.lib.cpu"]["verification"]
    assert exact["passed"] and exact["checks"]["max_abs_logit"] <= 1e-3 and exact["checks"]["top1"] == 1.0
    assert exact["checks"]["decode_steps"] >= 8
    q4 = ms["tiny-llama.mlc.q4f16_1.lib.cpu"]["verification"]
    assert q4["passed"] and q4["checks"]["lib_vs_dequantized_max_abs_logit"] <= 1e-2
    assert "top1" in q4["checks"] and "kl" in q4["checks"]  # vs the fp32 original, reported
    figures = json.loads(_file(out, ms["tiny-llama.mlc.q4f16_1.lib.cpu"], ".verification.json").read_text())
    assert figures["passed"] is True and figures["checks"]["top1"] == q4["checks"]["top1"]


def test_libraries_that_cannot_run_here_carry_the_numeric_check_of_their_weights(llama_out):
    out, _ = llama_out
    ms = manifests(out)
    cpu = ms["tiny-llama.mlc.q4f16_1.lib.cpu"]["verification"]
    for target in ("cuda", "android", "iphone"):
        m = ms[f"tiny-llama.mlc.q4f16_1.lib.{target}"]
        ver = m["verification"]
        assert ver["passed"] and ver["verified_by"] == "tiny-llama.mlc.q4f16_1.lib.cpu"
        assert "weights verified numerically by tiny-llama.mlc.q4f16_1.lib.cpu" in ver["not_run"]
        assert ver["checks"]["top1"] == cpu["checks"]["top1"] and ver["checks"]["kl"] == cpu["checks"]["kl"]
        assert ver["thresholds"] == cpu["thresholds"] and ver["checks"]["structural"]
        assert m["parents"]["verified_by"]["key"] == "tiny-llama.mlc.q4f16_1.lib.cpu"


def test_gpu_and_phone_libraries_hold_compiled_code_for_their_arch(llama_out):
    out, _ = llama_out
    ms = manifests(out)
    cuda = _file(out, ms["tiny-llama.mlc.q4f16_1.lib.cuda"], ".so").read_bytes()
    assert struct.pack("<I", 0xBA55ED50) in cuda, "a CUDA fatbin is embedded"
    assert b"__global__" not in cuda, "not CUDA source"

    def members(m):
        with tarfile.open(_file(out, m, ".tar")) as tar:
            infos = tar.getmembers()
            assert all(i.uid == 0 and i.mtime == infos[0].mtime for i in infos)
            return {i.name: tar.extractfile(i).read() for i in infos}

    for name, data in members(ms["tiny-llama.mlc.q4f16_1.lib.android"]).items():
        assert data[:4] == b"\x7fELF" and struct.unpack_from("<H", data, 18)[0] == 183, f"{name}: aarch64 ELF"
    for name, data in members(ms["tiny-llama.mlc.q4f16_1.lib.iphone"]).items():
        assert data[:4] == b"\xcf\xfa\xed\xfe" and struct.unpack_from("<I", data, 4)[0] == 0x0100000C, name


def test_weights_failing_numerically_fail_the_libraries_of_every_target(llama_out, tmp_path):
    """The cpu library is where the weights run; a library for a device we lack is skipped with it."""
    out, _ = llama_out
    text = (ROOT / "matrix.yaml").read_text()
    failing = text.replace("q0f32: {rel_l2_max: 1.0e-4, kl_max: 1.0e-6, top1_min: 1.0}",
                           "q0f32: {rel_l2_max: 1.0e-12, kl_max: 1.0e-6, top1_min: 1.0}")  # no library meets it
    assert failing != text
    (tmp_path / "matrix.yaml").write_text(failing)
    proc = invoke("build", "--matrix", str(tmp_path / "matrix.yaml"), "--model", "tiny:llama", "--backends", "mlc",
                  "--quants", "q0f32", "--targets", "cpu,android", "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for cell in ("tiny-llama.mlc.q0f32.cpu", "tiny-llama.mlc.q0f32.android"):
        row = next(ln for ln in proc.stdout.splitlines() if cell in ln)
        assert " failed " in row, proc.stdout
    reasons = [json.loads(r.read_text()).get("reason") or "" for r in out.glob(".staging/*/result.json")]
    assert any("not <= 1e-12" in r for r in reasons), reasons


def test_vulkan_is_built_on_ci_runners_and_the_rest_builds(llama_out):
    out, proc = llama_out
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for quant in ("q0f32", "q4f16_1"):
        row = next(ln for ln in proc.stdout.splitlines() if f"tiny-llama.mlc.{quant}.vulkan" in ln)
        assert "ci-runner" in row, proc.stdout
    assert "built on CI runners" in proc.stdout
    assert not any(".lib.vulkan" in k for k in manifests(out))


def test_second_run_is_cached_and_a_new_target_builds_only_its_library(llama_out):
    out, _ = llama_out
    plan = plan_json(out, "--model", "tiny:llama", *ARGS, "--targets", "cpu,cuda,android,iphone")
    assert plan["nodes"] and all(n["cached"] for n in plan["nodes"]), "everything built above is a cache hit"
    plan = plan_json(out, "--model", "tiny:llama", *ARGS, "--targets", "cpu,metal")
    to_run = sorted(n["key"] for n in plan["nodes"] if not n["cached"])
    assert [k for k in to_run if ".lib." in k] == ["tiny-llama.mlc.q0f32.lib.metal", "tiny-llama.mlc.q4f16_1.lib.metal"]
    compiles = [k for k in to_run if ".lib." not in k]
    assert len(compiles) == 2 and all(k.endswith(".compile.metal") for k in compiles)


def test_weights_only_variant_reuses_the_library(llama_out, tmp_path):
    """reuse-lib: a model with the same architecture and config but other weights (a fine-tune)
    compiles nothing; its library node copies the compiled library, says so, and is verified
    against the variant's own transformers reference."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    out, _ = llama_out
    ms = manifests(out)
    src = out / ".store" / ms["tiny-llama.model"]["node"]["digest"] / "out"
    variant = tmp_path / "llama-finetune"
    shutil.copytree(src, variant)
    tensors = load_file(variant / "model.safetensors")
    name = next(k for k in sorted(tensors) if "mlp.down_proj" in k)
    tensors[name] = (tensors[name] * np.float32(1.05)).astype(tensors[name].dtype)
    save_file(tensors, variant / "model.safetensors", metadata={"format": "pt"})
    readable_by_nodes(variant)
    args = ("--model", str(variant), "--backends", "mlc", "--quants", "q0f32", "--targets", "cpu", "--out", str(out))
    plan = plan_json(out, *args[:-2])
    to_run = sorted(n["key"] for n in plan["nodes"] if not n["cached"])
    assert not any(".compile." in k for k in to_run), f"the library is compiled again: {to_run}"
    assert "llama-finetune.mlc.q0f32.lib.cpu" in to_run
    invoke("build", *args, check=0)
    m = manifests(out)["llama-finetune.mlc.q0f32.lib.cpu"]
    lib = m["reports"]["library"]
    assert lib["reused"] is True and lib["compiled_for"] == "tiny-llama" and ".compile.cpu" in lib["compiled_by"]
    assert [o["path"] for o in m["outputs"]] == ["llama-finetune-q0f32-ctx512-cpu.so",
                                                 "llama-finetune-q0f32-ctx512-cpu.verification.json"]
    ver = m["verification"]
    assert ver["passed"] and ver["checks"]["max_abs_logit"] <= 1e-3 and ver["checks"]["top1"] == 1.0
    assert manifests(out)["tiny-llama.mlc.q0f32.lib.cpu"]["reports"]["library"]["reused"] is False


def test_a_library_compiled_again_is_bit_identical(llama_out, tmp_path):
    """TVM orders the stores of each shape_func by heap address; compile nodes run with ASLR off
    (builders/executors/fixed_addresses.py), so compiling the same library again gives the same bytes.
    A second store holds everything of the first but the compile node, which is built there again."""
    out, _ = llama_out
    ms = manifests(out)
    [key] = [k for k in ms if k.endswith(".compile.cpu") and ".q4f16_1" in k]
    digest = ms[key]["node"]["digest"]
    again = tmp_path / "again"
    shutil.copytree(out / ".store", again / ".store", ignore=lambda d, names: [digest] if d == str(out / ".store") else [])
    proc = invoke("build", "--model", "tiny:llama", "--backends", "mlc", "--quants", "q4f16_1", "--targets", "cpu",
                  "--out", str(again), check=0)
    assert f"run {key}" in proc.stderr, "the compile node was not built again"
    first, second = ms[key], manifests(again)[key]
    assert second["node"]["digest"] == digest and [o["path"] for o in second["outputs"]] == [o["path"] for o in first["outputs"]]
    for o in first["outputs"]:
        a = (out / ".store" / digest / "out" / o["path"]).read_bytes()
        b = (again / ".store" / digest / "out" / o["path"]).read_bytes()
        assert a == b, f"{o['path']}: compiled twice, {len(a)} and {len(b)} bytes differ"


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_other_architectures_match_transformers(tmp_path_factory, docker_engine, arch):
    out = tmp_path_factory.mktemp(f"dist-mlc-{arch}")
    invoke("build", "--model", f"tiny:{arch}", "--backends", "mlc", "--quants", "q0f32", "--targets", "cpu",
           "--out", str(out), check=0)
    m = manifests(out)[f"tiny-{arch}.mlc.q0f32.lib.cpu"]
    assert m["verification"]["checks"]["max_abs_logit"] <= 1e-3 and m["verification"]["checks"]["top1"] == 1.0
    assert json.loads(_file(out, manifests(out)[f"tiny-{arch}.mlc.q0f32.weights"], "mlc-chat-config.json")
                      .read_text())["model_type"] == arch
