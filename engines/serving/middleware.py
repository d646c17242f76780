"""The ASGI middleware of ``rapdeploy serve``'s app (:func:`~rap_deploy.engines.serving.app.create_app` adds it)
and the helpers it shares with the app's routes.

- :class:`SecureHeaders`: :data:`~rap_deploy.engines.serving.headers.SECURE_HEADERS` on every response;
  :func:`page_policy`: the search page's own Content-Security-Policy;
- :class:`HostCheck` (with :func:`host_name`, :func:`origin_host`, :func:`is_loopback_name`): a server on a loopback
  address answers only its own host names and pages (DNS rebinding; ``rapdeploy serve --allow-host``);
- :class:`CountRequests`: responses counted by route and status for ``/stats``;
- :class:`AnswerWhenStopped`: a request cancelled while the server stops is answered 503 and logged on one line;
- :func:`error_response`: the JSON ``{"error", "field"}`` answer of every refusal, the middleware's and the routes';
  :func:`log_text` and :func:`answer_text`: a client's text bounded (and escaped) for a log line or an answer.

Nothing here imports :mod:`~rap_deploy.engines.serving.app`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import logging
import re
import urllib.parse
from collections.abc import Callable, Collection
from typing import Any

from fastapi.responses import JSONResponse, Response

from rap_deploy.engines.serving.bodies import log_path
from rap_deploy.engines.serving.headers import SECURE_HEADERS
from rap_deploy.engines.serving.service import ServingService

log = logging.getLogger("rapdeploy.serve")  # the app's logger too (one logger by name)
PAGE_ROUTES = frozenset({"/", "/search", "/thumbnails", "/healthz", "/readyz", "/library", "/stats"})
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
            await error_response(403, message, "Host")(scope, receive, send)
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
            await error_response(403, message, "Origin")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def error_response(status: int, message: str, field: str | None, headers: dict[str, str] | None = None) -> Response:
    """The JSON answer ``{"error": message, "field": field}`` with ``status`` and ``headers``."""
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

    #: what the log line says of a cancelled request, and the error its 503 answer gives
    reason = "the server stopped and it ran past --shutdown-timeout"
    message = STOPPED_MESSAGE

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

    async def _answer_stopped(self, scope: dict, receive: Any, send: Any, started: bool) -> None:
        """Log the request cancelled at a stop and, when its answer had not ``started``, answer it 503."""
        log.warning("%s %s cancelled: %s; %s", log_text(scope.get("method")), log_path(scope.get("path", "")),
                    self.reason,
                    "its answer had begun, so the connection is closed mid-answer" if started else "answered 503")
        if not started:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                answer = self._wrapped(error_response(503, self.message, None, {"Connection": "close"}))
                await answer(scope, receive, send)

    def _wrapped(self, answer: Any) -> Any:
        """The ASGI app that sends ``answer`` (inside the app's middleware, ``answer`` itself)."""
        return answer
