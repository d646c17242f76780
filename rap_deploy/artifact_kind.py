"""Which rapdeploy artifact a folder is (a library, an engine folder, an export folder), by its ``manifest.json``'s
``format``: the one place the commands that refuse a folder of the wrong kind decide it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

ArtifactKind = Literal["library", "engine", "export", "rapdeploy", "foreign"]

_KINDS: dict[str, ArtifactKind] = {"rapdeploy.library": "library", "rapdeploy.engine": "engine",
                                   "rapdeploy.export": "export"}

_WRITTEN_BY = {"library": "a video library (`rapdeploy index` wrote it)",
               "engine": "an engine folder (`rapdeploy build-engine` wrote it)",
               "export": "an export folder (`rapdeploy export` wrote it)"}


def manifest_kind(manifest: Any) -> ArtifactKind:
    """The kind of artifact a parsed ``manifest.json`` is: ``"library"``, ``"engine"`` or ``"export"`` by its
    ``format``, ``"rapdeploy"`` for another ``rapdeploy.*`` format (a newer rapdeploy's), ``"foreign"`` for anything
    else (another program's ``manifest.json``, no object, no format)."""
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if not isinstance(fmt, str):
        return "foreign"
    return _KINDS.get(fmt, "rapdeploy" if fmt.startswith("rapdeploy.") else "foreign")


def read_folder_manifest(folder: str | os.PathLike[str]) -> Any | None:
    """``folder/manifest.json`` parsed (bounded in size and depth), or ``None`` when the folder or its manifest is
    absent, unreadable, oversized or not JSON: the caller that needs it names that problem itself."""
    from rap_deploy.bounds import read_manifest_text
    from rap_deploy.errors import RapDeployError

    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(read_manifest_text(path))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, RapDeployError):
        return None


def artifact_kind(folder: str | os.PathLike[str]) -> ArtifactKind | None:
    """The kind of artifact ``folder`` is (see :func:`manifest_kind`), or ``None`` when it has no readable
    ``manifest.json`` (see :func:`read_folder_manifest`)."""
    manifest = read_folder_manifest(folder)
    return None if manifest is None else manifest_kind(manifest)


def written_by(kind: str) -> str:
    """``kind`` (``"library"``, ``"engine"``, ``"export"``) as a refusal names it: what it is and which command wrote
    it, e.g. "an engine folder (`rapdeploy build-engine` wrote it)"."""
    return _WRITTEN_BY[kind]
