"""The MLC webgpu .wasm, built in the `webgpu` toolchain image (TVM's web runtime compiled from the wheel's
sources with Debian's emscripten, then linked with the model's wasm objects), its interface read here from
the file itself. Marked `toolchains`: the webgpu image takes ~20 min to build on 2 cores, so the default
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
    assert structural["unresolved_imports"] == [] and "not run" in structural["webgpu_run"]
    compiled = ms[m["reports"]["library"]["compiled_by"]]
    assert compiled["image"]["ref"].startswith("buildmatrix/webgpu:")
