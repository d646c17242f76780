"""The library manifest: ``LIB/manifest.json``, format ``rapdeploy.library`` (DESIGN.md §12).

It ties the library to the model that encoded it (``model``: config, preprocessing, frame sampling and tokenizer
with their sha256, the source checkpoint's sha256 when the engine knows it, the stored tensors), lists every shard
with each file's size, sha256, dtype and shape, the removed rows (``removed``), and the stage-1 FAISS index with its
measured recall, and the rapdeploy version that wrote it last (``rapdeploy``: named when a later format is refused).
It is written atomically and last, so a reader sees either the previous library or the new one.

Every manifest reaching a command is untrusted: :func:`read_manifest` checks its structure
(:mod:`rap_deploy.library.manifest_checks`), and every file it names goes through :func:`entry_path` (relative,
inside the library folder, no symlink escape).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from rap_deploy.artifact_kind import manifest_kind, written_by
from rap_deploy.atomic import is_sha256, write_json_atomic
from rap_deploy.bounds import check_format_version, read_manifest_text
from rap_deploy.config import FrameSamplingConfig
from rap_deploy.errors import DamagedArtifactError, UsageError
from rap_deploy.graphs import INDEX_DTYPES, rerank_tensors
from rap_deploy.name_lists import PATH_CHARS, short_repr, shortened, some_names
from rap_deploy.safe_paths import absent

FORMAT = "rapdeploy.library"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STAGE1_DIR = "stage1"
SHARDS_DIR = "shards"
MAX_STAGE1_EFFORT = 1 << 20  # efSearch / nprobe: far above any tuned value, bounded before FAISS sees it
MAX_ROW_DIMS = 3  # a stored tensor's row shape: [d], [T, d] or [T, P, width]
# The file's size, modification time, change time and inode when it was encoded (a shard's videos.json, a 'moved'
# entry), so `index --add` can notice a file changed in place without hashing the library: the change time and inode
# tell a file replaced under a kept size and modification time (`cp -p`, `touch -r`, rsync). Optional in videos.json:
# libraries built before they were recorded lack them (before ctime_ns and inode, only the size and modification time
# are compared).
FILE_STAT_FIELDS = ("bytes", "mtime_ns", "ctime_ns", "inode")


def stage1_files(build: int) -> tuple[str, str]:
    """The stage-1 index and recall-query files of build number ``build`` (relative to the library folder).

    Each build writes new names, so the previous manifest stays valid until the new one replaces it; the files no
    manifest names are deleted after that.
    """
    return f"{STAGE1_DIR}/index-{build:04d}.faiss", f"{STAGE1_DIR}/queries-{build:04d}.npy"


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys): how config, preprocessing, sampling and tokenizer are
    hashed."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def store_tensors(has_asa: bool) -> tuple[str, ...]:
    """What a library stores per video: ``video_emb`` (stage 1) and the re-rank tensors of the model, by name."""
    return ("video_emb", *rerank_tensors(has_asa))


def tensor_dtype(name: str) -> str:
    """The stored dtype of tensor ``name`` (``rap_deploy.graphs.INDEX_DTYPES``); raises :class:`UsageError` when the
    graphs module names no dtype for it."""
    try:
        return INDEX_DTYPES[name]
    except KeyError:
        raise UsageError(f"no index dtype for the video tensor '{name}' in rap_deploy.graphs.INDEX_DTYPES") from None


def engine_checkpoint_sha256(engine: Any) -> str | None:
    """The sha256 of the checkpoint an engine's weights come from, or ``None`` when the engine does not say.

    Read from ``engine.describe()``'s ``checkpoint_sha256``, which every engine
    :func:`~rap_deploy.engines.loader.load_engine` makes gives: an engine or export folder the one of the manifest
    it was loaded from (or of its ONNX graphs' metadata), a remote engine what its server publishes (the
    ``rapdeploy.checkpoint`` parameter of ``rapdeploy serve`` and ``rapdeploy triton-repo``), a PyTorch engine the
    hash of the bytes it loaded its weights from. An engine that gives none (made without the loader, a stand-in) is
    unknown: the folder it names is not read, as that manifest may be of another build than the one loaded.
    Anything but a hex sha256 counts as none.
    """
    from rap_deploy.engines.base import engine_info

    info = engine_info(engine)
    sha = (info or {}).get("checkpoint_sha256")
    return sha if is_sha256(sha) else None


def model_identity(engine: Any, sampling: FrameSamplingConfig) -> dict[str, Any]:
    """The ``model`` section of a manifest for ``engine`` and the frame ``sampling`` the videos are decoded with."""
    config = engine.config
    has_asa = bool(getattr(engine, "has_asa", config.has_asa))
    parts = {"config": config.to_dict(), "preprocess": config.preprocess.to_dict(), "sampling": sampling.to_dict(),
             "tokenizer": config.tokenizer.to_dict()}
    out: dict[str, Any] = {}
    for key, value in parts.items():
        out[key] = value
        out[f"{key}_sha256"] = digest(value)
    out.update(checkpoint_sha256=engine_checkpoint_sha256(engine), has_asa=has_asa,
               tensors=list(store_tensors(has_asa)))
    return out


SEARCH_OTHER_MODEL_FIX = ("search it with an engine of the model that built it, or re-index with this engine "
                          "(rapdeploy index ... --engine E --out NEW_LIB)")
INDEX_OTHER_MODEL_FIX = ("update it with an engine of the model that built it (without --engine, index takes the "
                         "engine that built it while that exists), or index these videos with this engine into a new "
                         "library (--out NEW_LIB), or rebuild this one with it (--force)")


def check_model(recorded: dict[str, Any], engine: Any, where: Path, fix: str = SEARCH_OTHER_MODEL_FIX,
                built_by: dict[str, Any] | None = None) -> None:
    """Raise :class:`UsageError` (exit 2) when ``engine`` is not the model the library at ``where`` was built with.

    Compares config, preprocessing, tokenizer, frame count, stored tensors and (when both are known) the source
    checkpoint's sha256, and names every difference, the engine, what ``built_by`` (the manifest's ``engine`` record)
    says built the library, then ``fix`` (what the command that refuses can do instead).
    When the library or the engine does not know its checkpoint's sha256, the weights cannot be compared: it passes
    with a one-line warning (:func:`unknown_weights_warning`) on stderr, where ``search``, ``index`` and ``serve``
    say everything else that is not a result.
    """
    current = model_identity(engine, FrameSamplingConfig.from_dict(recorded["sampling"]))
    problems = []
    for key in ("config", "preprocess", "tokenizer"):
        if recorded.get(f"{key}_sha256") != current[f"{key}_sha256"]:
            was = recorded.get(key) if isinstance(recorded.get(key), dict) else {}
            keys = _differing_keys(was, current[key])
            shown = some_names([f"{k} {_short(was.get(k))} vs {_short(current[key].get(k))}" for k in keys], 4,
                               sep="; ")
            problems.append(f"{key} {str(recorded.get(f'{key}_sha256'))[:12]} vs {current[f'{key}_sha256'][:12]}"
                            + (f" (differs in {shown})" if keys else ""))
    if int(recorded["sampling"].get("max_frames", -1)) != int(engine.config.frames):
        problems.append(f"frames {recorded['sampling'].get('max_frames')} vs {engine.config.frames}")
    if list(recorded.get("tensors") or []) != current["tensors"]:
        problems.append(f"stored tensors {short_repr(recorded.get('tensors'), 200)} vs the engine's "
                        f"{current['tensors']}")
    lib_ckpt = recorded.get("checkpoint_sha256") if is_sha256(recorded.get("checkpoint_sha256")) else None
    eng_ckpt = current["checkpoint_sha256"]
    if lib_ckpt and eng_ckpt and lib_ckpt != eng_ckpt:
        problems.append(f"source checkpoint sha256 {lib_ckpt[:12]}… vs {eng_ckpt[:12]}… (other weights)")
    if problems:
        raise UsageError(f"library {where} was built with another model than engine {engine_name(engine)} "
                         f"(library, per {Path(where) / MANIFEST}, vs engine): {'; '.join(problems)}; "
                         f"{_built_by_note(built_by, engine)}{fix}")
    if lib_ckpt is None or eng_ckpt is None:
        _print_warning(unknown_weights_warning(where, lib_ckpt, engine, eng_ckpt))


def _built_by_note(built_by: dict[str, Any] | None, engine: Any) -> str:
    """What a library's manifest ``engine`` record ``built_by`` says built it, as a clause ending in ``"; "`` (empty
    when it records no engine), noting when ``engine`` runs from that same folder: it was rebuilt since."""
    path = (built_by or {}).get("path")
    if not isinstance(path, str):
        return ""
    checkpoint = (built_by or {}).get("checkpoint")
    note = f"the library was indexed with engine {shortened(path, PATH_CHARS)}" + (
        f" from checkpoint {shortened(checkpoint, PATH_CHARS)}" if isinstance(checkpoint, str) else "")
    if path == engine_name(engine):
        note += " (that server serves" if "://" in path else " (that engine folder holds"
        note += " another model now)"
    return note + "; "


def unknown_weights_warning(where: Path, library_sha: str | None, engine: Any, engine_sha: str | None) -> str:
    """The one-line warning of :func:`check_model` when the library at ``where`` (``library_sha``) or ``engine``
    (``engine_sha``) does not know the source checkpoint's sha256 (``None``): which side lacks it and why it may,
    what that means, and how to record it."""
    name = engine_name(engine)
    sides, fixes = [], []
    if library_sha is None:
        sides.append(f"library {where} records none (indexed before rapdeploy recorded it, or with an engine that "
                     "did not say)")
        fixes.append("re-index the library with the engine of its weights (rapdeploy index ... --force)")
    else:
        sides.append(f"library {where} records {library_sha[:12]}…")
    if engine_sha is None:
        sides.append(f"engine {name} says none ({_engine_gap(engine)})")
        fixes.append("rebuild the engine from a current export (rapdeploy export, then build-engine; a server: "
                     "rapdeploy serve, or a rapdeploy triton-repo repository, of such an engine)")
    else:
        sides.append(f"engine {name} says {engine_sha[:12]}…")
    return (f"warning: source checkpoint sha256 unknown: {'; '.join(sides)}; so the weights cannot be compared, and "
            f"another checkpoint of the same config would search this library without an error and rank wrongly; to "
            f"compare them, {' and '.join(fixes)}")


def engine_name(engine: Any) -> str:
    """How a warning names ``engine``: its path or URL, else its backend."""
    from rap_deploy.engines.base import engine_info

    info = engine_info(engine) or {}
    return str(info.get("path") or info.get("backend") or type(engine).__name__)


def _engine_gap(engine: Any) -> str:
    """Why ``engine`` may not know its checkpoint's sha256, by its kind."""
    from rap_deploy.engines.base import engine_info

    backend = (engine_info(engine) or {}).get("backend")
    if backend == "remote":
        return "the server publishes no rapdeploy.checkpoint sha256: another tool's repository, or an engine of an " \
               "export that recorded none"
    if backend in ("onnxruntime", "tensorrt"):
        return "its manifest.json records no checkpoint sha256: built from an export that recorded none"
    return "it describes no checkpoint"


