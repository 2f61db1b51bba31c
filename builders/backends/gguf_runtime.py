"""GGUF per target: the GGUF of the quant node (same bytes, not re-quantized) plus llama.cpp compiled for the
target in its own image (docker/gguf-<runtime>.Dockerfile.j2, driver docker/gguf-runtime.src/bm-logits.cpp),
verified by running that runtime on the file here:

    vulkan          ggml-vulkan (Linux .so) on Mesa lavapipe, Vulkan on the CPU
    vulkan-windows  the Windows x86_64 CPU build (.dll/.exe, mingw-w64) under wine64; the Vulkan .dll and its
                    run need a Windows machine with a Vulkan GPU and are not built here (notes say so)
    android         arm64 build (Debian aarch64 cross compiler here, the NDK on CI) under qemu-user-static

The node's logits are compared with the reference (and with transformers on the file's own dequantized
weights, the `runtime_*` figures) with the quant's thresholds, as the cpu node does with llama-cpp-python.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builders.backends.base import REFERENCE, NodeContext, NodeDef
from builders.errors import NodeFailed
from builders.hashcache import sha256_file

BUNDLE = Path("/opt/gguf-runtime")  # in every gguf-<runtime> image: bin/, lib/, runtime.json
RUN_TIMEOUT_S = 1800  # one driver run over every prompt (qemu and wine are slow; tiny models take seconds)


@dataclass(frozen=True)
class Runtime:
    image: str  # matrix.yaml images: entry
    runs_on: str  # how the build host runs it, for the manifest
    device: str  # prefix of the ggml device name the logits must come from (bm-logits prints them)
    binary: str  # what bin/bm-logits* must be (_binary_kind), so a bundle for another target is refused
    gpu_layers: int  # bm-logits N_GPU_LAYERS
    elsewhere: tuple[str, ...] = ()  # checks of this target that need another machine (manifest notes)


RUNTIMES: dict[str, Runtime] = {
    "vulkan": Runtime("gguf-vulkan", "ggml-vulkan on Mesa lavapipe (Vulkan on the CPU)", "Vulkan", "elf-x86_64", 999,
                      ("a run on a Vulkan GPU (the same .so; lavapipe checks the Vulkan kernels here)",)),
    "vulkan-windows": Runtime("gguf-windows", "Windows x86_64 CPU build (mingw-w64) under wine64", "CPU", "pe-x86_64", 0,
                              ("the ggml-vulkan .dll and its run: need a Windows machine with a Vulkan GPU "
                               "(not built here: no Windows Vulkan loader import library in Debian)",)),
    "android": Runtime("gguf-arm64", "arm64 build under qemu-aarch64-static (the ARM NEON kernels)", "CPU", "elf-aarch64", 0,
                       ("a run on an Android device (an NDK build from a CI runner; this bundle is aarch64 Linux "
                        "unless runtime.json's toolchain names the NDK)",)),
}


def node(model_name: str, quant: str, target: str, gguf: NodeDef, verify: dict) -> NodeDef:
    """The cell's artifact node for a target with its own runtime; `gguf` is the quant node (parent)."""
    rt = RUNTIMES[target]
    return NodeDef(key=f"{model_name}.gguf.{quant}.{target}", kind="gguf-runtime", backend="gguf", image=rt.image,
                   params={"quant": quant, "target": target, "model_name": model_name, "verify": dict(verify)},
                   parents={"gguf": gguf, "reference": REFERENCE}, verify_quant=quant,
                   publish=f"gguf/{target}", outputs=("*.gguf", "runtime/bin/*", "runtime/runtime.json"))


# ---- run side (inside a gguf-<runtime> image) -----------------------------------------------------

def _binary_kind(path: Path) -> str:
    """elf-aarch64, elf-x86_64, pe-x86_64 or unknown, from the file's header."""
    head = path.read_bytes()[:4096]
    if head[:4] == b"\x7fELF" and len(head) > 19:
        return {0xB7: "elf-aarch64", 0x3E: "elf-x86_64"}.get(int.from_bytes(head[18:20], "little"), "unknown")
    if head[:2] == b"MZ" and len(head) > 0x40:
        pe = int.from_bytes(head[0x3C:0x40], "little")
        if head[pe:pe + 4] == b"PE\0\0" and int.from_bytes(head[pe + 4:pe + 6], "little") == 0x8664:
            return "pe-x86_64"
    return "unknown"


