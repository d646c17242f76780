"""Open Inference Protocol (KServe v2 REST) inference requests and responses, checked against a served model.

Requests carry tensors as JSON (``data``, flat or nested, row-major) or with the binary tensor data extension
(``parameters.binary_data_size`` per input, the raw little-endian bytes after the JSON header, whose length is the
``Inference-Header-Content-Length`` header) — ``tritonclient.http`` sends binary inputs by default. Responses return
each output as JSON ``data`` or as binary (``binary_data`` per requested output, or the request parameter
``binary_data_output``; ``tritonclient`` asks for binary when it names no outputs).

Every check raises :class:`RequestError` with the HTTP status and the field it is about, so the server answers a
4xx ``{"error": ..., "field": ...}`` (what ``tritonclient`` reads) and never runs a malformed tensor.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rap_deploy.engines.serving.contract import NUMPY_DTYPES, ServedModel, oip_datatype

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_GZIP_MEMBERS = 65_536  # gzip members one body may hold (each costs a decompressor)
_ZEROS = re.compile(rb"\0*")
JSON_VALUE_BYTES = 24  # an output value as JSON text, about: a float32 at full precision and its separator
ROW_SCAN_VALUES = 64  # JSON data rows this long or longer are scanned for booleans one by one (_holds_booleans)


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx), the message, and the ``field`` it concerns."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


def parse_json(body: bytes) -> Any:
    """``json.loads`` that raises :class:`RequestError` 400 (field ``body``) for whatever is not a JSON document it
    can hold: invalid text, nesting too deep for the parser, an integer of more digits than Python converts."""
    try:
        return json.loads(body)
    except RecursionError:
        reason = "nested too deeply"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = str(exc)[:200]
    except ValueError:  # an integer of more digits than Python converts
        reason = "a number is too long"
    raise RequestError(400, f"request body is not valid JSON ({reason})", "body")


def parse_index_request(body: bytes) -> bool:
    """Whether a repository index request (``POST /v2/repository/index``) asks only for the ready models: its
    ``ready`` field, ``False`` for an empty body (Triton's defaults). Raises :class:`RequestError` 400 for a body
    that is not a JSON object or a ``ready`` that is not a boolean, as Triton refuses them."""
    if not body.strip():
        return False
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise RequestError(400, f"a repository index request must be a JSON object, not {type(doc).__name__}", "body")
    ready = doc.get("ready", False)
    if not isinstance(ready, bool):
        raise RequestError(400, f"'ready' must be true or false, not {json.dumps(ready)[:40]}", "ready")
    return ready


@dataclass
class InferRequest:
    """A checked request: input arrays by name, the outputs wanted (``name -> binary?``) and the request id."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, bool]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` ``gzip`` / ``deflate`` (what ``tritonclient`` can send), never inflating past
    ``limit`` bytes. A gzip body may hold several members one after the other (RFC 1952; at most
    :data:`MAX_GZIP_MEMBERS`), zero bytes after a member being padding, as ``gzip -d`` reads it. Raises
    :class:`RequestError` 415 for another encoding, 400 for corrupt or truncated data, 413 past the limit."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "deflate"):
        raise RequestError(415, f"Content-Encoding '{encoding}' is not supported; send identity, gzip or deflate",
                           "Content-Encoding")
    view, parts, pos, total, members = memoryview(body), [], 0, 0, 0
    while True:
        pos, total = _inflate_member(view, pos, enc, limit, total, parts)
        members += 1
        if enc == "gzip":
            pos = _ZEROS.match(view, pos).end()  # padding between or after members
        if pos == len(view):
            return b"".join(parts)  # one part (one member inflated in one call): that object, not a copy
        if enc == "deflate":
            raise RequestError(400, f"request body holds {len(view) - pos} bytes after the end of its deflate data",
                               "Content-Encoding")
        if members >= MAX_GZIP_MEMBERS:
            raise RequestError(400, f"request body holds more than {MAX_GZIP_MEMBERS} gzip members",
                               "Content-Encoding")


def _inflate_member(view: memoryview, pos: int, enc: str, limit: int, total: int, parts: list[bytes]
                    ) -> tuple[int, int]:
    """Inflate the gzip member (or deflate stream) starting at ``view[pos]`` onto ``parts``, which hold ``total``
    bytes, never past ``limit`` bytes in all; returns where the member ends and the new total.

    The first member gets the whole body in one call (the usual single member: its output is one object); later ones
    get growing pieces, so that what zlib copies of the input after a member's end is about the member's own size
    (the whole rest of a body of many small members each time would be quadratic)."""
    d = zlib.decompressobj(wbits=31 if enc == "gzip" else 15)
    start = pos
    while not d.eof and pos < len(view):
        size = len(view) if start == 0 else min(max(256, 2 * (pos - start)), 1 << 20)
        piece = view[pos:pos + size]
        try:  # at most one byte past the limit: the output never grows beyond it
            out = d.decompress(piece, limit + 1 - total)
        except zlib.error as exc:
            raise RequestError(400, f"request body is not valid {enc} data ({exc})", "Content-Encoding") from None
        total += len(out)
        if total > limit:
            raise RequestError(413, f"decompressed request body exceeds the limit of {limit} bytes", "body")
        parts.append(out)
        pos += len(piece) - len(d.unused_data)
    if not d.eof:
        raise RequestError(400, f"request body is not valid {enc} data (it ends inside the compressed data)",
                           "Content-Encoding")
    return pos, total


def _header(body: bytes, header_length: str | None, max_json: int | None = None) -> tuple[dict[str, Any], bytes]:
    """Split the JSON header from the binary section and parse it; a JSON part over ``max_json`` bytes is refused
    (413) before parsing, since Python objects of parsed JSON numbers take about ten times their text."""
    if header_length is None:
        head, rest = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 < n <= len(body):
            raise RequestError(400, f"{HEADER_LENGTH} must be an integer in [1, {len(body)}] (the body size), got "
                               f"{header_length!r}", HEADER_LENGTH)
        head, rest = body[:n], body[n:]
    if max_json is not None and len(head) > max_json:
        raise RequestError(413, f"the JSON part of the request is {len(head):,} bytes, over the {max_json:,} allowed "
                           "for JSON tensors; send tensors as binary data (tritonclient: binary_data=True)", "body")
    doc = parse_json(head)
    if not isinstance(doc, dict):
        raise RequestError(400, "request body must be a JSON object with 'inputs'", "body")
    return doc, rest


def _check_shape(model: ServedModel, name: str, shape: Any, where: str, max_items: Mapping[str, int]) -> tuple:
    spec = model.tensor(name)
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise RequestError(400, f"{where}.shape must be a list of integers", f"{where}.shape")
    if len(shape) != len(spec.shape):
        raise RequestError(400, f"{name} must have rank {len(spec.shape)} ({model.shape(spec)}), got shape {shape}",
                           f"{where}.shape")
    for i, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if isinstance(want, int) and got != want:
            raise RequestError(400, f"{name} dimension {i} must be {want}, got shape {shape} (expected "
                               f"{model.shape(spec)})", f"{where}.shape")
        if isinstance(want, str):
            top = max_items.get(want)
            if got < 1 or (top is not None and got > top):
                raise RequestError(400, f"{name} dimension {i} ({want}) must be in [1, {top}], got {got}",
                                   f"{where}.shape")
    return tuple(shape)


def _json_array(data: Any, dtype: np.dtype, shape: tuple, name: str, where: str) -> np.ndarray:
    """Convert JSON ``data`` (flat or nested lists of numbers) to ``dtype`` with ``shape``."""
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise RequestError(400, f"{name} data is not a regular array of numbers", f"{where}.data") from None
    if arr.dtype.kind not in "biuf":
        raise RequestError(400, f"{name} data must hold numbers only", f"{where}.data")
    count = math.prod(shape)
    if arr.size != count:
        raise RequestError(400, f"{name} has {arr.size} values, its shape {list(shape)} needs {count}",
                           f"{where}.data")
    if arr.dtype.kind == "b" or _holds_booleans(data, arr):
        raise RequestError(400, f"{name} data holds true or false (a JSON boolean); {oip_datatype(dtype)} takes "
                           "numbers only: send 1 or 0", f"{where}.data")
    if dtype.kind in "iu":
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise RequestError(400, f"{name} is {oip_datatype(dtype)}: its values must be integers",
                               f"{where}.data")
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise RequestError(400, f"{name} values exceed the {oip_datatype(dtype)} range", f"{where}.data")
    with np.errstate(over="ignore"):
        return arr.astype(dtype).reshape(shape)


def _holds_booleans(data: Any, arr: np.ndarray) -> bool:
    """Whether JSON ``data``, which numpy read as the numeric array ``arr``, holds a boolean among its numbers:
    numpy takes ``true`` as 1 and ``false`` as 0 without a word, where the protocol (Triton, KServe) refuses them
    for a numeric datatype. Only an array holding a 0 or a 1 can hide one (a vectorised test); its values are then
    scanned with no Python code per value (``set(map(type, row))``: about the time ``np.asarray`` took, bounded as
    the JSON part is). A regular numeric array nests its values exactly ``arr.ndim`` deep, so the lists
    ``arr.ndim - 1`` levels down hold the values; short ones are scanned as one, long ones a list at a time."""
    if not ((arr == 0) | (arr == 1)).any():
        return False
    rows = iter([[data]]) if arr.ndim == 0 else iter([data])
    for _ in range(arr.ndim - 1):
        rows = itertools.chain.from_iterable(rows)
    if arr.ndim and arr.shape[-1] < ROW_SCAN_VALUES:
        rows = iter([itertools.chain.from_iterable(rows)])
    return any(bool in set(map(type, row)) for row in rows)


def parse_infer_request(body: bytes, header_length: str | None, model: ServedModel,
                        max_items: Mapping[str, int] | None = None, max_json: int | None = None,
                        max_json_outputs: int | None = None) -> InferRequest:
    """Parse and check an inference request for ``model``.

    ``max_items`` bounds each symbolic axis (``{"batch": 32}``); the model's own ``max_batch_size`` bounds its batch
    axis; ``max_json`` the bytes of the JSON part (413 beyond), ``max_json_outputs`` those of the outputs asked for
    as JSON (422 beyond). Returns an :class:`InferRequest`; raises
    :class:`RequestError` (400) naming the field for bad JSON, an unknown, missing or repeated input, a wrong
    datatype, rank, fixed dimension or batch size, data that does not fill the shape, binary sections that do not
    add up, or an unknown / unsupported requested output.
    """
    limits = dict(max_items or {})
    if model.batch_axis is not None:
        limits[model.batch_axis] = model.max_batch_size
    doc, binary = _header(body, header_length, max_json)
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise RequestError(400, f"'inputs' must be a non-empty list of {list(model.input_names)}", "inputs")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(inputs_doc):
        name, arr, offset = _parse_input(item, f"inputs[{i}]", model, limits, binary, offset, arrays)
        arrays[name] = arr
    if offset != len(binary):
        raise RequestError(400, f"the body holds {len(binary) - offset} binary bytes that no input claims",
                           HEADER_LENGTH)
    missing = [n for n in model.input_names if n not in arrays]
    if missing:
        raise RequestError(400, f"{model.name} needs inputs {missing}", "inputs")
    _check_axes(model, arrays)
    outputs = _requested_outputs(doc, model)
    if max_json_outputs is not None:
        _check_json_outputs(model, arrays, outputs, max_json_outputs)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):  # echoed back: a str() of it was a Python repr
        kind = {dict: "object", list: "array", bool: "boolean"}.get(type(request_id), "number")
        raise RequestError(400, f"'id' must be a string, got a JSON {kind}", "id")
    return InferRequest(arrays, outputs, request_id,
                        doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {})


