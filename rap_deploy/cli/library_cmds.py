"""``rapdeploy index`` (encode a video library) and ``rapdeploy search`` (two-stage search over it)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from rap_deploy.atomic import json_text
from rap_deploy.bounds import MAX_TOP_K, MAX_TOP_M, check_int, check_threads
from rap_deploy.cli.app import ENGINE_THREADS_DEFAULT, WORKSPACE_DEFAULT, command
from rap_deploy.data import DATASET_NAMES
from rap_deploy.errors import UsageError
from rap_deploy.library.query_file import read_queries
from rap_deploy.library.typed_urls import SERVER_SCHEMES, URL_SCHEMES
from rap_deploy.name_lists import NAMES_SHOWN, some_names


def _echo_json(obj: Any) -> None:
    typer.echo(json_text(obj, default=str))


def _human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


# ------------------------------------------------------------------------------------------------------- index
def resolve_source(dataset: str | None, data_root: Path | None, split: str, videos: Path | None,
                   list_file: Path | None, frames: int | None = None, workspace: Path | None = None) -> Any:
    """The :class:`~rap_deploy.library.sources.VideoSource` of the options, or ``None`` when none is given
    (``frames``: a dataset's frame count, default its own; a build samples the engine's)."""
    from rap_deploy.library.sources import dataset_source, folder_source, list_source
    from rap_deploy.workspace import data_root as resolve_data_root

    given = [name for name, v in (("--dataset", dataset), ("--videos", videos), ("--list", list_file)) if v]
    if len(given) > 1:
        raise UsageError(f"give one video source, not {' and '.join(given)}")
    if data_root is not None and dataset is None:
        raise UsageError(f"--data-root needs --dataset NAME ({DATASET_NAMES})")
    if dataset:
        return dataset_source(dataset, resolve_data_root(data_root, workspace), split, frames)
    if videos:
        return folder_source(videos)
    if list_file:
        return list_source(list_file)
    return None


# index refuses a server's URL as --out (refuse_server_url: pass it as --engine) and any URL as --videos
# (sources.folder_source: download the videos first) in its own words
@command("index", resume="re-run the same command to resume: finished shards are kept",
         own_url_refusals={"--out": SERVER_SCHEMES, "--videos": URL_SCHEMES})
def index_cmd(
    dataset: str | None = typer.Option(None, "--dataset", help=f"Index a dataset split: {DATASET_NAMES} (with "
                                       "--data-root)."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Dataset folder (default: $RAPDEPLOY_DATA)."),
    split: str = typer.Option("test", "--split", help="Dataset split to index."),
    videos: Path | None = typer.Option(None, "--videos", help="Index every video file under DIR, recursively "
                                       "(id = relative path without extension)."),
    list_file: Path | None = typer.Option(None, "--list", help="Index the videos of FILE, one path per line "
                                          "(relative paths are read from FILE's folder; # starts a comment; id = "
                                          "the path as written, without extension)."),
    engine: str | None = typer.Option(None, "--engine", help="Engine folder, export folder or checkpoint, or "
                                      "http://HOST:PORT of a running `rapdeploy serve` or Triton (default: to "
                                      "update an existing library, the engine that built it while it exists; else, "
                                      "and with --force, the workspace's latest engine). Without videos (--dataset, "
                                      "--videos or --list) it is only checked against the library's model: nothing "
                                      "is encoded."),
    out: Path | None = typer.Option(None, "--out", help="Library folder (default: <workspace>/index/<name>)."),
    name: str | None = typer.Option(None, "--name", help="Library name under <workspace>/index/ (default: "
                                    "<dataset>-<split>, the folder's name, or the list file's without its extension)."),
    add: bool = typer.Option(False, "--add", help="Encode the videos not yet in the existing library, and "
                             "re-encode those whose file changed since it was indexed."),
    remove: list[str] | None = typer.Option(None, "--remove", help="Drop this video id from the library "
                                            "(repeatable)."),
    ann: str | None = typer.Option(None, "--ann", help="Stage-1 index: exact (default for a new library), hnsw or "
                                   "ivf (approximate, for large libraries; recall@M is measured and recorded)."),
    target_recall: float = typer.Option(0.95, "--target-recall", help="ANN search effort is tuned to reach this "
                                        "stage-1 recall@M against exact search."),
    top_m: int | None = typer.Option(None, "--top-m", help="M of stage 1's recall@M against exact search: an "
                                     "ANN index's search effort is tuned to reach --target-recall at M, and the "
                                     "recall is recorded (default: the library's, else 100). Searches re-rank "
                                     "their own --top-m (default 100): give the M you search with."),
    shard_size: int = typer.Option(256, "--shard-size", help="Videos per shard (the unit of resume)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Videos per video-encoder call."),
    force: bool = typer.Option(False, "--force", help="Build the library in the folder anew (any interrupted build "
                               "discarded); the old one stays searchable until the new one replaces it."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Decoded-frame cache (default: "
                                          "<workspace>/cache/frames)."),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op threads for PyTorch, ONNX Runtime and "
                                       f"FAISS (default: the libraries' own; {ENGINE_THREADS_DEFAULT})."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder ({WORKSPACE_DEFAULT})."),
    json_out: bool = typer.Option(False, "--json", help="Print the build report as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or step messages; only the summary (three "
                               "lines)."),
) -> None:
    """Encode a video library (stage-1 FAISS index + re-rank store in shards) with an engine.

    Re-run the same command to resume; --add / --remove update it; `torchrun -m rap_deploy.cli index` shards it.
    """
    from rap_deploy.library import BuildOptions, Ranks, build_library
    from rap_deploy.library.builder import unused_engine_note
    from rap_deploy.train.distributed import barrier, cleanup, setup

    options = BuildOptions(add=add, remove=list(remove or []), ann=ann, target_recall=target_recall, top_m=top_m,
                           shard_size=shard_size, batch_size=batch_size, force=force)  # refuses bad values first
    check_threads(threads)
    if name is not None:
        check_library_name(name)
        if out is not None:  # --out wins, so the name was dropped without a word
            raise UsageError(f"give --out DIR or --name NAME (the library <workspace>/index/NAME), not both: --out "
                             f"{out} --name {name}")
    if out is not None:
        _check_library_out(out)
    ctx = setup("cpu")
    try:
        _set_threads(threads)
        eng, source = None, None
        if dataset or videos or list_file:
            source = resolve_source(dataset, data_root, split, videos, list_file, workspace=workspace)
        elif data_root is not None:
            raise UsageError("--data-root needs --dataset NAME")
        target = _library_out(out, name, source, workspace)
        if source is not None:
            eng = _load_index_engine(engine, target, force, workspace, threads, ctx)
        elif engine is not None:  # nothing to encode: build_library still refuses another model's engine (exit 2)
            eng = _load_engine(engine, workspace, threads, ctx.local_rank, lazy=True)
        ranks = Ranks(rank=ctx.rank, world_size=ctx.world_size, barrier=lambda: barrier(ctx))
        cache = _frame_cache(cache_dir, workspace)
        if ann is not None:
            from rap_deploy.library.stage1 import check_ann

            check_ann(ann)
        progress = not quiet and not json_out and ctx.is_main  # a bar on a terminal, else timed lines
        log = (lambda msg: None) if (quiet or json_out or not ctx.is_main) else (lambda msg: typer.echo(msg, err=True))
        report = build_library(target, eng, source, cache, options, ranks, progress=progress, log=log)
    finally:
        cleanup(ctx)
    if ctx.is_main:
        _print_index(report, json_out)
        if source is None and engine is not None:
            typer.echo(unused_engine_note(engine, options), err=True)


def _check_library_out(out: Path) -> None:
    """Raise :class:`UsageError` (exit 2) for an ``--out`` that cannot hold a library: a file, or a server URL."""
    from rap_deploy.library.indexed_through import refuse_server_url

    refuse_server_url(out, "--out", "index writes the library into a folder on this machine (--out DIR or --name "
                      "NAME); to encode the videos on that server, pass --engine {url}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder for the library")


def _index_engine(engine: str | Path | None, library: Path, force: bool) -> tuple[str | Path | None, str | None]:
    """``--engine``; else, for an update of an existing library (not ``--force``), the engine that built it while it
    exists, so new rows are encoded as its rows were (model, backend and precision), whatever engine the workspace
    built since; else ``None``, the workspace's latest engine. Second, the server URL the library was indexed through
    when the workspace's latest engine is to stand in for it (see :mod:`rap_deploy.library.indexed_through`)."""
    from rap_deploy.library.indexed_through import is_url
    from rap_deploy.library.manifest import MANIFEST, builder_engine, recorded_engine

    if engine is not None or force or not (library / MANIFEST).is_file():
        return engine, None
    built = recorded_engine(library)
    return (None, built) if is_url(built) else (builder_engine(library), None)


