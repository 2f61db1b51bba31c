"""Plan shape of GGUF cells whose target has a runtime image (builders/backends/gguf_runtime.py): the quant node
is shared with the cpu cell, the cell's artifact is a gguf-runtime node in that target's image."""

from pathlib import Path

from builders import images, matrix
from builders.backends import gguf_runtime
from builders.plan import make_plan
from builders.store import Store
from helpers import ROOT


def _plan(tmp_path, targets, quants="Q8_0,Q4_K_M"):
    m = matrix.load(ROOT / "matrix.yaml")
    return m, make_plan(m, matrix.select(m, backends_="gguf", quants=quants, targets=targets), Store(tmp_path)).to_json()


def test_runtime_targets_get_a_runtime_node_on_the_shared_quant_node(tmp_path):
    m, p = _plan(tmp_path, "cpu,vulkan,vulkan-windows,android,cuda")
    nodes = {n["key"]: n for n in p["nodes"]}
    cells = {c["id"]: c for c in p["cells"]}
    for quant in ("Q8_0", "Q4_K_M"):
        quant_node = f"tiny-llama.gguf.{quant}"
        assert cells[f"tiny-llama.gguf.{quant}.cpu"]["artifact_node"] == quant_node
        assert cells[f"tiny-llama.gguf.{quant}.cuda"]["artifact_node"] == quant_node  # no runtime image yet
        for target, image in (("vulkan", "gguf-vulkan"), ("vulkan-windows", "gguf-windows"), ("android", "gguf-arm64")):
            key = f"tiny-llama.gguf.{quant}.{target}"
            assert cells[key]["artifact_node"] == key
            n = nodes[key]
            assert n["kind"] == "gguf-runtime" and n["image"] == images.image_tag(image, m.images)
            assert n["parents"] == {"gguf": nodes[quant_node]["digest"],  # parents by digest
                                    "reference": nodes["tiny-llama.reference"]["digest"]}
            assert n["params"]["target"] == target and n["params"]["thresholds"] == m.thresholds_for("gguf", quant)
    # one quantization per quant, whatever the targets: the runtime nodes reuse it
    assert sum(1 for n in p["nodes"] if n["kind"] in ("gguf-convert", "gguf-quantize")) == 3  # F16, Q8_0, Q4_K_M


def test_runtime_images_are_in_the_matrix_and_render():
    m = matrix.load(ROOT / "matrix.yaml")
    for target, rt in gguf_runtime.RUNTIMES.items():
        text = images.render(rt.image, m.images)
        assert "build-runtime.sh" in text and f"llama_cpp_python-{m.images[rt.image]['llama_cpp_python']}" in text
        assert m.images[rt.image]["llama_cpp_python"] == m.images["gguf"]["llama_cpp_python"], target
        assert {"bm-logits.cpp", "CMakeLists.txt", "build-runtime.sh", "llama-cpp-info.py"} <= set(
            images.context_files(rt.image))


def test_runtime_node_digest_moves_with_its_image_not_the_quant_node(tmp_path):
    _, p = _plan(tmp_path, "cpu,vulkan", quants="Q8_0")
    nodes = {n["key"]: n for n in p["nodes"]}
    assert nodes["tiny-llama.gguf.Q8_0.vulkan"]["digest"] != nodes["tiny-llama.gguf.Q8_0"]["digest"]
    assert nodes["tiny-llama.gguf.Q8_0.vulkan"]["publish"] == "gguf/vulkan"


def test_binary_kind_refuses_a_bundle_for_another_machine(tmp_path):
    import sys

    from builders.backends.gguf_runtime import _binary_kind

    assert _binary_kind(Path(sys.executable).resolve()) == "elf-x86_64"  # this build host's python
    aarch64 = tmp_path / "a"
    aarch64.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 11 + (0xB7).to_bytes(2, "little") + b"\0" * 44)
    pe = tmp_path / "b.exe"
    pe.write_bytes(b"MZ" + b"\0" * 0x3A + (0x80).to_bytes(4, "little") + b"\0" * 0x40 + b"PE\0\0"
                   + (0x8664).to_bytes(2, "little") + b"\0" * 32)
    text = tmp_path / "c"
    text.write_text("#!/bin/sh\n")
    assert [_binary_kind(p) for p in (aarch64, pe, text)] == ["elf-aarch64", "pe-x86_64", "unknown"]
    assert {rt.binary for rt in gguf_runtime.RUNTIMES.values()} == {"elf-x86_64", "pe-x86_64", "elf-aarch64"}


def test_editing_the_runtime_code_re_digests_only_runtime_nodes(tmp_path, monkeypatch):
    """Code is hashed per node kind: gguf_runtime.py is part of the gguf-runtime nodes' digest only, so editing
    it never re-builds (or re-verifies) the GGUF files; editing gguf.py moves every gguf node."""
    import shutil

    from builders import plan as plan_mod

    def digests(pkg):
        monkeypatch.setattr(plan_mod, "PKG", pkg)
        plan_mod._code_cache.clear()
        return {n["key"]: n["digest"] for n in _plan(tmp_path / "out", "cpu,vulkan", quants="Q4_K_M")[1]["nodes"]}

    pkg = tmp_path / "builders"
    shutil.copytree(plan_mod.PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    base = digests(pkg)
    with open(pkg / "backends" / "gguf_runtime.py", "a") as f:
        f.write("\n# an edit\n")
    moved = {k for k, d in digests(pkg).items() if d != base[k]}
    assert moved == {"tiny-llama.gguf.Q4_K_M.vulkan"}
    with open(pkg / "backends" / "gguf.py", "a") as f:
        f.write("\n# an edit\n")
    moved = {k for k, d in digests(pkg).items() if d != base[k]}
    assert moved == {"tiny-llama.gguf.F16", "tiny-llama.gguf.Q4_K_M", "tiny-llama.gguf.Q4_K_M.vulkan"}
    plan_mod._code_cache.clear()
