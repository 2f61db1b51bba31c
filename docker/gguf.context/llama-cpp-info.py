"""Identify the llama.cpp that a llama-cpp-python sdist vendors, from the sdist's own files (no git needed):

    python llama-cpp-info.py SDIST_DIR OUT.json

commit       vendor/llama.cpp's git HEAD (the submodule's gitdir inside the sdist's .git/modules)
commit_date, subject   from the commit object (loose, zlib) when the sdist holds it
ggml_version ggml/CMakeLists.txt;  gguf_py_version  gguf-py/pyproject.toml
The CHANGELOG's "update llama.cpp to ggml-org/llama.cpp@<sha>" line of this release must agree.
"""

import json
import re
import sys
import zlib
from datetime import datetime, timezone
from pathlib import Path

src, out = Path(sys.argv[1]), Path(sys.argv[2])
vendor = src / "vendor" / "llama.cpp"
gitdir = (vendor / (vendor / ".git").read_text().split(":", 1)[1].strip()).resolve()
commit = (gitdir / "HEAD").read_text().strip()
if not re.fullmatch(r"[0-9a-f]{40}", commit):
    sys.exit(f"llama-cpp-info: {gitdir}/HEAD is not a commit sha: {commit!r}")

version = re.search(r'__version__ = "([^"]+)"', (src / "llama_cpp" / "__init__.py").read_text()).group(1)
section = (src / "CHANGELOG.md").read_text().split(f"## [{version}]", 1)[1].split("\n## [", 1)[0]
noted = re.findall(r"llama\.cpp@([0-9a-f]{7,40})", section)
if noted and not commit.startswith(noted[0]):
    sys.exit(f"llama-cpp-info: CHANGELOG {version} says llama.cpp@{noted[0]}, vendored HEAD is {commit}")

info = {"commit": commit, "source": f"llama-cpp-python {version} sdist (vendor/llama.cpp)"}
obj = gitdir / "objects" / commit[:2] / commit[2:]
if obj.is_file():
    body = zlib.decompress(obj.read_bytes()).split(b"\0", 1)[1].decode("utf-8", "replace")
    head, _, message = body.partition("\n\n")
    stamp = re.search(r"^committer .* (\d+) [+-]\d{4}$", head, re.M)
    if stamp:
        info["commit_date"] = datetime.fromtimestamp(int(stamp.group(1)), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    info["subject"] = message.strip().splitlines()[0]
cmake = (vendor / "ggml" / "CMakeLists.txt").read_text()
parts = [re.search(rf"set\(GGML_VERSION_{p} (\d+)\)", cmake) for p in ("MAJOR", "MINOR", "PATCH")]
if all(parts):
    info["ggml_version"] = ".".join(m.group(1) for m in parts)
gguf_py = re.search(r'^version = "([^"]+)"', (vendor / "gguf-py" / "pyproject.toml").read_text(), re.M)
if gguf_py:
    info["gguf_py_version"] = gguf_py.group(1)
out.write_text(json.dumps({"llama_cpp_python": version, "llama_cpp": info}, indent=1, sort_keys=True))
print(f"llama.cpp {commit[:12]} ({info.get('commit_date', '?')}) vendored by llama-cpp-python {version}")
