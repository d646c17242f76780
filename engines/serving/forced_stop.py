"""A Ctrl-C while ``rapdeploy serve`` stops gracefully (a second one, or one after SIGTERM): the stop ends at once and
in order (:class:`SecondCtrlC`, mixed into uvicorn's ``Server`` by :func:`server_class`), and each request it cancels
is logged and answered 503 (:class:`AnswerForcedStop`), instead of uvicorn's forced exit, which skipped the app's
shutdown and logged its lifespan as a ``CancelledError`` traceback.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

from rap_deploy.engines.serving.middleware import AnswerWhenStopped, SecureHeaders

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


class AnswerForcedStop(AnswerWhenStopped):
    """ASGI wrapper of serve's app for a request that a Ctrl-C during the stop cancelled (:class:`SecondCtrlC`;
    ``forced()`` says one came): :class:`~.middleware.AnswerWhenStopped`'s log line and 503 ``Connection: close``,
    saying the stop was forced, with the headers of every answer (it sits outside the app's middleware). The app's
    own :class:`~.middleware.AnswerWhenStopped` leaves these requests alone (serve tells it the server is not stopping
    then): they did not run past ``--shutdown-timeout``. Any other cancellation propagates."""

    reason = "a Ctrl-C while the server stopped forced the stop before --shutdown-timeout"
    message = FORCED_MESSAGE

    def __init__(self, app: Any, forced: Callable[[], bool]) -> None:
        super().__init__(app, stopping=forced)

    def _wrapped(self, answer: Any) -> Any:
        return SecureHeaders(answer)