def _load_index_engine(engine: str | Path | None, library: Path, force: bool, workspace: Path | None,
                       threads: int | None, ctx: Any) -> Any:
    """The engine an index build encodes with (:func:`_index_engine`) on the device of process ``ctx``; for a library
    indexed through a server and no ``--engine``, the workspace's latest only when it has the library's weights (one
    stderr line, from the main process, says so), else a :class:`UsageError` naming the server's URL."""
    from rap_deploy.library.indexed_through import url_note

    ref, url = _index_engine(engine, library, force)
    if url is None:
        return _load_engine(ref, workspace, threads, ctx.local_rank)
    fix = _server_fix(url)
    try:
        eng = _load_engine(None, workspace, threads, ctx.local_rank)
    except UsageError as exc:
        raise UsageError(f"{exc}. {url_note(library, url, fix)}") from None
    announce_stand_in(eng, library, url, "index", fix, show=ctx.is_main)
    return eng


def announce_stand_in(engine: Any, library: Path, url: str, command: str, fix: str, show: bool = True) -> None:
    """Print (when ``show``) :func:`~rap_deploy.library.indexed_through.stand_in_note` on stderr: ``engine``, the
    workspace's latest, runs ``command`` for ``library``, indexed through the server ``url``. On its refusal
    (:class:`UsageError`), close ``engine`` and raise it."""
    from rap_deploy.library.indexed_through import stand_in_note

    try:
        note = stand_in_note(library, url, engine, command, fix)
    except BaseException:
        engine.close()
        raise
    if show:
        typer.echo(note, err=True)


