"""A .gguf file's weights as the runtime sees them, back under the HF model's parameter names.

Every tensor is dequantized (by ggml's reference dequantizers, verify/ggml_dequant.py; F32 and any type
ggml has no dequantizer for by gguf-py's `gguf.quants.dequantize`) and renamed
with gguf-py's own tensor map (HF name -> GGUF name, inverted). llama.cpp's converter permutes the rows of q/k
projections for Llama-style rope ("llama" architecture: Llama, Mistral); that is undone here. Phi-3's
fused qkv / gate_up tensors are written as they are (PHI3 splits them at run time).
Runs inside the gguf image (gguf-py, llama_cpp); one tensor is dequantized at a time, when it is asked for.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

# GGUF architecture -> does the converter permute q/k rows (LlamaModel.permute)?
ROPE_PERMUTED = {"llama": True, "qwen2": False, "phi3": False}
# GGUF tensors that are no HF parameter (computed from the config, e.g. llama3 rope frequencies)
NOT_PARAMETERS = ("rope_freqs.weight",)


class WeightsError(Exception):
    """The file's tensors do not map one-to-one onto the HF model's parameters."""


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of the converter's permute(w, n_head): rows (head, 2, d/2) were stored as (head, d/2, 2)."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def hf_names(gf, hf_params: Iterable[str]) -> dict[str, str]:
    """GGUF tensor name -> HF parameter name, for every tensor of the file (WeightsError otherwise)."""
    import gguf  # noqa: PLC0415

    arch_name = gf.kv.get("general.architecture")
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch_name)
    if arch is None or arch_name not in ROPE_PERMUTED:
        raise WeightsError(f"no dequantized-weights mapping for GGUF architecture '{arch_name}' "
                           f"(known: {', '.join(ROPE_PERMUTED)})")
    n_blocks = int(gf.kv[f"{arch_name}.block_count"])
    tmap = gguf.get_tensor_name_map(arch, n_blocks)
    to_hf = {}
    for hf in hf_params:
        name = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is not None:
            to_hf[name] = hf
    mapping, unmapped = {}, []
    for t in gf.tensors:
        if t.name in to_hf:
            mapping[t.name] = to_hf[t.name]
        elif t.name not in NOT_PARAMETERS:
            unmapped.append(t.name)
    if unmapped:
        raise WeightsError(f"GGUF tensors with no HF parameter: {', '.join(unmapped[:5])}")
    return mapping


class TensorLoader:
    """One tensor of the file, dequantized to float32 when called (q/k permutation undone); `rows(sel)`
    dequantizes only the rows `sel` selects (an embedding's looked-up rows, a block of LM-head rows): GGUF
    blocks run along a row, so rows dequantize independently."""

    def __init__(self, gf, t, unpermute_heads: int | None):
        self.gf, self.t, self.heads = gf, t, unpermute_heads

    def __call__(self) -> np.ndarray:
        return self.rows(None)

    def rows(self, sel) -> np.ndarray:
        from gguf.constants import GGMLQuantizationType  # noqa: PLC0415
        from gguf.quants import dequantize  # noqa: PLC0415

        from builders.verify import ggml_dequant  # noqa: PLC0415

        data = self.gf.data(self.t)
        if sel is not None:
            if self.heads is not None:
                raise ValueError(f"{self.t.name}: rows of a q/k tensor stored permuted cannot be read apart")
            data = data[sel]
        if ggml_dequant.available(self.t.type):  # ggml's C dequantizer (verify/ggml_dequant.py)
            w = ggml_dequant.dequantize(data, self.t.type)
        else:
            w = np.asarray(dequantize(data, GGMLQuantizationType(self.t.type)), dtype=np.float32)
        if self.heads is not None:
            w = unpermute(w, self.heads)
        elif not w.flags.writeable:
            w = w.copy()  # F32 data are a read-only view of the map
        del data
        self.gf.release(self.t)  # the file's pages of this tensor leave the resident set (see GgufFile.release)
        return w


def loaders(gf, hf_params: Iterable[str]) -> dict[str, tuple[TensorLoader, str]]:
    """{hf_name: (loader, gguf type name)} for every tensor of the file (gf: builders.gguf_file.GgufFile);
    nothing is read before a loader is called."""
    arch_name = gf.kv.get("general.architecture")
    mapping = hf_names(gf, hf_params)
    n_head = int(gf.kv[f"{arch_name}.attention.head_count"])
    n_kv = int(gf.kv.get(f"{arch_name}.attention.head_count_kv") or n_head)

    def heads(hf: str) -> int | None:
        if ROPE_PERMUTED[arch_name] and hf.endswith(("q_proj.weight", "q_proj.bias")):
            return n_head
        if ROPE_PERMUTED[arch_name] and hf.endswith(("k_proj.weight", "k_proj.bias")):
            return n_kv
        return None

    return {mapping[t.name]: (TensorLoader(gf, t, heads(mapping[t.name])), gf.type_name(t))
            for t in gf.tensors if t.name in mapping}


def load_into(gf, hf_params: Iterable[str], put: Callable[[str, object], None], lazy: bool = False) -> dict:
    """Hand every tensor of the file (gf: builders.gguf_file.GgufFile) to `put(hf_name, array)`, dequantized one at a time with the q/k
    permutation undone; with lazy=True `put` gets the loader instead (dequantized when it is called).
    Returns {hf_name: gguf type name} of what was handed over."""
    loaded = {}
    for hf, (load, type_name) in loaders(gf, hf_params).items():
        put(hf, load if lazy else load())
        loaded[hf] = type_name
    return loaded
