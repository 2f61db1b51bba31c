"""The model card (README.md of the Hub repo), generated from a release's release.json and manifests.

Front matter (huggingface_hub's ModelCardData): base_model (hub models; with base_model_revision, the
commit it was built from), base_model_relation, quantized_by, library_name + tags naming every runtime,
pipeline_tag. Body: one row per artifact with its verification figures, how each was checked, and how
to run it with llama.cpp / MLC / Core ML.
"""

from __future__ import annotations

from huggingface_hub import ModelCardData

LIBRARIES = {"gguf": "gguf", "mlc": "mlc-llm", "coreml": "coreml"}  # backend -> Hub library name
RUNTIME_TAGS = {"gguf": ["gguf", "llama.cpp"], "mlc": ["mlc-llm", "mlc", "tvm"], "coreml": ["coreml", "anemll"]}
FIGURES = (("top1", "top-1", "{:.3f}"), ("max_abs_logit", "max abs Δlogit", "{:.3g}"), ("kl", "KL", "{:.3g}"),
           ("nmse", "NMSE", "{:.3g}"), ("ppl_delta", "Δ perplexity", "{:+.3g}"))


def _hub_model(model: dict) -> bool:
    rev = model.get("revision") or ""
    return len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)


def metadata(release: dict, manifests: dict[str, dict], quantized_by: str) -> ModelCardData:
    arts = [manifests[c["node"]] for c in release["cells"]]
    backends = sorted({m["backend"] for m in arts})
    models = {m["model"]["name"]: m["model"] for m in arts}
    hub = [m for m in models.values() if _hub_model(m)]
    extra = {}
    if hub:
        extra["base_model"] = hub[0]["source"] if len(hub) == 1 else sorted(m["source"] for m in hub)
        extra["base_model_revision"] = (hub[0]["revision"] if len(hub) == 1
                                        else {m["source"]: m["revision"] for m in hub})
        extra["base_model_relation"] = "quantized"
    tags = ["buildmatrix"] + [t for b in backends for t in RUNTIME_TAGS.get(b, [b])]
    tags += sorted({m["quant"] for m in arts if m.get("quant")})
    return ModelCardData(library_name=LIBRARIES.get(backends[0], backends[0]) if len(backends) == 1 else None,
                         tags=tags, pipeline_tag="text-generation", quantized_by=quantized_by, **extra)


def _fmt_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _check_kind(ver: dict) -> str:
    checks = ver.get("checks") or {}
    if "top1" in checks:
        return "logits vs transformers fp32"
    return ", ".join(sorted(checks)) or ver.get("note", "none")


def _table(release: dict, manifests: dict[str, dict]) -> list[str]:
    cols = ["file", "cells", "backend", "quant", "size", "sha256", "check"] + [h for _, h, _ in FIGURES] + ["passed"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for a in release["assets"]:
        m = manifests[a["node"]]
        ver = m.get("verification") or {}
        checks = ver.get("checks") or {}
        cells = [c["id"] for c in release["cells"] if a["name"] in c["assets"]]
        figs = [fmt.format(checks[k]) if isinstance(checks.get(k), (int, float)) else "—" for k, _, fmt in FIGURES]
        name = a["name"][:-4] + "/" if a["kind"] == "tar" else a["name"]
        rows.append("| " + " | ".join([f"`{name}`", "<br>".join(f"`{c}`" for c in cells), m["backend"],
                                        str(m.get("quant") or "—"), _fmt_size(a["size"]), f"`{a['sha256'][:16]}`",
                                        _check_kind(ver)] + figs + ["yes" if ver.get("passed") else "NO"]) + " |")
    return rows


def _usage(release: dict, manifests: dict[str, dict], repo: str) -> list[str]:
    by_backend: dict[str, list[dict]] = {}
    for a in release["assets"]:
        by_backend.setdefault(manifests[a["node"]]["backend"], []).append(a)
    lines = []
    if "gguf" in by_backend:
        f = by_backend["gguf"][0]["name"]
        lines += ["### llama.cpp", "", "```sh", f"huggingface-cli download {repo} {f} --local-dir .",
                  f"llama-cli -m {f} -p \"Once upon a time\" -n 64", "```", ""]
    if "mlc" in by_backend:
        weights = next((a["name"][:-4] for a in by_backend["mlc"] if a["kind"] == "tar"), "<weights dir>")
        lib = next((a["name"] for a in by_backend["mlc"] if a["kind"] == "file"), "<library>")
        lines += ["### MLC LLM", "", "The weights directory holds `mlc-chat-config.json` and the parameter shards; "
                  "the library is compiled for one target (its name ends with the target).", "", "```sh",
                  f"huggingface-cli download {repo} --local-dir .",
                  f"mlc_llm chat ./{weights} --model-lib ./{lib}", "```", ""]
    if "coreml" in by_backend:
        d = by_backend["coreml"][0]["name"]
        d = d[:-4] if d.endswith(".tar") else d
        lines += ["### Core ML (Apple Neural Engine)", "", "The `.mlpackage` files and `meta.yaml` follow ANEMLL's "
                  "layout; `.mlmodelc` compilation runs on macOS (see the cells' deferred steps).", "", "```sh",
                  f"huggingface-cli download {repo} --local-dir .",
                  f"python anemll/tests/chat.py --meta ./{d}/meta.yaml", "```", ""]
    return lines


def render(release: dict, manifests: dict[str, dict], repo: str, quantized_by: str) -> tuple[str, dict]:
    """(README.md text, front matter as a dict)."""
    data = metadata(release, manifests, quantized_by)
    arts = [manifests[c["node"]] for c in release["cells"]]
    models = {m["model"]["name"]: m["model"] for m in arts}
    src = []
    for m in models.values():
        if _hub_model(m):
            src.append(f"- `{m['source']}` at revision `{m['revision']}` (snapshot digest `{m['digest'][:16]}`)")
        else:
            src.append(f"- `{m['name']}` from `{m['source']}` (not a Hub model; snapshot digest `{m['digest'][:16]}`)")
    deferred = [f"- `{c['id']}`: " + "; ".join(str(d.get("step", d) if isinstance(d, dict) else d) for d in c["deferred"])
                for c in release["cells"] if c.get("deferred")]
    body = [f"# {repo.split('/')[-1]}", "",
            "Built, converted and verified by buildmatrix in pinned toolchain containers: every artifact below "
            "was run on the build host against the original model's transformers fp32 logits (or, where it cannot "
            "run there, checked structurally) and passed the thresholds listed in its manifest.", "",
            "## Source model", "", *src, "",
            "## Files and verification", "", *_table(release, manifests), "",
            "Figures: top-1 agreement with the original model's next token, the largest absolute logit difference, "
            "KL divergence, normalized MSE of the logits, and the perplexity difference on a fixed text. "
            + ("Directories here were released as deterministic tar files (the sha256 is the tar's). "
               if any(a["kind"] == "tar" for a in release["assets"]) else "")
            + "`buildmatrix/release.json` maps cells to files and `buildmatrix/SHA256SUMS` lists the released bytes.",
            ""]
    if deferred:
        body += ["## Steps left to another host", "", *deferred, ""]
    body += ["## How to run", "", *_usage(release, manifests, repo),
             "## Provenance", "",
             "`buildmatrix/provenance.intoto.json` is an in-toto Statement v1 with a SLSA provenance v1 predicate "
             "(model files, toolchain images, code commit); `buildmatrix/manifests/` holds every node's manifest.",
             ""]
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
    return text, data.to_dict()

