"""A Ctrl-C while ``rapdeploy serve`` stops gracefully (a second one, or one after SIGTERM): the stop ends at once and
in order (:class:`SecondCtrlC`, mixed into uvicorn's ``Server`` by :func:`server_class`), and each request it cancels
is logged and answered 503 (:class:`AnswerForcedStop`), instead of uvicorn's forced exit, which skipped the app's
shutdown and logged its lifespan as a ``CancelledError`` traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

# after a Ctrl-C during the stop, how long the cancelled requests have to send their 503 before the connections still
# open are cut
FORCED_CLOSE_S = 1.0
FORCED_MESSAGE = ("the server was stopped at once (Ctrl-C while it stopped) before this request finished; send it "
                  "again to a running server")


class SecondCtrlC:
    """Mixed in before uvicorn's ``Server`` (:func:`server_class`): a Ctrl-C while the server stops gracefully (a
    second one, or one after SIGTERM) ends the stop at once, in order. The requests still running are cancelled (each
    answered 503 and logged by :class:`AnswerForcedStop`), the connections still open :data:`FORCED_CLOSE_S` later
    are cut, and the stop ends as a graceful one does: the app's shutdown runs (the service closes, "rapdeploy serve
    stopped").

    uvicorn's own forced stop skips that shutdown and leaves the tasks to asyncio's cancel-all at exit, which logged
    the app's lifespan as a ``CancelledError`` traceback and each request as having run past ``--shutdown-timeout``.
    A further Ctrl-C still takes uvicorn's path."""

    forced = False  # a Ctrl-C came while the server stopped

    def handle_exit(self, sig: int, frame: Any) -> None:
        """uvicorn's signal handler, except for a Ctrl-C while ``should_exit`` (the first since): that one cancels
        the running requests in the event loop. Returns at once (a signal handler)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop running: nothing to cancel
            loop = None
        if sig != signal.SIGINT or not self.should_exit or self.forced or loop is None:
            super().handle_exit(sig, frame)
            return
        self.forced = True
        loop.call_soon_threadsafe(self._cancel_requests, loop)  # a handler may not touch the loop's tasks itself

    def _cancel_requests(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel the requests still running, and cut the connections still open :data:`FORCED_CLOSE_S` later."""
        for task in list(self.server_state.tasks):
            task.cancel()
        loop.call_later(FORCED_CLOSE_S, self._cut_connections)

    def _cut_connections(self) -> None:
        """Abort the connections still open (a client that reads nothing holds its own), so the stop goes on."""
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()


def server_class() -> type:
    """uvicorn's ``Server`` with :class:`SecondCtrlC` mixed in before it; made anew on each call, from whatever
    ``uvicorn.Server`` is then (a test may stand in its own)."""
    import uvicorn

    return type("Server", (SecondCtrlC, uvicorn.Server), {})


class AnswerForcedStop:
    """ASGI wrapper of serve's app for a request that a Ctrl-C during the stop cancelled (:class:`SecondCtrlC`;
    ``forced()`` says one came): one log line saying so, and a 503 with ``Connection: close`` to its client when its
    answer had not begun. The app's :class:`~.middleware.AnswerWhenStopped` leaves these requests alone (serve tells
    it the server is not stopping then): they did not run past ``--shutdown-timeout``. Any other cancellation
    propagates."""

    def __init__(self, app: Any, forced: Callable[[], bool]) -> None:
        self.app, self.forced = app, forced

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
            if not self.forced() or task is None or (cancelling is not None and not cancelling()):
                raise
            if cancelling is not None:
                task.uncancel()
            await self._answer_forced(scope, receive, send, started)

    @staticmethod
    async def _answer_forced(scope: dict, receive: Any, send: Any, started: bool) -> None:
        """Log the request that a Ctrl-C during the stop cancelled and, when its answer had not ``started``, answer it
        503 (with the headers of every answer)."""
        from rap_deploy.engines.serving.bodies import log_path
        from rap_deploy.engines.serving.middleware import SecureHeaders, error_response, log, log_text

        log.warning("%s %s cancelled: a Ctrl-C while the server stopped forced the stop before --shutdown-timeout; %s",
                    log_text(scope.get("method")), log_path(scope.get("path", "")),
                    "its answer had begun, so the connection is closed mid-answer" if started else "answered 503")
        if not started:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                answer = error_response(503, FORCED_MESSAGE, None, {"Connection": "close"})
                await SecureHeaders(answer)(scope, receive, send)