def _tools() -> dict:
    tools = Path("/etc/buildmatrix/tools.json")
    if not tools.is_file():
        raise NodeFailed("no /etc/buildmatrix/tools.json: a gguf-runtime node runs only in its gguf-<runtime> image")
    return json.loads(tools.read_text())


def step_bundle(ctx: NodeContext) -> None:
    """Copy the quant node's GGUF (its sha256 must match) and the image's runtime bundle into out/."""
    srcs = sorted(ctx.inputs["gguf"].glob("*.gguf"))
    if len(srcs) != 1:
        raise NodeFailed(f"the gguf parent holds {len(srcs)} .gguf files, expected 1")
    src = srcs[0]
    dst = ctx.out / src.name
    shutil.copyfile(src, dst)
    gguf_sha256 = sha256_file(dst)
    if sha256_file(src) != gguf_sha256:
        raise NodeFailed(f"copy of {src.name} differs from the quant node's file")
    runtime = ctx.out / "runtime"
    if runtime.exists():
        shutil.rmtree(runtime)
    shutil.copytree(BUNDLE, runtime, symlinks=True)
    info = json.loads((runtime / "runtime.json").read_text())["gguf_runtime"]
    for rel, digest in info["files"].items():
        if rel != "runtime.json" and sha256_file(runtime / rel) != digest:
            raise NodeFailed(f"runtime bundle file {rel} does not match the image's runtime.json")
    tools = _tools()
    rt = RUNTIMES[ctx.params["target"]]
    (exe,) = sorted((runtime / "bin").glob("bm-logits*"))
    kind = _binary_kind(exe)
    if kind != rt.binary:
        raise NodeFailed(f"{exe.name} is {kind}; a {ctx.params['target']} bundle must be {rt.binary}")
    ctx.result["tool_versions"] = {"llama.cpp": tools.get("llama_cpp", {}), "runtime": info}
    ctx.result["runtime_abi"] = {"target": ctx.params["target"], "bundle": info["target"],
                                 "toolchain": info["toolchain"], "llama.cpp": tools.get("llama_cpp", {}).get("commit"),
                                 "gguf_sha256": gguf_sha256, "runs_here_on": rt.runs_on, "binary": kind}
    ctx.result["runs_elsewhere"] = list(rt.elsewhere)
    ctx.result["notes"] = [f"verified here: {rt.runs_on}"] + [f"not checked here: {e}" for e in rt.elsewhere]
    ctx.log(f"bundle {info['target']} ({info['toolchain']}): {', '.join(sorted(info['files']))}")


def _host_path(path: Path, target: str) -> str:
    return "Z:" + str(path).replace("/", "\\") if target == "vulkan-windows" else str(path)


def _wine() -> str:
    """Debian's wine64 loader (/usr/bin/wine64 on some releases, /usr/lib/wine/wine64 on bookworm)."""
    for cand in (shutil.which("wine64"), "/usr/lib/wine/wine64", shutil.which("wine")):
        if cand and Path(cand).is_file():
            return cand
    raise NodeFailed("no wine64 in this image: the vulkan-windows runtime node runs in the gguf-windows image")


def _command(ctx: NodeContext, model: Path, tokens: Path, logits: Path) -> tuple[list[str], dict]:
    """The bm-logits invocation of this target and its environment."""
    target = ctx.params["target"]
    rt = RUNTIMES[target]
    vp = ctx.params["verify"]
    threads = max(1, min(vp["n_threads"], len(os.sched_getaffinity(0))))
    bundle = ctx.out / "runtime"
    env = dict(os.environ)
    args = [_host_path(p, target) for p in (model, tokens, logits)] + [str(vp["n_ctx"]), str(threads),
                                                                        str(rt.gpu_layers)]
    if target == "vulkan-windows":
        wine_home = ctx.work / "wine"
        wine_home.mkdir(parents=True, exist_ok=True)
        env.update(WINEPREFIX=str(wine_home / "prefix"), HOME=str(wine_home), WINEDEBUG="-all",
                   WINEDLLOVERRIDES="mscoree,mshtml=", WINEPATH=_host_path(bundle / "lib", target))
        return [_wine(), str(bundle / "bin" / "bm-logits.exe"), *args], env
    env["LD_LIBRARY_PATH"] = str(bundle / "lib")
    exe = str(bundle / "bin" / "bm-logits")
    if target == "android":
        return ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu", exe, *args], env
    return [exe, *args], env


