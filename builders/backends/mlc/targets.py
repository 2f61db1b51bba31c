"""MLC library targets as data: TVM target, output file kind, dlight schedule rules, and what can be
checked on a Linux build host. Plan-side safe (no tvm import)."""

from __future__ import annotations

from dataclasses import dataclass, field



@dataclass(frozen=True)
class MlcTarget:
    name: str
    tvm: dict  # TVM target JSON (device part); "host" added from `host`
    host: dict | None  # host-side target for device targets
    suffix: str  # library file suffix: "so" | "tar" | "wasm" | "dylib"
    gpu_rules: tuple[str, ...] = ()  # dlight gpu rules, in order; () = CPU (default llvm pipeline)
    system_lib: bool = False  # static system library (iOS / web) with prefix
    object_arch: str | None = None  # what the objects in a .tar must be (checked structurally)
    deferred: str | None = None  # a step that only runs elsewhere (recorded in the manifest)
    notes: tuple[str, ...] = field(default_factory=tuple)
    pass_config: tuple[tuple[str, object], ...] = ()  # tvm PassContext config for this target
    requires_cpu: str | None = None  # a CPU baseline (cpu_features.BASELINES) the library's code needs
    image: str = "mlc"  # toolchain image of the compile node
    lib_image: str = "mlc"  # toolchain image of the library node (where the library is verified)
    link: str | None = None  # how the library file is linked in that image: "emcc-tvmjs" (compile.py) | None
    ci_runner: bool = False  # built only where a Vulkan TVM can be built (tvm_source.py), else "built on CI runners"


CPU_BASELINE = "x86-64-v3"  # LLVM's name for the x86-64 psABI level 3 (builders/backends/mlc/cpu_features.py)

GPU_RULES = ("Matmul", "GEMV", "Reduction", "GeneralReduction", "Fallback")
# dlight's Matmul rule segfaults when scheduling for Metal, and in Tensorize for CUDA sm_80 fp16
# (TVM 0.27.0.post1): leave it out there
NO_MATMUL_RULES = ("GEMV", "Reduction", "GeneralReduction", "Fallback")

# TIR common-subexpression elimination breaks some GPU kernels in TVM 0.27.0.post1 ("variable cse_v..
# has been used before definition", seen for cuda/opencl/metal/webgpu): off for every GPU target
NO_CSE = (("tirx.disable_cse_tir", True),)

ANDROID_HOST = {"kind": "llvm", "mtriple": "aarch64-linux-android"}
IOS_HOST = {"kind": "llvm", "mtriple": "arm64-apple-ios14.0.0"}
MAC_HOST = {"kind": "llvm", "mtriple": "arm64-apple-macos"}
MAC_X86_HOST = {"kind": "llvm", "mtriple": "x86_64-apple-darwin"}
WASM_HOST = {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}
LINUX_HOST = {"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu"}
WINDOWS_HOST = {"kind": "llvm", "mtriple": "x86_64-w64-windows-gnu"}
VULKAN = {"kind": "vulkan", "max_threads_per_block": 256, "max_num_threads": 256, "thread_warp_size": 1,
          "supports_float16": True, "supports_int16": True, "supports_16bit_buffer": True}

TARGETS: dict[str, MlcTarget] = {t.name: t for t in [
    # pinned baseline: x86-64-v3 (AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE; Haswell and later, Zen 1 and
    # later); the generic x86-64 baseline has no F16C/FMA and runs float16 math in software (~10x slower)
    MlcTarget("cpu", {"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu", "mcpu": CPU_BASELINE}, None, "so",
              requires_cpu=CPU_BASELINE,
              notes=(f"needs an {CPU_BASELINE} CPU (AVX2, FMA, F16C); checked before it is run",)),
    MlcTarget("cuda", {"kind": "cuda", "arch": "sm_80", "max_threads_per_block": 1024,
                       "max_num_threads": 1024, "thread_warp_size": 32, "max_shared_memory_per_block": 49152},
              {"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu"}, "so", NO_MATMUL_RULES, pass_config=NO_CSE),
    MlcTarget("android", {"kind": "opencl", "device": "adreno", "max_threads_per_block": 256,
                          "max_num_threads": 256, "thread_warp_size": 1, "max_shared_memory_per_block": 16384},
              ANDROID_HOST, "tar", GPU_RULES, system_lib=True, object_arch="aarch64-elf", pass_config=NO_CSE),
    MlcTarget("iphone", {"kind": "metal", "max_threads_per_block": 256, "max_num_threads": 256,
                         "thread_warp_size": 32, "max_shared_memory_per_block": 32768},
              IOS_HOST, "tar", NO_MATMUL_RULES, system_lib=True, object_arch="arm64-macho", pass_config=NO_CSE,
              notes=("linked into the iOS app by Xcode (static system library)",)),
    MlcTarget("metal", {"kind": "metal", "max_threads_per_block": 1024, "max_num_threads": 1024,
                        "thread_warp_size": 32, "max_shared_memory_per_block": 32768},
              MAC_HOST, "dylib", NO_MATMUL_RULES, object_arch="arm64-macho", pass_config=NO_CSE,
              deferred="link: the .dylib is linked on macOS (native executor); Linux builds the objects"),
    MlcTarget("metal_x86_64", {"kind": "metal", "max_threads_per_block": 1024, "max_num_threads": 1024,
                               "thread_warp_size": 32, "max_shared_memory_per_block": 32768},
              MAC_X86_HOST, "dylib", NO_MATMUL_RULES, object_arch="x86_64-macho", pass_config=NO_CSE,
              deferred="link: the .dylib is linked on macOS (native executor); Linux builds the objects"),
    # linked in the webgpu image with TVM's web runtime into the .wasm web-llm loads (compile.link_tvmjs_wasm)
    MlcTarget("webgpu", {"kind": "webgpu", "max_num_threads": 256}, WASM_HOST, "wasm", GPU_RULES,
              system_lib=True, object_arch="wasm", pass_config=NO_CSE, image="webgpu", link="emcc-tvmjs",
              lib_image="webgpu"),  # run there: tvmjs in Node on WebGPU (lavapipe), steps._verify_webgpu
    # a TVM built with USE_VULKAN=ON (image mlc-vulkan, from a pinned source): on CI runners unless a local
    # source is given (builders/backends/mlc/tvm_source.py)
    MlcTarget("vulkan", VULKAN, LINUX_HOST, "so", GPU_RULES, object_arch="x86_64-elf", pass_config=NO_CSE,
              image="mlc-vulkan", ci_runner=True),
    MlcTarget("vulkan-windows", VULKAN, WINDOWS_HOST, "dll", GPU_RULES, object_arch="x86_64-pe",
              pass_config=NO_CSE, image="mlc-vulkan", link="mingw", ci_runner=True),
]}
