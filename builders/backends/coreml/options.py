"""Plan-side tables of the coreml backend: LUT presets (the quant codes), option parsing, part file
names and the `--chunk auto` estimate. Pure Python: no torch/coremltools import here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from builders.archs import DecoderConfig
from builders.errors import MatrixError
from builders.options import Option, OptionSet

LUT_BITS = (1, 2, 3, 4, 6, 8)  # what coremltools' kmeans palettizer (constexpr_lut_to_dense) supports
DEFAULT_GROUP = 8  # output channels sharing one LUT when only `bits` is given (ANEMLL's default)
MB = 1024 * 1024
MAX_CONTEXT = 32768  # tokens: ANEMLL's largest context; `context` and `batch` (prefill) are bounded by it
MAX_CHUNK_MB = 65536  # MiB: far above any Core ML weight file an ANE can map (ANEMLL keeps chunks near 1 GiB)
CHUNK_OVERHEAD = 1.10  # the estimate adds 10% to the raw weight bytes (headers, norms, rope tables)
PARTS = ("lut1", "lut2", "lut3")  # embeddings, FFN/prefill, LM head (ANEMLL's --lut1/--lut2/--lut3)
LM_HEAD_SPLIT_MAX = 16384  # vocab rows per LM head output (ANE tensor dimension limit)
# fp16 elements in 64 bytes. The Neural Engine keeps the last axis of a buffer contiguous and aligned to
# 64 bytes (Apple, "Deploying Transformers on the Apple Neural Engine", 2022, principle 1); each LM head
# output is [1, 1, rows], so a part whose row count is a multiple of 32 carries no padding.
ANE_ROW_ALIGN = 32


@dataclass(frozen=True)
class Lut:
    """k-means LUT of 2**bits fp16 entries per group of `group_size` output channels."""

    bits: int
    group_size: int = DEFAULT_GROUP

    @property
    def code(self) -> str:
        return f"{self.bits},{self.group_size}"

    def ratio(self, rows: int, cols: int) -> float:
        """bytes of the palettized weight / bytes of the fp16 weight."""
        lut_bytes = math.ceil(rows / self.group_size) * (2**self.bits) * 2
        return (rows * cols * self.bits / 8 + lut_bytes) / (rows * cols * 2)


@dataclass(frozen=True)
class Preset:
    lut1: str | None
    lut2: str | None
    lut3: str | None
    about: str


# quant code -> LUT per part ("bits,group_size" or None = fp16); per-cell options lut1/lut2/lut3 override
QUANTS: dict[str, Preset] = {
    "fp16": Preset(None, None, None, "no LUT anywhere: fp16 weights in every part"),
    "lut4": Preset(None, "4,8", "6,8", "ANEMLL defaults: FFN 4-bit, LM head 6-bit, embeddings fp16"),
    "lut6": Preset(None, "6,8", "6,8", "FFN and LM head 6-bit (ANEMLL 'high quality')"),
    "lut6_4": Preset(None, "6,4", "6,4", "FFN and LM head 6-bit, one LUT per 4 output channels"),
    "lut4_8": Preset(None, "4,8", "6,4", "FFN 4-bit per 8 channels, LM head 6-bit per 4 channels"),
}

def parse_lut(value: Any, where: str) -> Lut | None:
    """`bits` or "bits,group_size"; None, "", "none", false -> no LUT (fp16)."""
    if value in (None, "", False) or (isinstance(value, str) and value.strip().lower() in ("none", "fp16")):
        return None
    text = str(value).strip()
    parts = [p.strip() for p in text.split(",")]
    try:
        if isinstance(value, bool) or len(parts) > 2:
            raise ValueError
        bits = int(parts[0])
        group = int(parts[1]) if len(parts) == 2 else DEFAULT_GROUP
    except ValueError:
        raise MatrixError(f"{where}={value!r}: write bits or \"bits,group_size\" (e.g. 4 or \"6,4\"), "
                          "or none for fp16") from None
    if bits not in LUT_BITS:
        raise MatrixError(f"{where}={value!r}: LUT bits must be one of {', '.join(map(str, LUT_BITS))}")
    if group < 1:
        raise MatrixError(f"{where}={value!r}: group_size must be a positive integer")
    return Lut(bits, group)


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_CONTEXT:
        raise MatrixError(f"{where}={value!r}: must be a positive integer at most {MAX_CONTEXT}")
    return value


def _chunk(value: Any, where: str) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MatrixError(f"{where}={value!r}: write a positive number of chunks or auto")
    return value


def _max_mb(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_CHUNK_MB:
        raise MatrixError(f"{where}={value!r}: must be a number of MiB above 0 and at most {MAX_CHUNK_MB}")
    return value


def _prefix(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.replace("_", "").replace("-", "").isalnum():
        raise MatrixError(f"{where}={value!r}: use letters, digits, '-' or '_' (it starts every file name)")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise MatrixError(f"{where}={value!r}: must be true or false")
    return value


def _default(parse: Callable[[Any, str], Any], default: Any) -> Callable[[Any, str], Any]:
    return lambda value, where: default if value is None else parse(value, where)


def _lut_code(value: Any, where: str) -> str | None:
    lut = parse_lut(value, where)
    return lut.code if lut else "none"


OPTIONS = OptionSet("coreml", [
    Option("context", int, 512, "tokens of the KV cache (state) and of the rope tables",
           what=f"a positive integer at most {MAX_CONTEXT}", parse=_default(_positive_int, 512)),
    Option("batch", int, 64, "tokens per prefill call (at most context)",
           what=f"a positive integer at most {MAX_CONTEXT}", parse=_default(_positive_int, 64)),
    Option("chunk", (int, str), 1, "FFN/prefill chunks, or auto: the fewest whose weights fit max_chunk_mb",
           what="a positive integer or auto", parse=_default(_chunk, 1), aliases=("chunks",)),
    Option("max_chunk_mb", (int, float), 1024, "largest chunk weight file (MiB) for chunk auto",
           what=f"a number above 0 and at most {MAX_CHUNK_MB}", parse=_default(_max_mb, 1024),
           aliases=("max-chunk-mb",)),
    Option("prefix", str, None, "file name prefix of every part (default: the model_type)",
           what="letters, digits, - or _", parse=_prefix),
    Option("argmax", bool, False, "the LM head returns the argmax instead of logits",
           what="true or false", parse=_default(_flag, False)),
])
# lut1/lut2/lut3 override the quant's preset per part; kept only when given, as "bits,group_size" or "none"
LUT_OPTIONS = OptionSet("coreml", [
    Option(part, (int, str), None, f"LUT of the {what} (none = fp16); overrides "
           "the quant's preset", what=f"bits in {', '.join(map(str, LUT_BITS))}, \"bits,group_size\" or none",
           parse=_lut_code)
    for part, what in zip(PARTS, ("embeddings", "FFN/prefill chunks", "LM head"))
])


def normalize(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Defaults completed, every value checked. lut1/lut2/lut3 are kept only when given (they override
    the quant's preset) and normalized to "bits,group_size" or "none"."""
    luts = {k: v for k, v in options.items() if k in PARTS}
    for key in options:
        if key not in PARTS and OPTIONS.aliases.get(key, key) not in OPTIONS.options:
            raise MatrixError(f"{where}: unknown coreml option '{key}'; known: {', '.join([*OPTIONS, *PARTS])}")
    out = OPTIONS.normalize({k: v for k, v in options.items() if k not in PARTS}, where)
    out.update({k: v for k, v in LUT_OPTIONS.normalize(luts, where).items() if k in luts})
    if out["batch"] > out["context"]:
        raise MatrixError(f"{where}: coreml option batch={out['batch']} is larger than context={out['context']}; "
                          "lower batch")
    return out


