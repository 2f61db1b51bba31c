"""A multifunction .mlpackage written at the file level: single-function packages (the `infer` FFN chunk
and its `prefill` twin) become the functions of one package without loading any weight.

coremltools' save_multifunction loads every program into pymil with all its weights (both programs'
weights at once: 2 x 683 MB for a 0.5B model's chunk), deduplicates constants across functions and
writes everything again. The functions' programs are protobuf messages that reference their weights by
(weight file, offset); the weights themselves sit in weights/weight.bin in coremltools' MIL blob storage
format (version 2):

    header    64 bytes: uint32 blob count, uint32 version (2), 7 x uint64 reserved
    per blob  64-byte metadata at a 64-byte aligned offset: uint32 sentinel 0xDEADBEEF, uint32 data
              type, uint64 size in bytes, uint64 offset of the data, uint64 padding in bits, 4 x uint64
              reserved; then the data (coremltools writes it right after its metadata)

So: the first package's weight file is copied as it is (a file copy, nothing resident); every blob a
later function references is compared with the blobs already in the file (data type, size and SHA-256
of the bytes, read in blocks) and either pointed at the equal one or appended (its metadata with the new
data offset, then its bytes). The prefill chunk's weights are the FFN chunk's, so in practice nothing is
appended. The functions keep their programs as saved (coremltools' round trip through pymil renames the
state ops' debug names, nothing else; tests/test_coreml_multifunction.py holds this writer to
save_multifunction's output: same descriptions, same ops, the same values behind every weight).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from pathlib import Path

from builders.errors import NodeFailed

WEIGHT_FILE = "weight.bin"
MODEL_PATH_WEIGHTS = "@model_path/weights/" + WEIGHT_FILE
HEADER = struct.Struct("<II7Q")
METADATA = struct.Struct("<IIQQQ4Q")
SENTINEL = 0xDEADBEEF
ALIGN = 64
READ_BLOCK = 1 << 20
SPEC_VERSION_IOS18 = 9  # the first specification version with multifunction programs


def _model_file(pkg: Path) -> Path:
    return pkg / "Data" / "com.apple.CoreML" / "model.mlmodel"


def _weights(pkg: Path) -> Path:
    return pkg / "Data" / "com.apple.CoreML" / "weights" / WEIGHT_FILE


def _load_spec(pkg: Path):
    from coremltools.proto import Model_pb2

    f = _model_file(pkg)
    if not f.is_file():
        raise NodeFailed(f"combine: {pkg.name} has no {f.relative_to(pkg)}; rerun the step that writes it")
    spec = Model_pb2.Model()
    spec.ParseFromString(f.read_bytes())
    if spec.WhichOneof("Type") != "mlProgram" or list(spec.mlProgram.functions) != ["main"] \
            or len(spec.description.functions):
        raise NodeFailed(f"combine: {pkg.name} is not a single-function ML program (functions "
                         f"{list(spec.mlProgram.functions)}); combine takes the FFN and prefill chunks as saved")
    return spec


def blob_values(message):
    """Every BlobFileValue in a protobuf message, depth first (const ops' `val`, anywhere they occur)."""
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if hasattr(value, "ListFields"):  # a single message
            items = [value]
        else:  # a repeated field, or a map (its values)
            items = value.values() if field.message_type.GetOptions().map_entry else value
        for item in items:
            if field.message_type.name == "BlobFileValue":
                yield item
            else:
                yield from blob_values(item)


def _metadata(f, offset: int, name: str) -> tuple:
    f.seek(offset)
    raw = f.read(METADATA.size)
    if len(raw) != METADATA.size:
        raise NodeFailed(f"combine: {name}: blob at offset {offset} is past the end of the weight file")
    fields = METADATA.unpack(raw)
    if fields[0] != SENTINEL:
        raise NodeFailed(f"combine: {name}: no blob at offset {offset} (sentinel {fields[0]:#x}); "
                         "the weight file is damaged, rerun its step")
    return fields


def _digest(f, data_offset: int, size: int, name: str) -> str:
    h = hashlib.sha256()
    f.seek(data_offset)
    left = size
    while left:
        chunk = f.read(min(left, READ_BLOCK))
        if not chunk:
            raise NodeFailed(f"combine: {name}: blob data at {data_offset} ({size} bytes) runs past the end of "
                             "the weight file; rerun its step")
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest()


def _blob_key(f, offset: int, name: str) -> tuple:
    """(data type, padding bits, size, SHA-256 of the bytes) of the blob whose metadata is at `offset`."""
    _, dtype, size, data, padding, *_ = _metadata(f, offset, name)
    return dtype, padding, size, _digest(f, data, size, name)


def _referenced_offsets(function, name: str) -> list[int]:
    offsets = set()
    for blob in blob_values(function):
        if blob.fileName != MODEL_PATH_WEIGHTS:
            raise NodeFailed(f"combine: {name} references weight file {blob.fileName!r}; only "
                             f"{MODEL_PATH_WEIGHTS} is supported")
        offsets.add(int(blob.offset))
    return sorted(offsets)


class _WeightFile:
    """The combined weight file: starts as a copy of the first package's, indexed by blob content."""

    def __init__(self, first: Path, dest: Path, offsets: list[int], name: str):
        self.path = dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(first, dest)
        self.index: dict[tuple, int] = {}
        with open(dest, "rb") as f:
            self.count = HEADER.unpack(f.read(HEADER.size))[0]
            for off in offsets:
                self.index.setdefault(_blob_key(f, off, name), off)

    def add(self, src: Path, offsets: list[int], name: str) -> dict[int, int]:
        """{offset in src: offset in the combined file} for the blobs at `offsets` of src."""
        moved = {}
        with open(src, "rb") as f, open(self.path, "r+b") as out:
            for off in offsets:
                key = _blob_key(f, off, name)
                if key not in self.index:
                    self.index[key] = self._append(f, out, off, name)
                    self.count += 1
                moved[off] = self.index[key]
            out.seek(0)
            header = list(HEADER.unpack(out.read(HEADER.size)))
            header[0] = self.count
            out.seek(0)
            out.write(HEADER.pack(*header))
        return moved

    @staticmethod
    def _append(f, out, offset: int, name: str) -> int:
        fields = list(_metadata(f, offset, name))
        size, data = fields[2], fields[3]
        end = out.seek(0, 2)
        at = -(-end // ALIGN) * ALIGN
        out.write(b"\0" * (at - end))
        fields[3] = at + METADATA.size
        out.write(METADATA.pack(*fields))
        f.seek(data)
        left = size
        while left:
            chunk = f.read(min(left, READ_BLOCK))
            out.write(chunk)
            left -= len(chunk)
        return at


def _function_description(spec):
    from coremltools.proto import Model_pb2

    d = spec.description
    return Model_pb2.FunctionDescription(input=d.input, output=d.output, state=d.state,
                                         predictedFeatureName=d.predictedFeatureName,
                                         predictedProbabilitiesName=d.predictedProbabilitiesName)


def combine(functions: list[tuple[str, Path]], default: str, out: Path) -> None:
    """Write `out`: one function per (name, single-function package), `default` the default function.
    Each package's `main` becomes function `name`; weights equal in content are stored once."""
    from coremltools.proto import Model_pb2

    from builders.backends.coreml.package import normalize_package

    if default not in [n for n, _ in functions]:
        raise ValueError(f"default function {default!r} is not one of {[n for n, _ in functions]}")
    specs = [(name, pkg, _load_spec(pkg)) for name, pkg in functions]
    if out.exists():
        shutil.rmtree(out)
    _, first_pkg, first_spec = specs[0]
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(first_pkg, tmp, ignore=shutil.ignore_patterns(WEIGHT_FILE, "model.mlmodel"))
    first_main = first_spec.mlProgram.functions["main"]
    weights = _WeightFile(_weights(first_pkg), _weights(tmp), _referenced_offsets(first_main, first_pkg.name),
                          first_pkg.name)

    combined = Model_pb2.Model()
    combined.specificationVersion = max([SPEC_VERSION_IOS18] + [s.specificationVersion for _, _, s in specs])
    combined.mlProgram.version = first_spec.mlProgram.version
    for i, (name, pkg, spec) in enumerate(specs):
        if spec.mlProgram.version != combined.mlProgram.version:
            raise NodeFailed(f"combine: {pkg.name} is ML program version {spec.mlProgram.version}, "
                             f"{first_pkg.name} is {combined.mlProgram.version}")
        function = combined.mlProgram.functions[name]
        function.CopyFrom(spec.mlProgram.functions["main"])
        if i:
            moved = weights.add(_weights(pkg), _referenced_offsets(function, pkg.name), pkg.name)
            for blob in blob_values(function):
                blob.offset = moved[int(blob.offset)]
        desc = combined.description.functions.add()
        desc.CopyFrom(_function_description(spec))
        desc.name = name
    combined.description.defaultFunctionName = default
    _model_file(tmp).write_bytes(combined.SerializeToString(deterministic=True))
    normalize_package(tmp)
    tmp.rename(out)
