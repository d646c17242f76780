"""The clip_loader and asa helpers other modules call are public, documented functions: no module (tests included)
imports a private name from them, so a change to their private helpers cannot silently break a caller elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = {"rap_deploy.model.clip_loader": ("register_packaged_configs", "quiet_loading_logs"),
          "rap_deploy.model.asa": ("off_integers",)}


def _private_imports_from(modules: set[str]) -> list[str]:
    """``file:line module.name`` for each ``from MODULE import _name`` of one of ``modules`` in the source tree."""
    found = []
    for top in ("rap_deploy", "train", "engines", "export", "tests"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module in modules:
                    found += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
                              for alias in node.names if alias.name.startswith("_")]
    return found


def test_no_module_imports_a_private_helper_of_clip_loader_or_asa():
    assert _private_imports_from(set(SHARED)) == []


def test_the_shared_helpers_are_public_and_documented():
    import importlib

    for module, names in SHARED.items():
        for name in names:
            func = getattr(importlib.import_module(module), name)
            assert (func.__doc__ or "").strip(), f"{module}.{name} has no docstring"
