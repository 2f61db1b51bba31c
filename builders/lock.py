"""One build per output root: an exclusive fcntl lock on <root>/.lock, held for the whole build.

The holder writes who it is (pid, host, since, command) into the file once it holds the lock; a second
build on the same root fails at once with that line (StoreError, exit 2) instead of waiting or racing.
The kernel drops the lock when the holder exits, however it exits (kill -9 included), so a stale file
never blocks a later build.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from builders.errors import StoreError

LOCK_NAME = ".lock"


def _holder_line(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 65536).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "a build that is just starting"
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} "
            f"(`{info.get('command')}`)")


@contextmanager
def hold(root: Path):
    """Hold the lock of an output root (creating the root), or raise StoreError naming the holder."""
    root = Path(root).resolve()
    path = root / LOCK_NAME
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StoreError(f"{e.filename or path}: cannot create the build lock ({e.strerror}); "
                         "check the permissions of the --out directory") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{root}: another build is using this output root: {_holder_line(fd)}; wait for it "
                             "to finish or build into another --out") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield info
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
