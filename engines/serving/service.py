"""What ``rapdeploy serve`` does, independent of HTTP: the served models, inference, search, thumbnails, statistics.

The engine is wrapped in a :class:`~rap_deploy.engines.serving.serial.SerialEngine` (one call at a time) that the
library shares; text encoding goes through a :class:`~rap_deploy.engines.serving.batcher.DynamicBatcher`, for
``/search`` queries and ``text_encoder`` inference requests alike. Bad requests raise
:class:`~rap_deploy.engines.serving.oip.RequestError` with a 4xx status and the field they are about.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rap_deploy.bounds import MAX_BODY_MB, MAX_TOP_K, MAX_TOP_M, MIN_BODY_MB
from rap_deploy.engines.blocks import fit_tokens
from rap_deploy.engines.serving.batcher import DynamicBatcher, QueueFullError
from rap_deploy.engines.serving.bodies import BODY_MIN_RATE, BODY_TIMEOUT_S, BodyPace
from rap_deploy.engines.serving.connections import HEADER_TIMEOUT_S, MAX_CONNECTIONS
from rap_deploy.engines.serving.contract import (
    ASA_GRAPH,
    BODY_HEADER_RESERVE,
    TEXT_GRAPH,
    VIDEO_GRAPH,
    BatchLimits,
    EngineSource,
    ServedModel,
    batch_limits,
    check_input_values,
    graph_specs_of,
    run_graph,
    served_models,
)
from rap_deploy.engines.serving.model_config import (
    config_to_json,
    engine_checkpoint,
    kserve_metadata,
    model_parameters,
    triton_model_config,
)
from rap_deploy.engines.serving.oip import InferRequest, RequestError
from rap_deploy.engines.serving.serial import SerialEngine
from rap_deploy.errors import UsageError
from rap_deploy.export.export_config import QUERIES, TOKENS, VIDEOS, TensorSpec

log = logging.getLogger("rapdeploy.serve")
MiB = 1 << 20


def check_body_mb(mb: float) -> None:
    """Refuse (:class:`UsageError`) a ``--max-body-mb`` of ``mb`` MiB outside [MIN_BODY_MB, MAX_BODY_MB], NaN too
    (a model may need more than the floor: :func:`fit_to_body` says how much)."""
    if not MIN_BODY_MB <= mb <= MAX_BODY_MB:  # NaN fails too
        raise UsageError(f"--max-body-mb must be in [{MIN_BODY_MB:g}, {MAX_BODY_MB:g}] MiB, got {mb:g}")


@dataclass(frozen=True)
class ServeOptions:
    """Server limits and batching settings (the ``rapdeploy serve`` options)."""

    max_batch: int = 32  # text-encoder dynamic batch (rows); 1 = one at a time
    max_queue_delay_ms: float = 2.0
    max_queue: int = 1024
    max_query_chars: int = 1000
    max_top_k: int = MAX_TOP_K
    max_top_m: int = MAX_TOP_M
    max_infer_body: int = 256 * MiB
    max_search_body: int = 64 * 1024
    max_asa_queries: int = 1024
    max_asa_videos: int = 1024
    max_thumbnail_frames: int = 8
    max_infer_json: int = 32 * MiB  # an inference body without binary tensors: parsed into ~10x its size
    max_infer_inflight: int = 4  # large inference requests read and run at once; more wait unread
    max_search_inflight: int = 4  # searches past their text encoding at once (each holds a re-rank block); more wait
    body_idle_timeout_s: float = 30.0  # --idle-timeout: a request body that sends nothing this long is stalled
    # (408); a response its client reads nothing of this long is given up (the connection closed)
    body_timeout_s: float = BODY_TIMEOUT_S  # --body-timeout: seconds a whole request body may take, plus 1 s for
    body_min_rate: float = BODY_MIN_RATE  # every --body-min-rate bytes that arrived; slower is 408 (BodyPace)
    max_connections: int = MAX_CONNECTIONS  # open connections at once; more are answered 503 and closed
    header_timeout_s: float = HEADER_TIMEOUT_S  # a request whose headers have not all arrived this long after it
    # began is closed (408): see connections.py

    def __post_init__(self) -> None:
        """Raise :class:`UsageError` for a value out of range, named as its ``rapdeploy serve`` option."""
        from rap_deploy.bounds import MAX_BATCH_SIZE
        from rap_deploy.engines.serving.batcher import MAX_DELAY_S

        checks = (("--max-batch", self.max_batch, 1, MAX_BATCH_SIZE),
                  ("--max-queue-delay-ms", self.max_queue_delay_ms, 0, MAX_DELAY_S * 1000),
                  ("--max-queue", self.max_queue, 1, 1 << 20),
                  ("max_infer_inflight", self.max_infer_inflight, 1, 1 << 10),
                  ("max_search_inflight", self.max_search_inflight, 1, 1 << 10),
                  ("--idle-timeout", self.body_idle_timeout_s, 1e-3, 3600),
                  ("--body-timeout", self.body_timeout_s, 1e-3, 3600),
                  ("--body-min-rate", self.body_min_rate, 0, 1 << 30),
                  ("--max-connections", self.max_connections, 1, 1 << 20),
                  ("--header-timeout", self.header_timeout_s, 1e-3, 3600))
        def shown(x: float) -> str:  # a count in whole numbers (not 1.04858e+06)
            return str(x) if isinstance(x, int) else f"{x:g}"

        for option, value, low, high in checks:
            if not low <= value <= high:  # NaN fails too
                raise UsageError(f"{option} must be in [{shown(low)}, {shown(high)}], got {shown(value)}")
        check_body_mb(self.max_infer_body / MiB)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def body_pace(self) -> BodyPace:
        """How long a request body may take (``--body-timeout``, ``--body-min-rate``)."""
        return BodyPace(self.body_timeout_s, self.body_min_rate)


class ServingService:
    """The served engine (and optional library): see the module docstring.

    ``engine`` is a :class:`SerialEngine` (the library, when given, must have been opened with that same wrapper),
    ``source`` what the engine was loaded from (its manifest gives the graphs' I/O and batch limits; ``serve`` takes
    it from the load, :func:`~rap_deploy.engines.serving.contract.loaded_source`, not from a read of its own); the
    checkpoint it publishes is the one the loaded engine says (:func:`engine_checkpoint`).
    """

    def __init__(self, engine: SerialEngine, source: EngineSource, library: Any = None,
                 options: ServeOptions | None = None) -> None:
        self.engine, self.source, self.library = engine, source, library
        self.library_changed: str | None = None  # set once a read finds the library updated since it was opened
        self.options = options or ServeOptions()
        self.config = engine.config
        self.info = engine.describe().to_dict()
        self.limits = batch_limits(source.manifest if source.kind == "engine" else None)
        models = served_models(graph_specs_of(source, engine.inner), self.limits, self.options.max_batch)
        self.models, published = fit_to_body(models, self.limits, self.options)
        self.platform = f"rapdeploy_{self.info.get('backend')}"
        self.parameters = model_parameters(self.config, self.info.get("precision", "fp32"),
                                           engine_checkpoint(self.info), published, self.info)
        text = self.models[TEXT_GRAPH]
        self.batcher = DynamicBatcher(self._encode_text, text.max_batch_size, self.options.max_queue_delay_ms / 1e3,
                                      self.options.max_queue, name="text-batcher")
        self.started = time.time()
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._closed = False
        self._thumbs: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()

    # ------------------------------------------------------------------------------------------------ models
    def model(self, name: str) -> ServedModel:
        """The served model ``name``; :class:`RequestError` 404 otherwise."""
        try:
            return self.models[name]
        except KeyError:
            raise RequestError(404, f"unknown model '{name[:64]}'; this server serves {list(self.models)}",
                               "model") from None

    def model_config(self, model: ServedModel) -> dict[str, Any]:
        """Triton-style model configuration JSON of ``model`` (``GET /v2/models/{name}/config``)."""
        delay = int(self.options.max_queue_delay_ms * 1000) if model.name == TEXT_GRAPH else None
        kind = "gpu" if str(self.info.get("device", "cpu")).startswith("cuda") else "cpu"
        return config_to_json(triton_model_config(model, self.platform, self.parameters, kind, 1, delay))

    def metadata(self, model: ServedModel) -> dict[str, Any]:
        """KServe v2 model metadata of ``model``."""
        return kserve_metadata(model, self.platform)

    def axis_limits(self, model: ServedModel) -> dict[str, int]:
        """Upper bounds of the symbolic axes a request to ``model`` may use (the batch axis is the model's)."""
        if model.name == ASA_GRAPH:
            return {"queries": self.options.max_asa_queries, "videos": self.options.max_asa_videos}
        return {TOKENS: self.config.context_length} if model.name == TEXT_GRAPH else {}

    # ------------------------------------------------------------------------------------------------ inference
    def check_values(self, model: ServedModel, request: InferRequest) -> None:
        """Reject input values the model cannot take (:func:`check_input_values`) as a 400 naming the input."""
        try:
            check_input_values(model, request.inputs, self.config)
        except ValueError as exc:
            name, message = exc.args
            raise RequestError(400, message, f"inputs.{name}") from None

    def infer(self, model: ServedModel, request: InferRequest) -> dict[str, np.ndarray]:
        """Run a checked request on a model that is not batched here (blocking; the engine lock serialises)."""
        return run_graph(self.engine, model, request.inputs)

    def submit_text(self, inputs: Mapping[str, np.ndarray]) -> Future:
        """Queue a text-encoder call (inputs by name) with the dynamic batcher; its future gives ``text_emb``.

        Raises :class:`RequestError` 503 when the queue is full.
        """
        ids_name, eot_name = self.models[TEXT_GRAPH].input_names
        # Padded to the full context so that requests of any length join one batch; the engine trims the batch to
        # its longest query again (the tokens after a row's EOT never change its embedding).
        ids = fit_tokens(inputs[ids_name], inputs[eot_name], self.config.context_length, dynamic=False)
        try:
            return self.batcher.submit(ids, inputs[eot_name])
        except QueueFullError as exc:
            raise RequestError(503, f"server busy: {exc}; retry later", "queue") from None

    def _encode_text(self, *inputs: np.ndarray) -> np.ndarray:
        """The text encoder on one batch (the batcher's function); inputs in the graph's order."""
        model = self.models[TEXT_GRAPH]
        return run_graph(self.engine, model, dict(zip(model.input_names, inputs, strict=True)))[
            model.output_names[0]]

    # ------------------------------------------------------------------------------------------------ search
    def require_library(self) -> Any:
        """The library; :class:`RequestError` 404 when the server runs without one."""
        if self.library is None:
            raise RequestError(404, "this server has no library; start it with `rapdeploy serve --library LIB`",
                               "library")
        return self.library

    def parse_search(self, doc: Any) -> tuple[str, int, int, list[str]]:
        """Check a ``POST /search`` body: ``{"query": str, "top_k": int = 10, "top_m": int = 100}``.

        Returns ``(query, top_k, top_m, warnings)`` (``warnings``: the query was truncated to the text context, as
        ``rapdeploy search`` warns); raises :class:`RequestError` (422) naming the field.
        """
        o = self.options
        if not isinstance(doc, dict):
            raise RequestError(400, 'body must be a JSON object {"query": ..., "top_k": ..., "top_m": ...}', "body")
        unknown = sorted(set(doc) - {"query", "top_k", "top_m"})
        if unknown:
            raise RequestError(422, f"unknown field '{str(unknown[0])[:32]}'; /search takes query, top_k, top_m",
                               str(unknown[0])[:32])
        if "query" not in doc:
            raise RequestError(422, 'query is required: /search takes {"query": "what to find", "top_k": 10, '
                               '"top_m": 100}', "query")
        query = doc["query"]
        if not isinstance(query, str):
            raise RequestError(422, f"query must be a string, got {_json_value(query)}", "query")
        if not query.strip():
            raise RequestError(422, "query must not be empty", "query")
        if len(query) > o.max_query_chars:
            raise RequestError(422, f"query is {len(query)} characters; the limit is {o.max_query_chars}", "query")
        from rap_deploy.library.queries import check_queries

        try:  # the rules of `rapdeploy search`: no control characters, some letter, digit or symbol, some token
            texts, warnings = check_queries([query], self.config.tokenizer, names=["query"])  # one query: no number
        except UsageError as exc:
            raise RequestError(422, str(exc), "query") from None

        def bounded(key: str, default: int, top: int) -> int:
            value = doc.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise RequestError(422, f"{key} must be an integer in [1, {top}], got {_json_value(value)}", key)
            return value

        return texts[0], bounded("top_k", 10, o.max_top_k), bounded("top_m", 100, o.max_top_m), warnings[0]

    def tokenize(self, query: str) -> dict[str, np.ndarray]:
        """The text encoder's inputs for ``query`` (token ids ``[1, L]``, EOT ``[1]``) with the model's tokenizer."""
        from rap_deploy.graphs import TEXT_INPUTS
        from rap_deploy.tokenizer import tokenize

        return dict(zip(TEXT_INPUTS, tokenize([query], self.config.tokenizer), strict=True))

    def search_embedding(self, query: str, text_emb: np.ndarray, top_k: int, top_m: int, text_ms: float,
                         warnings: list[str] | None = None) -> dict[str, Any]:
        """Stages 1 and 2 for one encoded query; returns the ``rapdeploy search --json`` object with the text
        encoder's time (queue wait included) in ``timings_ms``, and ``warnings`` when there are some."""
        from rap_deploy.errors import UsageError

        library = self.require_library()
        try:
            result = library.search_embeddings(np.asarray(text_emb, dtype=np.float32).reshape(1, -1), top_k=top_k,
                                               top_m=top_m)[0]
        except UsageError as exc:
            raise RequestError(422, str(exc), getattr(exc, "field", "query")) from None  # top_m: memory refusal
        timings = dict(result.get("timings_ms") or {})
        # rounded to the microsecond as `rapdeploy search --json` rounds every timing (library.search)
        timings["text"] = round(text_ms, 3)
        timings["total"] = round(float(timings.get("total", 0.0)) + text_ms, 3)
        return {"query": query, **{k: v for k, v in result.items() if k != "query"}, "timings_ms": timings,
                **({"warnings": list(warnings)} if warnings else {})}

    def thumbnail_jpeg(self, video_id: str, count: int) -> bytes:
        """A JPEG strip of ``count`` frames of ``video_id`` (from the library's frame cache; cached here too).

        Raises :class:`RequestError` 404 for an unknown id or one whose source file can no longer be decoded
        (the frames are gone: not the client's fault, not a fault of the running server either), 422 for a bad count.
        """
        library = self.require_library()
        if not 1 <= count <= self.options.max_thumbnail_frames:
            raise RequestError(422, f"count must be in [1, {self.options.max_thumbnail_frames}]", "count")
        key = (video_id, count)
        with self._lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        try:
            frames = np.asarray(library.thumbnail_frames(video_id, count))
        except KeyError:
            raise RequestError(404, f"no video '{video_id[:64]}' in the library", "video_id") from None
        except UsageError as exc:  # its source file was deleted or damaged since indexing: the log names it
            log.warning("no thumbnails for video %r: %s", video_id[:64], exc)
            raise RequestError(404, f"video '{video_id[:64]}' is in the library, but its source file cannot be "
                               "decoded any more, so it has no frames to show (the server log names the file)",
                               "video_id") from None
        data = jpeg_strip(frames)
        with self._lock:
            self._thumbs[key] = data
            while len(self._thumbs) > 512:
                self._thumbs.popitem(last=False)
        return data

    # ------------------------------------------------------------------------------------------------ status
    def count(self, key: str) -> None:
        """Count one request outcome (``"<route> <status>"``) for :meth:`stats`."""
        with self._lock:
            self._counts[key] += 1

    def models_ready(self) -> bool:
        """Whether the three graphs can be served (the Open Inference Protocol's readiness): the batcher runs; the
        library, which the graphs never read, does not count."""
        return self.batcher.alive

    def ready(self) -> bool:
        """Whether the batcher runs (the engine and library were loaded before the service existed) and the library
        is still the one opened (``rapdeploy index`` has not replaced its files since)."""
        return self.batcher.alive and self.library_changed is None

    def stats(self) -> dict[str, Any]:
        """Uptime, request counts by route and status (``"/search 200"``; a connection refused before any request
        is ``"connection 503"`` past ``--max-connections``, ``"connection 408"`` past ``--header-timeout`` and
        ``"connection 400"`` when it is not HTTP),
        the text batcher's and the engine's counters."""
        with self._lock:
            counts = dict(self._counts)
        # seconds to the microsecond, as /search rounds its timings_ms (the batcher and engine round theirs)
        return {"uptime_s": round(time.time() - self.started, 6), "requests": counts,
                "text_batcher": {**self.batcher.stats.to_dict(), "queued": self.batcher.queued(),
                                 "max_batch": self.batcher.max_batch,
                                 "max_queue_delay_ms": self.options.max_queue_delay_ms},
                "engine": self.engine.stats(), "options": self.options.to_dict()}

    def reset_stats(self) -> None:
        """Forget the text batcher's and the engine's counters so far: the start-up warm-up's text encoding
        (``server.warm_up``) is no client's request, and ``/stats`` counts clients' requests only. Call it before the
        server takes requests."""
        self.batcher.reset_stats()
        self.engine.reset_stats()

    def describe(self) -> dict[str, Any]:
        """What ``GET /library`` adds about the server: engine, models and batch limits."""
        return {"engine": self.info, "models": {n: m.max_batch_size for n, m in self.models.items()},
                "batch_limits": self.limits.to_dict(), "source": str(self.source.path)}

    def close(self) -> None:
        """Stop the batcher, close the library and the engine (once; later calls do nothing)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.batcher.close()
        if self.library is not None and hasattr(self.library, "close"):
            self.library.close()
        self.engine.close()


def row_bytes(tensors: Sequence[TensorSpec], axis: str) -> int | None:
    """Bytes that one index along ``axis`` takes in the binary ``tensors`` carrying that axis (0 when none does);
    ``None`` when another symbolic axis makes it vary."""
    total = 0
    for t in tensors:
        if axis in t.shape:
            dims = [d for d in t.shape if d != axis]
            if any(isinstance(d, str) for d in dims):
                return None
            total += math.prod(dims) * np.dtype(t.dtype).itemsize
    return total


def fit_to_body(models: dict[str, ServedModel], limits: BatchLimits, options: ServeOptions
                ) -> tuple[dict[str, ServedModel], BatchLimits]:
    """The served models and the ASA blocks to publish, cut to what one request body (``--max-body-mb``) holds, so
    that a client sending the video batch and ASA blocks the server publishes never gets 413.

    The engine here re-blocks the ASA head itself, so clients may send up to ``max_asa_queries`` texts per request
    (a remote engine then re-sends each block of videos far less often than with the engine's blocks); the queries
    take at most half of the body. Raises :class:`UsageError` when the body cannot hold one video for the video
    encoder or one query and one video for the ASA head (every such request would get 413), naming the
    ``--max-body-mb`` that does.
    """
    budget = options.max_infer_body - BODY_HEADER_RESERVE
    out = dict(models)
    video = models.get(VIDEO_GRAPH)
    row = row_bytes(video.spec.inputs, video.batch_axis) if video is not None and video.batch_axis else None
    asa = models.get(ASA_GRAPH)
    q_row = row_bytes(asa.spec.inputs, QUERIES) if asa is not None else None
    v_row = row_bytes(asa.spec.inputs, VIDEOS) if asa is not None else None
    _check_body_holds_one(options.max_infer_body, {VIDEO_GRAPH: row or 0, ASA_GRAPH: (q_row or 0) + (v_row or 0)})
    if row and budget // row < video.max_batch_size:
        out[VIDEO_GRAPH] = dataclasses.replace(video, max_batch_size=max(1, budget // row))
    published = dataclasses.replace(limits, asa_queries=options.max_asa_queries)
    if q_row and v_row:
        queries = min(options.max_asa_queries, max(1, min(budget // 2, budget - v_row) // q_row))
        videos = min(limits.asa_videos, max(1, (budget - queries * q_row) // v_row))
        published = dataclasses.replace(published, asa_queries=queries, asa_videos=videos)
    return out, published


def _check_body_holds_one(body: int, rows: Mapping[str, int]) -> None:
    """Raise :class:`UsageError` when a request body of ``body`` bytes cannot hold the smallest request of a graph
    (``rows``: bytes of its binary tensors for one item, the JSON header reserved besides)."""
    name, need = max(rows.items(), key=lambda kv: kv[1])
    if need + BODY_HEADER_RESERVE > body:
        least = math.ceil((need + BODY_HEADER_RESERVE) / MiB * 100) / 100
        raise UsageError(f"--max-body-mb {body / MiB:g} cannot hold one {name} request ({need:,} bytes of tensors "
                         f"and {BODY_HEADER_RESERVE // 1024} KiB for its header): every one would be refused (413); "
                         f"pass --max-body-mb {least:g} or more")


def _json_value(value: Any) -> str:
    """``value`` as the request wrote it (JSON: ``"5"`` for a string, ``true``, ``5.0``), cut to 32 characters, so a
    refusal of ``"top_k": "5"`` does not read 'got 5'."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (RecursionError, ValueError):  # nested deeper than the encoder goes
        return f"a JSON {type(value).__name__}"
    return text if len(text) <= 32 else text[:31] + "…"


def jpeg_strip(frames: np.ndarray, height: int = 96) -> bytes:
    """Frames ``uint8 [n, H, W, 3]`` side by side, scaled to ``height`` pixels, as JPEG bytes."""
    from PIL import Image

    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"thumbnail frames must be [n, H, W, 3], got {list(arr.shape)}")
    strip = np.concatenate(list(np.clip(arr, 0, 255).astype(np.uint8)), axis=1)
    img = Image.fromarray(strip)
    width = max(1, round(img.width * height / img.height))
    img = img.resize((width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