def _set_threads(threads: int | None) -> None:
    """FAISS's threads, and PyTorch's when it is loaded (a PyTorch engine, the index command): a search over ONNX
    Runtime sessions (whose threads the loader sets) never imports torch for this."""
    check_threads(threads)
    if threads:
        import faiss

        faiss.omp_set_num_threads(int(threads))
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(threads))


def _load_engine(engine: str | Path | None, workspace: Path | None, threads: int | None, device_id: int = 0,
                 lazy: bool = False) -> Any:
    """The engine (``--engine`` or the workspace's latest); ``lazy`` opens only the graphs a command calls."""
    from rap_deploy.engines.engine_refs import resolve_engine
    from rap_deploy.engines.loader import load_engine

    return load_engine(resolve_engine(engine, workspace), threads=threads, device_id=device_id, lazy=lazy)


def check_library_name(name: str) -> str:
    """``--name`` when it is one plain folder name, the library ``<workspace>/index/NAME``; raises
    :class:`UsageError` (exit 2) for a path (``a/b``, ``../x``, ``/abs``), ``.``, ``..``, an empty name, or a hidden
    or temporary-looking name (``.x``, ``x.tmp``, ``x.lock``...) that no later command would take for a library."""
    from rap_deploy.workspace import is_temporary_name

    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or is_temporary_name(name):
        raise UsageError(f"--name {name!r} is not a library name: give one plain folder name such as 'clips' (no "
                         "path, not hidden, not ending in .tmp/.lock/.failed), or --out DIR for a library elsewhere")
    return name


def _library_out(out: Path | None, name: str | None, source: Any, workspace: Path | None) -> Path:
    from rap_deploy.workspace import subdir

    if out is not None:
        return out
    if name is None and source is None:
        raise UsageError("say what to index or which library to change: videos (--dataset NAME --data-root DIR, "
                         "--videos DIR or --list FILE), or a library (--name NAME or --out LIB, e.g. with --remove "
                         "ID)")
    if name is None:
        try:
            name = check_library_name(source.name)
        except UsageError:  # a hidden or temporary-looking folder or list name: search would never find the library
            raise UsageError(f"the library would be named '{source.name}' after its videos' folder or list file, "
                             "which no later command takes for a library; pass --name NAME or --out DIR") from None
    return subdir("index", workspace) / name


