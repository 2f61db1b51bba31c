"""Linux checks of the saved packages (step 8): spec checks, LUT reconstruction error per weight,
numerical check of the saved ML programs (numpy interpreter) against the transformers reference,
content hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from builders.backends.coreml import milrun, runtime
from builders.backends.coreml.layout import Layout
from builders.backends.coreml.options import Lut
from builders.errors import NodeFailed

SPEC_VERSION_IOS18 = 9
LM_HEAD_ROWS = 256  # hidden states per interpreted LM head call (one matrix product per split for them)
OPSET = "CoreML8"


def tree_hash(path: Path) -> str:
    """sha256 over (relative path, sha256) of every file of a package, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        with open(f, "rb") as fh:  # streamed: a chunk's weight file is as large as the chunk
            digest = hashlib.file_digest(fh, "sha256").digest()
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + digest)
    return h.hexdigest()


def weight_mb(path: Path) -> float:
    """Size of a package's weight files in MiB (what --max-chunk-mb limits)."""
    return sum(f.stat().st_size for f in (Path(path) / "Data" / "com.apple.CoreML" / "weights").glob("*")) / (1 << 20)


def _io(fn_desc) -> tuple[list, list, list]:
    inputs = [i.name for i in fn_desc.input]
    outputs = [o.name for o in fn_desc.output]
    states = [s.name for s in fn_desc.state]
    return inputs, outputs, states


def expected(layout: Layout) -> dict[str, dict]:
    """package name -> what its spec must show."""
    chunk_io = (["hidden_states", "position_ids", "causal_mask", "current_pos"], ["output_hidden_states"], ["kv_cache"])
    head_out = ["argmax_idx", "argmax_val"] if layout.argmax else [f"logits{i + 1}" for i in range(layout.splits)]
    n = layout.names
    exp = {n["embeddings"]: {"functions": {"main": (["input_ids"], ["hidden_states"], [])}, "lut": layout.lut("lut1"),
                             "op_types": ("gather",)},
           n["lm_head"]: {"functions": {"main": (["hidden_states"], head_out, [])}, "lut": layout.lut("lut3"),
                          "op_types": ("conv",)}}
    for name in n["ffn_pf"]:
        exp[name] = {"functions": {"infer": chunk_io, "prefill": chunk_io}, "lut": layout.lut("lut2"),
                     "op_types": ("conv",)}
    return exp


WEIGHT_INPUT = {"conv": "weight", "gather": "x"}  # the input of each palettized op type that holds the weight


def unpalettized(pkg: milrun.Package, op_types: tuple[str, ...]) -> list[str]:
    """Every weight of an op of `op_types` (in any function) that is not the output of a
    constexpr_lut_to_dense op: coremltools skips a weight it cannot palettize (e.g. rows not a multiple
    of the group size) with only a log warning, so a LUT part is checked weight by weight."""
    out = []
    for fname in pkg.functions:
        block, _ = pkg.block(fname)
        producers = {o.name: op for op in block.operations for o in op.outputs}
        for op in block.operations:
            if op.type not in op_types:
                continue
            (arg,) = op.inputs[WEIGHT_INPUT[op.type]].arguments
            src = producers.get(arg.name) if arg.name else None
            if src is None or src.type != "constexpr_lut_to_dense":
                dims = src.outputs[0].type.tensorType.dimensions if src else []
                shape = "x".join(str(d.constant.size) for d in dims)
                out.append(f"{fname}:{op.type} {op.outputs[0].name} weight {arg.name or '(immediate)'}"
                           + (f" [{shape}]" if shape else ""))
    return out


