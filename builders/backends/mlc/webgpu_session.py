"""The webgpu .wasm run for real: a Node process (webgpu_run.mjs, in the webgpu image) loads the .wasm with tvmjs,
gets a WebGPU device from the npm `webgpu` package (Dawn) on Mesa's lavapipe, puts the MLC weights on it and
answers forward requests. `WebgpuSession` has harness.Session's interface (forward, forward_many,
prefill_last, ctx, close), so the check feeds it exactly what the cpu library check feeds the cpu library.

Fails closed: a Node process that does not start, answers an error, dies, or returns logits of the wrong shape
raises NodeFailed with what it printed."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from builders.errors import NodeFailed

SCRIPT = Path(__file__).with_name("webgpu_run.mjs")
NODE_DIR = Path(os.environ.get("BUILDMATRIX_WEBGPU_NODE", "/opt/webgpu-node"))  # webgpu image: tvmjs + npm webgpu
MARK = "@@bm "
DTYPES = {"float32": np.float32, "float16": np.float16}


class WebgpuSession:
    def __init__(self, wasm: Path, weights: Path, log=print, node_dir: Path = NODE_DIR):
        self.log = log
        self.tmp = tempfile.TemporaryDirectory(prefix="webgpu-logits-")
        self.seq = 0
        self.stderr_path = Path(self.tmp.name) / "node.stderr"
        env = {**os.environ, "XDG_RUNTIME_DIR": self.tmp.name, "BUILDMATRIX_WEBGPU_NODE": str(node_dir)}
        try:
            with open(self.stderr_path, "w") as stderr:
                self.proc = subprocess.Popen(["node", str(SCRIPT), str(wasm), str(weights)],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                             text=True, env=env)
        except FileNotFoundError:
            self.tmp.cleanup()
            raise NodeFailed("webgpu run: no `node` on PATH (the webgpu image has Node, tvmjs and npm webgpu; "
                             "is this node running in it?)") from None
        self.runtime_log: list[str] = []
        try:
            self._answer("open")
            self.info = self._request({"op": "info"}, "info")
        except BaseException:
            self._end()
            raise
        md = self.info["metadata"]
        self.ctx, self.chunk = md["context_window_size"], md["prefill_chunk_size"]

    def _stderr_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-2000:] if self.stderr_path.exists() else ""

    def _answer(self, what: str) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                raise NodeFailed(f"webgpu run: node exited ({code}) before answering '{what}'; "
                                 f"stderr: {self._stderr_tail()}")
            if line.startswith(MARK):
                break
            self.runtime_log.append(line.rstrip())
        ans = json.loads(line[len(MARK):])
        if not ans.get("ok"):
            raise NodeFailed(f"webgpu run: '{what}' failed in Node: {ans.get('error')}; stderr: {self._stderr_tail()}")
        return ans

    def _request(self, req: dict, what: str) -> dict:
        if self.proc.poll() is not None:
            raise NodeFailed(f"webgpu run: node is gone (exit {self.proc.returncode}); stderr: {self._stderr_tail()}")
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._answer(what)

    def _logits(self, op: str, tokens, rows: int, **extra) -> np.ndarray:
        self.seq += 1
        out = Path(self.tmp.name) / f"{self.seq}.logits"
        ans = self._request({"op": op, "tokens": [int(t) for t in tokens], "out": str(out), **extra}, op)
        dtype = DTYPES.get(ans["dtype"])
        if dtype is None:
            raise NodeFailed(f"webgpu run: logits of dtype {ans['dtype']} (expected float32 or float16)")
        arr = np.fromfile(out, dtype=dtype)
        out.unlink()
        n, vocab = ans["shape"]
        if n != rows or arr.size != n * vocab:
            raise NodeFailed(f"webgpu run: {op} returned {arr.size} logits as {ans['shape']}, expected {rows} rows")
        return arr.reshape(n, vocab).astype(np.float32)

    def forward(self, tokens, prompt_len: int | None = None) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int32)
        prompt_len = len(tokens) if prompt_len is None else prompt_len
        return self._logits("forward", tokens, len(tokens), prompt_len=int(prompt_len))

    def forward_many(self, sequences) -> list[np.ndarray]:
        """One KV sequence per call here (batching sequences into one batch_prefill is the cpu check's)."""
        return [self.forward(t) for t in sequences]

    def prefill_last(self, tokens) -> np.ndarray:
        return self._logits("prefill_last", tokens, 1)[-1]

    def close(self) -> None:
        """Ask Node to finish; a process that does not is killed (its logit files go either way)."""
        try:
            if self.proc.poll() is None:
                self._request({"op": "close"}, "close")
                self.proc.wait(timeout=30)
        except (NodeFailed, subprocess.TimeoutExpired, BrokenPipeError):
            pass
        finally:
            self._end()

    def _end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.tmp.cleanup()