def _frame_cache(cache_dir: Path | None, workspace: Path | None) -> Any:
    from rap_deploy.data.cache import FrameCache

    return FrameCache(cache_dir) if cache_dir is not None else FrameCache.default(workspace)


def _print_index(report: dict[str, Any], json_out: bool) -> None:
    if json_out:
        _echo_json(report)
        return
    st = report["stage1"]
    rate = f", {report['videos_per_second']:.1f} videos/s" if report.get("videos_per_second") else ""
    head = "up to date" if report.get("up_to_date") else "indexed"
    changed = f", {len(report['replaced'])} of them changed since indexed" if report.get("replaced") else ""
    moved = f", {len(report['moved'])} moved (new paths recorded, not re-encoded)" if report.get("moved") else ""
    typer.echo(f"{head}: {report['library']} holds {report['videos']} videos ({report['added']} added{changed}, "
               f"{len(report['skipped'])} skipped, {len(report['removed'])} removed{moved}) in "
               f"{report['seconds']:.1f} s"
               f"{rate}; {report['shards_written']} shards written, {report['shards_resumed']} resumed")
    typer.echo(f"size on disk: {_human_bytes(report['bytes_per_video'])} per video "
               f"({_human_bytes(report['bytes_on_disk'])} in all)")
    effort = f", effort {st['effort']}" if st.get("effort") else ""
    kind = {"captions": "caption", "videos": "library-video"}.get(st["query_source"], st["query_source"])
    typer.echo(f"stage 1: {st['type']}{effort}; recall@{st['m']} vs exact = {st['recall_at_m']:.3f} on "
               f"{st['queries']} {kind} queries")
    if not st.get("target_reached", True):
        typer.echo(f"warning: stage 1's recall@{st['m']} ({st['recall_at_m']:.3f}) is below --target-recall "
                   f"{st['target_recall']}: no search effort of the {st['type']} index reaches it, so searches miss "
                   f"more of the true top {st['m']}; the best effort was kept. Re-index with --ann exact (or "
                   "another --ann) for full recall", err=True)
    for s in report["skipped"]:
        typer.echo(f"skipped {s['video_id']}: {s['reason']} ({s['path']})", err=True)
    if report.get("gone"):
        typer.echo(gone_files_warning(report["library"], report["gone"]), err=True)
    if report.get("deferred"):
        typer.echo(deferred_videos_note(report["library"], report["deferred"]), err=True)
    if report.get("not_retried"):
        named = some_names([f"{s.get('video_id')} ({s.get('reason')})" for s in report["not_retried"]])
        typer.echo(f"note: {len(report['not_retried'])} of the given videos are ones this library skipped as "
                   f"undecodable when it was built ({named}); they were not retried: pass --add to retry them",
                   err=True)


def deferred_videos_note(library: str, deferred: list[str]) -> str:
    """The stderr line naming the given videos a resumed build left out (added or changed after the interrupted
    build made its plan) and the command that indexes them."""
    return (f"note: this run finished an interrupted build with the videos it had planned; {len(deferred)} of the "
            f"given videos are not in it yet ({some_names(deferred)}): run the same command with --add to index "
            f"them into {library}")


def gone_files_warning(library: str, gone: list[dict[str, str]]) -> str:
    """The stderr line naming the library's videos whose file no longer exists (kept, still found by search) and the
    command that drops them: whole for up to :data:`~rap_deploy.name_lists.NAMES_SHOWN` of them, else its form (a
    folder deleted, or on a disk not mounted, made a line of thousands of ``--remove``)."""
    named = some_names([f"{g['video_id']} ({g['path']})" for g in gone])
    command = f"rapdeploy index --out {shlex.quote(library)}"
    if len(gone) <= NAMES_SHOWN:
        drop = "`" + " ".join([command, *(f"--remove {shlex.quote(g['video_id'])}" for g in gone)]) + "`"
    else:
        drop = f"`{command} --remove ID` (one --remove per id; --json lists all {len(gone)} under \"gone\")"
    return (f"warning: {len(gone)} indexed video(s) whose file no longer exists stay in the library and are still "
            f"found by search: {named}; if their disk is not mounted, mount it; else drop them with {drop}")


