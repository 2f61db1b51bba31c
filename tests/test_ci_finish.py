"""The macOS finisher runs exactly what a handed-off manifest lists as deferred, and fails closed: a node
that was not handed off, a deferred step nobody can run, a link that cannot happen here. These run on
Linux with a real Store and real plans; the macOS steps themselves (Core ML compile, clang link) only
run on the workflow's macOS job."""

import json
import struct

import pytest

from builders.ci import finish
from builders.cli import _plan
from builders.store import list_outputs


def _handed_off(tmp_path, backends, targets, deferred, files):
    """A plan, and a store holding the cell's artifact node with these outputs and deferred steps."""
    m, store, p = _plan("matrix.yaml", str(tmp_path / "dist"), None, backends, None, targets, None, "docker")
    pn = p.nodes[p.cells[0].nodes[-1]]
    stage = store.staging(pn.digest)
    for name, data in files.items():
        (stage / "out" / name).write_bytes(data)
    store.promote(pn.digest, {"node": {"key": pn.key}, "deferred": deferred, "outputs": list_outputs(stage / "out")})
    return store, p, p.cells[0].cell.id


def test_nothing_deferred_is_recorded_with_output_hashes(tmp_path):
    store, p, cell = _handed_off(tmp_path, "mlc", "iphone", [], {"lib.tar": b"objects"})
    rec = finish.finish_cell(store, p, cell, tmp_path / "dist")
    assert rec["status"] == "ok" and rec["ran"] == []
    saved = json.loads((tmp_path / "dist" / "finished" / f"{cell}.json").read_text())
    assert saved["outputs"] == [{"path": "lib.tar", "size": 7, "sha256": saved["outputs"][0]["sha256"]}]
    assert (tmp_path / "dist" / "finished" / cell / "lib.tar").read_bytes() == b"objects"


def test_a_deferred_step_without_a_finisher_fails(tmp_path):
    store, p, cell = _handed_off(tmp_path, "mlc", "metal", [{"step": "sign", "reason": "x"}], {"a.tar": b"x"})
    rec = finish.finish_cell(store, p, cell, tmp_path / "dist")
    assert rec["status"] == "failed" and "'sign' of the mlc backend has no macOS finisher" in rec["reason"]
    assert finish.run(store, p, [cell], tmp_path / "dist", log=lambda *_: None) == 1


def test_a_node_that_was_not_handed_off_fails(tmp_path):
    _, _, p = _plan("matrix.yaml", str(tmp_path / "dist"), None, "coreml", None, "ane", None, "docker")
    from builders.store import Store

    rec = finish.finish_cell(Store(tmp_path / "empty", []), p, p.cells[0].cell.id, tmp_path / "out")
    assert rec["status"] == "failed" and "was not handed off" in rec["reason"]


@pytest.mark.skipif(__import__("shutil").which("xcrun") is not None, reason="macOS: the link really runs")
def test_the_metal_link_fails_closed_off_macos(tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("lib0.o")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"\xcf\xfa\xed\xfe"))
    store, p, cell = _handed_off(tmp_path, "mlc", "metal", [{"step": "link", "reason": "macOS"}],
                                 {"tiny-llama-q0f32-metal.tar": buf.getvalue()})
    rec = finish.finish_cell(store, p, cell, tmp_path / "dist")
    assert rec["status"] == "failed" and "the finisher runs on macOS" in rec["reason"]
    assert not list((tmp_path / "dist" / "finished" / cell).glob("*.dylib"))


def test_dylib_check_reads_the_mach_o_header(tmp_path):
    dylib = tmp_path / "a.dylib"
    dylib.write_bytes(struct.pack("<IiiI", 0xFEEDFACF, 0x0100000C, 0, 6) + bytes(16))  # arm64, MH_DYLIB
    finish.dylib_check(dylib)
    bundle = tmp_path / "b.dylib"
    bundle.write_bytes(struct.pack("<IiiI", 0xFEEDFACF, 0x0100000C, 0, 8) + bytes(16))  # MH_BUNDLE
    elf = tmp_path / "c.dylib"
    elf.write_bytes(b"\x7fELF" + bytes(28))
    for bad in (bundle, elf):
        with pytest.raises(finish.NodeFailed, match="not a 64-bit Mach-O dylib"):
            finish.dylib_check(bad)


def test_a_finisher_step_sees_the_typed_node_spec(tmp_path, monkeypatch):
    """The finisher hands its steps the contract's NodeSpec (builders/contract.py), not an ad-hoc dict: a
    handed-off parent appears under parents and inputs, one that was not handed off appears in neither."""
    from builders.contract import NodeSpec

    store, p, cell = _handed_off(tmp_path, "mlc", "metal", [{"step": "look", "reason": "x"}], {"a.tar": b"x"})
    pn = p.nodes[p.cells[0].nodes[-1]]
    weights = p.nodes[pn.parents["weights"]]
    stage = store.staging(weights.digest)
    (stage / "out" / "w.bin").write_bytes(b"w")
    store.promote(weights.digest, {"node": {"key": weights.key}, "model": {"name": "tiny-llama"},
                                   "outputs": list_outputs(stage / "out")})
    seen = {}
    monkeypatch.setitem(finish.FINISHERS, ("mlc", "look"), lambda ctx: seen.setdefault("spec", ctx.spec) and {})
    rec = finish.finish_cell(store, p, cell, tmp_path / "dist")
    assert rec["status"] == "ok", rec
    spec = NodeSpec.from_json(seen["spec"])
    assert (spec.key, spec.digest, spec.params) == (pn.node.key, pn.digest, pn.node.params)
    assert spec.model.name == "tiny-llama" and spec.out == str(tmp_path / "dist" / "finished" / cell)
    assert spec.parents["weights"].digest == weights.digest and spec.parents["weights"].built_for == "tiny-llama"
    assert spec.inputs["weights"] == str(store.out_dir(weights.digest))
    assert "compiled" not in spec.parents and "compiled" not in spec.inputs  # not handed off
