"""The persistent hash cache: reused only while (size, mtime_ns, inode, ctime_ns) are unchanged, never for
a racy (just written) file, and an edit that keeps size and mtime is still seen. Fast: no docker."""

import hashlib
import os
import time

from builders import hashcache
from builders.hashcache import HashCache


def settled(path, data: bytes):
    """Write data and make the file look older than the racy window (mtime only: ctime stays now)."""
    path.write_bytes(data)
    old = time.time_ns() - 10 * hashcache.RACY_NS
    os.utime(path, ns=(old, old))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_settled_file_is_read_once_across_sessions(tmp_path, monkeypatch):
    monkeypatch.setattr(hashcache, "RACY_NS", 0)  # ctime is "now" in a test; a zero window makes it settled
    f = tmp_path / "w.bin"
    settled(f, b"weights")
    c = HashCache(tmp_path / "cache.json")
    assert c.sha256(f) == sha(b"weights") and c.hashed_bytes == 7
    c.save()
    c2 = HashCache(tmp_path / "cache.json")
    assert c2.sha256(f) == sha(b"weights") and c2.hashed_bytes == 0, "the second session reads nothing"


def test_an_edit_keeping_size_and_mtime_is_seen(tmp_path, monkeypatch):
    monkeypatch.setattr(hashcache, "RACY_NS", 0)
    f = tmp_path / "model.safetensors"
    settled(f, b"AAAA")
    c = HashCache(tmp_path / "cache.json")
    assert c.sha256(f) == sha(b"AAAA")
    st = f.stat()
    time.sleep(0.01)
    f.write_bytes(b"BBBB")  # same size ...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... same mtime (cp -p / touch -r); ctime moves
    assert c.sha256(f) == sha(b"BBBB")


def test_a_replaced_file_with_equal_stat_fields_but_new_inode_is_seen(tmp_path, monkeypatch):
    monkeypatch.setattr(hashcache, "RACY_NS", 0)
    f = tmp_path / "a.gguf"
    settled(f, b"1234")
    c = HashCache(tmp_path / "cache.json")
    c.sha256(f)
    new = tmp_path / "new"
    new.write_bytes(b"5678")
    os.replace(new, f)
    assert c.sha256(f) == sha(b"5678")


def test_a_racy_hash_is_used_but_not_remembered(tmp_path):
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"just written")  # mtime/ctime within the racy window
    c = HashCache(tmp_path / "cache.json")
    assert c.sha256(f) == sha(b"just written")
    assert os.path.abspath(f) not in c.data
    c.sha256(f)
    assert c.hashed_bytes == 2 * len(b"just written"), "a racy file is read again"


def test_a_damaged_cache_file_only_costs_rehashing(tmp_path):
    (tmp_path / "cache.json").write_text("{not json")
    f = tmp_path / "x"
    f.write_bytes(b"x")
    assert HashCache(tmp_path / "cache.json").sha256(f) == sha(b"x")


def test_copy_hashed_copies_and_hashes_in_one_read(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 * hashcache.CHUNK + 5))
    digest, size = hashcache.copy_hashed(src, tmp_path / "dst")
    assert (digest, size) == (sha(src.read_bytes()), src.stat().st_size)
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_entries_of_deleted_files_are_dropped_on_save(tmp_path, monkeypatch):
    monkeypatch.setattr(hashcache, "RACY_NS", 0)
    keep, gone = tmp_path / "keep", tmp_path / "gone"
    settled(keep, b"k")
    settled(gone, b"g")
    c = HashCache(tmp_path / "cache.json")
    c.sha256(keep), c.sha256(gone)
    gone.unlink()
    c.save()
    assert set(HashCache(tmp_path / "cache.json").data) == {os.path.abspath(keep)}


def test_a_model_file_edited_after_its_hash_was_cached_gets_a_new_digest(tmp_path, monkeypatch):
    """The user-found case: same size, mtime put back; the snapshot digest (and manifests) must change."""
    from builders.models.resolve import resolve_local
    from builders.models.source import parse_source

    monkeypatch.setattr(hashcache, "RACY_NS", 0)
    d = tmp_path / "my-llama"
    d.mkdir()
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (d / "tokenizer.json").write_text("{}")
    settled(d / "model.safetensors", b"weights-v1")
    cache_file = tmp_path / ".cache" / "file-sha256.json"
    cache = HashCache(cache_file)
    ref1, _, files1 = resolve_local(parse_source(str(d)), cache, tmp_path / "models")
    cache.save()
    st = (d / "model.safetensors").stat()
    time.sleep(0.01)
    (d / "model.safetensors").write_bytes(b"weights-v2")
    os.utime(d / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    ref2, _, files2 = resolve_local(parse_source(str(d)), HashCache(cache_file), tmp_path / "models")
    assert files2["model.safetensors"] == sha(b"weights-v2") != files1["model.safetensors"]
    assert ref2.digest != ref1.digest