def spec_check(path: Path, want: dict) -> tuple[dict, list[str]]:
    """Inputs, outputs, states, functions, deployment target and LUT ops of one saved package."""
    pkg = milrun.Package(path)
    spec, failures = pkg.spec, []
    desc = spec.description
    functions = {f.name: _io(f) for f in desc.functions} or {"main": _io(desc)}
    facts = {"specification_version": spec.specificationVersion, "functions": sorted(functions),
             "default_function": desc.defaultFunctionName or None}
    if spec.specificationVersion < SPEC_VERSION_IOS18:
        failures.append(f"{path.name}: specification version {spec.specificationVersion} < {SPEC_VERSION_IOS18} (iOS18)")
    if sorted(functions) != sorted(want["functions"]):
        failures.append(f"{path.name}: functions {sorted(functions)} != {sorted(want['functions'])}")
    for fname, (inputs, outputs, states) in want["functions"].items():
        got = functions.get(fname)
        if got is None:
            continue
        for what, a, b in (("inputs", got[0], inputs), ("outputs", got[1], outputs), ("states", got[2], states)):
            if list(a) != list(b):
                failures.append(f"{path.name}:{fname}: {what} {list(a)} != {list(b)}")
        f = spec.mlProgram.functions[fname]
        if f.opset != OPSET:
            failures.append(f"{path.name}:{fname}: opset {f.opset} != {OPSET}")
    geometry = {name: lut_geometry(w.indices, w.table[..., None]) + (w.shape[0],) for name, w in lut_weights(pkg)}
    facts["lut_ops"] = len(geometry)
    lut: Lut | None = want["lut"]
    if lut is None and geometry:
        failures.append(f"{path.name}: {len(geometry)} constexpr_lut_to_dense ops but no LUT was asked")
    if lut is not None:
        if not geometry:
            failures.append(f"{path.name}: LUT {lut.code} asked but no constexpr_lut_to_dense op")
        left = unpalettized(pkg, want.get("op_types", ("conv",)))
        facts["unpalettized"] = left
        if geometry and left:
            failures.append(f"{path.name}: LUT {lut.code} asked but {len(left)} weight(s) stayed fp16: "
                            f"{'; '.join(left[:4])}" + (" ..." if len(left) > 4 else ""))
        for name, (bits, group, rows) in geometry.items():
            if (bits, group) != (lut.bits, min(lut.group_size, rows)):
                failures.append(f"{path.name}: {name} has LUT {bits},{group}, asked {lut.code}")
        facts["lut"] = lut.code
    return facts, failures


def _lut_op_inputs(pkg: milrun.Package, function: str | None, read):
    block, _ = pkg.block(function or pkg.functions[0])
    consts = {op.outputs[0].name: op.attributes["val"] for op in block.operations if op.type == "const"}

    def value(binding, how):
        return how(consts[binding.name] if binding.name else binding.value)

    for op in block.operations:
        if op.type == "constexpr_lut_to_dense":
            yield (op.outputs[0].name, value(op.inputs["indices"].arguments[0], read),
                   np.asarray(value(op.inputs["lut"].arguments[0], pkg.value)))


def lut_weights(pkg: milrun.Package, function: str | None = None):
    """(output name, milrun.LutWeight) of every constexpr_lut_to_dense op of one function, one op at a time,
    its indices left packed in the weight file (a part's indices are as many bytes as it has weights)."""
    for name, indices, table in _lut_op_inputs(pkg, function, pkg.packed):
        yield name, milrun.LutWeight(indices, table)


