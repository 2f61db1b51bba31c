"""Store: staging -> atomic promotion, manifests, human-facing hardlinks, re-promotion."""

import json

from builders.store import Store, list_outputs


def stage(store, digest, files):
    d = store.staging(digest)
    for rel, text in files.items():
        (d / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / "out" / rel).write_text(text)
    return d


def test_promote_moves_outputs_and_writes_manifest_last(tmp_path):
    store = Store(tmp_path)
    stage(store, "abc", {"a.gguf": "A", "sub/b.json": "B"})
    assert not store.has("abc")
    outputs = list_outputs(tmp_path / ".staging" / "abc" / "out")
    store.promote("abc", {"outputs": outputs})
    assert store.has("abc")
    assert (store.out_dir("abc") / "sub" / "b.json").read_text() == "B"
    assert json.loads((store.node_dir("abc") / "manifest.json").read_text())["outputs"] == outputs
    assert not list((tmp_path / ".store").glob(".incoming-*"))


def test_publish_hardlinks_and_replaces(tmp_path):
    store = Store(tmp_path)
    stage(store, "d1", {"m-F16.gguf": "one"})
    store.promote("d1", {"outputs": []})
    (link,) = store.publish("d1", "m/abc1234/gguf")
    assert link.read_text() == "one" and link.stat().st_ino == (store.out_dir("d1") / "m-F16.gguf").stat().st_ino
    stage(store, "d2", {"m-F16.gguf": "two"})
    store.promote("d2", {"outputs": []})
    store.publish("d2", "m/abc1234/gguf")
    assert link.read_text() == "two"
    assert (store.out_dir("d1") / "m-F16.gguf").read_text() == "one", "the store entry itself is untouched"


def test_repromotion_after_step_rerun_swaps_atomically(tmp_path):
    store = Store(tmp_path)
    stage(store, "x", {"f": "v1"})
    store.promote("x", {"outputs": [], "v": 1})
    d = store.staging("x", reuse_store=True)
    assert (d / "out" / "f").read_text() == "v1", "earlier outputs are available to the rerun steps"
    (d / "out" / "f").write_text("v2")
    store.promote("x", {"outputs": [], "v": 2})
    assert store.manifest("x")["v"] == 2 and (store.out_dir("x") / "f").read_text() == "v2"
    assert not list((tmp_path / ".store").glob(".old-*"))


def test_list_outputs_has_size_and_sha256(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"abc")
    (o,) = list_outputs(tmp_path)
    assert o == {"path": "x.bin", "size": 3,
                 "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}


def test_cache_from_imports_a_promoted_node_by_digest(tmp_path):
    other = Store(tmp_path / "other")
    stage(other, "dd", {"w.bin": "weights"})
    other.promote("dd", {"outputs": [], "k": "v"})
    mine = Store(tmp_path / "mine", cache_from=[tmp_path / "other"])
    assert not mine.has("zz")
    assert mine.has("dd") and mine.manifest("dd") == {"outputs": [], "k": "v"}
    assert (mine.out_dir("dd") / "w.bin").stat().st_ino == (other.out_dir("dd") / "w.bin").stat().st_ino
