"""A backend used only by the tests of the node runner: its steps write files and can be told to fail."""

from builders.backends.base import NodeDef
from builders.errors import NodeFailed


def _step(name):
    def fn(ctx):
        if ctx.params.get("fail_at") == name and not (ctx.work / "fixed").exists():
            raise NodeFailed(f"step {name} failed on purpose")
        runs = ctx.work / f"{name}.runs"
        runs.write_text(str(int(runs.read_text()) + 1 if runs.exists() else 1))
        if not ctx.params.get("no_output"):
            (ctx.out / f"{name}.txt").write_text(name)
        if name == "four" and ctx.params.get("verify_fails"):
            ctx.result["verification"] = {"passed": False, "failures": ["top1=0.5 not >= 0.9"]}
        if name == "four" and ctx.params.get("verify_extra"):
            ctx.result["verification"] = {"passed": True, "checks": {}, "colour": "green"}
    return fn


class StepBackend:
    name = "steptest"
    image = "base"
    quants = {"x": None}
    targets = ("cpu",)
    archs = ("LlamaForCausalLM",)
    code = ()

    def normalize_options(self, options, where):
        return dict(options)

    def unsupported(self, cell, model):
        return None

    def unavailable(self, cell):
        return None

    def expand(self, cell, model):
        return [NodeDef(f"{model.name}.steptest", "steps", "steptest", "base", {"quant": "x"},
                        outputs=tuple(f"{n}.txt" for n in ("one", "two", "three", "four")))]

    def steps(self, kind):
        return [(n, _step(n)) for n in ("one", "two", "three", "four")]


BACKEND = StepBackend()
