"""``rapdeploy serve`` (search + Open Inference Protocol over HTTP) and ``rapdeploy triton-repo``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import typer

from rap_deploy import bounds
from rap_deploy.atomic import json_text
from rap_deploy.cli.app import ENGINE_THREADS_DEFAULT, WORKSPACE_DEFAULT, Terminated, command
from rap_deploy.library.typed_urls import SERVER_SCHEMES, URL_SCHEMES

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


# serve refuses a server's URL as --library in its own words (manifest.find_library: pass it as --engine)
@command("serve", own_url_refusals={"--library": SERVER_SCHEMES})
def serve_cmd(
    library: Path | None = typer.Option(None, "--library", help="Video library to search (from `rapdeploy index`); "
                                         "default: the workspace's latest library (<workspace>/index/<name>) when "
                                         "there is one, else inference only."),
    no_library: bool = typer.Option(False, "--no-library", help="Serve the three graphs only, even when the "
                                    "workspace has a library."),
    verify: str = typer.Option("full", "--verify", help="Integrity check of the library at start: full (every "
                               "shard's sha256, reading the whole store once) or quick (sizes, headers and the small "
                               "files' sha256: a fast start-up)."),
    engine: str | None = typer.Option(None, "--engine", help="Engine folder, export folder or .pt checkpoint, run "
                                      "in this process (not the http://HOST:PORT of a running server, which search, "
                                      "index, verify and bench take); default: the engine that built the served "
                                      "library while it exists, else the workspace's latest engine."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 exposes it to the network; "
                             "there is no authentication)."),
    port: int = typer.Option(8080, "--port", help="Port (0: a free one; see --url-file)."),
    allow_host: list[str] | None = typer.Option(
        None, "--allow-host", metavar="NAME", help="On a loopback --host, answer requests for this Host name too (a "
        "gateway forwarding its own; repeatable; * for any); other names than localhost and loopback addresses get "
        "403, so web pages cannot reach the server by DNS rebinding."),
    max_batch: int = typer.Option(32, "--max-batch", help="Text encoder: largest dynamic batch (1 = one query at a "
                                  "time, the baseline of the load test)."),
    max_queue_delay_ms: float = typer.Option(2.0, "--max-queue-delay-ms", help="Text encoder: longest wait for more "
                                             "queries before a batch runs (Triton's max_queue_delay)."),
    max_queue: int = typer.Option(1024, "--max-queue", help="Text requests that may wait; more get 503."),
    max_body_mb: float = typer.Option(256.0, "--max-body-mb", help="Largest inference request body (MiB, "
                                      f"{bounds.MIN_BODY_MB:g} to {bounds.MAX_BODY_MB:g}; enough for one video of "
                                      "the model, or serve refuses it)."),
    idle_timeout: float = typer.Option(30.0, "--idle-timeout", help="Seconds a request body may send nothing "
                                       "before it is refused (408), and an inference response its client reads "
                                       "nothing of before it is given up (the connection closed)."),
    body_timeout: float = typer.Option(20.0, "--body-timeout", help="Seconds a whole request body may take, plus "
                                       "1 s for every --body-min-rate bytes that arrived (Apache's "
                                       "body=20,MinRate=500); a slower body is refused (408), so a client "
                                       "trickling bytes within --idle-timeout cannot hold its request for ever."),
    body_min_rate: float = typer.Option(500.0, "--body-min-rate", help="Bytes per second a request body must "
                                        "average beyond --body-timeout (0: --body-timeout bounds every body, "
                                        "whatever its size)."),
    max_connections: int = typer.Option(512, "--max-connections", help="Open connections at once; more are "
                                        "answered 503 and closed."),
    header_timeout: float = typer.Option(20.0, "--header-timeout", help="Seconds a request's headers may take to "
                                         "arrive (from the connection's start, or the next request's first byte); "
                                         "then 408 and the connection is closed."),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op threads of the engine: ONNX Runtime's, or "
                                       "PyTorch's for a checkpoint (default: the libraries' own; "
                                       f"{ENGINE_THREADS_DEFAULT})."),
    url_file: Path | None = typer.Option(None, "--url-file", help="Write the server's URL here once it accepts "
                                         "requests (removed again when it stops)."),
    shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout", help="On Ctrl-C or SIGTERM, seconds that "
                                           "running requests may still take before they are cancelled (a second "
                                           "Ctrl-C cancels them at once)."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level: critical, error, warning, info "
                                  "(also start-up and stop; requests are not logged one by one: GET /stats counts "
                                  "them), debug or trace."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Decoded-frame cache (default: "
                                          "<workspace>/cache/frames)."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder ({WORKSPACE_DEFAULT})."),
) -> None:
    """Serve search over a library and the three graphs (Open Inference Protocol / KServe v2) over HTTP.

    Routes (README's route table says what each answers):

    - GET / (the search page), POST /search, GET /library, GET /thumbnails?video_id=ID&count=N
    - GET /healthz, /readyz, /stats (request counts and the text batcher's counters)
    - GET /v2, /v2/health/live, /v2/health/ready; POST /v2/repository/index
    - GET /v2/models/{name}, /v2/models/{name}/ready, /v2/models/{name}/config; POST /v2/models/{name}/infer for
      tritonclient or any KServe v2 client, {name} one of video_encoder, text_encoder, asa_head; each also under
      /v2/models/{name}/versions/{version}

    Stops on Ctrl-C (exit 130) or SIGTERM (exit 0).
    """
    said: list[str] = []  # the lines serve printed, so that a stop says "rapdeploy serve stopped" once
    with _stop_is_not_an_error(said):  # from here on, not only in serve(): a signal may come while this imports
        from rap_deploy.engines.serving.server import serve
        from rap_deploy.engines.serving.service import MiB, ServeOptions, check_body_mb
        from rap_deploy.errors import UsageError

        if not 0 <= port <= 65535:
            raise UsageError(f"--port must be in [0, 65535], got {port}")
        bounds.check_threads(threads)
        check_body_mb(max_body_mb)  # before the bytes: int() of NaN or inf raises
        if not 0 < shutdown_timeout <= 3600:  # NaN fails too
            raise UsageError(f"--shutdown-timeout must be in (0, 3600] seconds, got {shutdown_timeout}")
        from rap_deploy.library.search import VERIFY_MODES

        if verify not in VERIFY_MODES:  # before any port is bound or library opened
            raise UsageError(f"--verify must be one of {', '.join(VERIFY_MODES)}, got '{verify}'")
        if log_level.lower() not in LOG_LEVELS:
            raise UsageError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
        if url_file is not None:
            check_url_file(url_file)
        if cache_dir is not None:
            check_cache_dir(cache_dir)
        options = ServeOptions(max_batch=max_batch, max_queue_delay_ms=max_queue_delay_ms, max_queue=max_queue,
                               max_infer_body=int(max_body_mb * MiB), max_connections=max_connections,
                               header_timeout_s=header_timeout, body_idle_timeout_s=idle_timeout,
                               body_timeout_s=body_timeout, body_min_rate=body_min_rate)
        serve(engine, library, host=host, port=port, options=options, workspace=workspace, threads=threads,
              url_file=url_file, log_level=log_level.lower(), default_library=not no_library,
              shutdown_timeout=shutdown_timeout, allow_hosts=tuple(allow_host or ()), verify=verify,
              cache_dir=cache_dir, echo=_noting(said))


@contextlib.contextmanager
def _stop_is_not_an_error(said: list[str]) -> Iterator[None]:
    """End a Ctrl-C or SIGTERM that comes in the block (the command's imports and checks, the engine and library
    loading, uvicorn's run) as the server's normal stop: ``rapdeploy serve stopped`` on stderr unless ``said`` (the
    lines serve printed) holds it already; then raise ``typer.Exit(130)`` for Ctrl-C and, for SIGTERM, leave the block
    normally (exit 0)."""
    try:
        yield
    except KeyboardInterrupt:
        # Ctrl-C is how a server is stopped, not an error: its one file (--url-file) is written atomically, so
        # command()'s "error: interrupted ...; nothing half-written is left" would mislead. The exit code stays 130,
        # the shell's for Ctrl-C
        _say_stopped(said)
        raise typer.Exit(130) from None
    except Terminated:
        # SIGTERM before uvicorn took over its handling (while this imports, the engine or library loads): the normal
        # stop of a server all the same, so exit 0, as after uvicorn's own stop
        _say_stopped(said)


def _say_stopped(said: list[str]) -> None:
    """Print serve's stop line on stderr unless ``said`` holds it (the server's own stop said it). Returns nothing."""
    from rap_deploy.engines.serving.server import STOPPED_LINE  # imported again when the signal cut its import

    if STOPPED_LINE not in said:
        print(STOPPED_LINE, file=sys.stderr, flush=True)


def _noting(said: list[str]) -> Callable[[str], None]:
    """serve's ``echo``: print each line on stderr (as serve does without one), then append it to ``said``."""

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        said.append(line)

    return say


def check_url_file(url_file: Path) -> None:
    """Refuse, before the engine or library is loaded and a port bound, a ``--url-file`` that could never be written:
    a folder, or a path under a file. Raises :class:`UsageError` (exit 2) naming the path in the way."""
    from rap_deploy.errors import UsageError

    if url_file.is_dir():
        raise UsageError(f"--url-file {url_file} is a folder; pass the path of a file to write the URL to, e.g. "
                         f"{url_file / 'url.txt'}")
    for parent in url_file.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--url-file {url_file}: {parent} is a file, not a folder; pass a --url-file in a "
                                 "folder (it is created when missing)")
            return


def check_cache_dir(cache_dir: Path) -> None:
    """Refuse (:class:`UsageError`, exit 2), before anything loads, a ``--cache-dir`` that is a file or lies under
    one: the server started, and every ``/thumbnails`` request then answered 500 ("Not a directory")."""
    from rap_deploy.errors import UsageError

    blocker = next((q for q in (cache_dir, *cache_dir.parents) if q.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "is a file" if blocker == cache_dir else f"lies under {blocker}, a file"
        raise UsageError(f"--cache-dir {cache_dir} {where}; pass a folder for the decoded-frame cache (the one "
                         "rapdeploy index --cache-dir wrote, where the thumbnails' frames are)")


# triton-repo refuses any URL as --out in its own words (triton_repo._refuse_url_out: it uploads nothing, tritonserver
# serves the folder)
@command("triton-repo", own_url_refusals={"--out": URL_SCHEMES})
def triton_repo_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to write the model repository to."),
    engine: str | None = typer.Option(None, "--engine", help="Engine folder (TensorRT or ONNX Runtime) or export "
                                      "folder; default: the workspace's latest engine."),
    kind: str = typer.Option("auto", "--kind", help="Instance kind: auto (GPU for TensorRT/CUDA engines and fp16 "
                             "graphs, else CPU), cpu (refused for those) or gpu (refused for an ONNX Runtime "
                             "engine built for the CPU, whose optimised graphs hold CPU-only operators)."),
    instances: int = typer.Option(1, "--instances", help="Model instances per device."),
    max_queue_delay_us: int = typer.Option(2000, "--max-queue-delay-us", help="dynamic_batching delay of the video "
                                           "and text encoders (microseconds)."),
    fp16: bool = typer.Option(False, "--fp16", help="Export folders: use the fp16 graphs (ONNX Runtime CUDA)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing repository folder."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder ({WORKSPACE_DEFAULT})."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write a Triton Inference Server model repository (config.pbtxt + model file per graph, and a README)."""
    from rap_deploy.engines.serving.triton_repo import triton_repo

    result = triton_repo(engine, out, workspace=workspace, kind=kind, instances=instances,
                         max_queue_delay_us=max_queue_delay_us, fp16=fp16, force=force)
    if json_out:
        typer.echo(json_text(result))
        return
    for name, m in result["models"].items():
        typer.echo(f"{name}: {m['file']} (max_batch_size {m['max_batch_size']})")
    typer.echo(f"{result['platform']} {result['precision']} on {result['kind']}: {result['out']}")
    typer.echo(f"start Triton: {result['command']}")
