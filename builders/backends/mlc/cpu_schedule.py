"""The relax.build pipeline of the `cpu` target: TVM's CPU passes (relax/backend/cpu_generic) with a
dlight schedule step in the middle, so that the kernels run on every core and use the vector unit.

Rules, first match wins per kernel (TVM 0.27.0.post1 `tvm.s_tir.dlight.cpu` has GEMV and Reduction):
  dl.cpu.GEMV        matrix-vector products whose reduction is innermost (none in our models today)
  MatmulTiled        C[.., o] = sum_k A[.., k] * B[k, o] (prefill and decode matmuls: the weights are
                     dequantized to [k, o] first): column tiles of VEC outputs in parallel, the k loop
                     outside, the VEC columns innermost and vectorized (contiguous loads, no reassociation)
  dl.cpu.Reduction   norms / softmax-like reductions: leading spatial loops parallel
  ParallelSpatial    everything else (dequantize, elementwise, rope, epilogues): the leading spatial
                     loops of each top-level block fused and parallel, the innermost VEC vectorized

The thread pool is TVM's runtime pool: it starts one worker per core (TVM_NUM_THREADS overrides),
see threads().
"""

from __future__ import annotations

import os


def threads() -> int:
    """Worker threads TVM's runtime uses here: TVM_NUM_THREADS, else the cores this process may run on."""
    env = os.environ.get("TVM_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _rule(name: str, schedule):
    """A dlight CPU rule (built on import of tvm) called `name`. The part every rule shares: a PrimFunc for an
    available target, its Schedule, the blocks normalized and the trivial ones inlined; then
    `schedule(sch, infos)` says whether it scheduled the function (else the next rule is tried)."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline(sch, infos)
        return sch if schedule(sch, infos) else None

    return type(name, (CPUScheduleRule,), {"apply": apply})()


def parallel_spatial_rule():
    """Parallelizes the leading spatial loops of each block (see the module docstring)."""
    return _rule("ParallelSpatial", _leading_spatial_parallel)


def matmul_tiled_rule():
    """Matmul-shaped kernels (plus spatial epilogues); see the module docstring."""
    return _rule("MatmulTiled", _matmul_tiled)


VEC = 16  # output columns per tile: two AVX2 registers of float32 accumulators


def _leading_spatial_parallel(sch, infos) -> bool:
    """Fuse each block's leading spatial loops into one parallel loop; a block whose loops are all
    spatial with a static innermost extent divisible by VEC also gets that loop's last VEC iterations
    vectorized (dequantize, casts, elementwise epilogues)."""
    from tvm.s_tir.dlight.base import get_extent

    changed = False
    for info in infos:
        loops = sch.get_loops(info.block_rv)
        kinds = info.dom_kind()
        if not loops or len(loops) != len(kinds):
            continue
        lead = []
        for loop, kind in zip(loops, kinds):
            if kind != "S":
                break
            lead.append(loop)
        if not lead:
            continue
        inner = None
        extent = get_extent(sch, lead[-1])
        if len(lead) == len(loops) and isinstance(extent, int) and extent % VEC == 0 and extent > VEC:
            lead[-1], inner = sch.split(lead[-1], factors=[None, VEC])
        sch.parallel(sch.fuse(*lead) if len(lead) > 1 else lead[0])
        if inner is not None:
            sch.vectorize(inner)
        changed = True
    return changed


def _matmul_tiled(sch, infos) -> bool:
    """C[.., o] = sum_k A[.., k] * B[k, o] as the first block, spatial blocks after it: column tiles of VEC
    outputs in parallel, the k loop outside, the columns innermost and vectorized."""
    from tvm.s_tir.dlight.base import get_extent

    if not infos or any(i.dom_kind().count("R") for i in infos[1:]):
        return False
    main, kinds = infos[0], infos[0].dom_kind()
    if len(kinds) < 2 or kinds[-1] != "R" or "R" in kinds[:-1]:
        return False
    block = sch.get(main.block_rv)
    written = {w.source for w in block.writes}
    if len({r.source for r in block.reads} - written) != 2:
        return False  # not A x B (e.g. a sum of squares)
    loops = sch.get_loops(main.block_rv)
    if len(loops) != len(kinds):
        return False
    *outer, col, red = loops
    extent = get_extent(sch, col)
    if not isinstance(extent, int):
        return False
    vec = next(v for v in (VEC, 8, 4, 2, 1) if extent % v == 0)
    col_o, col_i = sch.split(col, factors=[None, vec])
    sch.reorder(col_o, *outer, red, col_i)
    sch.parallel(col_o)
    if vec > 1:
        sch.vectorize(col_i)  # before the init is split off: the update block is no reduction after
    sch.decompose_reduction(main.block_rv, red)
    _leading_spatial_parallel(sch, infos[1:])
    return True


def pipeline(target):
    """The module pass relax.build runs for the cpu target."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic  # the module: it has every pass list
    from tvm.s_tir import dlight as dl

    rules = [dl.cpu.GEMV(), matmul_tiled_rule(), dl.cpu.Reduction(), parallel_spatial_rule()]

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential([
                *cpu_generic.library_dispatch_passes(target),
                *cpu_generic.legalize_passes(target),
                dl.ApplyDefaultSchedule(*rules),
                *cpu_generic.dataflow_lower_passes(target),
                *cpu_generic.finalize_passes(target),
            ])
            return seq(mod)

    return _pipeline
