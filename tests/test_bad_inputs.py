"""Every bad input gives exit 2 and ONE line on stderr naming the file:line / path and the fix - no traceback -
and an existing index.json is left untouched. Fast: no Docker. Most tests call the guarded CLI functions in
process (the same `guarded` wrapper the invoke tasks use); a few run the real `invoke` command line.

Disk full and read-only are real: a small tmpfs mounted for the test (root with CAP_SYS_ADMIN) and /dev/full."""

import errno
import json
import math
import os
import time
import subprocess
import textwrap
from pathlib import Path

import pytest

from builders import backends, cli, matrix
from builders.errors import MatrixError, ModelError
from builders.verify.metrics import THRESHOLD_KEYS
from tests.helpers import invoke

ROOT = Path(__file__).resolve().parents[1]
INDEX = {"schema": 1, "artifacts": [{"cell": "earlier.gguf.F16.cpu", "files": []}]}

# a small valid matrix; tests replace or append parts of it
BASE = """\
schema: 1
models:
  m: {source: "tiny:llama"}
defaults: {models: [m], backends: [gguf], quants: {gguf: [F16]}, targets: [cpu]}
verify:
  thresholds:
    gguf:
      F16: {top1_min: 1.0}
images: {base: {}}
"""


def write(tmp_path: Path, text: str, name: str = "matrix.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def project_matrix(tmp_path: Path, old: str = "", new: str = "") -> Path:
    """The project's matrix.yaml, with `old` replaced by `new` (which must change it)."""
    text = (ROOT / "matrix.yaml").read_text()
    if old:
        assert old in text, old
        text = text.replace(old, new)
    p = tmp_path / "matrix.yaml"
    p.write_text(text)
    return p


def out_with_index(root: Path) -> Path:
    out = root / "dist"
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").write_text(json.dumps(INDEX))
    return out


def index_untouched(out: Path) -> bool:
    return json.loads((out / "index.json").read_text()) == INDEX


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def run_build(capsys, matrix_path, out, model=None, backends_=None, quants=None, targets=None, only=None,
              only_step=None, restart_step=None) -> tuple[int, str]:
    """cli.build in process: (exit code, the one stderr line)."""
    with pytest.raises(SystemExit) as e:
        cli.build(str(matrix_path), str(out), model, backends_, quants, targets, only, "docker", only_step,
                  restart_step)
    return e.value.code, one_line(capsys.readouterr().err)


def load_error(path: Path) -> str:
    with pytest.raises(MatrixError) as e:
        matrix.load(path)
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2
    return msg


# ---- matrix.yaml: types, duplicates, bounds, images, cells ------------------------------------------------

def test_duplicate_keys_name_both_lines(tmp_path, capsys):
    p = write(tmp_path, BASE.replace('  m: {source: "tiny:llama"}\n',
                                     '  tiny-llama: {source: "tiny:llama"}\n  tiny-llama: {source: "tiny:qwen2"}\n'))
    out = out_with_index(tmp_path)
    code, line = run_build(capsys, p, out)
    assert code == 2 and "matrix.yaml:4: duplicate key 'tiny-llama' (first at line 3)" in line
    assert index_untouched(out)


def test_duplicate_keys_inside_a_flow_mapping(tmp_path):
    p = write(tmp_path, BASE + "backends: {gguf: {options: {n_ctx: 256, n_ctx: 512}}}\n")
    assert "matrix.yaml:10: duplicate key 'n_ctx'" in load_error(p)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    p = write(tmp_path, BASE + "backends:\n  gguf: {options: &o {n_ctx: 256}}\n  mlc:\n    options:\n"
                               "      <<: *o\n      n_ctx: 1\n")
    msg = load_error(p)  # the merge itself is fine; n_ctx is no mlc option
    assert "duplicate" not in msg and "unknown mlc option 'n_ctx'" in msg


@pytest.mark.parametrize("old, new, fragment", [
    ("models:\n  m: {source: \"tiny:llama\"}\n", "models:\n  - m\n",
     "matrix.yaml:2: models: must be a mapping"),
    ("backends: [gguf]", "backends: gguf", "matrix.yaml:4: defaults.backends: must be a list like [gguf, mlc], "
                                             "got the string 'gguf'"),
    ("targets: [cpu]", "targets: \"cpu,cuda\"", "defaults.targets: must be a list like [cpu, cuda], got the string"),
    ("quants: {gguf: [F16]}", "quants: [F16]", "defaults.quants: must be a mapping"),
    ("quants: {gguf: [F16]}", "quants: {gguf: F16}", "defaults.quants.gguf: must be a list"),
    ("images: {base: {}}", "images: [base]", "matrix.yaml:9: images: must be a mapping"),
    ("F16: {top1_min: 1.0}", "F16: [top1_min, 1.0]", "matrix.yaml:8: verify.thresholds.gguf.F16: must map "
                                                      "threshold names to numbers"),
    ("schema: 1", "schema: true", "matrix.yaml:1: schema: unsupported schema True"),
    ("m: {source: \"tiny:llama\"}", "m: {source: [tiny:llama]}", "models.m.source: must be a string"),
    ("m: {source: \"tiny:llama\"}", "m: {source: \"tiny:llama\", revision: 1234567}",
     "models.m.revision: must be a string"),
])
def test_wrong_types_name_the_line(tmp_path, old, new, fragment):
    assert old in BASE
    assert fragment in load_error(write(tmp_path, BASE.replace(old, new)))


@pytest.mark.parametrize("options, fragment", [
    ("gguf: {options: {n_ctx: true}}", "matrix.yaml:11: backends.gguf.options: gguf option n_ctx=True must be a "
                                       "positive integer at most 131072"),
    ("gguf: {options: {n_threads: 1.5}}", "gguf option n_threads=1.5 must be a positive integer"),
    ("gguf: {options: {n_ctx: 100000000}}", "n_ctx=100000000 must be a positive integer at most 131072"),
    ("gguf: {options: [n_ctx]}", "backends.gguf.options: must be a mapping (`option: value` lines), got a list"),
    ("mlc: {options: {context_window_size: true}}", "mlc option context_window_size=True must be a positive integer"),
    ("mlc: {options: {context_window_size: 10000000}}", "context_window_size=10000000 must be a positive "
                                                        "integer at most 131072"),
    ("mlc: {options: {prefill_chunk_size: 0}}", "prefill_chunk_size=0 must be"),
    ("coreml: {options: {batch: true}}", "coreml option batch=True: must be a positive integer at most 32768"),
    ("coreml: {options: {context: 1000000}}",
     "coreml option context=1000000: must be a positive integer at most 32768"),
    ("coreml: {options: {max_chunk_mb: .nan}}", "max_chunk_mb=nan: must be a number of MiB"),
    ("coreml: {options: {max_chunk_mb: .inf}}", "max_chunk_mb=inf: must be a number of MiB"),
    ("coreml: {options: {context: 64, batch: 128}}", "batch=128 is larger than context=64"),
    # checked against the templates gen_config writes, on the host at plan time, not inside the container
    ("mlc: {options: {conv_template: llama3}}", "mlc option conv_template='llama3' must be one of llama-3, "),
    ("coreml: {options: {lut2: 5}}", "coreml option lut2=5: LUT bits must be one of 1, 2, 3, 4, 6, 8"),
])
def test_backend_options_bool_is_not_an_int_and_sizes_are_bounded(tmp_path, options, fragment):
    p = write(tmp_path, BASE + f"backends:\n  {options}\n")
    msg = load_error(p)
    assert fragment in msg and msg.startswith("matrix.yaml:11:"), msg


def test_option_error_names_the_line_of_the_option(tmp_path):
    p = write(tmp_path, BASE + "backends:\n  mlc:\n    options:\n      prefill_chunk_size: 64\n"
                               "      context_window_size: false\n")
    assert load_error(p).startswith("matrix.yaml:14: backends.mlc.options: mlc option context_window_size=False")


@pytest.mark.parametrize("images, fragment", [
    ("images:\n  base: {}\n  gguf: {from: gguf}\n", "matrix.yaml:11: images.gguf.from: image 'gguf' cannot come "
                                                    "from itself"),
    ("images:\n  base: {}\n  gguf: {from: mlc}\n  mlc: {from: gguf}\n",
     "matrix.yaml:12: images.mlc.from: cycle gguf -> mlc -> gguf"),
    ("images:\n  base: {}\n  gguf: {from: nope}\n", "images.gguf.from: no image 'nope' under `images:`"),
    ("images:\n  base: {from: gguf}\n  gguf: {}\n", "images.base.from: base is the root image"),
    ("images:\n  base: {}\n  gguf: {from: 3}\n", "images.gguf.from: must name another image, got the int 3"),
    ("images:\n  base: {}\n  toaster: {}\n", "images.toaster: no template docker/toaster.Dockerfile.j2"),
])
def test_image_parents_self_cycles_and_unknown(tmp_path, images, fragment):
    p = write(tmp_path, BASE.replace("images: {base: {}}\n", images))
    assert fragment in load_error(p)


def test_image_cycle_in_pins_passed_directly_is_an_error_not_a_recursion():
    from builders import images

    with pytest.raises(MatrixError, match="cycle gguf -> gguf"):
        images.image_tag("gguf", {"base": {}, "gguf": {"from": "gguf"}})


def test_cells_glob_matching_no_cell_names_its_line(tmp_path, capsys):
    p = write(tmp_path, BASE + "cells:\n  'm.gguf.*': {n_threads: 1}\n  'tiny-lama.*': {n_ctx: 256}\n")
    out = out_with_index(tmp_path)
    code, line = run_build(capsys, p, out)
    assert code == 2 and "matrix.yaml:12: cells.tiny-lama.*: matches no cell of the matrix" in line
    assert index_untouched(out)


def test_cells_override_value_is_checked_with_its_line(tmp_path):
    p = write(tmp_path, BASE + "cells:\n  'm.gguf.*':\n    n_threads: true\n")
    with pytest.raises(MatrixError, match=r"^matrix.yaml:12: cells.m.gguf.\* \(for m.gguf.F16.cpu\): gguf option "
                                          r"n_threads=True must be a positive integer"):
        matrix.select(matrix.load(p))


# ---- thresholds fail closed ---------------------------------------------------------------------------------

@pytest.mark.parametrize("limits, fragment", [
    ("Q9_9: {top1_min: 0.5}", "matrix.yaml:9: verify.thresholds.gguf.Q9_9: unknown gguf quant"),
    ("Q8_0: {top1_mni: 0.5}", "verify.thresholds.gguf.Q8_0.top1_mni: unknown threshold"),
    ("Q8_0: {kl_max: -0.1}", "verify.thresholds.gguf.Q8_0.kl_max: must be a finite number >= 0, got -0.1"),
    ("Q8_0: {kl_max: .nan}", "kl_max: must be a finite number >= 0, got nan"),
    ("Q8_0: {nmse_max: .inf}", "nmse_max: must be a finite number >= 0, got inf"),
    ("Q8_0: {top1_min: true}", "top1_min: must be a number, got the boolean true"),
    ("Q8_0: {top1_min: 1.5}", "top1_min: is a fraction of tokens: must be in [0, 1], got 1.5"),
    ("Q8_0: {}", "verify.thresholds.gguf.Q8_0: must map threshold names to numbers"),
])
def test_bad_threshold_entries_name_their_line(tmp_path, limits, fragment):
    p = write(tmp_path, BASE.replace("      F16: {top1_min: 1.0}\n", f"      F16: {{top1_min: 1.0}}\n      {limits}\n"))
    msg = load_error(p)
    assert fragment in msg and msg.startswith("matrix.yaml:9:"), msg


def test_a_selected_quant_without_thresholds_is_refused(tmp_path, capsys):
    q4_0 = next(ln for ln in (ROOT / "matrix.yaml").read_text().splitlines(True) if ln.startswith("      Q4_0: "))
    p = project_matrix(tmp_path, q4_0, "")
    out = out_with_index(tmp_path)
    code, line = run_build(capsys, p, out, quants="F16,Q4_0")
    text = p.read_text().splitlines()
    start = next(i for i, t in enumerate(text) if t.strip() == "thresholds:")
    gguf_line = next(i + 1 for i, t in enumerate(text) if i > start and t.strip() == "gguf:")
    assert code == 2 and index_untouched(out)
    assert line.startswith(f"error: matrix.yaml:{gguf_line}: verify.thresholds.gguf has no entry for quant Q4_0 "
                           "(cell tiny-llama.gguf.Q4_0.cpu)"), line


def test_no_verify_section_at_all_is_refused(tmp_path):
    p = write(tmp_path, BASE.split("verify:")[0] + "images: {base: {}}\n")
    with pytest.raises(MatrixError, match=r"^matrix.yaml:1: verify.thresholds.gguf has no entry for quant F16"):
        matrix.select(matrix.load(p))


def test_unsupported_cells_need_no_thresholds(tmp_path):
    p = write(tmp_path, BASE + "")
    sel = matrix.select(matrix.load(p), targets="cpu,webgpu")  # gguf on webgpu is listed, never built
    assert [c.id for c in sel.cells] == ["m.gguf.F16.cpu", "m.gguf.F16.webgpu"]


def test_project_matrix_has_thresholds_for_every_quant_every_backend_knows():
    """Every quant a user can ask for is verified: no (backend, quant) ships unchecked."""
    m = matrix.load(ROOT / "matrix.yaml")
    missing = [f"{b}.{q}" for b in backends.USER_BACKENDS for q in backends.get(b).quants
               if not m.thresholds_for(b, q)]
    assert not missing, f"matrix.yaml verify.thresholds lacks {', '.join(missing)}"
    for b, per_quant in m.thresholds.items():
        for q, limits in per_quant.items():
            assert set(limits) <= set(THRESHOLD_KEYS) and all(math.isfinite(v) and v >= 0 for v in limits.values())


# ---- selection and steps ---------------------------------------------------------------------------------------

def test_empty_selection_leaves_index_untouched(tmp_path, capsys):
    out = out_with_index(tmp_path)
    code, line = run_build(capsys, ROOT / "matrix.yaml", out, backends_="gguf", targets="webgpu")
    assert code == 2 and "the selection is empty" in line and "gguf on webgpu" in line
    assert index_untouched(out) and sorted(p.name for p in out.iterdir()) == ["index.json"]


def test_only_glob_matching_nothing_is_named(tmp_path, capsys):
    out = out_with_index(tmp_path)
    code, line = run_build(capsys, ROOT / "matrix.yaml", out, only="*.F16.*,*.Q5_K_M.*")
    assert code == 2 and "--only *.Q5_K_M.*: matches no cell" in line and index_untouched(out)


@pytest.mark.parametrize("flag, value", [("only_step", "bogus"), ("restart_step", "9"), ("only_step", "0")])
def test_step_selection_is_checked_before_anything_runs(tmp_path, capsys, flag, value):
    out = out_with_index(tmp_path)
    code, line = run_build(capsys, ROOT / "matrix.yaml", out, **{flag: value})
    option = "--" + flag.replace("_", "-")
    assert code == 2 and index_untouched(out)
    from builders import step_selection

    names = step_selection.step_names("gguf", "gguf-convert")
    numbered = ", ".join(f"{i + 1}={n}" for i, n in enumerate(names))
    assert f"{option} {value}: no such step in tiny-llama.gguf.F16.cpu (gguf-convert: {numbered})" in line
    assert not (out / ".staging").exists() and not (out / ".store").exists()


def test_step_names_and_numbers_of_the_selected_nodes_pass():
    from builders import step_selection

    for value in ("convert", "2", "verify"):
        assert step_selection.matches(step_selection.step_names("gguf", "gguf-convert"), value)
    assert step_selection.matches(step_selection.step_names("gguf", "gguf-quantize"), "quantize")
    assert not step_selection.matches(step_selection.step_names("gguf", "gguf-quantize"), "convert")


# ---- model directories ---------------------------------------------------------------------------------------

def model_dir(root: Path, tokenizer: bool = True, config: bool = True) -> Path:
    d = root / "my-llama"
    d.mkdir(parents=True)
    if config:
        (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    if tokenizer:
        (d / "tokenizer.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    return d


@pytest.mark.parametrize("tokenizer, config, fragment", [
    (False, True, "has no tokenizer (tokenizer.json or tokenizer.model)"),
    (True, False, "has no config.json"),
])
def test_model_dir_without_tokenizer_or_config(tmp_path, capsys, tokenizer, config, fragment):
    d = model_dir(tmp_path, tokenizer, config)
    out = out_with_index(tmp_path)
    code, line = run_build(capsys, ROOT / "matrix.yaml", out, model=str(d))
    assert code == 2 and f"model directory '{d}' {fragment}" in line and index_untouched(out)


def test_weights_symlinked_outside_the_model_dir_are_refused(tmp_path, capsys):
    d = model_dir(tmp_path)
    secret = tmp_path / "host-file"
    secret.write_bytes(b"not yours")
    (d / "model.safetensors").unlink()
    os.symlink(secret, d / "model.safetensors")
    out = out_with_index(tmp_path)
    code, line = run_build(capsys, ROOT / "matrix.yaml", out, model=str(d))
    assert code == 2 and index_untouched(out)
    assert f"model.safetensors is a symlink to {secret}, outside the model directory" in line
    assert not (out / ".cache").exists()  # nothing was hashed


def test_a_linked_directory_outside_is_refused_too(tmp_path):
    from builders.models.resolve import HashCache, resolve_local
    from builders.models.source import parse_source

    d = model_dir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", d / "extra")
    with pytest.raises(ModelError, match="extra is a symlink to .*elsewhere, outside the model directory"):
        resolve_local(parse_source(str(d)), HashCache(tmp_path / "h.json"), tmp_path / "models")


def test_hub_cache_snapshot_links_into_its_blobs_stay_allowed(tmp_path):
    from builders.models.resolve import HashCache, resolve_local
    from builders.models.source import parse_source

    repo = tmp_path / "models--acme--thing"
    snap = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    files = {"config.json": json.dumps({"architectures": ["LlamaForCausalLM"]}).encode(), "tokenizer.json": b"{}",
             "model.safetensors": b"\x02\x00\x00\x00\x00\x00\x00\x00{}"}
    for i, (name, data) in enumerate(files.items()):
        (repo / "blobs" / f"blob{i}").write_bytes(data)
        os.symlink(f"../../blobs/blob{i}", snap / name)
    ref, path, hashes = resolve_local(parse_source(str(snap)), HashCache(tmp_path / "h.json"), tmp_path / "models")
    assert sorted(hashes) == sorted(files) and ref.arch == "LlamaForCausalLM"


# ---- the output directory: a file, read-only, disk full (real ones) -------------------------------------------

def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "dist"
    f.write_text("a file")
    code, line = run_build(capsys, ROOT / "matrix.yaml", f)
    assert code == 2 and f"--out {f}: is a file, not a directory" in line and f.read_text() == "a file"


def test_a_file_where_a_directory_belongs_under_out(tmp_path, capsys):
    d = model_dir(tmp_path / "src")
    time.sleep(2.1)  # settled files: the hash cache keeps no hash of a file changed in the last 2 s (racy rule)
    out = out_with_index(tmp_path)
    (out / ".cache").write_text("a file")  # the plan keeps its hash cache in <out>/.cache/
    code, line = run_build(capsys, ROOT / "matrix.yaml", out, model=str(d))
    assert code == 2 and str(out / ".cache") in line, line
    assert "Not a directory" in line or "File exists" in line, line
    assert index_untouched(out)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, ro) -> a real tmpfs mounted for this test (needs root with CAP_SYS_ADMIN)."""
    mounted = []

    def mount(size: str, name: str = "fs") -> Path:
        d = tmp_path / name
        d.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); needs root with CAP_SYS_ADMIN")
        mounted.append(d)
        return d

    yield mount
    for d in reversed(mounted):
        subprocess.run(["umount", "-l", str(d)], check=False)


def remount_ro(d: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)


def fill(fs: Path) -> None:
    """Write until the filesystem really is full (ENOSPC)."""
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_out_on_a_read_only_filesystem(tmpfs, capsys):
    fs = tmpfs("1m")
    out = out_with_index(fs)
    remount_ro(fs)
    code, line = run_build(capsys, ROOT / "matrix.yaml", out)
    assert code == 2 and line.startswith(f"error: {out}: Read-only file system; "), line
    assert index_untouched(out)


def test_out_on_a_full_disk(tmpfs, capsys):
    fs = tmpfs("64k")
    out = out_with_index(fs)
    fill(fs)
    code, line = run_build(capsys, ROOT / "matrix.yaml", out)
    assert code == 2 and str(out) in line and "No space left on device" in line, line
    assert index_untouched(out)


def test_plan_hash_cache_write_on_a_full_disk(tmpfs, tmp_path, capsys):
    """The plan of a local model writes its sha256 cache under --out: ENOSPC there is one line too."""
    d = model_dir(tmp_path / "src")
    time.sleep(2.1)  # settled files: the hash cache keeps no hash of a file changed in the last 2 s (racy rule)
    fs = tmpfs("64k")
    out = out_with_index(fs)
    fill(fs)
    with pytest.raises(SystemExit) as e:
        cli.plan(str(ROOT / "matrix.yaml"), str(out), str(d), None, None, None, None, "docker", True)
    line = one_line(capsys.readouterr().err)
    assert e.value.code == 2 and str(out) in line and "No space left on device" in line, line
    assert index_untouched(out)


def test_ci_workflow_to_dev_full_through_the_real_cli():
    proc = invoke("ci", "--path", "/dev/full")
    line = one_line(proc.stderr)
    assert proc.returncode == 2 and line == ("error: writing /dev/full: No space left on device; free space on that "
                                             "filesystem or write to another one (--out)")


def test_duplicate_key_through_the_real_cli(tmp_path):
    p = write(tmp_path, BASE + "images: {base: {}}\n")
    out = out_with_index(tmp_path)
    proc = invoke("build", "--matrix", str(p), "--out", str(out))
    line = one_line(proc.stderr)
    assert proc.returncode == 2 and "matrix.yaml:10: duplicate key 'images' (first at line 9)" in line
    assert index_untouched(out)


def test_other_exceptions_stay_visible_as_bugs():
    """Only user errors and OSErrors become one line; anything else keeps its traceback (it is a bug)."""

    @cli.guarded
    def broken():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        broken()


def test_os_error_without_a_file_name_names_what_was_being_written(capsys):
    @cli.guarded
    def fills_disk():
        cli._writing_under.append("writing under /some/out")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(SystemExit) as e:
        fills_disk()
    assert e.value.code == 2 and one_line(capsys.readouterr().err) == (
        "error: writing under /some/out: No space left on device; free space on that filesystem or write to "
        "another one (--out)")


def test_cache_from_a_missing_directory(tmp_path, capsys):
    out = out_with_index(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.build(str(ROOT / "matrix.yaml"), str(out), None, None, None, None, None, "docker", None, None,
                  cache_from=str(tmp_path / "typo"))
    line = one_line(capsys.readouterr().err)
    assert e.value.code == 2 and f"--cache-from {tmp_path / 'typo'}: no such directory" in line and index_untouched(out)