# ------------------------------------------------------------------------------------------------------ search
def resolve_library(library: Path | None, workspace: Path | None) -> Path:
    """``--library`` or the workspace's most recently updated library."""
    from rap_deploy.library.manifest import find_library

    return find_library(library, workspace)


def _library_engine(engine: str | Path | None, library: Path, picked: bool
                    ) -> tuple[str | Path | None, str | None, str | None]:
    """The engine search runs, ``None`` for the workspace's latest: ``--engine``, else the one that built the
    library while it exists. Second, when that one is gone or was a server, the sentence a refusal of the fallback
    ends with. Third, the server URL the library was indexed through, when the workspace's latest engine is to stand
    in for it (:func:`announce_stand_in`). Raises what reading the library's manifest raises, a
    :class:`UsageError` naming where the library came from when ``picked`` (no ``--library``)."""
    if engine is not None:
        return engine, None, None
    from rap_deploy.library.indexed_through import is_url, url_note
    from rap_deploy.library.manifest import picked_library_error, recorded_engine

    try:
        built = recorded_engine(library)
    except UsageError as exc:
        if not picked:
            raise
        raise picked_library_error(exc, library, "search", "pass --library LIB for another one") from None
    if built is None:
        return None, None, None
    if is_url(built):
        return None, url_note(library, built, _server_fix(built)), built
    if Path(built).exists():
        return Path(built), None, None
    gone = (f"No --engine was given, and the engine that built the library, {built}, no longer exists (search then "
            "takes the workspace's latest engine): pass --engine with an engine of the library's model")
    return None, gone, None


def _server_fix(url: str) -> str:
    """What to pass to run the server ``url`` a library was indexed through."""
    return f"pass --engine {url} (with that server running)"


def _search_engine(engine: str | Path | None, gone_note: str | None, workspace: Path | None,
                   threads: int | None) -> Any:
    """Load ``engine`` (``None``: the workspace's latest); a refusal ends with ``gone_note`` when there is one."""
    try:
        return _load_engine(engine, workspace, threads, lazy=True)  # search runs the text encoder and ASA head only
    except UsageError as exc:
        if gone_note is None:
            raise
        raise UsageError(f"{exc}. {gone_note}") from None


def _open_searched_library(path: Path, engine: Any, verify: str, picked: bool, gone_note: str | None) -> Any:
    """``open_library``; a refusal also says when the library was the workspace's pick (``picked``: no
    ``--library``) and, with ``gone_note``, that the library's own engine is gone."""
    from rap_deploy.library import open_library
    from rap_deploy.library.manifest import picked_library_error

    try:
        return open_library(path, engine, verify=verify)
    except UsageError as exc:
        if not picked and gone_note is None:
            raise
        error = UsageError(f"{exc}. {gone_note}") if gone_note else exc
        if picked:
            error = picked_library_error(error, path, "search", "pass --library LIB for the library of this "
                                         "engine's model")
        raise error from None


