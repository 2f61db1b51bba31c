"""The MLC webgpu .wasm, built in the `webgpu` toolchain image (TVM's web runtime compiled from the wheel's
sources with Debian's emscripten, then linked with the model's wasm objects), its interface read here from
the file itself, and its run: tvmjs in Node on WebGPU (npm `webgpu`/Dawn on Mesa lavapipe), compared with the
reference within the q4f16_1 thresholds. Marked `toolchains`: the webgpu image takes ~20 min to build on 2 cores, so the default
suite leaves it out; `invoke test --toolchains` runs it."""

import pytest

from helpers import invoke, manifests

pytestmark = [pytest.mark.docker, pytest.mark.toolchains]


@pytest.fixture(scope="module")
def webgpu_out(tmp_path_factory, docker_engine):
    out = tmp_path_factory.mktemp("dist-webgpu")
    proc = invoke("build", "--model", "tiny:llama", "--backends", "mlc", "--quants", "q4f16_1", "--targets", "webgpu",
                  "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def _file(out, m, suffix):
    (rel,) = [o["path"] for o in m["outputs"] if o["path"].endswith(suffix)]
    return out / ".store" / m["node"]["digest"] / "out" / rel


def test_webgpu_wasm_has_the_web_runtime_linked_in(webgpu_out):
    from builders.backends.mlc import inspect_lib

    out, _ = webgpu_out
    ms = manifests(out)
    m = ms["tiny-llama.mlc.q4f16_1.lib.webgpu"]
    assert not m.get("deferred") and m["tool_versions"]["emscripten"].startswith("emcc")
    iface = inspect_lib.wasm_interface(_file(out, m, ".wasm").read_bytes())  # read here from the file itself
    # the runtime's C API (only the runtime defines these) and the memory are exported for tvmjs
    assert set(inspect_lib.TVMJS_EXPORTS) <= set(iface["exports"]) and "_initialize" in iface["exports"]
    assert iface["exports"]["memory"] == "memory"
    # the model's calls into the runtime are resolved: nothing TVM-internal is left to import
    assert not [i for i in iface["imports"] if i.startswith("env.TVMFFIEnv") or "SystemLib" in i], iface["imports"]
    structural = m["verification"]["checks"]["structural"]
    assert structural["unresolved_imports"] == [] and structural["webgpu_run"].startswith("ran: tvmjs in Node")
    compiled = ms[m["reports"]["library"]["compiled_by"]]
    assert compiled["image"]["ref"].startswith("buildmatrix/webgpu:")


def test_webgpu_wasm_runs_on_lavapipe_within_the_thresholds(webgpu_out):
    """The cell is verified by its own run: figures from the .wasm on WebGPU, each within its threshold, on the
    positions the cpu check uses (every prompt, 8 decode steps, the text), and equal to the dequantized reference
    within float16 roundoff."""
    out, _ = webgpu_out
    ms = manifests(out)
    ver = ms["tiny-llama.mlc.q4f16_1.lib.webgpu"]["verification"]
    assert ver["passed"] and ver["failures"] == []
    checks, th = ver["checks"], ver["thresholds"]
    assert checks["top1"] >= th["top1_min"] and checks["kl"] <= th["kl_max"]
    assert checks["lib_vs_dequantized_max_abs_logit"] <= th["lib_vs_dequantized_max_abs_logit"]
    assert checks["positions"] >= 100 and checks["decode_steps"] >= 8 and ver["budget"]["text_positions"] == 0
    cpu = ms["tiny-llama.mlc.q4f16_1.lib.cpu"]["verification"]
    assert th["top1_min"] == cpu["thresholds"]["top1_min"] and th["kl_max"] == cpu["thresholds"]["kl_max"]
    assert checks["positions"] == cpu["checks"]["positions"]
    # where it ran: Dawn's adapter on Mesa's software Vulkan (lavapipe), with float16 shaders
    adapter = ver["ran_on"]["adapter"]
    assert adapter["vendor"] == "mesa" and "llvmpipe" in adapter["description"] and "shader-f16" in adapter["features"]
    assert ver["ran_on"]["tools"]["npm_webgpu"] == "0.6.2"
    assert "tiny-llama.mlc.q4f16_1.lib.cpu" in ver["note"]
