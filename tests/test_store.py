"""Store: staging -> atomic promotion, manifests, checked cache hits, published copies, re-promotion,
imports (checked and copied), damaged entries moved aside, one-line errors. Fast: no docker."""

import json
import os
import stat

import pytest

from builders.errors import StoreError
from builders.store import Store, list_outputs


def stage(store, digest, files):
    d = store.staging(digest)
    for rel, text in files.items():
        (d / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / "out" / rel).write_text(text)
    return d


def built(store, digest, files, **extra):
    d = stage(store, digest, files)
    store.promote(digest, {"outputs": list_outputs(d / "out"), **extra})
    return store.out_dir(digest)


def test_promote_moves_outputs_and_writes_manifest_last(tmp_path):
    store = Store(tmp_path)
    stage(store, "abc", {"a.gguf": "A", "sub/b.json": "B"})
    assert store.lookup("abc").status == "absent"
    outputs = list_outputs(tmp_path / ".staging" / "abc" / "out")
    store.promote("abc", {"outputs": outputs})
    assert store.lookup("abc").status == "cached"
    assert (store.out_dir("abc") / "sub" / "b.json").read_text() == "B"
    assert json.loads((store.node_dir("abc") / "manifest.json").read_text())["outputs"] == outputs
    assert not list((tmp_path / ".store").glob(".incoming-*"))


def test_store_files_are_read_only(tmp_path):
    out = built(Store(tmp_path), "ro", {"a.gguf": "A"})
    assert stat.S_IMODE((out / "a.gguf").stat().st_mode) == 0o444
    assert stat.S_IMODE((out.parent / "manifest.json").stat().st_mode) == 0o444


def test_promote_refuses_an_empty_output_list(tmp_path):
    store = Store(tmp_path)
    stage(store, "e", {})
    with pytest.raises(ValueError, match="no outputs"):
        store.promote("e", {"outputs": []})
    assert not store.node_dir("e").exists()


