"""Run at the end of every image build: record what is in the image in /etc/buildmatrix/tools.json.

    python write-tools.py IMAGE_NAME [EXTRA.json ...]     (EXTRA files are merged in, e.g. llama.cpp's commit)
"""

import json
import sys
from importlib import metadata
from pathlib import Path


def os_release() -> dict:
    pairs = (line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    return {k: v.strip('"') for k, v in pairs}


name, extras = sys.argv[1], sys.argv[2:]
osr = os_release()
tools = {
    "image": name,
    "debian": {"suite": osr.get("VERSION_CODENAME"), "version": Path("/etc/debian_version").read_text().strip()},
    "python": sys.version.split()[0],
    "pip": dict(sorted((d.metadata["Name"].lower().replace("_", "-"), d.version) for d in metadata.distributions())),
}
for extra in extras:
    tools.update(json.loads(Path(extra).read_text()))
out = Path("/etc/buildmatrix/tools.json")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(tools, indent=1, sort_keys=True) + "\n")
print(f"tools.json: {name}, {len(tools['pip'])} pip packages, debian {tools['debian']['suite']}")
