"""Request and response bodies of ``rapdeploy serve``'s routes (:mod:`~rap_deploy.engines.serving.app`): a request
body read within its limit, its idle timeout and its pace (:func:`read_body`, :class:`BodyPace`), an inference
response sent in pieces and given up when its client stops reading (:class:`PacedResponse`), and which bodies count
as large (:func:`large_body`)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from rap_deploy.engines.serving.oip import RequestError

log = logging.getLogger("rapdeploy.serve")
INLINE_BYTES = 64 * 1024  # bodies / outputs up to this size are (de)serialised on the event loop
SEND_CHUNK = 1 << 20  # responses go out in pieces of this size (PacedResponse)
CLIENT_CLOSED = 499  # the client closed the connection before its request was read (nginx's code; nobody reads it)
BODY_TIMEOUT_S = 20.0  # --body-timeout's default (Apache mod_reqtimeout's body=20)
BODY_MIN_RATE = 500.0  # --body-min-rate's default, bytes/s (mod_reqtimeout's MinRate=500)


@dataclass(frozen=True)
class BodyPace:
    """How long a whole request body may take: ``timeout_s`` seconds, plus one second for every ``min_rate`` bytes
    that arrived (Apache mod_reqtimeout's ``body=20,MinRate=500``; ``min_rate`` 0: ``timeout_s`` for any body).

    The idle timeout alone bounds the gap between two chunks, never their sum: a client sending one byte a little
    more often than that held its request, its connection and (for a large inference body) one of the few read
    slots for as long as it liked. With a pace, such a client is refused about ``timeout_s`` seconds in, while any
    body arriving faster than ``min_rate`` on average is never cut off, however large."""

    timeout_s: float = BODY_TIMEOUT_S
    min_rate: float = BODY_MIN_RATE

    def seconds_for(self, received: int) -> float:
        """Seconds the body may have taken once ``received`` bytes of it arrived."""
        return self.timeout_s + (received / self.min_rate if self.min_rate > 0 else 0.0)

    def refusal(self, received: int, elapsed: float) -> RequestError:
        """The 408 for a body of which ``received`` bytes arrived in ``elapsed`` seconds, past :meth:`seconds_for`."""
        rate = f" plus 1 s per {self.min_rate:g} bytes received (--body-min-rate)" if self.min_rate > 0 else ""
        return RequestError(408, f"the request body arrived too slowly: {received} bytes in {elapsed:.1f} s; a body "
                            f"may take {self.timeout_s:g} s (--body-timeout){rate}", "body")


async def read_body(request: Request, limit: int, idle_timeout: float | None = None,
                    pace: BodyPace | None = None) -> bytes:
    """The request body, at most ``limit`` bytes: a larger ``Content-Length`` is refused before reading, a larger
    streamed body as soon as it passes the limit, one that sends nothing for ``idle_timeout`` seconds as stalled,
    one that arrives slower than ``pace`` allows (counted from this call: a request waiting for a read slot has
    not been read yet) as too slow. Raises :class:`RequestError` 413 / 400 / 408, and :data:`CLIENT_CLOSED` when
    the client goes away mid-body."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, f"Content-Length {declared[:32]!r} is not an integer", "Content-Length") from None
        if size > limit:
            raise RequestError(413, f"request body of {size} bytes exceeds the limit of {limit} bytes for "
                               f"{request.url.path}", "body")
    chunks, total = [], 0
    stream = request.stream()
    started = time.monotonic()
    while True:
        wait, paced = _next_wait(idle_timeout, pace, total, time.monotonic() - started)
        try:
            chunk = await asyncio.wait_for(anext(stream), wait)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            if paced and pace is not None:
                raise pace.refusal(total, time.monotonic() - started) from None
            raise RequestError(408, f"the request body stalled: no byte for {idle_timeout:g} s (--idle-timeout) "
                               f"after {total} bytes",
                               "body") from None
        except ClientDisconnect:  # not a server fault (it was a logged traceback and a counted 500)
            raise RequestError(CLIENT_CLOSED, f"the client closed the connection after {total} bytes of its body",
                               "body") from None
        total += len(chunk)
        if total > limit:
            raise RequestError(413, f"request body exceeds the limit of {limit} bytes for {request.url.path}",
                               "body")
        chunks.append(chunk)
    return b"".join(chunks)


def _next_wait(idle_timeout: float | None, pace: BodyPace | None, received: int, elapsed: float
               ) -> tuple[float | None, bool]:
    """``(seconds, paced)``: how long to wait for the body's next chunk, and whether running out of them means the
    body is too slow for ``pace`` (rather than stalled for ``idle_timeout``)."""
    if pace is None:
        return idle_timeout, False
    left = max(0.0, pace.seconds_for(received) - elapsed)
    if idle_timeout is None or left <= idle_timeout:
        return left, True
    return idle_timeout, False


class PacedResponse(Response):
    """A response sent in pieces of :data:`SEND_CHUNK` bytes, abandoned when its client reads nothing of it for
    ``idle_timeout`` seconds.

    uvicorn hands a body sent in one piece to the socket's user-space buffer whole and never times out a client that
    does not read, so a client that stops reading kept the whole response (and with a pipelined request a second
    one) in the server's memory for as long as it kept the connection open. In pieces, uvicorn waits for the buffer
    to drain before each next one; past ``idle_timeout`` the response is given up, the connection closed and the
    body freed, only the piece already buffered (at most :data:`SEND_CHUNK` and the socket's high-water mark) staying
    until the client reads or goes away."""

    def __init__(self, content: bytes, idle_timeout: float, headers: dict[str, str] | None = None) -> None:
        super().__init__(content, headers=headers)
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = memoryview(self.body)
        for start in range(0, max(1, len(body)), SEND_CHUNK):
            piece = {"type": "http.response.body", "body": bytes(body[start:start + SEND_CHUNK]),
                     "more_body": start + SEND_CHUNK < len(body)}
            try:
                await asyncio.wait_for(send(piece), self.idle_timeout)
            except asyncio.TimeoutError:
                log.warning("%s %s: the client read nothing of its response for %g s (--idle-timeout) after %d of %d "
                            "bytes; closing the connection", scope.get("method"), log_path(scope.get("path", "")),
                            self.idle_timeout, start, len(body))
                return  # uvicorn closes a connection whose response is incomplete


def log_path(path: str) -> str:
    """A request's (percent-decoded) ``path`` as the server log shows it: its first 200 characters as the inside of
    their repr, so that a ``%0A`` or another control character in a URL neither starts a line of its own (a forged
    log line) nor reaches the terminal showing the log raw."""
    return repr(path[:200])[1:-1]


def large_body(request: Request) -> bool:
    """Whether a request's body may be large once read: declared over :data:`INLINE_BYTES`, of undeclared length
    (chunked) or compressed (it inflates up to the body limit)."""
    declared = request.headers.get("content-length")
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    return declared is None or not declared.isdigit() or int(declared) > INLINE_BYTES or encoding != "identity"
