"""The relax.build pipeline of the `cpu` target: TVM's CPU passes (relax/backend/cpu_generic) with a
dlight schedule step in the middle, so that the kernels run on every core and use the vector unit.

Rules, first match wins per kernel (TVM 0.27.0.post1 `tvm.s_tir.dlight.cpu` has GEMV and Reduction):
  dl.cpu.GEMV        decode's matrix-vector products: spatial loop parallel, vectorized
  dl.cpu.Reduction   norms / softmax-like reductions: leading spatial loops parallel
  ParallelSpatial    everything else (prefill matmuls, elementwise, rope, ...): TVM's default loop
                     nest with the leading spatial loops of each top-level block fused and parallel

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


def parallel_spatial_rule():
    """A dlight rule (built on import of tvm) that parallelizes the leading spatial loops of each block."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    class ParallelSpatial(CPUScheduleRule):
        def apply(self, func, target, _tunable):
            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            infos = normalize_prim_func(sch)
            if infos is None:
                return None
            infos = try_inline(sch, infos)
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
                sch.parallel(sch.fuse(*lead) if len(lead) > 1 else lead[0])
                changed = True
            return sch if changed else None

    return ParallelSpatial()


def pipeline(target):
    """The module pass relax.build runs for the cpu target."""
    import tvm
    from tvm.relax.backend import cpu_generic
    from tvm.s_tir import dlight as dl

    rules = [dl.cpu.GEMV(), dl.cpu.Reduction(), parallel_spatial_rule()]

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
