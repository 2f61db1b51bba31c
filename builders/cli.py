"""What the invoke tasks call: parse nothing here, just wire matrix -> plan -> build -> summary.

Every user mistake surfaces as one line on stderr and exit code 2 (see `guarded`).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from builders.errors import EXIT_INTERRUPTED, EXIT_USAGE, BuildmatrixError

NOT_A_TTY_WIDTH = 400  # columns when output goes to a file or a CI log: one row per cell, never wrapped at 80


def make_console(stderr: bool = False, file=None) -> Console:
    """A rich Console: the terminal's width on a TTY; NOT_A_TTY_WIDTH when the output is piped or logged
    (rich would fold it at 80 columns) unless COLUMNS says otherwise."""
    c = Console(stderr=stderr, file=file, highlight=False)
    if not c.is_terminal and not os.environ.get("COLUMNS"):
        c = Console(stderr=stderr, file=file, highlight=False, width=NOT_A_TTY_WIDTH)
    return c


console = make_console(stderr=True)
STATUS_STYLE = {"built": "green", "cached": "cyan", "failed": "red", "unavailable": "red",
                "unsupported": "yellow", "skipped": "red", "ci-runner": "blue"}


# what a command is writing ("writing under OUT", "writing PATH"): an OSError without a file name names it
_writing_under: list[str] = []


def writing(what: str) -> None:
    """Say what the command writes next, so a full disk or a read-only path is reported with it."""
    _writing_under.append(what)

OS_ADVICE = {
    errno.ENOSPC: "free space on that filesystem or write to another one (--out)",
    errno.EDQUOT: "free space on that filesystem or write to another one (--out)",
    errno.EROFS: "it is on a read-only filesystem; pass a writable --out",
    errno.EACCES: "make it writable for this user or pass another --out",
    errno.EPERM: "make it writable for this user or pass another --out",
    errno.ENOTDIR: "a file stands where a directory belongs; move it away or pass another --out",
    errno.EEXIST: "a file stands where a directory belongs; move it away or pass another --out",
    errno.EISDIR: "a directory stands where a file belongs; move it away or pass another path",
    errno.ENOENT: "the path does not exist; create it or pass another one",
    errno.ENAMETOOLONG: "shorten the path",
}


def os_error_line(e: OSError) -> str:
    """One line for an OSError: the path (the file it names, else the directory the command writes under),
    what went wrong, and what to do."""
    paths = [str(p) for p in (e.filename, e.filename2) if p not in (None, "")]
    if paths:
        where = " -> ".join(paths)
    elif _writing_under:
        where = _writing_under[-1]
    else:
        where = "a file"
    what = e.strerror or os.strerror(e.errno or 0) or type(e).__name__
    advice = OS_ADVICE.get(e.errno, "check that path and the filesystem it is on")
    return f"{where}: {what}; {advice}"


def guarded(fn):
    """Turn BuildmatrixError into one line + exit 2, an OSError (disk full, read-only or missing directory, a
    file where a directory belongs) into one line naming the path + exit 2, Ctrl-C into exit 130. Any other
    exception is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BuildmatrixError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        except OSError as e:
            print(f"error: {os_error_line(e)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            print("interrupted: nothing partial was promoted; rerun to finish the remaining nodes", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        finally:
            _writing_under.clear()

    return wrapper


def _not_a_file(path: str | Path, option: str = "--out") -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BuildmatrixError(f"{option} {p}: is a file, not a directory; pass a directory (created if missing)")
    return p


def writable_dir(path: str | Path, option: str = "--out") -> Path:
    """The output directory, created if missing and probed with a real write (root ignores file modes, so
    only a write tells a read-only mount or a full disk apart)."""
    p = _not_a_file(path, option)
    _writing_under.append(f"writing under {p}")
    p.mkdir(parents=True, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=p)
        try:
            os.write(fd, b"buildmatrix")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:  # name the directory, not the probe's random name
        raise OSError(e.errno, e.strerror, str(p)) from None
    return p


def _selection(matrix_path, model, backends, quants, targets, only):
    """The validated matrix and the selected cells (reads the matrix file only; writes nothing)."""
    from builders import matrix as matrix_mod

    m = matrix_mod.load(Path(matrix_path))
    return m, matrix_mod.select(m, model=model, backends_=backends, quants=quants, targets=targets, only=only)


def _plan(matrix_path, out, model, backends, quants, targets, only, executor, hf_token=None, offline=False,
          cache_from=None, selected=None):
    from builders.plan import make_plan
    from builders.store import Store

    m, sel = selected or _selection(matrix_path, model, backends, quants, targets, only)
    _not_a_file(out)  # `build` has probed it with a write already (writable_dir)
    _writing_under.append(f"writing under {out}")
    roots = [Path(p.strip()) for p in cache_from.split(",") if p.strip()] if cache_from else None
    for r in roots or []:
        if not r.is_dir():
            raise BuildmatrixError(f"--cache-from {r}: no such directory; pass output roots of earlier builds")
    store = Store(Path(out), roots)
    return m, store, make_plan(m, sel, store, hf_token=hf_token, offline=offline, executor=executor)


@guarded
def plan(matrix_path, out, model, backends, quants, targets, only, executor, as_json: bool) -> None:
    _, _, p = _plan(matrix_path, out, model, backends, quants, targets, only, executor)
    data = p.to_json()
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    t = Table(title=f"{len(data['cells'])} cells, {data['summary']['nodes']} nodes "
                    f"({data['summary']['cached']} cached, {data['summary']['to_run']} to run)")
    for col in ("cell", "status", "nodes / reason"):
        t.add_column(col)
    for c in data["cells"]:
        nodes = ", ".join(f"{p.nodes[d].key}{' (cached)' if p.nodes[d].cached else ''}" for d in c["nodes"])
        t.add_row(c["id"], f"[{STATUS_STYLE.get(c['status'], 'white')}]{c['status']}[/]", c["reason"] or nodes)
    make_console().print(t)


@guarded
def build(matrix_path, out, model, backends, quants, targets, only, executor, only_step, restart_step,
          hf_token=None, offline=False, echo=False, cache_from=None) -> int:
    from builders import lock, step_selection
    from builders.build import Builder

    selected = _selection(matrix_path, model, backends, quants, targets, only)  # bad input: nothing written
    writable_dir(out)  # a file, a read-only dir or a full disk is named before the lock is taken
    with lock.hold(Path(out)):  # one build per output root; a second one exits 2 naming this one
        m, store, p = _plan(matrix_path, out, model, backends, quants, targets, only, executor, hf_token, offline,
                            cache_from, selected=selected)
        step_selection.check(p, only_step, restart_step)
        builder = Builder(p, store, m, executor=executor, steps={"only": only_step, "restart": restart_step},
                          echo=echo, log=console.print)
        report = builder.run()
    t = Table(title=f"buildmatrix: {len(report.cells)} cells  ->  {store.root / 'index.json'}")
    for col in ("cell", "status", "time", "artifact / reason", "warnings"):
        t.add_column(col, overflow="fold")
    for c in report.cells:
        detail = c.artifact or ""
        ver = c.verification or {}
        checks = ver.get("checks") or {}
        if c.artifact and "top1" in checks:
            detail += f"  (top1 {checks['top1']:.3f}, rel_l2 {checks.get('rel_l2', float('nan')):.2g})"
        warnings = "; ".join(ver.get("warnings") or [])
        if c.reason:
            detail = c.reason
        t.add_row(c.id, f"[{STATUS_STYLE.get(c.status, 'white')}]{c.status}[/]", f"{c.seconds:.1f}s", detail,
                  f"[yellow]{warnings}[/]" if warnings else "")
    make_console().print(t)
    sys.exit(report.exit_code)


@guarded
def ensure_images(matrix_path, names: str | None) -> None:
    from builders import images, matrix as matrix_mod

    m = matrix_mod.load(Path(matrix_path))
    # by default every image but those built only where their source is reachable (`on_demand: true`)
    wanted = ([n.strip() for n in names.split(",")] if names else
              sorted(n for n in m.images if not (m.images[n] or {}).get("on_demand")))
    for n in wanted:
        if n not in m.images:
            raise BuildmatrixError(f"--names: unknown image '{n}'; matrix.yaml defines {', '.join(sorted(m.images))}")
    info = images.ensure(wanted, m.images, log=console.print)
    for n in wanted:
        console.print(f"{n:8s} {info[n]['ref']}  {info[n].get('id', '')[:19]}")
