"""How the checkpoint modules depend on one another: the reader and the in-memory checkpoint never import the public
entry point (rap_deploy.checkpoint), which imports them, so no import of one waits on the other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rap_deploy

PACKAGE = Path(rap_deploy.__file__).parent
CHECKPOINT_MODULES = ("checkpoint", "checkpoint_model", "checkpoint_read", "backbone_file", "file_kinds")


def _imported_modules(module: str) -> dict[str, bool]:
    """The ``rap_deploy`` modules that ``rap_deploy.<module>`` imports anywhere in its source (a function's body
    too), each with whether one of those imports is inside a function (True) rather than at module level."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    top_level = {id(node) for node in tree.body}
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "rap_deploy":
            names = [f"rap_deploy.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name.startswith("rap_deploy."):
                found[name] = found.get(name, False) or id(node) not in top_level
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the list of its nodes (first repeated last), or ``None``."""
    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt, path + [node])
            if found:
                return found
        return None

    for start in graph:
        found = visit(start, [])
        if found:
            return found
    return None


def test_the_checkpoint_modules_import_one_another_without_a_cycle():
    """checkpoint_read imported Checkpoint from checkpoint, which imported checkpoint_read inside load_checkpoint: a
    cycle hidden in a function body. The reader and the model now import neither the entry point nor each other's
    importer, and checkpoint imports the reader at module level."""
    present = [name for name in CHECKPOINT_MODULES if (PACKAGE / f"{name}.py").is_file()]
    modules = [f"rap_deploy.{name}" for name in present]
    imports = {f"rap_deploy.{name}": _imported_modules(name) for name in present}
    graph = {module: {name for name in found if name in modules} for module, found in imports.items()}
    assert _cycle(graph) is None, _cycle(graph)
    assert imports["rap_deploy.checkpoint"].get("rap_deploy.checkpoint_read") is False  # imported, at module level
    assert "rap_deploy.checkpoint" not in imports["rap_deploy.checkpoint_read"]
    assert "rap_deploy.checkpoint" not in imports.get("rap_deploy.checkpoint_model", {})


def test_the_reader_imports_first_in_a_fresh_interpreter_and_shares_the_checkpoint_class():
    """Importing the reader first works without loading the entry point, and the names the entry point re-exports
    are the very objects the reader and the model use (existing `from rap_deploy.checkpoint import ...` still
    work)."""
    code = ("import sys\n"
            "import rap_deploy.checkpoint_read as reader\n"
            "assert 'rap_deploy.checkpoint' not in sys.modules, 'the reader imported the entry point'\n"
            "import rap_deploy.checkpoint as entry\n"
            "import rap_deploy.checkpoint_model as model\n"
            "assert entry.Checkpoint is reader.Checkpoint is model.Checkpoint\n"
            "assert (entry.FORMAT, entry.FORMAT_VERSION) == (model.FORMAT, model.FORMAT_VERSION)\n"
            "assert entry.read_checkpoint is reader.read_checkpoint\n"
            "from rap_deploy.checkpoint import CHECKPOINT_SUFFIXES, load_checkpoint, new_checkpoint\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
