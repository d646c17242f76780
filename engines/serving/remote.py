"""``load_engine("http://HOST:PORT")``: the three graphs over the Open Inference Protocol with ``tritonclient.http``.

Works against ``rapdeploy serve`` and against Triton serving a ``rapdeploy triton-repo`` repository: both answer
``GET /v2/models/{name}/config`` with the model's ``rapdeploy.*`` parameters (the RAP config, the precision, the
source checkpoint, the ASA block sizes) and ``GET /v2/models/{name}`` with the tensors' names and datatypes. Tensor
names come from the contract (:mod:`rap_deploy.graphs`) and are checked against the server's metadata; inputs are
sent as binary tensors in the server's declared datatypes (FP16 included), outputs come back as float32. Video and
text batches larger than a model's ``max_batch_size`` are split, and the ASA head is fed blocks of at most the
published block sizes, as a local engine does; no request carries more than :data:`MAX_REQUEST_BYTES` of tensors,
what a tritonserver started without ``--http-max-input-size`` accepts.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import re
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rap_deploy.config import RAPConfig
from rap_deploy.engines.base import Engine, EngineInfo
from rap_deploy.engines.blocks import (
    batched,
    blocked_similarity,
    check_text_inputs,
    check_video_inputs,
    fit_tokens,
    meanp_similarity_from_frames,
)
from rap_deploy.engines.serving.contract import (
    ASA_GRAPH,
    BODY_HEADER_RESERVE,
    NUMPY_DTYPES,
    TEXT_GRAPH,
    TRITON_HTTP_INPUT_BYTES,
    VIDEO_GRAPH,
    contract_io,
)
from rap_deploy.engines.serving.model_config import read_parameters
from rap_deploy.errors import BackendUnavailableError, UsageError

NOT_OIP = "is it a KServe v2 / Open Inference Protocol server (`rapdeploy serve`, Triton)? Check the URL"
#: The most bytes of tensors one request carries: Triton's default ``--http-max-input-size`` (64 MiB, which a
#: tritonserver started without the option enforces) less room for the JSON header. Triton publishes the model's
#: ``max_batch_size`` (32 videos: 220 MiB of ViT-B/32 frames) whatever that limit, so batches are split to fit it.
MAX_REQUEST_BYTES = TRITON_HTTP_INPUT_BYTES - BODY_HEADER_RESERVE
#: The largest answer to a request other than inference (health, server and model metadata, model configuration).
MAX_METADATA_ANSWER = 16 << 20
#: Room an inference answer may take beyond its outputs' binary data (the JSON header; a small output a server sends
#: as JSON numbers though binary data were asked for).
ANSWER_MARGIN = 1 << 20
_READ_PIECE = 1 << 20  # answers are read in pieces of this size, counted against their bound


def split_url(url: str) -> tuple[str, bool]:
    """``(host:port[/base path], ssl)`` for ``tritonclient.http`` from ``http(s)://HOST:PORT[/path]``; raises
    :class:`UsageError` for anything else."""
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # an unbalanced IPv6 bracket ("http://[::1")
        raise UsageError(f"engine URL {shown!r} is not a URL ({exc}); it must look like http://HOST:PORT") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"engine URL {shown!r} must look like http://HOST:PORT")
    if "@" in parts.netloc:
        raise UsageError(f"engine URL {shown!r} carries credentials (USER:PASSWORD@), which rapdeploy does not send "
                         "(the server would see none) and would repeat in its messages; pass http://HOST:PORT of a "
                         "server that needs none, or reach it through a gateway that adds them")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise UsageError(f"engine URL {shown!r} has an invalid port") from None
    return parts.netloc + parts.path.rstrip("/"), parts.scheme == "https"


def _dims(shape: Any) -> tuple[int, ...]:
    """A tensor shape of model metadata (integers, ``-1`` for a dynamic axis); ``ValueError`` for anything else."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1
                                              for d in shape):
        raise ValueError(f"not a tensor shape: {str(shape)[:40]}")
    return tuple(shape)


