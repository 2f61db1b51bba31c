"""webgpu_session's failure paths with the real Node (no Docker, no GPU): a run that cannot start fails closed
with what Node printed, never a hang or a pass."""

import shutil

import pytest

from builders.backends.mlc.webgpu_session import WebgpuSession
from builders.errors import NodeFailed

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs node on PATH")


def test_missing_tvmjs_fails_closed_with_nodes_error(tmp_path):
    with pytest.raises(NodeFailed) as err:
        WebgpuSession(tmp_path / "lib.wasm", tmp_path, node_dir=tmp_path / "no-such-dir")
    msg = str(err.value)
    assert "node exited" in msg and "before answering 'open'" in msg
    assert "no-such-dir" in msg  # Node's own error names what it could not load


def test_a_wasm_that_is_not_one_fails_closed(tmp_path):
    """With a node dir whose tvmjs and webgpu load (stand-ins that throw on use), the open step answers an error."""
    (tmp_path / "tvmjs").mkdir()
    (tmp_path / "tvmjs" / "tvmjs.cjs").write_text(
        "exports.detectGPUDevice = async () => { throw new Error('no adapter here'); };\n")
    wg = tmp_path / "node_modules" / "webgpu"
    wg.mkdir(parents=True)
    (wg / "index.js").write_text("export const create = () => ({}); export const globals = {};\n")
    (wg / "package.json").write_text('{"type": "module"}\n')
    with pytest.raises(NodeFailed) as err:
        WebgpuSession(tmp_path / "lib.wasm", tmp_path, node_dir=tmp_path)
    assert "'open' failed in Node" in str(err.value) and "no adapter here" in str(err.value)
