"""Which engine and which reference checkpoint a command works on: resolution and checks of both.

``verify``, ``bench``, the library commands and the servers all start here: :func:`resolve_engine` finds the engine
(a folder, a checkpoint or a server URL), :func:`resolve_reference` the checkpoint it was built from, checked against
the sha256 its manifest records (:func:`~rap_deploy.engines.report_labels.engine_label` names the engine's report
folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rap_deploy.bounds import read_manifest_text
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.safe_paths import absent
from rap_deploy.workspace import user_path

#: Stands in a suggested command for an engine folder a message cannot name there (an untrusted path cut or escaped)
ENGINE_PLACEHOLDER = "<engine folder>"


@dataclass
class Reference:
    """The PyTorch reference: where its checkpoint came from and whether it matches the engine's source."""

    checkpoint: Path
    sha256: str
    manifest_sha256: str | None
    source: str  # "manifest" or "--checkpoint"

    def to_dict(self) -> dict[str, Any]:
        return {"backend": "torch", "precision": "fp32", "checkpoint": str(self.checkpoint), "sha256": self.sha256,
                "engine_source_sha256": self.manifest_sha256, "source": self.source,
                "matches_engine_source": None if self.manifest_sha256 is None else self.sha256 == self.manifest_sha256}


def resolve_engine(engine: str | os.PathLike[str] | None, workspace: str | os.PathLike[str] | None = None,
                   checkpoints: bool = True) -> Path:
    """The engine to use: ``engine`` if given, else the latest engine folder in the workspace.

    A server URL (``http://HOST:PORT``) is returned as the string it is. Raises :class:`UsageError` when none is given
    and the workspace has no engine, or the given one does not exist (``checkpoints``: whether the message may
    suggest a checkpoint, which the caller takes as the PyTorch engine).
    """
    from rap_deploy.engines.loader import is_remote
    from rap_deploy.workspace import latest_child, subdir

    if is_remote(engine):
        return engine  # type: ignore[return-value]  # load_engine runs it over the Open Inference Protocol
    if engine is not None:
        path = user_path(engine, "--engine")
        if not path.exists():
            raise UsageError(f"engine {path} {absent(path)}; pass --engine with an engine folder from "
                             "`rapdeploy build-engine`" + (" (or a .pt checkpoint for the PyTorch engine)"
                                                           if checkpoints else " or an export folder"))
        _check_engine_file(path, checkpoints)
        _refuse_library_folder(path)
        return path
    folder = subdir("engines", workspace)
    found = latest_child(folder, "manifest.json")
    if found is None:
        raise UsageError(f"no engine in {folder}; build one with `rapdeploy build-engine` or pass --engine DIR")
    return found


def _check_engine_file(path: Path, checkpoints: bool) -> None:
    """Refuse (:class:`UsageError`) a file given as ``--engine`` that no loader takes: an engine is a folder, or a
    checkpoint (by its suffix) where ``checkpoints``. A graph file (``video_encoder.onnx``) was otherwise taken for a
    checkpoint by bench and refused as 'not a checkpoint'; a ``manifest.json`` is named with its folder."""
    from rap_deploy.file_kinds import CHECKPOINT_SUFFIXES

    if not path.is_file() or (checkpoints and path.suffix in CHECKPOINT_SUFFIXES):
        return
    if path.name == "manifest.json":
        raise UsageError(f"--engine {path} is a manifest; pass its folder: --engine {path.parent}")
    allowed = f" or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})" if checkpoints else ""
    beside = f": --engine {path.parent}" if (path.parent / "manifest.json").is_file() else ""
    raise UsageError(f"--engine {path} is a file, not an engine folder{allowed}; pass the folder `rapdeploy "
                     f"build-engine` (or `rapdeploy export`) wrote{beside}")


def _refuse_library_folder(path: Path) -> None:
    """Refuse (:class:`UsageError`) a video library folder given as ``--engine`` (its ``manifest.json`` of format
    ``rapdeploy.library``), naming the engine its manifest says built it: the two folders mixed up were otherwise
    refused for what a library lacks ('names no source checkpoint', 'not an engine manifest')."""
    import shlex

    from rap_deploy.artifact_kind import manifest_kind, read_folder_manifest, written_by
    from rap_deploy.name_lists import PATH_CHARS, text_repr

    manifest = read_folder_manifest(path) if path.is_dir() else None  # a damaged one the engine loader names
    if manifest is None or manifest_kind(manifest) != "library":
        return
    built = (manifest.get("engine") if isinstance(manifest.get("engine"), dict) else {}).get("path")
    named = " as --engine"
    if isinstance(built, str) and built:  # the manifest is untrusted: only a real path goes into the command
        if len(built) <= PATH_CHARS and built.isprintable():
            named = f", --engine {shlex.quote(built)}"
        else:  # a cut or escaped path is no argument to paste: a placeholder, the path named beside it
            why = "is too long to show whole" if len(built) > PATH_CHARS else "holds unprintable characters"
            named = (f", --engine {ENGINE_PLACEHOLDER} ({ENGINE_PLACEHOLDER} is the folder `rapdeploy build-engine` "
                     f"wrote; the library records {text_repr(built)}, which {why})")
    raise UsageError(f"--engine {path} is {written_by('library')}, not an engine; pass the "
                     f"engine that built it{named} (search and serve take the library as --library)")


