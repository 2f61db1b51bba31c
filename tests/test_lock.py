"""One build per output root: the lock, its holder line, and the real CLI refusing a second build (exit 2)
before it plans anything. Fast: no docker (the CLI stops at the lock)."""

import os
import socket

import pytest

from builders import lock
from builders.errors import StoreError
from helpers import invoke


def test_second_holder_is_refused_with_the_first_ones_identity(tmp_path):
    with lock.hold(tmp_path / "dist") as me:
        assert me["pid"] == os.getpid()
        with pytest.raises(StoreError) as e:
            with lock.hold(tmp_path / "dist"):
                pass
    line = str(e.value)
    assert "\n" not in line and "another build is using this output root" in line
    assert f"pid {os.getpid()} on {socket.gethostname()} since " in line and "build into another --out" in line
    with lock.hold(tmp_path / "dist"):  # released on exit
        pass


def test_cli_build_on_a_held_root_exits_2_at_once(tmp_path):
    out = tmp_path / "dist"
    with lock.hold(out):
        proc = invoke("build", "--out", str(out), "--backends", "gguf", "--quants", "F16", timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and f"pid {os.getpid()}" in line
    assert not (out / ".store").exists() and not (out / ".staging").exists()


def test_lock_on_an_unwritable_place_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"cannot create the build lock .*; check the permissions"):
        with lock.hold(tmp_path / "file" / "dist"):
            pass