def _print_warning(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _short(value: Any) -> str:
    """``value`` as a message shows it: its JSON, cut to 40 characters (:func:`shortened`)."""
    return shortened(json.dumps(value, sort_keys=True))


def entry_path(root: Path, entry: Any) -> Path:
    """The file a manifest entry names inside the library folder ``root``, through the one resolver of manifest
    entries (:func:`rap_deploy.safe_paths.resolve_entry`: relative, inside the folder, no symlink, a regular file when
    it exists). Raises :class:`~rap_deploy.safe_paths.UnsafePathError` (exit 1) otherwise."""
    from rap_deploy.safe_paths import resolve_entry

    return resolve_entry(root, entry, "library file", Path(root) / MANIFEST)


# What to pass instead of a server URL as --library (search, serve)
LIBRARY_URL_FIX = ("a library is the folder `rapdeploy index` wrote on this machine: pass that folder (search runs the "
                   "graphs on the server with --engine {url}); to search the library the server itself serves, "
                   "POST {url}/search")


def find_library(library: str | os.PathLike[str] | None, workspace: str | os.PathLike[str] | None,
                 required: bool = True) -> Path | None:
    """``library`` if given, else the workspace's most recently updated library (``<workspace>/index/<name>/``;
    hidden and temporary folders ignored). Without one: :class:`UsageError` when ``required``, else ``None``."""
    from rap_deploy.library.indexed_through import refuse_server_url
    from rap_deploy.workspace import latest_child, subdir, user_path

    if library is not None:
        refuse_server_url(library, "--library", LIBRARY_URL_FIX)
        path = user_path(library, "--library")
        if not path.exists():
            raise UsageError(f"library {path} {absent(path)}; build one with `rapdeploy index --out "
                             f"{shlex.quote(str(path))}`")
        return path
    folder = subdir("index", workspace)
    found = latest_child(folder, MANIFEST)
    if found is None and required:
        raise UsageError(f"no library in {folder}; build one with `rapdeploy index` or pass --library LIB")
    return found


def picked_library_error(exc: Exception, path: Path, command: str, fixes: str) -> UsageError:
    """The :class:`UsageError` for a library ``command`` picked itself (the workspace's latest, no ``--library``)
    and could not open with ``exc``: ``exc``'s message, where the library came from, and ``fixes``."""
    return UsageError(f"{exc}. No --library was given, so {command} opened the workspace's latest library ({path}): "
                      f"{fixes}")


def recorded_engine(root: str | os.PathLike[str]) -> str | None:
    """The path (or server URL) of the engine that built the library at ``root``, as its manifest records it;
    ``None`` when it records none. Raises what :func:`read_manifest` raises."""
    built = (read_manifest(root).get("engine") or {}).get("path")
    return built if isinstance(built, str) else None


def builder_engine(root: str | os.PathLike[str]) -> Path | None:
    """The engine folder or checkpoint that built the library at ``root`` when its manifest names one that still
    exists, else ``None`` (commands then take the workspace's latest engine): what ``search``, ``serve`` and an
    ``index`` update run without ``--engine``. Raises what :func:`read_manifest` raises."""
    built = recorded_engine(root)
    return Path(built) if built is not None and Path(built).exists() else None


def _no_manifest_message(root: Path) -> str:
    """Why the folder ``root`` without a manifest is no library, and the fix: re-running the ``index`` command only
    where a first build was interrupted (its ``build-plan.json`` is there). A build that failed (no video decoded)
    drops its plan, and a folder of videos never had one: re-running would fail again, or never help."""
    from rap_deploy.library.plan import PLAN

    if (root / PLAN).is_file():
        return (f"{root} has no {MANIFEST}: its first build did not finish ({PLAN} is there); re-run the same "
                "`rapdeploy index` command to complete it")
    if _holds_videos(root):
        return (f"{root} has no {MANIFEST}: it is a folder of videos, not a library; index it with `rapdeploy index "
                f"--videos {shlex.quote(str(root))} --out LIB` and pass LIB")
    return (f"{root} has no {MANIFEST}: it is not a library (a folder `rapdeploy index` wrote); build one with "
            f"`rapdeploy index ... --out {shlex.quote(str(root))}`, or pass the folder of one")


def _holds_videos(root: Path, look_at: int = 1000) -> bool:
    """Whether one of the first ``look_at`` entries of the folder ``root`` is a video file (by its extension)."""
    import itertools

    from rap_deploy.data.video_files import VIDEO_EXTENSIONS

    try:
        with os.scandir(root) as entries:
            return any(Path(e.name).suffix.lower() in VIDEO_EXTENSIONS for e in itertools.islice(entries, look_at))
    except OSError:
        return False


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and structurally check ``root/manifest.json``.

    Raises :class:`UsageError` when ``root`` is not a library (no folder, no manifest, another format or a newer
    version) and :class:`DamagedArtifactError` when the manifest is unreadable or malformed.
    """
    root = Path(root)
    path = root / MANIFEST
    if root.exists() and not root.is_dir():
        raise UsageError(f"library folder {root} is not a folder; pass the --out folder of a `rapdeploy index`")
    if not root.is_dir():
        raise UsageError(f"library folder {root} {absent(root)}; build one with `rapdeploy index ... --out "
                         f"{shlex.quote(str(root))}`")
    if not path.is_file():
        raise UsageError(_no_manifest_message(root))
    try:
        manifest = json.loads(read_manifest_text(path, "library manifest"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedArtifactError(f"{path} is not valid JSON ({exc}); the library is damaged: re-index it") from None
    kind = manifest_kind(manifest)
    if kind != "library":
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        if kind in ("engine", "export"):
            raise UsageError(f"{root} is {written_by(kind)}, not a library ({path} has format {short_repr(fmt)}): "
                             "pass it as --engine, and as --library the folder of a library (`rapdeploy index --out "
                             "DIR` writes one; index into another --out)")
        raise UsageError(f"{path} is not a library manifest (format {short_repr(fmt)}, expected '{FORMAT}')")
    _check_format_version(manifest, path, root)
    from rap_deploy.library.manifest_checks import check_structure  # it reads this module's constants

    check_structure(manifest, path)
    return manifest


def _check_format_version(manifest: dict[str, Any], path: Path, root: Path) -> None:
    """:func:`rap_deploy.bounds.check_format_version` for the library manifest at ``path``, as for engine and export
    manifests: :class:`DamagedArtifactError` when it records no integer ``format_version`` of at least 1 (every
    library rapdeploy writes records one), :class:`UsageError` naming the rapdeploy that wrote it and the command that
    builds the library again when it is newer than this rapdeploy reads."""
    rebuild = reindex_command(root)
    check_format_version(manifest, path, "library", FORMAT_VERSION, "the library manifest is damaged: rebuild the "
                         f"library ({rebuild}) or restore the file from a copy", rebuild, oldest=1)


def reindex_command(root: Path) -> str:
    """The command, in backticks, that builds the library at ``root`` again (shell-quoted; ``...`` stands for the
    videos it was indexed from): what a library this rapdeploy cannot read is re-created with."""
    return f"`rapdeploy index ... --out {shlex.quote(str(root))} --force`"


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write ``root/manifest.json`` atomically (always the last file of a build); returns its path."""
    return write_json_atomic(Path(root) / MANIFEST, manifest)
