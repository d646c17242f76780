"""Running ``rapdeploy serve``: load the engine (and library), build the service, run uvicorn until interrupted.

Steps of :func:`serve`: resolve the library (``--library`` or the workspace's latest library under ``index/``) and
the engine (``--engine``, else the one that built the library while it exists, else the workspace's latest), load the
engine, wrap it so one thread at a time calls it, open the library on that wrapper, build the
:class:`~rap_deploy.engines.serving.service.ServingService`, warm up the tokenizer and the text encoder, bind the
socket (so a busy port is a one-line error), serve, and on SIGINT/SIGTERM stop uvicorn, then the batcher, the library
and the engine (a Ctrl-C during that stop cancels the requests still running instead of waiting
``--shutdown-timeout`` for them). A SIGTERM stop is the normal end of a server, so
``serve`` then returns normally (exit 0); Ctrl-C ends with the CLI's 130.

:class:`ServerThread` runs an app on 127.0.0.1 and a free port in a background thread (for the tests; the load test
loads a --url or a ``rapdeploy serve`` subprocess it spawns) and always stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rap_deploy.engines.serving.connections import (
    HEADER_TIMEOUT_S,
    MAX_CONNECTIONS,
    check_open_files,
    guarded_protocol,
)
from rap_deploy.engines.serving.forced_stop import AnswerForcedStop, server_class
from rap_deploy.engines.serving.listen_socket import bind_socket, hosts_to_check, listening_note, socket_url
from rap_deploy.errors import BackendUnavailableError, UsageError

SHUTDOWN_TIMEOUT_S = 30.0  # on SIGINT/SIGTERM, how long running requests may still take
STOPPED_LINE = "rapdeploy serve stopped"  # the one line a Ctrl-C or SIGTERM stop prints (no error line)
ANNOUNCE_JOIN_S = 5.0  # how long a stopping serve waits for the thread announcing the URL (a --url-file write)



def load_served_engine(engine: str | os.PathLike[str] | None, workspace: str | os.PathLike[str] | None = None,
                       threads: int | None = None) -> tuple[Any, Any]:
    """``(engine, EngineSource)`` for ``engine`` (default: the workspace's latest engine folder); the source is the
    manifest the engine was loaded from (:func:`~rap_deploy.engines.serving.contract.loaded_source`), so what serve
    publishes is the loaded build's even when the folder is rebuilt meanwhile. ``threads`` sets ONNX Runtime's
    intra-op threads through the loader, and PyTorch's for a PyTorch engine (a checkpoint), as
    ``rapdeploy search --threads`` does."""
    from rap_deploy.engines.engine_refs import resolve_engine
    from rap_deploy.engines.loader import is_remote, load_engine
    from rap_deploy.engines.serving.contract import loaded_source

    if engine is not None and is_remote(engine):
        raise UsageError(f"--engine {engine} is a server; rapdeploy serve runs a local engine folder, export folder "
                         "or checkpoint")
    path = resolve_engine(engine, workspace)
    loaded = load_engine(path, threads=threads)
    try:
        source = loaded_source(path, loaded)
    except BaseException:
        loaded.close()
        raise
    if threads and "torch" in sys.modules:  # the loader gives a PyTorch engine no threads; torch's are per process
        sys.modules["torch"].set_num_threads(int(threads))
    return loaded, source


SERVER_FIX = ("pass --engine with a local engine folder of the library's weights (the one that server runs: "
              "rapdeploy serve runs a local engine, not a server)")


def load_stand_in_engine(library: Path, url: str, workspace: str | os.PathLike[str] | None, threads: int | None
                         ) -> tuple[Any, Any]:
    """``(engine, EngineSource)`` of the workspace's latest engine, to serve the library at ``library`` that was
    indexed through the server ``url``: only when its weights are the library's, said on one line of stderr
    (:func:`~rap_deploy.library.indexed_through.stand_in_note`). Raises :class:`UsageError` naming ``url`` when
    there is no such engine or its weights are other or unknown."""
    from rap_deploy.library.indexed_through import stand_in_note, url_note

    try:
        loaded, source = load_served_engine(None, workspace, threads)
    except UsageError as exc:
        raise UsageError(f"{exc}. {url_note(library, url, SERVER_FIX)}") from None
    try:
        note = stand_in_note(library, url, loaded, "serve", SERVER_FIX)
    except BaseException:
        loaded.close()
        raise
    print(note, file=sys.stderr, flush=True)
    return loaded, source


def resolve_library(library: str | os.PathLike[str] | None, workspace: str | os.PathLike[str] | None) -> Path | None:
    """``library`` if given, else the workspace's most recently updated library (``index/<name>/``), else ``None``
    (then the server answers the graphs only)."""
    from rap_deploy.library.manifest import find_library

    return find_library(library, workspace, required=False)


def open_served_library(path: Path, engine: Any, implicit: bool = False, verify: str = "full",
                        workspace: str | os.PathLike[str] | None = None,
                        cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """Open the library at ``path`` on ``engine`` (the serialising wrapper) with ``rap_deploy.library``, checked as
    ``verify`` says (``full``: every shard's sha256; ``quick``: sizes, headers and the small files' sha256); its
    thumbnails come from the decoded-frame cache ``cache_dir`` (default: ``workspace``'s, where ``rapdeploy index
    --workspace`` put the frames; ``rapdeploy index --cache-dir`` puts them elsewhere).

    ``implicit`` says nobody asked for this library (it is the workspace's latest): a :class:`UsageError` opening it
    (another model's library, say) then also names where it came from and the two ways around it. Raises
    :class:`BackendUnavailableError` without the library package, and what ``open_library`` raises.
    """
    try:
        from rap_deploy.library import open_library
    except ImportError:
        raise BackendUnavailableError("--library needs the rap_deploy.library package (`rapdeploy index`/`search`), "
                                      "which this installation lacks; serve without --library (inference only) or "
                                      "install a rapdeploy that has it") from None
    from rap_deploy.data.cache import default_cache_dir

    with picked_library_errors(path, implicit):
        return open_library(path, engine, verify=verify,
                            cache_dir=cache_dir if cache_dir is not None else default_cache_dir(workspace))


@contextlib.contextmanager
def picked_library_errors(path: Path, implicit: bool) -> Iterator[None]:
    """Re-raise a :class:`UsageError` about the library at ``path`` naming, when ``implicit`` (the workspace's latest:
    nobody asked for it), where it came from and the two ways around it (``--library``, ``--no-library``)."""
    try:
        yield
    except UsageError as exc:
        if not implicit:
            raise
        from rap_deploy.library.manifest import picked_library_error

        raise picked_library_error(exc, path, "serve", "pass --library LIB for another one, or --no-library to serve "
                                   "the three graphs only") from None


def check_library_choice(library: str | os.PathLike[str] | None, default_library: bool) -> None:
    """Raise :class:`UsageError` when a ``library`` is asked for together with ``default_library=False``
    (``--library`` with ``--no-library``)."""
    if library is not None and not default_library:
        raise UsageError(f"--library {library} and --no-library contradict each other; pass one of them")


def build_service(engine: str | os.PathLike[str] | None = None, library: str | os.PathLike[str] | None = None,
                  options: Any = None, workspace: str | os.PathLike[str] | None = None,
                  threads: int | None = None, default_library: bool = True, verify: str = "full",
                  cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """Load everything :func:`serve` serves and return the warmed-up :class:`ServingService`.

    Without ``library`` the workspace's latest library is served when ``default_library`` (else, or when there is
    none, the three graphs only); without ``engine``, the engine that built the served library while it exists,
    else the workspace's latest. Thumbnails come from the frame cache ``cache_dir`` (default: the workspace's,
    :func:`open_served_library`). Raises :class:`UsageError` for ``library`` together with ``default_library=False``
    and what loading the engine and the library raise."""
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.service import ServingService

    check_library_choice(library, default_library)
    lib_path = resolve_library(library, workspace) if default_library else None
    via = None  # the server URL the library was indexed through, when the workspace's latest engine stands in
    if engine is None and lib_path is not None:  # the library's own engine, as `rapdeploy search` takes
        from rap_deploy.library.indexed_through import is_url
        from rap_deploy.library.manifest import builder_engine, recorded_engine

        with picked_library_errors(lib_path, implicit=library is None):  # its manifest is read here first
            engine = builder_engine(lib_path)
            built = recorded_engine(lib_path)
            via = built if is_url(built) else None
    if lib_path is not None and via is not None:
        loaded, source = load_stand_in_engine(lib_path, via, workspace, threads)
    else:
        loaded, source = load_served_engine(engine, workspace, threads)
    serial = SerialEngine(loaded)
    lib = service = None
    try:
        lib = open_served_library(lib_path, serial, implicit=library is None, verify=verify, workspace=workspace,
                                  cache_dir=cache_dir) if lib_path is not None else None
        service = ServingService(serial, source, lib, options)
        warm_up(service)
    except BaseException:
        if service is not None:
            service.close()  # its batcher thread, the library and the engine
        else:
            if lib is not None:
                lib.close()
            serial.close()
        raise
    return service


def warm_up(service: Any) -> None:
    """Load the tokenizer and run the text encoder once, so the first request does not pay for it; the counters of
    ``/stats`` then start afresh (it counts clients' requests, and this is none)."""
    service.submit_text(service.tokenize("warm up")).result(timeout=300)
    service.reset_stats()


def banner(url: str, service: Any, note: str = "") -> str:
    """The line ``rapdeploy serve`` prints once it accepts requests at ``url`` (``listen_socket.socket_url`` of its
    socket): what it serves and where to open the page, then ``note`` (``listen_socket.listening_note`` of it)."""
    lib = "no library" if service.library is None else f"library of {len(service.library)} videos"
    return (f"rapdeploy serve: {url} ({service.info.get('backend')} {service.info.get('precision')} on "
            f"{service.info.get('device')}, {lib}; text batch <= {service.batcher.max_batch}, delay "
            f"{service.options.max_queue_delay_ms:g} ms). Page: {url}/  Inference: {url}/v2{note}")


def serve(engine: str | os.PathLike[str] | None = None, library: str | os.PathLike[str] | None = None,
          host: str = "127.0.0.1", port: int = 8080, options: Any = None,
          workspace: str | os.PathLike[str] | None = None, threads: int | None = None,
          url_file: str | os.PathLike[str] | None = None, log_level: str = "warning",
          echo: Callable[[str], None] | None = None, default_library: bool = True,
          shutdown_timeout: float = SHUTDOWN_TIMEOUT_S, allow_hosts: Sequence[str] = (), verify: str = "full",
          cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Serve until interrupted (see the module docstring). ``url_file`` receives the server's URL once it accepts
    requests; on SIGINT/SIGTERM requests still running after ``shutdown_timeout`` seconds are cancelled (a client
    that stalls mid-request cannot keep the server alive), at once on a Ctrl-C during the stop. On a loopback
    address only requests for a loopback name or one of ``allow_hosts`` are answered
    (``listen_socket.hosts_to_check``). Thumbnails come from the frame cache ``cache_dir`` (default:
    ``<workspace>/cache/frames``). Raises :class:`UsageError` / :class:`BackendUnavailableError` for what cannot be
    loaded or bound."""
    say = echo or (lambda m: print(m, file=sys.stderr, flush=True))
    said_stopped: list[bool] = []

    def say_stopped() -> None:  # once, whether uvicorn's graceful stop or a signal while loading came first
        if not said_stopped:
            said_stopped.append(True)
            say(STOPPED_LINE)

    with _stopped_line_on_signal(say_stopped):
        import uvicorn

        from rap_deploy.engines.serving.app import create_app
        from rap_deploy.engines.serving.service import ServeOptions

        check_library_choice(library, default_library)  # a usage error before any port is bound
        limits = options or ServeOptions()
        check_open_files(limits.max_connections)
        sock = bind_socket(host, port)
        try:
            hosts = hosts_to_check(sock, allow_hosts)
            service = build_service(engine, library, options, workspace, threads, default_library, verify,
                                    cache_dir)
        except BaseException:
            sock.close()
            raise
        url = socket_url(sock)

        def shut_down() -> None:  # graceful stop (SIGINT/SIGTERM): uvicorn runs this before it exits
            service.close()
            say_stopped()

        # a request cancelled while uvicorn stops is answered 503: past --shutdown-timeout by the app
        # (middleware.AnswerWhenStopped), after a Ctrl-C during the stop by AnswerForcedStop; `server` is bound below,
        # before any request can come
        app = AnswerForcedStop(create_app(service, on_shutdown=shut_down, allowed_hosts=hosts,
                                           stopping=lambda: server.should_exit and not server.forced),
                                forced=lambda: server.forced)
        server = server_class()(uvicorn.Config(app, log_level=log_level, access_log=False, timeout_keep_alive=30,
                                                timeout_graceful_shutdown=shutdown_timeout,
                                                http=guarded_protocol(limits.max_connections,
                                                                      limits.header_timeout_s, service.count)))
        failed: list[str] = []  # why the URL could not be announced (the watcher then stops the server)
        written = _UrlFile(url_file, url)  # the --url-file the watcher wrote, shared with the stop below
        note = listening_note(sock)  # here: the thread may print the banner after the stop closed the socket
        watcher = threading.Thread(target=_announce, args=(server, url, url_file, lambda: banner(url, service, note),
                                                           say, failed, written),
                                   daemon=True, name="serve-announce")
        watcher.start()
        try:
            _run_until_stopped(server, sock)
        finally:
            server.should_exit = True  # a uvicorn that failed before starting leaves the watcher waiting otherwise
            watcher.join(ANNOUNCE_JOIN_S)
            service.close()  # no-op after a graceful stop; releases the engine when uvicorn failed
            sock.close()
            written.stop()  # removes the file written; one the watcher writes later, it removes itself
        if failed:
            raise UsageError(failed[0])


@contextlib.contextmanager
def _stopped_line_on_signal(say_stopped: Callable[[], None]) -> Iterator[None]:
    """Call ``say_stopped`` when a signal ends the block, then re-raise: a Ctrl-C (:class:`KeyboardInterrupt`) or the
    CLI's SIGTERM unwinding (a :class:`BaseException` too, not an :class:`Exception`). The CLI ends serve's stops
    without an error line, so one before uvicorn's graceful stop said :data:`STOPPED_LINE` (while the engine or
    library loads, or uvicorn starts) would otherwise end with nothing on stderr."""
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, (Exception, SystemExit, GeneratorExit)):
            say_stopped()
        raise


def _run_until_stopped(server: Any, sock: socket.socket) -> None:
    """Run uvicorn. It handles SIGINT/SIGTERM itself (graceful shutdown) and afterwards re-raises the signal to the
    handler it found; with SIGTERM ignored meanwhile, that re-raise is a no-op and a SIGTERM stop returns normally
    instead of surfacing as the CLI's "terminated" error.

    SIGINT's re-raise goes to a handler of ours that notes it, and a Ctrl-C then ends in :class:`KeyboardInterrupt`
    (the CLI's 130) once uvicorn has returned. Left to Python's default handler, the re-raise reached asyncio's, which
    only cancels the main task, and uvicorn's task ends with no await left: the stop then returned normally (exit 0)
    on some runs. A Ctrl-C before uvicorn took the signals over asks it to stop the same way, and one that forced a
    stop SIGTERM began (:class:`SecondCtrlC`) ends in :class:`KeyboardInterrupt` too."""
    in_main = threading.current_thread() is threading.main_thread()
    interrupted: list[bool] = []

    def note_interrupt(signum: int, frame: Any) -> None:
        interrupted.append(True)
        server.should_exit = True

    previous = ((signal.signal(signal.SIGTERM, signal.SIG_IGN), signal.signal(signal.SIGINT, note_interrupt))
                if in_main else None)
    try:
        server.run(sockets=[sock])
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
    if interrupted or getattr(server, "forced", False):
        raise KeyboardInterrupt


def _file_identity(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """``(device, inode, modification time in ns)`` of ``path`` itself (a link is not followed): a file written anew
    in its place (an atomic write renames a new file over it) has another."""
    st = os.lstat(path)
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _forget_url(url_file: str | os.PathLike[str], url: str, identity: tuple[int, int, int]) -> None:
    """Remove ``url_file`` once the server has stopped, while it is still the file this server wrote (``identity``,
    :func:`_file_identity`) and holds its ``url``: a script that waits for the file to appear would otherwise read a
    stopped server's URL. One another process wrote since is kept, even with the same URL (a server started again on
    the same --port while this one finished its requests)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        path = Path(url_file)
        if _file_identity(path) == identity and path.stat().st_size < 4096 and \
                path.read_text(encoding="utf-8") == url + "\n":
            path.unlink()


class _UrlFile:
    """The ``--url-file`` one server wrote, shared by the thread announcing the URL (:func:`_announce`) and serve's
    stop: whichever of the two comes last removes it (:func:`_forget_url`), so a write that finishes after the stop
    (a slow disk: the stop waits :data:`ANNOUNCE_JOIN_S` for it, no longer) leaves no file naming a stopped server."""

    def __init__(self, url_file: str | os.PathLike[str] | None, url: str) -> None:
        self.url_file, self.url = url_file, url
        self.stopped = False
        self.identity: tuple[int, int, int] | None = None  # _file_identity of the file written
        self._lock = threading.Lock()

    def keep(self, identity: tuple[int, int, int] | None) -> bool:
        """Note the file just written (``identity``, ``None``: already gone); ``False`` when the server had stopped
        meanwhile, and the file is then removed here."""
        with self._lock:
            if not self.stopped:
                self.identity = identity
                return True
        if self.url_file is not None and identity is not None:
            _forget_url(self.url_file, self.url, identity)
        return False

    def stop(self) -> None:
        """The server stopped: remove the file written so far; one written later is removed by :meth:`keep`."""
        with self._lock:
            self.stopped, identity = True, self.identity
        if self.url_file is not None and identity is not None:
            _forget_url(self.url_file, self.url, identity)


def _announce(server: Any, url: str, url_file: str | os.PathLike[str] | None, line: Callable[[], str],
              say: Callable[[str], None], failed: list[str], written: _UrlFile) -> None:
    """Once uvicorn accepts requests, write ``url_file`` (noting it in ``written``) and print the banner ``line()``;
    when ``url_file`` cannot be written, append why to ``failed`` and stop the server (nobody could find it).
    Nothing is written or printed once a stop began (``should_exit``: the server no longer takes connections, or
    the stop already ran), and a file whose write ended after the stop is removed again (:class:`_UrlFile`)."""
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if not server.started or server.should_exit or written.stopped:
        return
    if url_file is not None:
        from rap_deploy.atomic import write_text_atomic

        try:
            write_text_atomic(url_file, url + "\n")
        except OSError as exc:
            failed.append(f"cannot write --url-file {url_file} ({exc.strerror or exc}); the server stopped")
            server.should_exit = True
            return
        try:
            identity: tuple[int, int, int] | None = _file_identity(url_file)
        except OSError:  # removed at once by another: nothing of this server's to remove later
            identity = None
        if not written.keep(identity):
            return
    say(line())


class ServerThread:
    """Run an ASGI ``app`` with uvicorn on ``host`` and a free port in a background thread (context manager).

    ``url`` is where it listens; leaving the block stops it and waits for the thread. ``count`` is told of the
    connections refused by the limits (:func:`guarded_protocol`).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", start_timeout: float = 30.0,
                 max_connections: int = MAX_CONNECTIONS, header_timeout: float = HEADER_TIMEOUT_S,
                 count: Callable[[str], None] | None = None) -> None:
        import uvicorn

        self.sock = bind_socket(host, 0)
        self.url = socket_url(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                    http=guarded_protocol(max_connections, header_timeout, count)))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="uvicorn")
        self.start_timeout = start_timeout

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for the thread (at most 15 s)."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(15)
        self.sock.close()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
