"""One ``metadata_props`` value of an ONNX file, read without parsing the graph.

An ONNX file is a serialised ``ModelProto``; its ``metadata_props`` (field 14) come after the graph (field 7), whose
weights are inline unless they were saved as external data. :func:`metadata_value` walks the top-level fields of the
protobuf wire format and seeks over every other field, so it reads a few hundred bytes of a graph of any size instead
of loading its weights (``onnx.load`` would). What it reads is bounded: each metadata entry (:data:`MAX_ENTRY_BYTES`),
the number of top-level fields (:data:`MAX_FIELDS`) and the values kept (two: a second value of the key
ends the scan); a file that is not such a message gives ``None``.

:func:`graphs_checkpoint_sha256` reads ``rapdeploy.checkpoint_sha256`` (what ``rapdeploy export`` recorded in every
graph, :func:`rap_deploy.export.manifest.graph_metadata`) for engine and export manifests that record no checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

CHECKPOINT_KEY = "rapdeploy.checkpoint_sha256"
METADATA_FIELD = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {key = 1; value = 2}
MAX_ENTRY_BYTES = 64 * 1024  # a metadata entry read into memory; larger ones (no sha256) are skipped unread
MAX_FIELDS = 1 << 16  # top-level fields walked before giving up (a ModelProto has a handful, plus its metadata)
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5  # protobuf wire types (3 and 4, groups, are not in ONNX)


def metadata_value(path: str | os.PathLike[str], key: str) -> str | None:
    """The value of ``metadata_props`` entry ``key`` of the ONNX file at ``path``; ``None`` when the file has no such
    entry, names it twice with different values, cannot be read, or is not a protobuf message within the bounds."""
    values: set[str] = set()
    try:
        with open(path, "rb") as f:
            for value in _entries(f, os.fstat(f.fileno()).st_size, key):
                values.add(value)
                if len(values) > 1:  # the answer is None: stop, holding at most two entries' values
                    return None
    except (OSError, ValueError):
        return None
    return values.pop() if values else None


def graphs_checkpoint_sha256(graphs: Iterable[str | os.PathLike[str]]) -> str | None:
    """The source checkpoint sha256 the ONNX files ``graphs`` record (``rapdeploy.checkpoint_sha256``): a lowercase
    hex sha256 that every one of them records; ``None`` when there is no graph, one records none or another value,
    or a value is not a sha256. It is the export's claim, as the manifest's ``checkpoint`` is."""
    from rap_deploy.atomic import is_sha256

    values = {metadata_value(Path(p), CHECKPOINT_KEY) for p in graphs}
    if len(values) != 1:
        return None
    value = values.pop()
    return value if is_sha256(value) else None


def _entries(f: BinaryIO, size: int, key: str) -> Iterable[str]:
    """The values of the top-level metadata entries named ``key`` in the message of ``size`` bytes read from ``f``;
    raises :class:`ValueError` for a malformed message or one past the bounds."""
    for _ in range(MAX_FIELDS):
        if f.tell() >= size:
            return
        field, wire = _split_tag(_varint(f))
        if wire == VARINT:
            _varint(f)
            continue
        skip = {FIXED64: 8, FIXED32: 4}.get(wire)
        if skip is None and wire != LENGTH:
            raise ValueError(f"wire type {wire}")
        length = skip if skip is not None else _varint(f)
        if f.tell() + length > size:
            raise ValueError("a field runs past the end of the file")
        if field == METADATA_FIELD and wire == LENGTH and length <= MAX_ENTRY_BYTES:
            entry = _key_value(f.read(length))
            if entry is not None and entry[0] == key:
                yield entry[1]
        else:
            f.seek(length, os.SEEK_CUR)
    raise ValueError(f"more than {MAX_FIELDS} top-level fields")


def _key_value(data: bytes) -> tuple[str, str] | None:
    """``(key, value)`` of a serialised ``StringStringEntryProto``; ``None`` when it lacks either or is malformed."""
    import io

    stream, found = io.BytesIO(data), {}
    try:
        while stream.tell() < len(data):
            field, wire = _split_tag(_varint(stream))
            if wire != LENGTH:
                return None
            length = _varint(stream)
            chunk = stream.read(length)
            if len(chunk) != length:
                return None
            found[field] = chunk.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return (found[1], found[2]) if 1 in found and 2 in found else None


def _split_tag(tag: int) -> tuple[int, int]:
    """``(field number, wire type)`` of a protobuf tag; field 0 is invalid (:class:`ValueError`)."""
    if tag >> 3 == 0:
        raise ValueError("field number 0")
    return tag >> 3, tag & 7


def _varint(f: BinaryIO) -> int:
    """A protobuf varint (at most 10 bytes) read from ``f``; :class:`ValueError` at the end of ``f`` or past 10."""
    value = 0
    for shift in range(0, 70, 7):
        byte = f.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    raise ValueError("varint longer than 10 bytes")