def redact_url(url: str) -> str:
    """``url`` with any ``USER:PASSWORD@`` before its host replaced by ``***@``, for messages."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@", r"\1***@", str(url))


def one_line(text: Any, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def _error_text(exc: Any, status: str) -> str:
    """What a ``tritonclient`` error says, on one line. A KServe v2 server answers an error as ``{"error": "..."}``;
    when the client could not decode the answer as that (``debug_details`` holds the body: an HTML error page of a
    proxy, a server of another kind), it put the whole body in its message, however long and on many lines."""
    body = exc.debug_details()
    if body is not None:
        return f"HTTP {status or '?'} with an answer that is not a KServe v2 error ({one_line(body, 100)}); {NOT_OIP}"
    return one_line(exc.message() or "no error message")


class BoundedAnswer:
    """An HTTP answer read whole, in pieces, refused as soon as it passes ``limit`` bytes; what ``tritonclient``
    reads of an answer (``status_code``, ``get(header)``, ``read([length])``), served from memory.

    ``tritonclient`` reads every answer body at once, whatever its size: a server (or something else listening
    there) could make the client allocate without limit, and ``read(length=…)`` with the ``Inference-Header-Content-
    Length`` it declares asked the socket for that many bytes in one buffer. Raises :class:`UsageError` naming
    ``where``, the size and the bound; the connection is then closed, its rest unread.
    """

    def __init__(self, response: Any, limit: int, where: str) -> None:
        self._response = response
        try:
            self._body = io.BytesIO(self._read(limit, where))
        except BaseException:
            response.release()  # an incomplete answer: geventhttpclient closes its connection
            raise

    def _read(self, limit: int, where: str) -> bytes:
        encoding = str(self._response.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":  # tritonclient would inflate it whole; it was not asked for (no Accept-Encoding)
            raise UsageError(f"{where}: the answer is compressed ({encoding[:20]}), which rapdeploy did not ask for "
                             f"and does not read; {NOT_OIP}")
        declared = str(self._response.get("Content-Length") or "")
        if declared.isdigit() and int(declared) > limit:
            raise UsageError(f"{where}: the answer declares {int(declared):,} bytes, more than the {limit:,} its "
                             f"request can take; the server does not answer as the protocol does ({NOT_OIP})")
        pieces, total = [], 0
        while piece := self._response.read(_READ_PIECE):
            total += len(piece)
            if total > limit:
                raise UsageError(f"{where}: the answer passed {limit:,} bytes, the most its request can take; the "
                                 f"server does not answer as the protocol does ({NOT_OIP})")
            pieces.append(piece)
        return b"".join(pieces)

    @property
    def status_code(self) -> int:
        return self._response.status_code

    def get(self, name: str, default: Any = None) -> Any:
        """Header ``name`` (case-insensitive), ``default`` when absent."""
        return self._response.get(name, default)

    def read(self, length: int | None = -1) -> bytes:
        """The next ``length`` bytes of the body (all that is left for ``None`` or a negative length)."""
        return self._body.read(-1 if length is None or length < 0 else length)


class BoundedTransport:
    """``tritonclient``'s HTTP connection (a geventhttpclient ``HTTPClient``) whose answers are
    :class:`BoundedAnswer` s of at most ``limit`` bytes (:data:`MAX_METADATA_ANSWER` unless a caller sets it for one
    request: each thread has its own client, and so its own transport)."""

    def __init__(self, stub: Any, where: str) -> None:
        self._stub, self._where = stub, where
        self.limit = MAX_METADATA_ANSWER

    def get(self, request_uri: str, *args: Any, **kwargs: Any) -> BoundedAnswer:
        return BoundedAnswer(self._stub.get(request_uri, *args, **kwargs), self.limit,
                             f"{self._where} GET {str(request_uri)[:80]}")

    def post(self, request_uri: str, *args: Any, **kwargs: Any) -> BoundedAnswer:
        return BoundedAnswer(self._stub.post(request_uri, *args, **kwargs), self.limit,
                             f"{self._where} POST {str(request_uri)[:80]}")

    def __getattr__(self, name: str) -> Any:  # close() and the rest
        return getattr(self._stub, name)


class RemoteEngine(Engine):
    """An :class:`Engine` whose graphs run on a KServe v2 / Triton server at ``url`` (see the module docstring).

    Raises :class:`BackendUnavailableError` when the server cannot be reached, is not ready or gives no HTTP answer
    (it closed the connection: stopped or crashed),
    :class:`UsageError` when it does not serve this contract's models (missing models, tensors or parameters).
    """

    backend = "remote"

    def __init__(self, url: str, connection_timeout: float = 60.0, network_timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self._target, self._ssl = split_url(self.url)
        self._timeouts = (connection_timeout, network_timeout)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        try:
            # the checks' answers come at once: a server that takes the connection and never answers fails them in
            # connection_timeout, not in network_timeout (which inference may need on a slow server)
            check = self._local.client = self._new_client(min(connection_timeout, network_timeout))
            self._connect()
        except BaseException:
            self.close()  # the HTTP client made for the checks, which nobody else can close
            raise
        self._local = threading.local()  # inference gets clients with the network timeout
        with self._clients_lock:
            self._clients.remove(check)
        check.close()

    def _connect(self) -> None:
        """Check the server (ready, serving this contract's models) and read the models' configs and metadata."""
        client = self._client()
        if not self._call(client.is_server_ready):
            raise BackendUnavailableError(f"the server at {self.url} is not ready (GET /v2/health/ready); wait for it "
                                          "to load its models")
        self.server = self._object(self._call(client.get_server_metadata, what="server metadata"),
                                   "server metadata")
        text_cfg = self._model_config(TEXT_GRAPH)
        self.parameters = read_parameters(text_cfg)
        if "config" not in self.parameters:
            raise UsageError(f"{self.url}: model {TEXT_GRAPH} carries no rapdeploy.config parameter; serve it with "
                             "`rapdeploy serve` or a repository from `rapdeploy triton-repo`")
        try:
            self.config = RAPConfig.from_dict(json.loads(self.parameters["config"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise UsageError(f"{self.url}: model {TEXT_GRAPH}'s rapdeploy.config parameter is not a RAP config "
                             f"({type(exc).__name__}: {str(exc)[:100]})") from None
        self.io = contract_io(self.config.has_asa)
        self.ranks: dict[str, dict[str, int]] = {}  # per graph, each input's rank in the server's metadata
        # per graph, each output's shape (-1: dynamic) and item size in the server's metadata: answers are bounded
        self.answers: dict[str, dict[str, tuple[tuple[int, ...], int]]] = {}
        configs = {g: (text_cfg if g == TEXT_GRAPH else self._model_config(g)) for g in self.io}
        self.datatypes = {g: self._check_metadata(g, configs[g]) for g in self.io}
        self.max_batch = {g: self._size(configs[g].get("max_batch_size"), f"model {g} max_batch_size", 0, 0) or None
                          for g in self.io}
        try:
            blocks = json.loads(self.parameters.get("asa_blocks") or "{}")
        except ValueError:
            blocks = None
        if not isinstance(blocks, dict):
            raise UsageError(f"{self.url}: model {TEXT_GRAPH}'s rapdeploy.asa_blocks parameter is not a JSON object "
                             f"({str(self.parameters.get('asa_blocks'))[:60]!r})")
        self.query_block = self._size(blocks.get("queries"), "rapdeploy.asa_blocks queries", 32)
        self.video_block = self._size(blocks.get("videos"), "rapdeploy.asa_blocks videos", 64)

    def _size(self, value: Any, what: str, default: int, low: int = 1) -> int:
        """A size the server publishes (``default`` when it gives none); :class:`UsageError` for what is no integer
        in ``[low, 2**31)`` (it failed later, as a ValueError or an IndexError of an empty batch)."""
        if value is None:
            return default
        try:
            size = int(value) if isinstance(value, int | str) and not isinstance(value, bool) else None
        except ValueError:
            size = None
        if size is None or not low <= size < 1 << 31:
            raise UsageError(f"{self.url}: {what} is {str(value)[:40]!r}, not an integer in [{low}, 2**31)")
        return size

    # ------------------------------------------------------------------------------------------------ transport
    def _client(self) -> Any:
        """This thread's ``tritonclient.http`` client (gevent-based clients must stay on the thread that made them)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client(self._timeouts[1])
        return client

    def _new_client(self, network_timeout: float) -> Any:
        """A ``tritonclient.http`` client of the server, closed by :meth:`close`."""
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self._target, ssl=self._ssl, connection_timeout=self._timeouts[0],
                                                  network_timeout=network_timeout)
        # every answer is read within a bound (BoundedTransport); _client_stub is where tritonclient (2.x) keeps it
        client._client_stub = BoundedTransport(client._client_stub, self.url)
        with self._clients_lock:
            self._clients.append(client)
        return client

    def _call(self, fn: Any, *args: Any, what: str = "", **kwargs: Any) -> Any:
        """Call a client method; map its failures to this project's errors (one line, naming the server)."""
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            message = f"{self.url}{' ' + what if what else ''}: {_error_text(exc, status)}"
            if status.startswith("4"):
                raise UsageError(message) from None
            raise BackendUnavailableError(f"{message} (status {status or 'none'})") from None
        except (OSError, TimeoutError) as exc:
            raise BackendUnavailableError(f"cannot reach {self.url}{' for ' + what if what else ''} ({exc}); start "
                                          "`rapdeploy serve` or Triton there, or check the URL") from None
        except http.client.HTTPException as exc:  # geventhttpclient: closed before an answer, or no HTTP answer
            raise BackendUnavailableError(f"{self.url}{' ' + what if what else ''}: no HTTP answer "
                                          f"({type(exc).__name__}: {str(exc)[:100]}); did the server stop or crash "
                                          "(see its log), or is something else listening there?") from None
        except ValueError as exc:  # the client's JSON parser: a web server of another kind answered
            raise UsageError(f"{self.url}{' ' + what if what else ''}: the answer is not JSON ({str(exc)[:100]}); "
                             f"{NOT_OIP}") from None

    def _object(self, value: Any, what: str) -> dict[str, Any]:
        """``value`` if it is a JSON object, else :class:`UsageError` naming ``what`` the server answered."""
        if not isinstance(value, dict):
            raise UsageError(f"{self.url} {what}: the answer is a JSON {type(value).__name__}, not an object; "
                             f"{NOT_OIP}")
        return value

    def _model_config(self, graph: str) -> dict[str, Any]:
        what = f"model {graph} config"
        return self._object(self._call(self._client().get_model_config, graph, what=what), what)

    def _check_metadata(self, graph: str, config: Mapping[str, Any]) -> dict[str, str]:
        """The server's datatype per input; raises :class:`UsageError` when its tensors or RAP config differ from
        the contract."""
        if read_parameters(config).get("config") != self.parameters["config"]:
            raise UsageError(f"{self.url}: model {graph} was built from another RAP config than {TEXT_GRAPH}")
        what = f"model {graph} metadata"
        meta = self._object(self._call(self._client().get_model_metadata, graph, what=what), what)
        try:
            inputs = {t["name"]: t["datatype"] for t in meta.get("inputs", [])}
            # Triton shows a batch-only input (eot) as [-1, 1]: its config needs non-empty dims, reshaped to none
            self.ranks[graph] = {t["name"]: len(t.get("shape") or []) for t in meta.get("inputs", [])}
            answers = {t["name"]: (_dims(t["shape"]), np.dtype(NUMPY_DTYPES.get(t["datatype"], "float64")).itemsize)
                       for t in meta.get("outputs", [])}
            outputs = set(answers)
        except (TypeError, KeyError, AttributeError, ValueError):
            raise UsageError(f"{self.url} {what}: its inputs and outputs are not lists of tensors (name, datatype, "
                             f"shape); {NOT_OIP}") from None
        want_in, want_out = self.io[graph]
        if set(inputs) != set(want_in) or not set(want_out) <= outputs:
            raise UsageError(f"{self.url}: model {graph} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
                             f"this rapdeploy needs inputs {list(want_in)} and outputs {list(want_out)}")
        unknown = {n: d for n, d in inputs.items() if not isinstance(d, str) or d not in NUMPY_DTYPES}
        if unknown:
            raise UsageError(f"{self.url}: model {graph} has inputs of unsupported datatypes {str(unknown)[:200]}")
        self.answers[graph] = {n: answers[n] for n in want_out}
        return inputs

    def _infer(self, graph: str, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """One inference call: ``arrays`` in the graph's input order; outputs in its output order, as float32."""
        import tritonclient.http as httpclient

        names, outputs = self.io[graph]
        inputs = []
        for name, arr in zip(names, arrays, strict=True):
            datatype = self.datatypes[graph][name]
            a = np.ascontiguousarray(arr, dtype=NUMPY_DTYPES[datatype])
            if self.ranks[graph].get(name) == a.ndim + 1:
                a = a.reshape(*a.shape, 1)
            item = httpclient.InferInput(name, list(a.shape), datatype)
            item.set_data_from_numpy(a, binary_data=True)
            inputs.append(item)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=True) for n in outputs]
        transport = self._client()._client_stub
        transport.limit = self._answer_bytes(graph, arrays) + ANSWER_MARGIN
        try:
            result = self._call(self._read_answer, graph, inputs, outputs=wanted, what=f"{graph} inference")
        finally:
            transport.limit = MAX_METADATA_ANSWER
        return tuple(self._output(graph, result, n, len(arrays[0])) for n in outputs)

    def _answer_bytes(self, graph: str, arrays: Sequence[np.ndarray]) -> int:
        """The most bytes of binary outputs ``graph`` answers for ``arrays``: each output's shape in the server's
        metadata, its first ``-1`` the request's rows, any other ``-1`` the largest input's rows (``asa_head``'s
        videos), in the datatype the metadata gives it."""
        rows, widest = len(arrays[0]), max(len(a) for a in arrays)
        total = 0
        for shape, itemsize in self.answers[graph].values():
            dims = [d if d >= 0 else rows if i == 0 else widest for i, d in enumerate(shape)]
            total += itemsize * math.prod(dims)
        return total

    def _read_answer(self, graph: str, inputs: list[Any], outputs: list[Any]) -> Any:
        """``client.infer``'s result; :class:`UsageError` naming the server and model when tritonclient cannot read
        the answer's JSON header as the protocol's (a list, no ``outputs``, an output without ``name``): it fails on
        it with a TypeError, KeyError or AttributeError of its own."""
        try:
            return self._client().infer(graph, inputs, outputs=outputs)
        except (TypeError, KeyError, AttributeError) as exc:
            names = ", ".join(self.io[graph][1])
            raise UsageError(f"{self.url} model {graph}: the answer's outputs ({names}) cannot be read "
                             f"({type(exc).__name__}: {one_line(exc, 80)}); {NOT_OIP}") from None

    def _output(self, graph: str, result: Any, name: str, rows: int) -> np.ndarray:
        """Output ``name`` of ``result`` as float32; :class:`UsageError` when the answer lacks it or it is no array
        of ``rows`` rows (the request's batch): ``as_numpy`` gives ``None`` for a missing output, which float32
        turned into one NaN, silently, and raises for data that do not fill the shape the answer states."""
        try:
            arr = result.as_numpy(name)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            # the answer's JSON names the output but not as the protocol does ("parameters": "x", a list for the
            # whole answer): tritonclient fails on it with an AttributeError or TypeError of its own
            raise UsageError(f"{self.url} model {graph}: output {name} cannot be read from the answer "
                             f"({type(exc).__name__}: {one_line(exc, 80)}); {NOT_OIP}") from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu" or arr.ndim == 0 or arr.shape[0] != rows:
            got = "no such output" if arr is None else \
                f"{arr.dtype} {list(arr.shape)}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise UsageError(f"{self.url} model {graph}: output {name} is missing or malformed ({got}, for a "
                             f"batch of {rows}); {NOT_OIP}")
        return np.asarray(arr, dtype=np.float32)

    # ------------------------------------------------------------------------------------------------ Engine
    def encode_video(self, frames: np.ndarray, frame_mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """See :meth:`Engine.encode_video` (outputs in :func:`~rap_deploy.graphs.video_outputs` order)."""
        frames, mask = check_video_inputs(frames, frame_mask, self.config)
        return batched(lambda f, m: self._infer(VIDEO_GRAPH, (f, m)), (frames, mask),
                       self._fit_rows(VIDEO_GRAPH, (frames, mask), self.max_batch[VIDEO_GRAPH]))

    def encode_text(self, input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """See :meth:`Engine.encode_text`."""
        ids, pos = check_text_inputs(input_ids, eot, self.config)
        # Always the full context: Triton's dynamic batcher only joins requests of equal shape, and the server's
        # engine trims each joined batch to its longest query itself (rapdeploy serve does; see blocks.trim_tokens).
        ids = fit_tokens(ids, pos, self.config.context_length, dynamic=False)
        return batched(lambda i, e: self._infer(TEXT_GRAPH, (i, e)), (ids, pos),
                       self._fit_rows(TEXT_GRAPH, (ids, pos), self.max_batch[TEXT_GRAPH]))[0]

    def asa_similarity(self, text_emb: np.ndarray, *rerank: np.ndarray) -> np.ndarray:
        """Similarity ``[Q, V]`` from the server's ``asa_head`` in blocks of at most the published block sizes and
        :data:`MAX_REQUEST_BYTES` (meanP of the frames for a model without an ASA head)."""
        if not self.config.has_asa:
            return meanp_similarity_from_frames(text_emb, rerank[0])

        def run(*block: np.ndarray) -> np.ndarray:
            return self._infer(ASA_GRAPH, block)[0]

        query_block = min(self.query_block, max(1, np.shape(text_emb)[0]))
        names = self.io[ASA_GRAPH][0]
        text_bytes = query_block * self._row_bytes(ASA_GRAPH, names[:1], (text_emb,))
        video_block = self._fit_rows(ASA_GRAPH, rerank, self.video_block, names[1:], MAX_REQUEST_BYTES - text_bytes)
        return blocked_similarity(run, text_emb, rerank, query_block=query_block, video_block=video_block)

    def _row_bytes(self, graph: str, names: Sequence[str], arrays: Sequence[np.ndarray]) -> int:
        """Bytes one row of ``arrays`` (inputs ``names`` of ``graph``) takes in the server's datatypes."""
        return sum(np.dtype(NUMPY_DTYPES[self.datatypes[graph][n]]).itemsize * int(np.prod(np.shape(a)[1:]))
                   for n, a in zip(names, arrays, strict=True))

    def _fit_rows(self, graph: str, arrays: Sequence[np.ndarray], limit: int | None,
                  names: Sequence[str] | None = None, budget: int | None = None) -> int:
        """The rows one request of ``graph`` carries: at most ``limit`` (the server's), and as many as fit in
        ``budget`` bytes (default :data:`MAX_REQUEST_BYTES`), at least one."""
        row = self._row_bytes(graph, self.io[graph][0] if names is None else names, arrays)
        fit = max(1, (MAX_REQUEST_BYTES if budget is None else budget) // max(row, 1))
        return fit if limit is None else min(limit, fit)

    def manifest(self) -> dict[str, Any]:
        """What the server says about its engine: ``checkpoint`` (``path``, ``sha256``), ``precision``, ``engine``."""
        return {"checkpoint": self._json_parameter("checkpoint"), "precision": self.parameters.get("precision"),
                "engine": self._json_parameter("engine"), "url": self.url}

    def _json_parameter(self, name: str) -> dict[str, Any]:
        """The ``rapdeploy.<name>`` parameter as a JSON object; ``{}`` when the server gives none or something else
        (then the server names no checkpoint, and verify asks for ``--checkpoint``)."""
        try:
            value = json.loads(self.parameters.get(name) or "{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def describe(self) -> EngineInfo:
        """Backend ``remote``, the served engine's precision, the URL and what the server reports."""
        from importlib import metadata

        served = self._json_parameter("engine")
        versions = {"tritonclient": metadata.version("tritonclient"),
                    "server": f"{self.server.get('name', '?')} {self.server.get('version', '?')}"}
        return EngineInfo(backend=self.backend, precision=self.parameters.get("precision") or "fp32",
                          device=f"remote {self.url}", versions=versions, path=self.url,
                          extra={"url": self.url, "served_engine": served, "max_batch": self.max_batch,
                                 "query_block": self.query_block, "video_block": self.video_block})

    def close(self) -> None:
        """Close the HTTP clients."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - a client of another thread may already be gone
                pass
        self._local = threading.local()


def remote_manifest(url: str) -> dict[str, Any]:
    """What the server at ``url`` reports about its engine (:meth:`RemoteEngine.manifest`)."""
    engine = RemoteEngine(url)
    try:
        return engine.manifest()
    finally:
        engine.close()