def lut_ops(pkg: milrun.Package, function: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """output name -> (indices, lut) of every constexpr_lut_to_dense op of one function (indices unpacked by
    coremltools' blob reader)."""
    return {name: (np.asarray(indices), table) for name, indices, table in _lut_op_inputs(pkg, function, pkg.value)}


def lut_geometry(indices: np.ndarray, table: np.ndarray) -> tuple[int, int]:
    """(bits, output channels per LUT) of one op (per_grouped_channel on axis 0)."""
    bits = int(round(np.log2(table.shape[-2])))
    return bits, indices.shape[0] // table.shape[0]


def lut_errors(final: Path, fp16: Path, function: str | None = None) -> dict[str, dict]:
    """Per palettized weight: relative L2 and max |error| of the dequantized weight against the fp16
    weight of the same part before palettization (read back from both saved packages), one weight and a
    block of rows at a time (milrun.LutWeight.blocks; sums in float64)."""
    pkg, ref = milrun.Package(final), milrun.Function(milrun.Package(fp16), "main")
    fn = function or pkg.functions[0]
    out = {}
    for name, lut in lut_weights(pkg, fn):
        base = name[: -len("_palettized")] if name.endswith("_palettized") else name
        if base not in ref._consts:
            out[name] = {"error": "no fp16 weight of that name"}
            continue
        w = np.asarray(ref._consts[base]).reshape(lut.shape)
        err2 = ref2 = max_abs = 0.0
        for r, r1, dense in lut.blocks():
            d = dense.astype(np.float32) - w[r:r1].astype(np.float32)
            err2 += float(np.square(d, dtype=np.float64).sum())
            ref2 += float(np.square(w[r:r1], dtype=np.float64).sum())
            max_abs = max(max_abs, float(np.abs(d).max()))
        out[base] = {"shape": list(lut.shape), "rel_l2": float(np.sqrt(err2) / max(np.sqrt(ref2), 1e-30)),
                     "max_abs": max_abs}
    pkg.release()
    return out


def load_parts(out: Path, layout: Layout) -> runtime.Parts:
    n = layout.names
    chunks = [milrun.Package(out / name) for name in n["ffn_pf"]]  # infer and prefill share each one's weights
    return runtime.Parts(
        embeddings=milrun.load(out / n["embeddings"]),
        infer=[milrun.load(pkg.path, "infer", pkg) for pkg in chunks],
        prefill=[milrun.load(pkg.path, "prefill", pkg) for pkg in chunks],
        # the LM head runs once over all positions: its LUT weights stay packed (dequantized per block in
        # that pass); with the in-model argmax it runs once per position, so they are dequantized once
        lm_head=milrun.load(out / n["lm_head"], lazy_luts=not layout.argmax), context=layout.context,
        batch=layout.batch, argmax=layout.argmax,
        lm_head_rows=LM_HEAD_ROWS)


def numerical(parts: runtime.Parts, reference: dict, layout: Layout) -> dict:
    """Teacher-forced logits of every reference prompt (prefill over the prompt, then one `infer` call per
    continuation token) and, when the reference was loaded with its text logits (metrics.load_reference
    text=True: verify/budget.py scores_text), of the perplexity text (prefill),
    compared with the transformers logits. The prompts and the text run as independent sessions in lockstep
    (runtime.teacher_forced_many): one pass over each weight per prefill batch and per decode round."""
    from builders.verify.metrics import compare, perplexity

    longest = max(len(tokens) for tokens, _, _ in reference["prompts"])
    if longest > layout.context:
        raise NodeFailed(f"test: a reference prompt with its decode steps is {longest} tokens, longer than the "
                         f"coreml option context={layout.context}; set context >= {longest}")
    if layout.argmax:
        return argmax_agreement(parts, reference, layout)
    scored = perplexity_tokens(layout.context, layout.batch) if reference["text_logits"] is not None else 0
    text = reference["text_tokens"][:scored]
    per_prompt, text_art = runtime.teacher_forced_many(parts, [(t, n) for t, n, _ in reference["prompts"]], text)
    refs_pre, arts_pre, refs_dec, arts_dec = [], [], [], []
    for (tokens, prompt_len, logits), (pre, dec) in zip(reference["prompts"], per_prompt):
        refs_pre.append(logits[:prompt_len]), arts_pre.append(pre)
        refs_dec.append(logits[prompt_len:]), arts_dec.append(dec)
    figures = compare(refs_pre + refs_dec, arts_pre + arts_dec)  # per prompt, never concatenated
    figures["prefill"] = compare(refs_pre, arts_pre)
    figures["decode"] = compare(refs_dec, arts_dec)
    if len(text):
        figures["ppl_ref"] = perplexity(reference["text_logits"][: len(text)], text)
        figures["ppl_art"] = perplexity(text_art, text)
        figures["ppl_delta"] = figures["ppl_art"] - figures["ppl_ref"]
    figures["rel_l2"] = max(figures["rel_l2"], figures["prefill"]["rel_l2"], figures["decode"]["rel_l2"])
    return figures


def perplexity_tokens(context: int, batch: int) -> int:
    """Most tokens one prefill can take: whole batches of `batch` positions (the last one padded) that end
    inside the context (context == batch: one batch)."""
    return context // batch * batch


def argmax_agreement(parts: runtime.Parts, reference: dict, layout: Layout) -> dict:
    """With the in-model argmax there are no logits: top-1 agreement of the greedy token per position."""
    hits = total = 0
    for tokens, prompt_len, logits in reference["prompts"]:
        s = runtime.Session(parts)
        hidden = list(s.prefill(tokens[:prompt_len]))
        hidden += [s.decode(int(t))[0] for t in tokens[prompt_len:]]
        for h, row in zip(hidden, logits):
            hits += int(s.next_token(h, layout.split_sizes) == int(row.argmax()))
            total += 1
    return {"positions": total, "top1": hits / total, "argmax_in_model": True}
