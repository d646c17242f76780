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

Browsers: every response forbids MIME sniffing, framing and embedding by other origins (:data:`SECURE_HEADERS`),
the page runs only its own inline script and style (:func:`page_policy`), and a server on a loopback address
answers only its own host names and pages (:class:`HostCheck`; ``rapdeploy serve --allow-host``).

Request bodies are bounded: a declared ``Content-Length`` over the limit is refused before the body is read, and a
streamed body is cut off when it passes it (413), and one that stalls or arrives too slowly is refused (408); an
inference response goes out in pieces and is given up when its client reads nothing of it for the idle timeout
(:mod:`~rap_deploy.engines.serving.bodies`). Every refusal is a 4xx JSON ``{"error", "field"}``; only a fault
of the server itself is a 500, and its traceback goes to the server log, not to the client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import logging
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from rap_deploy.atomic import json_text
from rap_deploy.engines.serving.bodies import INLINE_BYTES, PacedResponse, large_body, log_path, read_body
from rap_deploy.engines.serving.contract import TEXT_GRAPH
from rap_deploy.engines.serving.headers import SECURE_HEADERS
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
PAGE_ROUTES = frozenset({"/", "/search", "/thumbnails", "/healthz", "/readyz", "/library", "/stats"})
NOT_READY = 400  # the Open Inference Protocol's health answers: 200 true, a 4xx false (Triton answers 400)
READ = ["GET", "HEAD"]  # every GET route answers HEAD too (RFC 9110; load balancers and `curl -I` probe with it)
LOG_TEXT_CHARS = 1000  # of an exception's text or a request's method in a log line (log_text)


def log_text(text: object, limit: int = LOG_TEXT_CHARS) -> str:
    """``str(text)`` as a server log line shows it, escaped as :func:`~.bodies.log_path` escapes a request's path:
    its first ``limit`` characters as the inside of their repr, so a newline or another control character that a
    client put in an exception's message or its request neither starts a forged line nor reaches the terminal
    showing the log raw; a longer text ends in ``... (N characters)``."""
    head, more = _cut(str(text), limit)
    return repr(head)[1:-1] + more


def answer_text(text: object, limit: int = LOG_TEXT_CHARS) -> str:
    """``str(text)`` as an error answer's ``"error"`` shows it to the client: bounded as :func:`log_text` bounds a
    log line (its first ``limit`` characters, a longer text ending in ``... (N characters)``), not escaped (the JSON
    answer escapes control characters itself), so an exception whose message carries a megabyte value the client
    sent makes an answer of about ``limit`` characters that still names the error."""
    head, more = _cut(str(text), limit)
    return head + more


