"""Releases: the verified cells of a store, collected into one directory that can be checked and rebuilt.

    <dest>/
      <asset>                         one copy of each distinct artifact (by sha256): a node's single output
                                      file as it is (e.g. a .gguf), a node with several files as a
                                      deterministic <node key>.tar; over the asset size limit (GitHub: 2 GiB)
                                      as <asset>.part001, .part002 ... (`cat <asset>.part* > <asset>`)
      SHA256SUMS                      `sha256sum -c` format: every file here and every reassembled asset
      provenance.intoto.json          in-toto Statement v1, SLSA provenance v1 predicate, subjects = assets
      release.json                    cells -> assets, verification, deferred steps, parts
      manifests/<node key>.json       the reproducible part of each node's manifest (no timings, image ids)
      run-record.json                 what differs run to run: timings and image ids per node

collect (select.py) -> assets (assets.py, parts.py) -> manifests (manifests.py) -> provenance
(provenance.py) -> SHA256SUMS (checksums.py), written by assemble.py; recheck.py rebuilds and compares.
"""

from builders.errors import BuildmatrixError


class ReleaseError(BuildmatrixError):
    """A release cannot be made from this store or directory (exit 2, one line)."""
