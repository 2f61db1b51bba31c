"""Targets as data: where an artifact runs. The README's support matrix is generated from this table."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    needs_macos: bool = False  # some step (link/compile) only runs on a macOS host
    needs_gpu: bool = False  # running the artifact needs a GPU
    runs_on_build_host: bool = False  # the artifact can be executed on a Linux x86_64 build host


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target("cpu", "x86_64 Linux CPU", runs_on_build_host=True),
        Target("cuda", "NVIDIA GPU (CUDA)", needs_gpu=True),
        Target("vulkan", "Vulkan GPU on Linux", needs_gpu=True),
        Target("vulkan-windows", "Vulkan GPU on Windows", needs_gpu=True),
        Target("android", "Android arm64 (OpenCL)"),
        Target("iphone", "iOS arm64 (Metal)", needs_macos=True),
        Target("metal", "macOS arm64 (Metal)", needs_macos=True),
        Target("metal_x86_64", "macOS x86_64 (Metal)", needs_macos=True),
        Target("webgpu", "browser (WebGPU, wasm)"),
        Target("ane", "Apple Neural Engine (Core ML)", needs_macos=True),
    ]
}
