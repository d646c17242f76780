"""Which engine a library command runs without ``--engine`` when the library was indexed through a server URL.

A library indexed with ``--engine http://HOST:PORT`` records the URL as its engine. ``search``, ``index`` (an update)
and ``serve`` do not contact a URL they read from a manifest (the manifest is untrusted, and the server may be gone or
serve something else by now); they take the workspace's latest local engine in the server's place, but only when its
weights are shown to be the library's (both record the same source checkpoint sha256), and then say so on one line of
stderr. Otherwise they refuse (exit 2), naming the URL and ``--engine`` as the fix: an engine picked by the
command itself whose weights cannot be compared would rank the library wrongly without a word.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rap_deploy.atomic import is_sha256
from rap_deploy.errors import UsageError
from rap_deploy.library.typed_urls import SERVER_SCHEMES, url_typed_as_path


def is_url(recorded: str | None) -> bool:
    """Whether an engine reference a library manifest records is a server URL (``scheme://...``), not a path."""
    return isinstance(recorded, str) and "://" in recorded


def server_url_given_as_folder(path: str | os.PathLike[str]) -> str | None:
    """The server URL ``path`` was typed as when it is one (``http://HOST:PORT`` or ``https://...``, which a
    :class:`Path` turns into the folders ``http:/HOST:PORT``), else ``None``: a library folder is never a URL."""
    url = url_typed_as_path(path)
    return url if url is not None and url.split(":", 1)[0].lower() in SERVER_SCHEMES else None


def refuse_server_url(path: str | os.PathLike[str], option: str, fix: str) -> None:
    """Raise :class:`UsageError` (exit 2) when ``path``, given as ``option`` where a library folder belongs, is a
    server URL (:func:`server_url_given_as_folder`), naming it and ``fix`` (``fix`` may hold ``{url}``). A URL there
    was taken for the relative folder ``./http:/HOST:PORT``: ``index --out`` wrote a library into it, and ``search``
    said to build one there."""
    url = server_url_given_as_folder(path)
    if url is not None:
        raise UsageError(f"{option} {url} is a server's URL, not a library folder: {fix.format(url=url)}")


def stand_in_note(root: str | os.PathLike[str], url: str, engine: Any, command: str, fix: str) -> str:
    """The stderr line saying that ``command`` runs ``engine`` (the workspace's latest) for the library at ``root``,
    indexed through the server ``url``, when ``engine`` has the library's weights (the same source checkpoint
    sha256, known on both sides).

    Raises :class:`UsageError` (exit 2) otherwise, naming the library, the URL, why the engine is not taken and
    ``fix`` (what to pass instead: ``--engine URL`` where the command runs a server's engine). Raises what reading the
    library's manifest raises.
    """
    from rap_deploy.library.manifest import engine_checkpoint_sha256, engine_name, read_manifest

    recorded = read_manifest(root)["model"].get("checkpoint_sha256")
    library_sha = recorded if is_sha256(recorded) else None
    engine_sha = engine_checkpoint_sha256(engine)
    name = engine_name(engine)
    if library_sha is not None and library_sha == engine_sha:
        return (f"note: library {root} was indexed through the server {url}; no --engine was given, so {command} runs "
                f"the workspace's latest engine {name}, which has the library's weights (source checkpoint sha256 "
                f"{library_sha[:12]}…); to run another engine, {fix}")
    raise UsageError(f"library {root} was indexed through the server {url} and no --engine was given; the "
                     f"workspace's latest engine {name} is not taken in its place: {_why_not(library_sha, engine_sha)};"
                     f" {fix}" + (f", or --engine {name} to run that engine anyway (its weights unchecked)"
                                  if library_sha is None or engine_sha is None else ""))


def _why_not(library_sha: str | None, engine_sha: str | None) -> str:
    """Why an engine saying ``engine_sha`` cannot stand in for the server of a library recording ``library_sha``."""
    if library_sha is not None and engine_sha is not None:
        return (f"it has other weights (source checkpoint sha256 {engine_sha[:12]}… vs the library's "
                f"{library_sha[:12]}…)")
    if library_sha is None:
        return "its weights cannot be compared, as the library records no source checkpoint sha256"
    return "its weights cannot be compared, as it says no source checkpoint sha256"


def url_note(root: str | os.PathLike[str] | Path, url: str, fix: str) -> str:
    """The sentence a refusal ends with when a command, given no ``--engine``, took the workspace's latest engine for
    the library at ``root``, indexed through the server ``url``."""
    return (f"No --engine was given, and library {root} was indexed through the server {url} (the workspace's latest "
            f"engine is taken in its place only when its weights are the library's): {fix}")
