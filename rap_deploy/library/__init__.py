"""A searchable video library (DESIGN.md §12): ``rapdeploy index`` builds it, ``rapdeploy search`` and
``rapdeploy serve`` search it. Works on the :class:`~rap_deploy.engines.base.Engine` protocol alone.

- :func:`open_library` / :class:`Library` — the two-stage search (``rap_deploy.library.search``);
- :func:`build_library` — encoding, resume, ``--add``/``--remove``, ``torchrun`` ranks (``rap_deploy.library.builder``);
- the sources, manifest, shard store and stage-1 index live in the sibling modules.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use (PEP 562), so a search process never loads the builder's PyTorch data loading.
_EXPORTS = {"BuildOptions": "builder", "Ranks": "builder", "build_library": "builder", "MAX_QUERY_CHARS": "queries",
            "check_queries": "queries", "Library": "search", "open_library": "search", "VideoSource": "sources",
            "dataset_source": "sources", "folder_source": "sources", "list_source": "sources"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
