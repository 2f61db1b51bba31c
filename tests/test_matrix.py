"""matrix.yaml validation and cell selection (no Docker needed)."""

import textwrap
from pathlib import Path

import pytest

from builders import matrix
from builders.errors import MatrixError, ModelError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    p = tmp_path / "matrix.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_default_matrix_loads_and_selects_embedded_model():
    m = matrix.load(ROOT / "matrix.yaml")
    sel = matrix.select(m)
    ids = [c.id for c in sel.cells]
    assert ids == ["tiny-llama.gguf.F16.cpu", "tiny-llama.gguf.Q8_0.cpu", "tiny-llama.gguf.Q4_K_M.cpu"]
    assert sel.models["tiny-llama"].kind == "tiny"


def test_quants_are_routed_to_the_backend_that_knows_them():
    m = matrix.load(ROOT / "matrix.yaml")
    sel = matrix.select(m, model="tiny:qwen2", backends_="gguf", quants="F16,Q4_K_M", targets="cpu,cuda")
    assert [c.id for c in sel.cells] == [
        "tiny-qwen2.gguf.F16.cpu", "tiny-qwen2.gguf.F16.cuda",
        "tiny-qwen2.gguf.Q4_K_M.cpu", "tiny-qwen2.gguf.Q4_K_M.cuda"]


def test_only_glob_selects_cells():
    m = matrix.load(ROOT / "matrix.yaml")
    sel = matrix.select(m, only="*.Q8_0.*")
    assert [c.id for c in sel.cells] == ["tiny-llama.gguf.Q8_0.cpu"]
    with pytest.raises(MatrixError, match="matches no cell"):
        matrix.select(m, only="nothing.*")


@pytest.mark.parametrize("kwargs, message", [
    ({"targets": "cpu,toaster"}, "unknown target 'toaster'"),
    ({"backends": "onnx"}, "unknown backend 'onnx'"),
    ({"quants": "Q9_9"}, "unknown quant 'Q9_9'"),
])
def test_bad_cli_filters_name_the_value_and_choices(kwargs, message):
    m = matrix.load(ROOT / "matrix.yaml")
    with pytest.raises(MatrixError, match=message) as e:
        matrix.select(m, **{("backends_" if k == "backends" else k): v for k, v in kwargs.items()})
    assert "choose from" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("model, message", [
    ("../evil/model", "does not exist"),
    ("org/../../etc", "no '..'"),
    ("tiny:gpt9", "unknown tiny architecture"),
    ("./no-such-dir", "does not exist"),
])
def test_bad_model_ids(model, message):
    m = matrix.load(ROOT / "matrix.yaml")
    with pytest.raises(ModelError, match=message):
        matrix.select(m, model=model)


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, """\
        schema: 1
        models:
          a: {source: "tiny:llama"
        images: {base: {}}
        """)
    with pytest.raises(MatrixError, match=r"matrix.yaml:\d+: invalid YAML"):
        matrix.load(p)


def test_unknown_backend_in_matrix_names_the_line(tmp_path):
    p = write(tmp_path, """\
        schema: 1
        images: {base: {}}
        backends:
          gguf: {options: {}}
          tflite: {options: {}}
        """)
    with pytest.raises(MatrixError, match=r"matrix.yaml:5: backends.tflite: unknown backend"):
        matrix.load(p)


def test_bad_threshold_value_is_reported_with_its_path(tmp_path):
    p = write(tmp_path, """\
        schema: 1
        images: {base: {}}
        verify:
          thresholds:
            gguf:
              F16: {top1_min: high}
        """)
    with pytest.raises(MatrixError, match=r"verify.thresholds.gguf.F16.top1_min: must be a number"):
        matrix.load(p)


def test_cell_overrides_apply_by_glob(tmp_path):
    p = write(tmp_path, """\
        schema: 1
        images: {base: {}}
        models: {m: {source: "tiny:llama"}}
        defaults: {models: [m], backends: [gguf], quants: {gguf: [F16]}, targets: [cpu]}
        backends: {gguf: {options: {n_ctx: 256}}}
        cells: {"m.gguf.*": {n_threads: 1}}
        verify: {thresholds: {gguf: {F16: {top1_min: 1.0}}}}
        """)
    m = matrix.load(p)
    cell = matrix.select(m).cells[0]
    assert dict(cell.options) == {"n_ctx": 256, "n_threads": 1}
