"""Connection limits of ``rapdeploy serve`` (slow-loris): how many connections may be open at once, and how long a
request's headers may take to arrive.

uvicorn itself bounds neither: it keeps every connection it accepts, and one that sends part of its request line or
headers (or nothing) and then stalls stays open for ever. Enough of them take every file descriptor, after which the
server accepts nothing at all. :func:`guarded_protocol` makes uvicorn's HTTP protocol class

* answer a connection beyond ``max_connections`` open ones with ``503`` and close it at once, and
* close a connection whose request headers have not all arrived ``header_timeout`` seconds after it opened (or, on a
  kept-alive connection, after the next request's first byte): with ``408`` when some of the request came, silently
  when nothing did. A body refused before it was read whole (413, 408) is read on and discarded after its answer, so
  that its client, still sending, gets to read that answer; that too ends ``header_timeout`` seconds after the
  answer, silently (as nginx's ``lingering_time``).

A request line or header that cannot be parsed (uvicorn's own ``400``, text/plain) is answered as the app answers
refusals, a JSON ``{"error", "field"}``. These three answers carry the security headers of every other response
(``headers.SECURE_HEADERS``) and are counted for ``/stats`` as ``connection 503``, ``connection 408`` and
``connection 400``.

A request's body and its response are bounded by the app (``read_body``'s idle timeout and pace,
``PacedResponse``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rap_deploy.engines.serving.headers import SECURE_HEADERS

log = logging.getLogger("rapdeploy.serve")
MAX_CONNECTIONS = 512  # --max-connections' default: open connections at once (the load test drives at most 256)
HEADER_TIMEOUT_S = 20.0  # --header-timeout's default: seconds for a request's headers to arrive (Apache's 20)
FD_RESERVE = 256  # open files the server needs besides its connections (engine, library shards, logs, threads)
WARN_EVERY_S = 60.0  # a refused connection is logged at most this often


def _closing_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message, "field": None}).encode()
    secure = "".join(f"{name}: {value}\r\n" for name, value in SECURE_HEADERS.items())
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n{secure}"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


@dataclass(frozen=True)
class _Limits:
    """What a guarded connection holds to: the limits, the three closing answers, and whom to tell of a refusal."""

    max_connections: int
    header_timeout: float
    count: Callable[[str], None] | None
    busy: bytes  # 503: over max_connections
    late: bytes  # 408: headers not all there within header_timeout
    invalid: bytes  # 400: a request line or header uvicorn's parser refuses


def _limits(max_connections: int, header_timeout: float, count: Callable[[str], None] | None) -> _Limits:
    """The limits and the answers :func:`guarded_protocol`'s connections give when they refuse a request."""
    return _Limits(
        max_connections, header_timeout, count,
        busy=_closing_response(503, "Service Unavailable", f"server busy: {max_connections} connections are open, "
                               "the most it keeps (--max-connections); retry later"),
        late=_closing_response(408, "Request Timeout", f"the request headers did not arrive within "
                               f"{header_timeout:g} s (--header-timeout)"),
        invalid=_closing_response(400, "Bad Request", "the request is not valid HTTP/1.1 (its request line or "
                                  "headers could not be parsed)"))


class _BusyWarning:
    """Logs that connections beyond ``--max-connections`` are refused, at most once in :data:`WARN_EVERY_S`."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.last = 0.0  # when a refusal was last logged

    def refused(self) -> None:
        now = time.monotonic()
        if now - self.last >= WARN_EVERY_S:
            self.last = now
            log.warning("refusing connections beyond --max-connections %d (503)", self.max_connections)


class _GuardedConnection:
    """The two limits of the module docstring, mixed in before uvicorn's HTTP protocol class, which it extends
    through ``super()``; the class :func:`guarded_protocol` makes sets ``_limits`` and ``_busy_warning``."""

    # uvicorn's protocol provides these (annotations only: nothing here shadows them)
    connections: set[Any]
    cycle: Any
    transport: Any
    loop: asyncio.AbstractEventLoop
    _limits: _Limits
    _busy_warning: _BusyWarning
    _deadline: asyncio.TimerHandle | None = None
    _awaiting: Any = None  # the request cycle that was current when the deadline was armed
    _received = False  # whether a byte of the awaited request came

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            self._refuse(self._limits.busy, "connection 503")
            self._busy_warning.refused()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of the next request on a kept-alive connection
        self._received = True
        super().data_received(data)
        if self.cycle is not self._awaiting:  # the headers arrived: a new request cycle runs
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:  # uvicorn's answer to what its parser refuses
        self._refuse(self._limits.invalid, "connection 400")

    def _arm(self) -> None:
        self._awaiting, self._received = self.cycle, False
        self._deadline = self.loop.call_later(self._limits.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.cycle is self._awaiting and not self.transport.is_closing():
            if self._received and not self._lingering():
                self._refuse(self._limits.late, "connection 408")
            else:
                self._refuse(b"")

    def _lingering(self) -> bool:
        """Whether the bytes awaited are the rest of a refused body, after its answer: no second answer is due
        (h11 tells; httptools cannot)."""
        import h11

        return getattr(getattr(self, "conn", None), "their_state", None) is h11.SEND_BODY

    def _refuse(self, response: bytes, label: str | None = None) -> None:
        if response:
            self.transport.write(response)
        self.transport.close()
        if label is not None and self._limits.count is not None:
            self._limits.count(label)


def guarded_protocol(max_connections: int = MAX_CONNECTIONS, header_timeout: float = HEADER_TIMEOUT_S,
                     count: Callable[[str], None] | None = None) -> type:
    """uvicorn's HTTP protocol class (h11, or httptools when installed) with the two limits of the module docstring;
    pass it as ``uvicorn.Config(http=...)``. ``count`` (the service's :meth:`count`) is told of each refusal
    answered: ``"connection 503"``, ``"connection 408"``, ``"connection 400"``."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type("GuardedProtocol", (_GuardedConnection, AutoHTTPProtocol),
                {"_limits": _limits(max_connections, header_timeout, count),
                 "_busy_warning": _BusyWarning(max_connections)})


def check_open_files(max_connections: int) -> None:
    """Make sure this process may open ``max_connections`` sockets and what it needs besides (:data:`FD_RESERVE`):
    raise the soft open-files limit up to the hard one when needed, and raise :class:`UsageError` when even that
    is too low. (Past the limit, the server's accept loop fails and it takes no connection at all.)"""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to check
        return
    from rap_deploy.errors import UsageError

    need = max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard >= need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            return
        except (ValueError, OSError):  # a platform cap below the hard limit (macOS's kern.maxfilesperproc)
            pass
    raise UsageError(f"--max-connections {max_connections} needs {need} open files, and this process may open "
                     f"{soft} (ulimit -n); pass --max-connections {max(1, soft - FD_RESERVE)} or less, or raise the "
                     "limit")