def engine_manifest(engine_path: Path) -> dict[str, Any] | None:
    """The engine folder's ``manifest.json`` (``None`` for a checkpoint file used as the PyTorch engine; for a server
    URL, what the server reports about its engine: ``checkpoint``, ``precision``)."""
    from rap_deploy.engines.loader import is_remote

    if is_remote(engine_path):
        from rap_deploy.engines.serving.remote import remote_manifest

        return remote_manifest(str(engine_path))
    if engine_path.is_file():
        return None
    from rap_deploy.safe_paths import resolve_entry

    path = engine_path / "manifest.json"
    if not path.is_file() and not path.is_symlink():
        from rap_deploy.engines.loader import run_folder_advice

        raise UsageError(run_folder_advice(engine_path) or f"{engine_path} has no manifest.json: not an engine "
                         "folder; build one with `rapdeploy build-engine`")
    resolve_entry(engine_path, "manifest.json", "engine manifest", engine_path)  # no symlink, FIFO or device
    try:
        manifest = json.loads(read_manifest_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckFailedError(f"{path} is not valid JSON ({exc}); rebuild the engine") from None
    if not isinstance(manifest, dict):
        raise CheckFailedError(f"{path} is not a JSON object; the engine folder is damaged, rebuild it")
    return manifest


def resolve_reference(engine_path: Path, checkpoint: str | os.PathLike[str] | None) -> Reference:
    """The reference checkpoint: ``checkpoint`` if given, else the one named in the engine's manifest.

    Raises :class:`UsageError` when the manifest names none, the file is gone, or it changed since the engine was
    built (sha256 differs) — pass ``--checkpoint`` to choose the reference explicitly.
    """
    from rap_deploy.atomic import sha256_file
    from rap_deploy.engines.loader import is_remote

    remote = is_remote(engine_path)
    where = engine_path if remote else engine_path / "manifest.json"
    manifest = engine_manifest(engine_path)
    recorded = (manifest or {}).get("checkpoint") or {}
    recorded = recorded if isinstance(recorded, dict) else {}
    _check_recorded_checkpoint(recorded, where, remote)
    if manifest is None and checkpoint is None:
        checkpoint = engine_path  # a .pt engine is its own reference
    if checkpoint is not None:
        path = user_path(checkpoint, "--checkpoint")
        if not path.is_file():
            what = "is not a file" if path.exists() else absent(path)
            raise UsageError(f"reference checkpoint {path} {what}; pass --checkpoint with the .pt the engine "
                             "was exported from")
        return Reference(path, sha256_file(path), recorded.get("sha256"), "--checkpoint")
    value = recorded.get("path")
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where} names no source checkpoint; pass --checkpoint CKPT")
    path = _recorded_checkpoint_file(value, engine_path, remote)
    if path is None:
        raise UsageError(f"the engine's source checkpoint {value!r} (from {where}) is not an existing checkpoint "
                         "file here; pass --checkpoint with the .pt it was exported from")
    digest = sha256_file(path)
    if recorded.get("sha256") and digest != recorded["sha256"]:
        raise UsageError(f"checkpoint {path} is not the file the engine was built from (its sha256 differs from the "
                         f"one in {where}): it changed since export; pass --checkpoint with "
                         "the original, or re-export and rebuild the engine")
    return Reference(path, digest, recorded.get("sha256"), "manifest")


def _check_recorded_checkpoint(recorded: dict[str, Any], where: Path | str, remote: bool) -> None:
    """Refuse (:class:`CheckFailedError`, exit 1) a source checkpoint record whose ``path`` or ``sha256`` is there
    but is not text: the manifest was edited (or the server reports a damaged one). Such a value otherwise reached
    the code that takes them for text: a number as ``sha256`` stopped ``verify --checkpoint`` with a TypeError
    traceback, and without ``--checkpoint`` was reported as a checkpoint that changed since export (exit 2)."""
    from rap_deploy.engines.manifest import checkpoint_record_problem

    problem = checkpoint_record_problem(recorded)
    if problem:
        fix = ("the server reports a damaged engine record; rebuild the engine it serves" if remote else
               "the engine folder is damaged or was edited, rebuild it")
        raise CheckFailedError(f"{where}: {problem}; {fix}")


def _recorded_checkpoint_file(value: str, engine_path: Path, remote: bool) -> Path | None:
    """The checkpoint file a manifest's recorded ``value`` names (a relative one that is no file from here: inside
    the engine folder), or ``None`` unless it is an existing regular file with a checkpoint suffix.

    The manifest is untrusted, so nothing about any other file (not even a hash) is reported, and ``value`` is taken
    as written, as :func:`~rap_deploy.checkpoint.recorded_checkpoint` takes an export's: a ``~`` is no home folder
    (a manifest is no shell line; rapdeploy records absolute paths), and a path this machine cannot look up (too
    long, a NUL byte) is one more path that is not here.
    """
    from rap_deploy.checkpoint import CHECKPOINT_SUFFIXES

    path = Path(value)
    try:
        if not path.is_absolute() and not path.is_file() and not remote:
            path = engine_path / path
        return path if path.suffix in CHECKPOINT_SUFFIXES and path.is_file() else None
    except (OSError, ValueError):
        return None