def _parse_input(item: Any, where: str, model: ServedModel, limits: Mapping[str, int], binary: bytes, offset: int,
                 seen: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray, int]:
    """One ``$request_input``: ``(name, array, offset after its binary section)``."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise RequestError(400, f"{where} must be an object with a 'name'", where)
    name = item["name"]
    if name not in model.input_names:
        raise RequestError(400, f"{model.name} has no input '{name[:64]}'; its inputs are {list(model.input_names)}",
                           f"{where}.name")
    if name in seen:
        raise RequestError(400, f"input '{name}' is given twice", f"{where}.name")
    want = oip_datatype(model.tensor(name).dtype)
    if item.get("datatype") != want:
        raise RequestError(400, f"{name} must have datatype {want}, got {str(item.get('datatype'))[:16]!r}",
                           f"{where}.datatype")
    shape = _check_shape(model, name, _batch_only_shape(model, name, item.get("shape")), where, limits)
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(400, f"{where}.parameters must be an object", f"{where}.parameters")
    if "shared_memory_region" in params:
        raise RequestError(400, "shared-memory inputs are not supported by this server; send the data in the "
                           "request", f"{where}.parameters.shared_memory_region")
    dtype = np.dtype(NUMPY_DTYPES[want])
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        need = math.prod(shape) * dtype.itemsize
        if not isinstance(size, int) or size != need:
            raise RequestError(400, f"{name}: binary_data_size must be {need} bytes for shape {list(shape)} {want}, "
                               f"got {size!r}", f"{where}.parameters.binary_data_size")
        if offset + size > len(binary):
            raise RequestError(400, f"{name}: the body holds {len(binary) - offset} binary bytes after the earlier "
                               f"inputs, binary_data_size says {size}", f"{where}.parameters")
        arr = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=math.prod(shape), offset=offset)
        return name, arr.astype(dtype).reshape(shape), offset + size
    if "data" in item:
        return name, _json_array(item["data"], dtype, shape, name, where), offset
    raise RequestError(400, f"{name} has neither 'data' nor parameters.binary_data_size", where)


def _batch_only_shape(model: ServedModel, name: str, shape: Any) -> Any:
    """``[B]`` for ``[B, 1]`` when ``name`` is the batch axis alone (``eot``): the model config gives it dims ``[1]``
    reshaped to none, as Triton needs, so clients written for Triton send it with that trailing 1."""
    spec = model.tensor(name)
    if model.batch_axis is not None and spec.shape == (model.batch_axis,) and isinstance(shape, list) \
            and len(shape) == 2 and shape[1] == 1 and not isinstance(shape[1], bool):
        return shape[:1]
    return shape


def _check_axes(model: ServedModel, arrays: Mapping[str, np.ndarray]) -> None:
    """Inputs that share a symbolic axis (frames and frame_mask: batch; frame_emb and patch_tokens: videos) must
    agree on its size."""
    seen: dict[str, tuple[str, int]] = {}
    for spec in model.spec.inputs:
        for i, d in enumerate(spec.shape):
            if isinstance(d, str):
                size = arrays[spec.name].shape[i]
                if d in seen and seen[d][1] != size:
                    raise RequestError(400, f"{spec.name} has {d} = {size} but {seen[d][0]} has {seen[d][1]}; they "
                                       "must agree", "inputs")
                seen.setdefault(d, (spec.name, size))


def _check_json_outputs(model: ServedModel, arrays: Mapping[str, np.ndarray], outputs: Mapping[str, bool],
                        max_json: int) -> None:
    """Refuse (422) outputs asked for as JSON whose text would pass ``max_json`` bytes, before the engine runs: as
    parsed JSON inputs, each value takes a Python float and ~20 characters, ten times its binary size."""
    sizes = {d: arrays[t.name].shape[i] for t in model.spec.inputs for i, d in enumerate(t.shape) if isinstance(d, str)}
    wanted = [n for n, binary in outputs.items() if not binary]
    if not wanted or any(isinstance(d, str) and d not in sizes for n in wanted for d in model.tensor(n).shape):
        return  # nothing as JSON, or an axis the inputs do not give: encode_infer_response writes what comes
    values = sum(math.prod(sizes[d] if isinstance(d, str) else d for d in model.tensor(n).shape) for n in wanted)
    if values * JSON_VALUE_BYTES > max_json:
        raise RequestError(422, f"outputs {wanted} as JSON would be {values:,} values (~{values * JSON_VALUE_BYTES:,} "
                           f"bytes), over the {max_json:,} allowed for JSON tensors; request them as binary data "
                           "(binary_data: true, tritonclient's default)", "outputs")


def _requested_outputs(doc: Mapping[str, Any], model: ServedModel) -> dict[str, bool]:
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(400, "request parameters must be an object", "parameters")
    default_binary = params.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise RequestError(400, "parameters.binary_data_output must be true or false",
                           "parameters.binary_data_output")
    wanted = doc.get("outputs")
    if wanted is None:
        return {n: default_binary for n in model.output_names}
    if not isinstance(wanted, list) or not wanted:
        raise RequestError(400, f"'outputs' must be a non-empty list of {list(model.output_names)}", "outputs")
    out: dict[str, bool] = {}
    for i, item in enumerate(wanted):
        where = f"outputs[{i}]"
        if not isinstance(item, dict) or item.get("name") not in model.output_names:
            raise RequestError(400, f"{where} must name one of {list(model.output_names)}", f"{where}.name")
        p = item.get("parameters") or {}
        if not isinstance(p, dict):
            raise RequestError(400, f"{where}.parameters must be an object", f"{where}.parameters")
        if p.get("classification"):
            raise RequestError(400, "the classification extension is not supported", f"{where}.parameters")
        if "shared_memory_region" in p:
            raise RequestError(400, "shared-memory outputs are not supported by this server",
                               f"{where}.parameters.shared_memory_region")
        binary = p.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise RequestError(400, f"{where}.parameters.binary_data must be true or false", f"{where}.parameters")
        out[item["name"]] = binary
    return out


def encode_infer_response(model: ServedModel, request: InferRequest, outputs: Mapping[str, np.ndarray]
                          ) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for ``outputs`` (by name), in the order the request asked for them.

    Each output is cast to its declared datatype; binary outputs follow the JSON header, whose length is in the
    ``Inference-Header-Content-Length`` header. JSON values are written at full precision, so an fp32 tensor
    round-trips bit for bit either way.
    """
    entries, blobs = [], []
    for name, binary in request.outputs.items():
        spec = model.tensor(name)
        dtype = np.dtype(NUMPY_DTYPES[oip_datatype(spec.dtype)])
        arr = np.ascontiguousarray(outputs[name], dtype=dtype)
        entry: dict[str, Any] = {"name": name, "datatype": oip_datatype(dtype), "shape": list(arr.shape)}
        if binary:
            raw = arr.astype(dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():  # JSON has no inf/NaN; binary output carries them
                raise RequestError(422, f"output {name} holds non-finite values (inputs beyond what {model.name} "
                                   "computes in float32); request it as binary data to receive them",
                                   f"outputs.{name}")
            entry["data"] = arr.ravel().tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model.name, "model_version": "1", "outputs": entries}
    if request.id is not None:
        doc["id"] = request.id
    head = json.dumps(doc, allow_nan=False).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