@pytest.mark.parametrize("damage, problem", [
    (lambda out: (out / "m.gguf").unlink(), "out/m.gguf is missing"),
    (lambda out: (out.parent / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda out: (out / "extra.bin").write_text("x"), "out/extra.bin is not listed in manifest.json"),
    (lambda out: _rewrite(out / "m.gguf", b"GGUF-flipped"), "out/m.gguf has 12 bytes, manifest.json says 11"),
    (lambda out: _rewrite(out / "m.gguf", b"GGUF-Xeight"), "out/m.gguf sha256"),
    (lambda out: _rewrite(out.parent / "manifest.json", b'{"outputs": []}'), "manifest.json lists no outputs"),
])
def test_a_damaged_entry_is_never_cached(tmp_path, monkeypatch, damage, problem):
    from builders import hashcache

    monkeypatch.setattr(hashcache, "RACY_NS", 0)  # hashes of the files just written are remembered
    store = Store(tmp_path)
    out = built(store, "d", {"m.gguf": "GGUF-weight"})
    assert store.lookup("d").status == "cached"
    store.save_hashes()  # the hash is remembered: a same-size edit must still be caught
    damage(out)
    found = Store(tmp_path).lookup("d")
    assert found.status == "damaged" and found.problem.startswith(problem), found


def _rewrite(path, data: bytes):
    """Edit a read-only file in place, keeping its mtime (what `cp -p`/`touch -r` would leave)."""
    st = path.stat()
    os.chmod(path, 0o644)
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_set_aside_moves_the_entry_with_its_problem(tmp_path):
    store = Store(tmp_path)
    built(store, "d", {"m.gguf": "x"})
    where = store.set_aside("d", "out/m.gguf sha256 differs")
    assert not store.node_dir("d").exists() and (where / "out" / "m.gguf").read_text() == "x"
    assert (where / "problem.txt").read_text() == "out/m.gguf sha256 differs\n"
    built(store, "d", {"m.gguf": "y"})
    assert store.set_aside("d", "again").name == "d.2"


def test_publish_copies_and_repairs(tmp_path):
    store = Store(tmp_path)
    built(store, "d1", {"m-F16.gguf": "one"})
    (copy,) = store.publish("d1", "m/abc1234/gguf")
    src = store.out_dir("d1") / "m-F16.gguf"
    assert copy.read_text() == "one" and copy.stat().st_ino != src.stat().st_ino
    os.chmod(copy, 0o644)
    copy.write_text("EVIL")  # editing the published file never reaches the store
    assert src.read_text() == "one" and store.lookup("d1").status == "cached"
    store.publish("d1", "m/abc1234/gguf")
    assert copy.read_text() == "one", "a published file that differs from its manifest is copied again"
    built(store, "d2", {"m-F16.gguf": "two"})
    store.publish("d2", "m/abc1234/gguf")
    assert copy.read_text() == "two" and src.read_text() == "one"


def test_publish_replaces_a_hardlink_into_the_store(tmp_path):
    store = Store(tmp_path)
    built(store, "d", {"f.gguf": "v"})
    dest = tmp_path / "m" / "r" / "gguf" / "f.gguf"
    dest.parent.mkdir(parents=True)
    os.link(store.out_dir("d") / "f.gguf", dest)  # what older builds published
    store.publish("d", "m/r/gguf")
    assert dest.stat().st_ino != (store.out_dir("d") / "f.gguf").stat().st_ino


def test_repromotion_after_step_rerun_swaps_atomically(tmp_path):
    store = Store(tmp_path)
    built(store, "x", {"f": "v1"}, v=1)
    d = store.staging("x", reuse_store=True)
    assert (d / "out" / "f").read_text() == "v1", "earlier outputs are available to the rerun steps"
    (d / "out" / "f").write_text("v2")  # the copy back is writable
    store.promote("x", {"outputs": list_outputs(d / "out"), "v": 2})
    assert store.manifest("x")["v"] == 2 and (store.out_dir("x") / "f").read_text() == "v2"
    assert not list((tmp_path / ".store").glob(".old-*"))


def test_list_outputs_has_size_and_sha256(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"abc")
    (o,) = list_outputs(tmp_path)
    assert o == {"path": "x.bin", "size": 3,
                 "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}


def test_cache_from_import_is_checked_and_copied(tmp_path):
    other = Store(tmp_path / "other")
    built(other, "dd", {"w.bin": "weights"}, k="v")
    mine = Store(tmp_path / "mine", cache_from=[tmp_path / "other"])
    assert mine.lookup("zz").status == "absent"
    found = mine.lookup("dd")
    assert (found.status, found.source) == ("import", (tmp_path / "other").resolve())
    assert not (tmp_path / "mine" / ".store").exists(), "a lookup writes nothing"
    source, refused = mine.import_node("dd")
    assert source == (tmp_path / "other").resolve() and refused == []
    assert mine.lookup("dd").status == "cached" and mine.manifest("dd")["k"] == "v"
    assert (mine.out_dir("dd") / "w.bin").stat().st_ino != (other.out_dir("dd") / "w.bin").stat().st_ino


def test_cache_from_import_of_a_replaced_file_is_refused(tmp_path):
    other = Store(tmp_path / "other")
    out = built(other, "dd", {"w.bin": "weights-good"})
    _rewrite(out / "w.bin", b"EVIL PAYLOAD")  # same size, same mtime
    mine = Store(tmp_path / "mine", cache_from=[tmp_path / "other"])
    source, refused = mine.import_node("dd")
    assert source is None and len(refused) == 1 and "out/w.bin sha256" in refused[0]
    assert mine.lookup("dd").status == "import" and not mine.node_dir("dd").exists()
    assert not list((tmp_path / "mine" / ".store").glob(".incoming-*"))


def test_store_oserror_is_a_one_line_store_error(tmp_path):
    store = Store(tmp_path / "root")
    built(store, "d", {"f": "v"})
    (tmp_path / "root" / "m").write_text("a file where a directory must go")
    with pytest.raises(StoreError, match=r"^.*root/m.*: cannot publish \(.*\); free disk space or fix the "
                                         r"permissions under .*, then rerun$"):
        store.publish("d", "m/r/gguf")
