"""A searchable video library (DESIGN.md §12): ``rapdeploy index`` builds it, ``rapdeploy search`` and
``rapdeploy serve`` search it. Works on the :class:`~rap_deploy.engines.base.Engine` protocol alone.

- :func:`open_library` / :class:`Library` — the two-stage search (``rap_deploy.library.search``);
- :func:`build_library` — encoding, resume, ``--add``/``--remove``, ``torchrun`` ranks (``rap_deploy.library.builder``);
- the sources, manifest, shard store and stage-1 index live in the sibling modules.
"""

from __future__ import annotations

from rap_deploy.library.builder import BuildOptions, Ranks, build_library
from rap_deploy.library.queries import MAX_QUERY_CHARS, check_queries
from rap_deploy.library.search import Library, open_library
from rap_deploy.library.sources import VideoSource, dataset_source, folder_source, list_source

__all__ = ["BuildOptions", "Library", "MAX_QUERY_CHARS", "Ranks", "VideoSource", "build_library", "check_queries",
           "dataset_source", "folder_source", "list_source", "open_library"]