def run_driver(ctx: NodeContext, prompts: list) -> tuple[list, str]:
    """Run bm-logits of this target once over `prompts` (token id arrays); returns ([logits per prompt],
    the device string it reported)."""
    import numpy as np  # noqa: PLC0415

    model = sorted(ctx.out.glob("*.gguf"))[0]
    tokens = ctx.work / "tokens.txt"
    logits = ctx.work / "logits.f32"
    tokens.write_text("".join(" ".join(str(int(t)) for t in p) + "\n" for p in prompts))
    logits.unlink(missing_ok=True)
    cmd, env = _command(ctx, model, tokens, logits)
    ctx.log(" ".join(cmd))
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise NodeFailed(f"bm-logits ({cmd[0]}) ran past {RUN_TIMEOUT_S} s") from None
    if proc.stderr.strip():
        ctx.log("bm-logits stderr: " + proc.stderr.strip()[-2000:])
    done = re.search(r"^bm-logits ok n_vocab=(\d+) rows=(\d+) devices=(\S*)$", proc.stdout, re.M)
    if proc.returncode != 0 or not done:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise NodeFailed(f"bm-logits on {ctx.params['target']} exited {proc.returncode}: {tail[:200]}")
    n_vocab, rows, devices = int(done.group(1)), int(done.group(2)), done.group(3)
    want = sum(len(p) for p in prompts)
    raw = np.fromfile(logits, dtype=np.float32)
    if rows != want or raw.size != want * n_vocab:
        raise NodeFailed(f"bm-logits wrote {raw.size} floats for {rows} rows; expected {want} rows x {n_vocab}")
    device = RUNTIMES[ctx.params["target"]].device
    if not any(d.startswith(device) for d in devices.split(",") if d):
        raise NodeFailed(f"bm-logits ran without a {device} device (devices: {devices or 'none'})")
    out, at = [], 0
    for p in prompts:
        out.append(raw[at * n_vocab:(at + len(p)) * n_vocab].reshape(len(p), n_vocab))
        at += len(p)
    return out, devices


def step_verify(ctx: NodeContext) -> None:
    """Logits of this target's runtime on the GGUF vs the reference and vs the dequantized weights."""
    import numpy as np  # noqa: PLC0415

    from builders.backends.gguf import _dequantized_logits, _runtime_figures  # noqa: PLC0415
    from builders.gguf_file import GgufFile  # noqa: PLC0415
    from builders.verify import budget  # noqa: PLC0415
    from builders.verify.metrics import evaluate, load_reference, verdict  # noqa: PLC0415

    with_text = budget.scores_text(ctx.params.get("thresholds"))  # the perplexity text only for a ppl threshold
    ref = load_reference(ctx.inputs["reference"], text=False)
    prompts = [np.asarray(t) for t, _, _ in ref["prompts"]] + ([np.asarray(ref["text_tokens"])] if with_text else [])
    logits, devices = run_driver(ctx, prompts)
    by_tokens = {tuple(int(t) for t in p): lg for p, lg in zip(prompts, logits)}

    def forward(tokens):
        return by_tokens[tuple(int(t) for t in tokens)]

    art_logits: list = []
    figures = evaluate(ctx.inputs["reference"], forward, with_text=with_text, keep=art_logits)
    dq, info = _dequantized_logits(ctx, GgufFile(sorted(ctx.out.glob("*.gguf"))[0]))
    runtime, info = _runtime_figures(dq, art_logits, info)
    figures.update(runtime)
    target = ctx.params["target"]
    ver = verdict(figures, ctx.params.get("thresholds"), where=f"gguf {ctx.params['quant']} on {target}",
                  require=("runtime_",))
    ver["runtime_check"] = info
    ver["ran_on"] = {"target": target, "how": RUNTIMES[target].runs_on, "devices": devices.split(",")}
    ctx.result["verification"] = ver
    ctx.log(f"verify on {devices}: " + ", ".join(f"{k}={v:.4g}" for k, v in figures.items() if isinstance(v, float)))


STEPS = [("bundle", step_bundle), ("verify", step_verify)]
