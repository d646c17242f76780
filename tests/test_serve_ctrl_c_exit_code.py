"""A Ctrl-C of ``rapdeploy serve`` must end in exit 130, but some runs ended 0 (seen twice in CI:
test_serve_url_file_removed, SIGINT -> 0). uvicorn stops gracefully on SIGINT, then re-raises it to the handler it
found; under ``asyncio.run`` that was asyncio's, which only asks the main task to cancel, and uvicorn's task ends with
no await left, so the cancel never landed and the server returned normally. ``_run_until_stopped`` now takes the
re-raise itself. The stand-in below replays uvicorn's sequence (take SIGINT, stop, give it back, re-raise) inside
``asyncio.run``, which made the old code return normally every time."""

from __future__ import annotations

import asyncio
import signal
import socket

import pytest

from rap_deploy.engines.serving.server import _run_until_stopped


class _UvicornStandIn:
    """``uvicorn.Server.run``'s signal handling, without a server: ``captured`` says whether it took SIGINT over
    (as its ``capture_signals`` does) before the Ctrl-C arrives."""

    def __init__(self, captured: bool) -> None:
        self.captured, self.should_exit = captured, False

    def run(self, sockets: list[socket.socket]) -> None:
        async def serve() -> None:
            if self.captured:
                found = signal.signal(signal.SIGINT, lambda signum, frame: None)
                signal.signal(signal.SIGINT, found)  # stopped: the handler it found is back ...
            signal.raise_signal(signal.SIGINT)  # ... and the captured Ctrl-C is raised to it (or arrives early)

        asyncio.run(serve())


@pytest.mark.parametrize("captured", [True, False])
def test_a_ctrl_c_ends_in_keyboard_interrupt_and_the_handlers_come_back(captured):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    server = _UvicornStandIn(captured)
    with socket.socket() as sock, pytest.raises(KeyboardInterrupt):
        _run_until_stopped(server, sock)
    assert server.should_exit  # a Ctrl-C before uvicorn took the signals over asks it to stop
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