def luts_for(quant: str, options: Mapping[str, Any]) -> dict[str, str | None]:
    """Resolved LUT per part: the quant's preset, overridden by explicit lut1/lut2/lut3 options."""
    preset = QUANTS[quant]
    out = {}
    for part in PARTS:
        value = options.get(part, getattr(preset, part))
        lut = parse_lut(value, f"coreml {part}")
        out[part] = lut.code if lut else None
    return out


def lut_of(code: str | None) -> Lut | None:
    return parse_lut(code, "lut") if code else None


# ---- sizes and the chunk estimate ------------------------------------------------------------------

def layer_shapes(config: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(out, in) of every weight matrix of one decoder layer."""
    c = DecoderConfig.from_hf(config)
    h, inter, heads, kv, hd = c.hidden, c.intermediate, c.heads, c.kv_heads, c.head_dim
    return [(heads * hd, h), (kv * hd, h), (kv * hd, h), (h, heads * hd), (inter, h), (inter, h), (h, inter)]


def layer_bytes(config: Mapping[str, Any], lut: Lut | None) -> float:
    total = 0.0
    for rows, cols in layer_shapes(config):
        total += rows * cols * 2 * (lut.ratio(rows, cols) if lut else 1.0)
    return total + 2 * config["hidden_size"] * 2  # two RMSNorm weights, fp16


def chunk_layers(n_layers: int, n_chunks: int) -> list[range]:
    """Balanced split: chunk sizes differ by at most one layer, the larger ones first."""
    base, extra = divmod(n_layers, n_chunks)
    out, start = [], 0
    for i in range(n_chunks):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def rope_bytes(config: Mapping[str, Any], context: int) -> int:
    """cos and sin tables [context, head_dim] in fp16, stored in every chunk."""
    return 2 * context * DecoderConfig.from_hf(config).head_dim * 2


def chunk_mb(config: Mapping[str, Any], lut: Lut | None, n_chunks: int, context: int = 0) -> float:
    """Estimated size of the largest chunk's weight file (MiB), 10% overhead included."""
    largest = math.ceil(config["num_hidden_layers"] / n_chunks)
    return (largest * layer_bytes(config, lut) + rope_bytes(config, context)) * CHUNK_OVERHEAD / MB


def auto_chunks(config: Mapping[str, Any], lut: Lut | None, max_mb: float, where: str, context: int = 0) -> int:
    """The fewest chunks whose largest weight file fits in max_mb."""
    n_layers = config["num_hidden_layers"]
    for n in range(1, n_layers + 1):
        if chunk_mb(config, lut, n, context) <= max_mb:
            return n
    need = chunk_mb(config, lut, n_layers, context)
    raise MatrixError(f"{where}: one decoder layer alone needs {need:.1f} MiB, more than max_chunk_mb={max_mb}; "
                      "raise max_chunk_mb or use a smaller LUT")


def resolve_chunks(config: Mapping[str, Any], options: Mapping[str, Any], lut2: str | None, where: str) -> int:
    n_layers = config["num_hidden_layers"]
    if options["chunk"] == "auto":
        return auto_chunks(config, lut_of(lut2), options["max_chunk_mb"], where, options["context"])
    if options["chunk"] > n_layers:
        raise MatrixError(f"{where}: coreml option chunk={options['chunk']} exceeds the model's {n_layers} layers; "
                          f"use chunk <= {n_layers}")
    return options["chunk"]


# ---- LM head split ---------------------------------------------------------------------------------

def lm_head_granularity(lut: Lut | None) -> int:
    """Rows of every LM head part but the last are a multiple of this: the ANE row alignment and, with a
    LUT, the palettization group (coremltools leaves a weight whose rows are not a multiple of the
    group in fp16, with only a log warning)."""
    return math.lcm(ANE_ROW_ALIGN, lut.group_size) if lut else ANE_ROW_ALIGN


def lm_head_split_sizes(vocab: int, lut: Lut | None, where: str = "coreml lut3") -> list[int]:
    """Rows per LM head output: the fewest parts of at most LM_HEAD_SPLIT_MAX rows, balanced in units of
    lm_head_granularity() (larger parts first); the last part takes the remainder, which is short of a
    whole unit only when the vocabulary is (convert.lm_head pads that part's weight to the LUT group).
    E.g. 151936 (Qwen2) -> 8 x 15200 + 2 x 15168; 128256 (Llama 3) -> 8 x 16032."""
    g = lm_head_granularity(lut)
    cap = LM_HEAD_SPLIT_MAX // g * g
    if cap == 0:
        raise MatrixError(f"{where}={lut.code}: a LUT group of {lut.group_size} rows does not fit in one LM head "
                          f"part ({LM_HEAD_SPLIT_MAX} rows); use a group size of at most "
                          f"{LM_HEAD_SPLIT_MAX // ANE_ROW_ALIGN}")
    n = max(1, math.ceil(vocab / cap))
    units = math.ceil(vocab / g)
    base, extra = divmod(units, n)
    sizes = [(base + (1 if i < extra else 0)) * g for i in range(n)]
    sizes[-1] -= units * g - vocab
    return sizes


LAYER_WEIGHTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # layer_shapes() order


def check_ffn_lut(config: Mapping[str, Any], lut2: str | None, where: str) -> None:
    """Every decoder-layer weight must split into whole LUT groups of output channels (coremltools would
    leave it in fp16); unlike the embeddings and the LM head, these weights are not padded."""
    lut = lut_of(lut2)
    if lut is None:
        return
    for name, (rows, _) in zip(LAYER_WEIGHTS, layer_shapes(config)):
        if rows % lut.group_size:
            fit = max(g for g in range(1, lut.group_size) if all(r % g == 0 for r, _ in layer_shapes(config)))
            raise MatrixError(f"{where}: coreml lut2={lut.code}: {name} has {rows} output channels, not a multiple "
                              f"of the LUT group size {lut.group_size}; use a group size that divides every layer "
                              f"weight, e.g. lut2: \"{lut.bits},{fit}\"")


def lut_padding(rows: int, lut: Lut | None) -> int:
    """Zero rows to add below a weight of `rows` rows so that it can be palettized with `lut`."""
    return -rows % lut.group_size if lut else 0


# ---- file names (ANEMLL's) ---------------------------------------------------------------------------

def _lut_tag(code: str | None) -> str:
    return f"_lut{lut_of(code).bits}" if code else ""


def file_names(prefix: str, luts: Mapping[str, str | None], n_chunks: int) -> dict[str, Any]:
    tag2 = _lut_tag(luts["lut2"])
    return {
        "embeddings": f"{prefix}_embeddings{_lut_tag(luts['lut1'])}.mlpackage",
        "lm_head": f"{prefix}_lm_head{_lut_tag(luts['lut3'])}.mlpackage",
        "ffn": [f"{prefix}_FFN{tag2}_chunk_{i + 1:02d}of{n_chunks:02d}.mlpackage" for i in range(n_chunks)],
        "prefill": [f"{prefix}_prefill{tag2}_chunk_{i + 1:02d}of{n_chunks:02d}.mlpackage" for i in range(n_chunks)],
        "ffn_pf": [f"{prefix}_FFN_PF{tag2}_chunk_{i + 1:02d}of{n_chunks:02d}.mlpackage" for i in range(n_chunks)],
    }
