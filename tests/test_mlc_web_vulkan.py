"""MLC webgpu / vulkan without Docker: the mlc-vulkan recipe renders for each kind of TVM source (and a local
tarball is part of its tag), vulkan cells are planned `ci-runner`, and the .wasm check reads real wasm bytes
(a module assembled here) against what tvmjs needs."""

from __future__ import annotations

import copy
import json
import struct

import pytest

from builders import images
from builders.backends.mlc import inspect_lib
from builders.errors import MatrixError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _vulkan_pins(pins, source):
    p = copy.deepcopy(pins)
    p["mlc-vulkan"] = {**p["mlc-vulkan"], "tvm_source": source}
    return p


def test_webgpu_recipe_pins_what_runs_the_wasm(pins):
    """Node, npm and lavapipe by exact Debian version; the npm packages by package-lock.json (npm ci), part of
    the image's tag."""
    text = images.render("webgpu", pins)
    w = pins["webgpu"]
    for pkg, key in (("nodejs", "nodejs"), ("npm", "npm"), ("libvulkan1", "libvulkan1"),
                     ("mesa-vulkan-drivers", "mesa_vulkan_drivers")):
        assert f"{pkg}={{{{ pins.{key} }}}}" not in text and f"{pkg}={w[key]}" in text
    assert "npm ci --ignore-scripts" in text and "build-tvmjs.sh /opt/webgpu-node" in text
    files = images.context_files("webgpu", pins)
    lock = json.loads(files["package-lock.json"].read_text())
    for name in ("node_modules/webgpu", "node_modules/esbuild"):
        assert lock["packages"][name]["integrity"].startswith("sha512-")
    assert lock["packages"]["node_modules/webgpu"]["version"] == "0.6.2"


def test_mlc_vulkan_recipe_renders_a_pinned_git_source(pins):
    text = images.render("mlc-vulkan", _vulkan_pins(pins, {"git": "https://github.com/apache/tvm", "commit": COMMIT}))
    assert f'git checkout --detach "{COMMIT}"' in text and f'test "$(git rev-parse HEAD)" = "{COMMIT}"' in text
    assert "-DUSE_VULKAN=ON" in text and "mingw-w64" in text and "llvm-config-15" in text
    assert "COPY tvm-source.tar.gz" not in text
    assert text.startswith("# MLC Vulkan") and f"FROM {images.image_tag('base', pins)}" in text


def test_mlc_vulkan_recipe_with_a_local_tarball_checks_it_and_tags_it(pins, tmp_path):
    tarball = tmp_path / "tvm-src.tar.gz"
    tarball.write_bytes(b"source v1")
    sha = "c" * 64
    p = _vulkan_pins(pins, {"tarball": str(tarball), "sha256": sha})
    text = images.render("mlc-vulkan", p)
    assert "COPY tvm-source.tar.gz /opt/src/tvm-source.tar.gz" in text and f"echo \"{sha}  " in text
    assert images.context_files("mlc-vulkan", p)["tvm-source.tar.gz"] == tarball.resolve()
    before = images.image_tag("mlc-vulkan", p)
    tarball.write_bytes(b"source v2")  # another source, another image
    assert images.image_tag("mlc-vulkan", p) != before


def test_mlc_vulkan_recipe_without_a_source_refuses_to_build(pins):
    text = images.render("mlc-vulkan", _vulkan_pins(pins, None))
    assert "tvm_source is not set" in text and "exit 2" in text


def test_vulkan_cells_are_listed_built_on_ci_runners(tmp_path, monkeypatch):
    from builders import matrix, plan
    from builders.store import Store

    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    m = matrix.load(images.DOCKER_DIR.parent / "matrix.yaml")
    sel = matrix.select(m, model="tiny:llama", backends_="mlc", quants="q4f16_1", targets="vulkan,vulkan-windows")
    p = plan.make_plan(m, sel, Store(tmp_path / "out"))
    assert [(c.cell.target, c.status) for c in p.cells] == [("vulkan", "ci-runner"), ("vulkan-windows", "ci-runner")]
    assert all(c.reason.startswith("built on CI runners") and not c.nodes for c in p.cells)


def test_a_bad_tvm_source_is_a_matrix_error(pins):
    with pytest.raises(MatrixError, match="tvm_source.commit"):
        images.context_files("mlc-vulkan", _vulkan_pins(pins, {"git": "https://x", "commit": "main"}))


# ---- the .wasm check --------------------------------------------------------------------------------

def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _name(s: str) -> bytes:
    return _leb(len(s)) + s.encode()


def _section(sid: int, items: list[bytes]) -> bytes:
    body = _leb(len(items)) + b"".join(items)
    return bytes([sid]) + _leb(len(body)) + body


def _module(imports: list[tuple[str, str]], exports: list[str]) -> bytes:
    types = _section(1, [b"\x60\x00\x00"])  # one () -> () type
    imps = _section(2, [_name(m) + _name(f) + b"\x00" + _leb(0) for m, f in imports])
    funcs = _section(3, [_leb(0)])
    mem = _section(5, [b"\x00" + _leb(1)])
    exps = _section(7, [_name(e) + (b"\x02" if e == "memory" else b"\x00") + _leb(0 if e == "memory" else len(imports))
                        for e in exports])
    code = _section(10, [_leb(2) + b"\x00\x0b"])
    return b"\x00asm" + struct.pack("<I", 1) + types + imps + funcs + mem + exps + code


GLUE = 'var asmLibraryArg = {\n "fd_write": _fd_write,\n "emscripten_memcpy_big": _emscripten_memcpy_big\n};'


def test_wasm_check_passes_a_module_tvmjs_can_load(tmp_path):
    f = tmp_path / "m.wasm"
    f.write_bytes(_module([("wasi_snapshot_preview1", "fd_write"), ("env", "TVMFFIWasmSafeCall")],
                          [*inspect_lib.TVMJS_EXPORTS, "_initialize"]))
    facts, failures = inspect_lib.check_wasm(f, inspect_lib.glue_imports(GLUE))
    assert failures == [] and facts["imports"] == ["env.TVMFFIWasmSafeCall", "wasi_snapshot_preview1.fd_write"]


def test_wasm_check_fails_closed(tmp_path):
    f = tmp_path / "m.wasm"
    f.write_bytes(_module([("env", "TVMFFIEnvModLookupFromImports")], ["memory", "TVMWasmAllocSpace"]))
    _, failures = inspect_lib.check_wasm(f, inspect_lib.glue_imports(GLUE))
    text = "; ".join(failures)
    assert "lacks exports tvmjs calls: TVMWasmFreeSpace" in text and "exports no initializer" in text
    assert "imports what tvmjs does not provide: env.TVMFFIEnvModLookupFromImports" in text
    _, failures = inspect_lib.check_wasm(f, None)  # no record of the glue: unchecked is a failure
    assert any("imports are unchecked" in x for x in failures)
    (tmp_path / "o.wasm").write_bytes(b"\x7fELF....")
    assert "not a readable wasm module" in inspect_lib.check_wasm(tmp_path / "o.wasm", [])[1][0]
