"""``load_engine("http://HOST:PORT")``: the three graphs over the Open Inference Protocol with ``tritonclient.http``.

Works against ``rapdeploy serve`` and against Triton serving a ``rapdeploy triton-repo`` repository: both answer
``GET /v2/models/{name}/config`` with the model's ``rapdeploy.*`` parameters (the RAP config, the precision, the
source checkpoint, the ASA block sizes) and ``GET /v2/models/{name}`` with the tensors' names and datatypes. Tensor
names come from the contract (:mod:`rap_deploy.graphs`) and are checked against the server's metadata; inputs are
sent as binary tensors in the server's declared datatypes (FP16 included), outputs come back as float32. Video and
text batches larger than a model's ``max_batch_size`` are split, and the ASA head is fed blocks of at most the
published block sizes, as a local engine does; no request carries more than :data:`MAX_REQUEST_BYTES` of tensors,
what a tritonserver started without ``--http-max-input-size`` accepts. The server's answers are read within size
bounds (:mod:`~rap_deploy.engines.serving.remote_transport`) and checked against the contract
(:mod:`~rap_deploy.engines.serving.remote_checks`).
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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
from rap_deploy.engines.serving.remote_checks import (
    asa_blocks,
    checkpoint_sha256,
    json_object,
    model_tensors,
    published_size,
    rap_config,
)
from rap_deploy.engines.serving.remote_transport import (
    ANSWER_MARGIN,
    MAX_METADATA_ANSWER,
    NOT_OIP,
    BoundedTransport,
    bound_answers,
    bounded_transport,
    one_line,
    require_answer_read,
    split_url,
    tritonclient_version,
)
from rap_deploy.errors import BackendUnavailableError, UsageError

#: The most bytes of tensors one request carries: Triton's default ``--http-max-input-size`` (64 MiB, which a
#: tritonserver started without the option enforces) less room for the JSON header. Triton publishes the model's
#: ``max_batch_size`` (32 videos: 220 MiB of ViT-B/32 frames) whatever that limit, so batches are split to fit it.
MAX_REQUEST_BYTES = TRITON_HTTP_INPUT_BYTES - BODY_HEADER_RESERVE


def _error_text(exc: Any, status: str) -> str:
    """What a ``tritonclient`` error says, on one line. A KServe v2 server answers an error as ``{"error": "..."}``;
    when the client could not decode the answer as that (``debug_details`` holds the body: an HTML error page of a
    proxy, a server of another kind), it put the whole body in its message, however long and on many lines."""
    body = exc.debug_details()
    if body is not None:
        return f"HTTP {status or '?'} with an answer that is not a KServe v2 error ({one_line(body, 100)}); {NOT_OIP}"
    return one_line(exc.message() or "no error message")


def _short_sha(sha: str | None) -> str:
    """A sha256 as a message shows it: its first 12 digits, or ``none`` when there is none."""
    return f"{sha[:12]}…" if sha else "none"


class RemoteEngine(Engine):
    """An :class:`Engine` whose graphs run on a KServe v2 / Triton server at ``url`` (see the module docstring).

    Raises :class:`BackendUnavailableError` when the server cannot be reached, is not ready or gives no HTTP answer
    (it closed the connection: stopped or crashed),
    :class:`UsageError` when it does not serve this contract's models (missing models, tensors or parameters).
    """

    backend = "remote"

    def __init__(self, url: str, connection_timeout: float = 60.0, network_timeout: float = 600.0) -> None:
        self._target, self._ssl = split_url(url)  # the URL as typed, so a refusal quotes it ("http://", not "http:")
        self.url = url.rstrip("/")
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
            self._refuse_not_ready(client)
        self.server = json_object(self._call(client.get_server_metadata, what="server metadata"), self.url,
                                  "server metadata")
        text_cfg = self._model_config(TEXT_GRAPH)
        self.parameters = read_parameters(text_cfg)
        self.config = rap_config(self.parameters, self.url)
        #: the source checkpoint's sha256 the server publishes (``None``: it names none), what a library compares
        self.checkpoint_sha256 = checkpoint_sha256(self.parameters)
        self.io = contract_io(self.config.has_asa)
        self.ranks: dict[str, dict[str, int]] = {}  # per graph, each input's rank in the server's metadata
        # per graph, each output's shape (-1: dynamic) and item size in the server's metadata: answers are bounded
        self.answers: dict[str, dict[str, tuple[tuple[int, ...], int]]] = {}
        configs = {g: (text_cfg if g == TEXT_GRAPH else self._model_config(g)) for g in self.io}
        self.datatypes = {g: self._check_metadata(g, configs[g]) for g in self.io}
        self.max_batch = {g: published_size(configs[g].get("max_batch_size"), self.url, f"model {g} max_batch_size",
                                            0, 0) or None
                          for g in self.io}
        self.query_block, self.video_block = asa_blocks(self.parameters, self.url)

    def _refuse_not_ready(self, client: Any) -> None:
        """Raise for a server whose ``GET /v2/health/ready`` did not answer 200. tritonclient reads any other status
        as "not ready", so a web server of another kind, or a URL with a path the server does not have
        (``http://HOST:PORT/v2``: every route already starts with ``/v2``), was told to wait for its models forever.
        So the server metadata (``GET /v2``, answered while models load) decides: :class:`UsageError` naming the
        URL (and, for a URL with a path, the URL without it) when it fails too, else
        :class:`BackendUnavailableError` (not ready yet)."""
        try:
            self._call(client.get_server_metadata, what="server metadata")
        except UsageError as exc:
            parts = urllib.parse.urlsplit(self.url)
            root = f"{parts.scheme}://{parts.netloc}"
            hint = (f"; the URL's path {parts.path} comes before every route (/v2/...): if the server is at {root}, "
                    f"pass that URL") if parts.path else ""
            raise UsageError(f"{exc} (GET /v2/health/ready did not answer 200 either){hint}") from None
        raise BackendUnavailableError(f"the server at {self.url} is not ready (GET /v2/health/ready); wait for it "
                                      "to load its models")

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
        with self._clients_lock:
            self._clients.append(client)
        bound_answers(client, self.url)  # every answer is read within a bound, or the client is refused
        return client

    def _transport(self) -> BoundedTransport:
        """This thread's client's :class:`BoundedTransport`."""
        return bounded_transport(self._client(), self.url)

    def _call(self, fn: Any, *args: Any, what: str = "", **kwargs: Any) -> Any:
        """Call a client method (one request of this thread's client); map its failures to this project's errors
        (one line, naming the server). Raises :class:`BackendUnavailableError` when the answer did not come through
        the client's :class:`BoundedTransport` (a ``tritonclient`` of another version), so was read without a bound."""
        from tritonclient.utils import InferenceServerException

        transport = self._transport()
        answers = transport.answers
        try:
            result = fn(*args, **kwargs)
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
        require_answer_read(transport, answers, self.url)
        return result

    def _model_config(self, graph: str) -> dict[str, Any]:
        what = f"model {graph} config"
        return json_object(self._call(self._client().get_model_config, graph, what=what), self.url, what)

    def _check_metadata(self, graph: str, config: Mapping[str, Any]) -> dict[str, str]:
        """The server's datatype per input (its ranks and output shapes go to :attr:`ranks` and :attr:`answers`);
        raises :class:`UsageError` when its tensors or RAP config differ from the contract."""
        parameters = read_parameters(config)
        if parameters.get("config") != self.parameters["config"]:
            raise UsageError(f"{self.url}: model {graph} was built from another RAP config than {TEXT_GRAPH}")
        if checkpoint_sha256(parameters) != self.checkpoint_sha256:  # index encodes with one, search with the other
            raise UsageError(f"{self.url}: model {graph} was built from other weights than {TEXT_GRAPH} (rapdeploy."
                             f"checkpoint sha256 {_short_sha(checkpoint_sha256(parameters))} vs "
                             f"{_short_sha(self.checkpoint_sha256)}); serve the three models of one engine")
        what = f"model {graph} metadata"
        meta = json_object(self._call(self._client().get_model_metadata, graph, what=what), self.url, what)
        tensors = model_tensors(meta, self.url, graph, self.io[graph])
        self.ranks[graph], self.answers[graph] = tensors.ranks, tensors.answers
        return tensors.datatypes

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
        transport = self._transport()
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
        """Backend ``remote``, the served engine's precision, the URL and what the server reports (with
        ``checkpoint_sha256``, the source checkpoint's sha256 it publishes, or ``None``)."""
        served = self._json_parameter("engine")
        versions = {"tritonclient": tritonclient_version(),
                    "server": f"{self.server.get('name', '?')} {self.server.get('version', '?')}"}
        return EngineInfo(backend=self.backend, precision=self.parameters.get("precision") or "fp32",
                          device=f"remote {self.url}", versions=versions, path=self.url,
                          extra={"url": self.url, "served_engine": served, "max_batch": self.max_batch,
                                 "query_block": self.query_block, "video_block": self.video_block,
                                 "checkpoint_sha256": self.checkpoint_sha256})

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
