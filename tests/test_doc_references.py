"""The README's and docs' pointers into the code: every "`NAME` in `PATH.py`" names a file that defines NAME."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# "`named_object_patches` in `train/backbone_losses.py`": a function, class or constant and the file said to hold it
REFERENCE = re.compile(r"`([A-Za-z_]\w*)` in `([\w/]+\.py)`")


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _defined_names(source: Path) -> set[str]:
    """The top-level functions, classes and assigned names of ``source``."""
    names = set()
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_every_name_the_docs_place_in_a_file_is_defined_there():
    """docs/ablation-history.md said `named_object_patches` was in train/backbone.py after it moved to
    train/backbone_losses.py: a reader following the pointer found nothing."""
    references = [(doc.relative_to(ROOT).as_posix(), name, path) for doc in _documents()
                  for name, path in REFERENCE.findall(doc.read_text(encoding="utf-8"))]
    assert references, "the pattern no longer matches the docs' pointers"
    wrong = [f"{doc}: `{name}` in `{path}`" for doc, name, path in references
             if not (ROOT / path).is_file() or name not in _defined_names(ROOT / path)]
    assert not wrong, wrong


def test_the_readme_s_synth_limits_are_the_code_s():
    """The README quotes synth's `--test-videos` cap and the generator's distinct scenes as figures; they are
    computed in the code (:func:`distinct_scene_keys`, :data:`TEST_SHARE_OF_SCENES`), so a change there must show
    here rather than leave the README stale."""
    from rap_deploy.data.synth import distinct_scene_keys
    from rap_deploy.data.synth_dataset import TEST_SHARE_OF_SCENES

    scenes = distinct_scene_keys()
    assert TEST_SHARE_OF_SCENES == 0.5  # the README says "half"
    most = int(scenes * TEST_SHARE_OF_SCENES)
    said = f"`--test-videos` is at most {most:,}, half the generator's {scenes:,} distinct"
    assert said in (ROOT / "README.md").read_text(encoding="utf-8")