def _cut(text: str, limit: int) -> tuple[str, str]:
    """``text``'s first ``limit`` characters and, when it is longer, ``... (N characters)`` to follow them."""
    return text[:limit], (f"... ({len(text)} characters)" if len(text) > limit else "")


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json_text(obj, indent=None, default=_plain), status_code=status, media_type="application/json")


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def page_policy(html: str) -> str:
    """The Content-Security-Policy of the search page ``html``: its inline ``<script>`` and ``<style>`` elements by
    their SHA-256 (nothing else runs or styles), images, ``fetch`` and form submits to this server only, no base URL,
    no framing."""
    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}\b[^>]*>(.*?)</{tag}>", html, flags=re.DOTALL | re.IGNORECASE)
        digests = [base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in bodies]
        return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class SecureHeaders:
    """ASGI middleware adding :data:`SECURE_HEADERS` to every response, each unless the route set its own (the page
    sets its Content-Security-Policy)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secure_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                have = {bytes(k).lower() for k, _ in headers}
                headers += [(k.encode(), v.encode()) for k, v in SECURE_HEADERS.items() if k.encode() not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, secure_send)


def host_name(host: str) -> str:
    """The name or address of a ``Host`` header (``example.org:8080`` → ``example.org``, ``[::1]:80`` → ``::1``),
    lower-cased."""
    value = host.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def origin_host(origin: str) -> str | None:
    """The host name of an ``Origin`` header (``http://[::1]:8080`` → ``::1``); ``None`` for ``null`` or a value
    that is not a URL."""
    try:
        return urllib.parse.urlsplit(origin.strip()).hostname
    except ValueError:  # an unbalanced IPv6 bracket, a bad port
        return None


def is_loopback_name(name: str) -> bool:
    """Whether ``name`` (a :func:`host_name`) always means this machine: ``localhost``, ``*.localhost`` (RFC 6761)
    or a loopback address."""
    if name in ("localhost", "localhost.") or name.endswith((".localhost", ".localhost.")):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostCheck:
    """ASGI middleware answering 403 to a request whose ``Host`` is neither a loopback name nor one of ``allowed``,
    and to a browser's request from a page of another site (its ``Origin`` is not such a name either and its
    ``Sec-Fetch-Site`` does not say same-origin or same-site).

    A server on a loopback address is reachable from every web page its user opens, through DNS rebinding: a page at
    ``http://attacker.example:8080`` whose name then resolves to 127.0.0.1 reads this server as its own origin (the
    library's video ids and file paths, their frames) and sends it any request; its requests still carry
    ``Host: attacker.example:8080``. A request without ``Host`` (HTTP/1.0; never a browser's) passes."""

    def __init__(self, app: Any, allowed: Collection[str]) -> None:
        self.app, self.allowed = app, frozenset(host_name(h) for h in allowed)

    def ours(self, name: str | None) -> bool:
        return name is not None and (name in self.allowed or is_loopback_name(name))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or ()) if scope["type"] == "http" else {}
        host, origin = headers.get(b"host"), headers.get(b"origin")
        name = host_name(host.decode("latin-1")) if host is not None else None
        if name is not None and not self.ours(name):
            message = (f"Host {name[:64]!r} is not this server's: it listens on a loopback address and answers only "
                       "localhost, loopback addresses and the names given with --allow-host (a gateway that "
                       "forwards another Host names it with --allow-host)")
            await _error(403, message, "Host")(scope, receive, send)
            return
        # a browser sends Origin with every cross-origin request and every POST: a page of another site (or an
        # opaque "null" origin) may not make the server search or infer for it, even unread (text/plain bodies
        # need no CORS preflight). Sec-Fetch-Site (which no page can forge) vouches for the page's own requests
        # behind a gateway that rewrites Host; without it the Origin must be a name of this server.
        fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
        if origin is not None and fetch_site not in ("same-origin", "same-site", "none") and \
                not self.ours(origin_host(origin.decode("latin-1"))):
            message = (f"a request from the web page at {origin.decode('latin-1')[:64]!r} (another site) is refused; "
                       "the search page is served at / here, or name a gateway's host with --allow-host")
            await _error(403, message, "Origin")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _error(status: int, message: str, field: str | None, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


class CountRequests:
    """ASGI middleware counting responses by route and status in the service's statistics."""

    def __init__(self, app: Any, service: ServingService) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        # a bounded set of labels, whatever paths clients send
        route = "/v2/infer" if path.startswith("/v2/") and path.endswith("/infer") else \
            "/v2" if path.startswith("/v2") else path if path in PAGE_ROUTES else "other"

        started = False

        async def counting_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.service.count(f"{route} {message['status']}")
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if not started:  # the catch-all handler answers 500 from outside this middleware
                self.service.count(f"{route} 500")
            raise


STOPPED_MESSAGE = ("the server stopped (Ctrl-C or SIGTERM) before this request finished: it ran past "
                   "--shutdown-timeout and was cancelled; send it again to a running server")


class AnswerWhenStopped:
    """ASGI middleware for a request that a stopping server cancels (uvicorn cancels what still runs once
    ``--shutdown-timeout`` has passed): one log line, and a 503 ``{"error", "field"}`` with ``Connection: close`` to
    its client when no answer had started, instead of uvicorn's "Exception in ASGI application" traceback and a
    plain-text 500; an answer that had started is cut off (uvicorn closes the connection and logs that the app
    returned without completing it).

    Only while ``stopping()`` says the server stops (``serve`` passes uvicorn's ``should_exit``; ``None``: at any
    time) and, on Python 3.11+, only a cancellation of the request's own task: any other ``CancelledError`` (an inner
    future's, or a cancellation while the server runs) propagates untouched, so it is neither answered nor logged as
    a stop."""

    def __init__(self, app: Any, stopping: Callable[[], bool] | None = None) -> None:
        self.app, self.stopping = app, stopping

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            cancelling = getattr(task, "cancelling", None)  # Python 3.11+ (3.10 cannot tell whose it is)
            if (self.stopping is not None and not self.stopping()) or task is None or \
                    (cancelling is not None and not cancelling()):
                raise
            if cancelling is not None:
                task.uncancel()
            await self._answer_stopped(scope, receive, send, started)

    @staticmethod
    async def _answer_stopped(scope: dict, receive: Any, send: Any, started: bool) -> None:
        """Log the request cancelled at a stop and, when its answer had not ``started``, answer it 503."""
        log.warning("%s %s cancelled: the server stopped and it ran past --shutdown-timeout; %s",
                    log_text(scope.get("method")),
                    log_path(scope.get("path", "")),
                    "its answer had begun, so the connection is closed mid-answer" if started else "answered 503")
        if not started:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await _error(503, STOPPED_MESSAGE, None, {"Connection": "close"})(scope, receive, send)


def create_app(service: ServingService, on_shutdown: Callable[[], None] | None = None,
               allowed_hosts: Collection[str] | None = None, stopping: Callable[[], bool] | None = None) -> FastAPI:
    """The FastAPI application serving ``service`` (routes in the module docstring); ``on_shutdown`` runs when the
    server shuts down gracefully (uvicorn's lifespan), e.g. to close the service. With ``allowed_hosts`` (a server
    on a loopback address) a request whose ``Host`` is not a loopback name or one of them is refused
    (:class:`HostCheck`); ``None`` checks no ``Host``. ``stopping`` says whether the server is stopping: only then
    is a cancelled request answered 503 (:class:`AnswerWhenStopped`)."""

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
        return _error(exc.status, exc.message, exc.field)

    @app.exception_handler(RapDeployError)
    async def usage_error(request: Request, exc: RapDeployError) -> Response:
        # an exception's text may carry what the client sent: the answer shows it bounded (answer_text)
        if isinstance(exc, UsageError):  # the engine refused the input
            return _error(400, answer_text(exc), None)
        if isinstance(exc, LibraryChangedError):  # not ready until restarted: /readyz says so too
            service.library_changed = answer_text(exc)
            log.error("the library changed since it was opened: %s", log_text(exc))
            return _error(503, answer_text(exc), None)
        log.error("%s on %s %s: %s", type(exc).__name__, log_text(request.method), log_path(request.scope["path"]),
                  log_text(exc))
        return _error(500, f"server error: {answer_text(exc)}", None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if "Allow" in headers:  # a 405's (RFC 9110); starlette lists a set, in no fixed order
            headers["Allow"] = ", ".join(sorted(m.strip() for m in headers["Allow"].split(",")))
        path = answer_text(request.url.path)  # a request line of up to h11's 16 KiB
        message = f"no route {request.method} {path}" if exc.status_code == 404 else \
            f"{request.method} is not allowed on {path}; it takes {headers.get('Allow')}" \
            if exc.status_code == 405 else answer_text(exc.detail)
        return _error(exc.status_code, message, None, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}", where)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", log_text(request.method), log_path(request.scope["path"]))
        # answered from outside every middleware (starlette's ServerErrorMiddleware): the headers go with it here
        return _error(500, f"internal server error ({type(exc).__name__}); see the server log", None,
                      SECURE_HEADERS)


def _add_search_routes(app: FastAPI, service: ServingService) -> None:
    html = PAGE.read_text(encoding="utf-8")  # read once: the policy's hashes are of this text
    page_headers = {"content-security-policy": page_policy(html), "cache-control": "no-cache"}

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
