"""Third-party actions used by the generated workflow, pinned by full commit SHA (version in a comment).

Each SHA was looked up in public workflows that pin the same action and version; change a pin only
together with its version comment."""

ACTIONS: dict[str, tuple[str, str, str]] = {
    "checkout": ("actions/checkout", "11bd71901bbe5b1630ceea73d27597364c9af683", "v4.2.2"),
    "setup-python": ("actions/setup-python", "a26af69be951a213d495a4c3e4e4022e16d87065", "v5.6.0"),
    "upload-artifact": ("actions/upload-artifact", "ea165f8d65b6e75b540449e92b4886f43607fa02", "v4.6.2"),
    "download-artifact": ("actions/download-artifact", "d3f86a106a0bac45b974a628896c90dbdf5c8093", "v4.3.0"),
    "cache-restore": ("actions/cache/restore", "5a3ec84eff668545956fd18022155c47e93e2684", "v4.2.3"),
    "cache-save": ("actions/cache/save", "5a3ec84eff668545956fd18022155c47e93e2684", "v4.2.3"),
    "attest": ("actions/attest-build-provenance", "e8998f949152b193b063cb0ec769d69d929409be", "v2.4.0"),
}


def uses(name: str) -> str:
    """`owner/repo@sha # version` for a `uses:` line."""
    repo, sha, version = ACTIONS[name]
    return f"{repo}@{sha} # {version}"
