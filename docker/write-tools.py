"""Run at the end of every image build: record what is in the image in /etc/buildmatrix/tools.json."""

import json
import sys
from importlib import metadata
from pathlib import Path

name = sys.argv[1]
extra = json.loads(Path(sys.argv[2]).read_text()) if len(sys.argv) > 2 else {}
tools = {
    "image": name,
    "debian": Path("/etc/debian_version").read_text().strip(),
    "python": sys.version.split()[0],
    "pip": dict(sorted((d.metadata["Name"].lower(), d.version) for d in metadata.distributions())),
    **extra,
}
out = Path("/etc/buildmatrix/tools.json")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(tools, indent=1, sort_keys=True))