# search refuses a server's URL as --library in its own words (manifest.find_library: pass it as --engine)
@command("search", own_url_refusals={"--library": SERVER_SCHEMES})
def search_cmd(
    text: str | None = typer.Argument(None, help="What to search for, e.g. \"a red circle moves to the left\"."),
    queries_file: Path | None = typer.Option(None, "--queries", help="One query per line (text encoded in batches)."),
    library: Path | None = typer.Option(None, "--library", help="Library folder (default: the workspace's latest "
                                        "library)."),
    engine: str | None = typer.Option(None, "--engine", help="Engine of the library's model, or http://HOST:PORT "
                                      "of a running `rapdeploy serve` or Triton serving one (default: the one that "
                                      "built it, else the workspace's latest engine)."),
    top: int = typer.Option(10, "--top", help=f"Results per query, 1 to {MAX_TOP_K}."),
    top_m: int = typer.Option(100, "--top-m", help=f"Stage-1 candidates re-ranked by the ASA head, 0 to "
                               f"{MAX_TOP_M} (0: none, stage-1 scores only)."),
    verify: str = typer.Option("full", "--verify", help="Integrity check at open: full (every shard's sha256) or "
                               "quick (sizes, headers and the small files' sha256)."),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op threads for PyTorch, ONNX Runtime and "
                                       f"FAISS (default: the libraries' own; {ENGINE_THREADS_DEFAULT})."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder ({WORKSPACE_DEFAULT})."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per query and line: query, results "
                                  "(rank, video_id, path, score, stage1_rank, stage1_score, reranked: false past "
                                  "--top-m, where score is the stage-1 score), timings_ms (text, stage1, rerank, "
                                  "total, rerank_read), and warnings when the query was truncated."),
) -> None:
    """Two-stage text-to-video search: stage 1 over the whole library, ASA re-rank of the top M."""
    texts, names = read_queries(text, queries_file)
    if top < 1 or top_m < 0:
        raise UsageError(f"--top must be >= 1 and --top-m >= 0, got {top} and {top_m}")
    check_int(top, "--top", 1, MAX_TOP_K, fix=f"pass --top {MAX_TOP_K} or less (serve's /search takes the same "
              "limit)")
    check_int(top_m, "--top-m", 0, MAX_TOP_M, fix=f"pass --top-m {MAX_TOP_M} or less (serve's /search takes the "
              "same limit)")
    from rap_deploy.library.search import VERIFY_MODES

    if verify not in VERIFY_MODES:  # before a library is picked: its refusal would blame the pick
        raise UsageError(f"--verify must be one of {', '.join(VERIFY_MODES)}, got '{verify}'")
    check_threads(threads)
    lib_path = resolve_library(library, workspace)
    engine, gone_note, via = _library_engine(engine, lib_path, picked=library is None)
    eng = _search_engine(engine, gone_note, workspace, threads)
    if via is not None:
        announce_stand_in(eng, lib_path, via, "search", _server_fix(via))
    _set_threads(threads)  # after the engine: torch's threads only when the engine loaded it
    results, reranks = _search_library(lib_path, eng, verify, library is None, gone_note, texts, names, top, top_m)
    for r in results:
        for warning in r.get("warnings", []):
            typer.echo(f"warning: {warning}", err=True)
    if json_out:
        for r in results:
            typer.echo(json_text(r, indent=None, default=str))
        return
    _print_results(results, lib_path, reranks)


def _search_library(path: Path, engine: Any, verify: str, picked: bool, gone_note: str | None, texts: list[str],
                    names: list[str] | None, top: int, top_m: int) -> tuple[list[dict[str, Any]], bool]:
    """Open the library and search it for ``texts`` (``names``: how messages name them, :func:`read_queries`);
    when `rapdeploy index` replaced files of the library between the open and the search (an --add that dropped
    shards, a --force), open the new one and search again, once."""
    from rap_deploy.errors import LibraryChangedError

    for attempt in range(2):
        with _open_searched_library(path, engine, verify, picked, gone_note) as lib:
            try:
                return (lib.search(texts, top_k=top, top_m=top_m, names=names),
                        bool(lib.manifest["model"].get("has_asa")))
            except LibraryChangedError:
                if attempt:
                    raise
    raise AssertionError("unreachable")  # pragma: no cover


def _print_results(results: list[dict[str, Any]], library: Path, reranks: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    for r in results:
        t = r["timings_ms"]
        caption = (f"text {t['text']:.1f} ms · stage 1 {t['stage1']:.2f} ms · re-rank {t['rerank']:.1f} ms · "
                   f"total {t['total']:.1f} ms")
        if any(not hit.get("reranked", True) for hit in r["results"]):
            caption += ("\n* stage-1 score: beyond --top-m, not re-ranked" if reranks
                        else "\n* stage-1 score: this model has no ASA head to re-rank with")
        table = Table(title=f"“{escape(r['query'])}” in {escape(library.name)}", caption=caption)
        for col in ("rank", "video", "score", "stage-1 rank", "path"):
            table.add_column(col, justify="right" if col in ("rank", "score", "stage-1 rank") else "left")
        for hit in r["results"]:
            mark = "" if hit.get("reranked", True) else "*"
            table.add_row(str(hit["rank"]), escape(hit["video_id"]), f"{hit['score']:.4f}{mark}",
                          str(hit["stage1_rank"]), escape(hit["path"]))
        console.print(table)
