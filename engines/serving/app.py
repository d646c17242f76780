"""The HTTP routes of ``rapdeploy serve`` (FastAPI): search, the search page, health, and the Open Inference
Protocol (KServe v2 REST) for the three graphs.

| route | answers |
|---|---|
| ``GET /`` | the search page (no external assets) |
| ``POST /search`` | ``{"query", "top_k", "top_m"}`` → the ``rapdeploy search --json`` object |
| ``GET /thumbnails?video_id=…&count=4`` | a JPEG strip of the video's frames (ETag; ``If-None-Match``: 304) |
| ``GET /healthz``, ``GET /readyz``, ``GET /library``, ``GET /stats`` | liveness, readiness, the library, counters |
| ``GET /v2``, ``GET /v2/health/{live,ready}`` | KServe v2 server metadata and health |
| ``GET /v2/models/{name}[/versions/1]``, ``…/ready``, ``…/config`` | model metadata, readiness, Triton config |
| ``POST /v2/models/{name}[/versions/1]/infer`` | inference (JSON or binary tensors) |

Every ``GET`` route answers ``HEAD`` too; another method is a 405 with the ``Allow`` header.

Browsers: every response forbids MIME sniffing, framing and embedding by other origins
(:data:`~rap_deploy.engines.serving.headers.SECURE_HEADERS`), the page runs only its own inline script and style
(:func:`~rap_deploy.engines.serving.middleware.page_policy`), and a server on a loopback address answers only its
own host names and pages (:class:`~rap_deploy.engines.serving.middleware.HostCheck`; ``rapdeploy serve
--allow-host``). The middleware doing this, counting requests and answering requests cancelled at a stop lives in
:mod:`~rap_deploy.engines.serving.middleware`; this module holds the routes, their error handlers and
:func:`create_app`, which puts them together.

Request bodies are bounded: a declared ``Content-Length`` over the limit is refused before the body is read, and a
streamed body is cut off when it passes it (413), and one that stalls or arrives too slowly is refused (408); an
inference response goes out in pieces and is given up when its client reads nothing of it for the idle timeout
(:mod:`~rap_deploy.engines.serving.bodies`). Every refusal is a 4xx JSON ``{"error", "field"}``; only a fault
of the server itself is a 500, and its traceback goes to the server log, not to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from rap_deploy.atomic import json_text
from rap_deploy.engines.serving.bodies import INLINE_BYTES, PacedResponse, large_body, log_path, read_body
from rap_deploy.engines.serving.contract import TEXT_GRAPH
from rap_deploy.engines.serving.headers import SECURE_HEADERS
from rap_deploy.engines.serving.middleware import (
    AnswerWhenStopped,
    CountRequests,
    HostCheck,
    SecureHeaders,
    answer_text,
    error_response,
    log_text,
    page_policy,
)
from rap_deploy.engines.serving.oip import (
    HEADER_LENGTH,
    RequestError,
    decode_body,
    encode_infer_response,
    parse_index_request,
    parse_infer_request,
    parse_json,
)
from rap_deploy.engines.serving.service import ServingService
from rap_deploy.errors import LibraryChangedError, RapDeployError, UsageError

log = logging.getLogger("rapdeploy.serve")
PAGE = Path(__file__).with_name("page.html")
VERSION = "1"
NOT_READY = 400  # the Open Inference Protocol's health answers: 200 true, a 4xx false (Triton answers 400)
READ = ["GET", "HEAD"]  # every GET route answers HEAD too (RFC 9110; load balancers and `curl -I` probe with it)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json_text(obj, indent=None, default=_plain), status_code=status, media_type="application/json")


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def create_app(service: ServingService, on_shutdown: Callable[[], None] | None = None,
               allowed_hosts: Collection[str] | None = None, stopping: Callable[[], bool] | None = None) -> FastAPI:
    """The FastAPI application serving ``service`` (routes in the module docstring); ``on_shutdown`` runs when the
    server shuts down gracefully (uvicorn's lifespan), e.g. to close the service. With ``allowed_hosts`` (a server
    on a loopback address) a request whose ``Host`` is not a loopback name or one of them is refused
    (:class:`~.middleware.HostCheck`); ``None`` checks no ``Host``. ``stopping`` says whether the server is
    stopping: only then is a cancelled request answered 503 (:class:`~.middleware.AnswerWhenStopped`)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(title="rapdeploy serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(AnswerWhenStopped, stopping=stopping)  # innermost: its 503 is counted, gets the headers
    if allowed_hosts is not None:  # inside CountRequests (added after it: outer), so /stats counts its refusals
        app.add_middleware(HostCheck, allowed=allowed_hosts)
    app.add_middleware(CountRequests, service=service)
    app.add_middleware(SecureHeaders)
    _add_error_handlers(app, service)
    _add_search_routes(app, service)
    _add_oip_routes(app, service)
    return app


def _add_error_handlers(app: FastAPI, service: ServingService) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> Response:
        # a body refused before it was read whole (413, 408) keeps its connection: uvicorn reads and discards the
        # rest, so a client still sending it gets to read this answer (closing at once made its send fail with
        # EPIPE / ECONNRESET instead); connections.py bounds how long that goes on
        return error_response(exc.status, answer_text(exc.message), exc.field)  # it may quote a header whole

    @app.exception_handler(RapDeployError)
    async def usage_error(request: Request, exc: RapDeployError) -> Response:
        # an exception's text may carry what the client sent: the answer shows it bounded (answer_text)
        if isinstance(exc, UsageError):  # the engine refused the input
            return error_response(400, answer_text(exc), None)
        if isinstance(exc, LibraryChangedError):  # not ready until restarted: /readyz says so too
            service.library_changed = answer_text(exc)
            log.error("the library changed since it was opened: %s", log_text(exc))
            return error_response(503, answer_text(exc), None)
        log.error("%s on %s %s: %s", type(exc).__name__, log_text(request.method), log_path(request.scope["path"]),
                  log_text(exc))
        return error_response(500, f"server error: {answer_text(exc)}", None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if "Allow" in headers:  # a 405's (RFC 9110); starlette lists a set, in no fixed order
            headers["Allow"] = ", ".join(sorted(m.strip() for m in headers["Allow"].split(",")))
        path = answer_text(request.url.path)  # a request line of up to h11's 16 KiB
        message = f"no route {request.method} {path}" if exc.status_code == 404 else \
            f"{request.method} is not allowed on {path}; it takes {headers.get('Allow')}" \
            if exc.status_code == 405 else answer_text(exc.detail)
        return error_response(exc.status_code, message, None, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(422, f"{where or 'request'}: {first.get('msg', 'invalid')}", where)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", log_text(request.method), log_path(request.scope["path"]))
        # answered from outside every middleware (starlette's ServerErrorMiddleware): the headers go with it here
        return error_response(500, f"internal server error ({type(exc).__name__}); see the server log", None,
                              SECURE_HEADERS)


def _add_search_routes(app: FastAPI, service: ServingService) -> None:
    html = PAGE.read_text(encoding="utf-8")  # read once: the policy's hashes are of this text
    page_headers = {"content-security-policy": page_policy(html), "cache-control": "no-cache"}
    # A search reads its candidates' re-rank rows into a block of its own before it waits for the engine, so 40
    # concurrent searches (the threadpool's 40 workers) held 40 blocks at once: 198 MB to 2.9 GB on the demo's
    # library at top_m 100. A few at a time keep the engine busy; the others wait with nothing allocated.
    searching = asyncio.Semaphore(service.options.max_search_inflight)

    @app.api_route("/", methods=READ, response_class=HTMLResponse)
    async def page() -> Response:
        return HTMLResponse(html, headers=page_headers)

    @app.api_route("/healthz", methods=READ)
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.api_route("/readyz", methods=READ)
    async def readyz() -> Response:
        ready = service.ready()
        return _json({"ready": ready, "library": service.library is not None, "models": list(service.models),
                      **({"library_changed": service.library_changed} if service.library_changed else {})},
                     200 if ready else 503)

    @app.api_route("/library", methods=READ)
    async def library() -> Response:
        lib = service.require_library()
        described = await run_in_threadpool(lib.describe)
        return _json({"size": len(lib), **described, "server": service.describe()})

    @app.api_route("/stats", methods=READ)
    async def stats() -> Response:
        return _json(service.stats())

    @app.post("/search")
    async def search(request: Request) -> Response:
        service.require_library()
        limit = service.options.max_search_body
        raw = await read_body(request, limit, service.options.body_idle_timeout_s, service.options.body_pace)
        doc = parse_json(decode_body(raw, request.headers.get("content-encoding"), limit))
        # checking and tokenizing a query runs BPE in Python (0.2 s for one 1,000-letter word): off the event loop,
        # so other requests and /healthz are not held up behind it
        query, top_k, top_m, warnings = await run_in_threadpool(service.parse_search, doc)
        t0 = time.perf_counter()
        tokens = await run_in_threadpool(service.tokenize, query)
        text_emb = await asyncio.wrap_future(service.submit_text(tokens))
        text_ms = (time.perf_counter() - t0) * 1e3
        async with searching:  # each search reads its candidates' rows into a block of its own before the engine
            result = await run_in_threadpool(service.search_embedding, query, text_emb[0], top_k, top_m, text_ms,
                                             warnings)
        return _json(result)

    @app.api_route("/thumbnails", methods=READ)
    async def thumbnails(request: Request, video_id: str, count: int = 4) -> Response:
        data = await run_in_threadpool(service.thumbnail_jpeg, video_id, count)
        # no-cache: a video re-encoded by `index --add` keeps its id, and its frames must not come from a stale copy;
        # the browser revalidates its copy by the ETag instead (304, no body)
        headers = {"Cache-Control": "no-cache", "ETag": entity_tag(data)}
        if none_match(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)


def entity_tag(data: bytes) -> str:
    """A strong ETag of a response body ``data``: its SHA-256 (128 bits of it), quoted. Of the bytes sent, not of
    the video file the library recorded: the frames come from the file as it is now."""
    return f'"{hashlib.sha256(data).hexdigest()[:32]}"'


def none_match(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header matches ``etag`` (RFC 9110 13.1.2: ``*``, or one of a list of tags
    compared weakly, so ``W/"x"`` matches ``"x"``); ``None`` (no header) matches nothing."""
    if header is None:
        return False
    tags = [tag.strip() for tag in header.split(",")]
    return "*" in tags or etag in (tag.removeprefix("W/") for tag in tags)


def _add_oip_routes(app: FastAPI, service: ServingService) -> None:
    """The Open Inference Protocol's routes: the server's (metadata, health, repository index) and each model's."""
    _add_server_routes(app, service)
    _add_model_routes(app, service)


def _add_server_routes(app: FastAPI, service: ServingService) -> None:
    """``GET /v2``, ``/v2/health/live``, ``/v2/health/ready`` and ``POST /v2/repository/index``."""

    @app.api_route("/v2", methods=READ)
    async def server_metadata() -> Response:
        from rap_deploy import __version__

        return _json({"name": "rapdeploy", "version": __version__,
                      "extensions": ["binary_tensor_data", "model_configuration"]})

    @app.api_route("/v2/health/live", methods=READ)
    async def live() -> Response:
        return _json({"live": True})

    @app.api_route("/v2/health/ready", methods=READ)
    async def ready() -> Response:
        ok = service.models_ready()  # the graphs never read the library: a library replaced under us is /readyz's
        return _json({"ready": ok}, 200 if ok else NOT_READY)

    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        limit = service.options.max_search_body
        raw = await read_body(request, limit, service.options.body_idle_timeout_s, service.options.body_pace)
        only_ready = parse_index_request(decode_body(raw, request.headers.get("content-encoding"), limit))
        ok = service.models_ready()
        if only_ready and not ok:
            return _json([])
        state = "READY" if ok else "UNAVAILABLE"  # Triton's state of a model that cannot serve
        return _json([{"name": n, "version": VERSION, "state": state} for n in service.models])


def _add_model_routes(app: FastAPI, service: ServingService) -> None:
    """Each model's metadata, ``/ready``, ``/config`` and ``/infer``, at ``/v2/models/{name}`` and at
    ``/v2/models/{name}/versions/{version}``."""

    async def model_metadata(name: str, version: str | None = None) -> Response:
        return _json(service.metadata(_model_of(service, name, version)))

    async def model_ready(name: str, version: str | None = None) -> Response:
        _model_of(service, name, version)
        ok = service.models_ready()
        return _json({"name": name, "ready": ok}, 200 if ok else NOT_READY)

    async def model_config(name: str, version: str | None = None) -> Response:
        return _json(service.model_config(_model_of(service, name, version)))

    # Bodies of up to --max-body-mb wait for the one engine: a few at a time are read and held, the others wait
    # unread (TCP pushes back on their clients), so concurrent clients cannot make the server hold any number.
    slots = asyncio.Semaphore(service.options.max_infer_inflight)

    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        model = _model_of(service, name, version)
        async with slots if large_body(request) else contextlib.nullcontext():
            return await _run_infer(service, request, model)

    for suffix, handler, methods in (("", model_metadata, READ), ("/ready", model_ready, READ),
                                     ("/config", model_config, READ), ("/infer", infer, ["POST"])):
        for path in _versioned(suffix):
            app.add_api_route(path, handler, methods=methods)


def _versioned(suffix: str) -> list[str]:
    """A model route's two paths: ``/v2/models/{name}SUFFIX`` and ``/v2/models/{name}/versions/{version}SUFFIX``."""
    return [f"/v2/models/{{name}}{suffix}", f"/v2/models/{{name}}/versions/{{version}}{suffix}"]


def _model_of(service: ServingService, name: str, version: str | None) -> Any:
    """The served model ``name``; raises :class:`RequestError` (404) for an unknown model or a version other than
    :data:`VERSION`."""
    model = service.model(name)
    if version not in (None, VERSION):
        raise RequestError(404, f"model '{name}' has only version {VERSION}, not {version[:16]!r}", "version")
    return model


async def _run_infer(service: ServingService, request: Request, model: Any) -> Response:
    """Read, decode and parse an inference request for ``model``, run it, and answer with its outputs."""
    body = await _infer_body(service, request)
    args = (body, request.headers.get(HEADER_LENGTH), model, service.axis_limits(model),
            service.options.max_infer_json, service.options.max_infer_json)
    # small bodies (text queries) are parsed on the event loop: a thread hop costs more than the parse
    req = parse_infer_request(*args) if len(body) <= INLINE_BYTES else \
        await run_in_threadpool(parse_infer_request, *args)
    service.check_values(model, req)
    outputs = await _infer_outputs(service, model, req)
    size = sum(int(getattr(v, "nbytes", 0)) for v in outputs.values())
    data, headers = encode_infer_response(model, req, outputs) if size <= INLINE_BYTES else \
        await run_in_threadpool(encode_infer_response, model, req, outputs)
    return PacedResponse(data, service.options.body_idle_timeout_s, headers)


async def _infer_body(service: ServingService, request: Request) -> bytes:
    """The inference request's body, read within the limits and inflated when it is compressed."""
    limit = service.options.max_infer_body
    raw = await read_body(request, limit, service.options.body_idle_timeout_s, service.options.body_pace)
    encoding = request.headers.get("content-encoding")
    # inflating up to the body limit takes a while: off the event loop, so /healthz and searches keep answering
    return await run_in_threadpool(decode_body, raw, encoding, limit) if encoding else \
        decode_body(raw, encoding, limit)


async def _infer_outputs(service: ServingService, model: Any, req: Any) -> dict[str, Any]:
    """The outputs of ``model`` for the parsed request ``req``: text queries through the service's dynamic batcher
    (:meth:`ServingService.submit_text`), the other graphs on a worker thread."""
    if model.name == TEXT_GRAPH:
        emb = await asyncio.wrap_future(service.submit_text(req.inputs))
        return {model.output_names[0]: emb}
    return await run_in_threadpool(service.infer, model, req)
