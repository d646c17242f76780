"""The demo's step runner and the records that decide whether a step is complete.

A step writes files (its outputs; the first is its marker) from files earlier steps wrote (its inputs). When it
finishes, ``OUT/demo-steps.json`` records (under its name and marker) the sha256 of each of them and the seconds it
took. A later demo skips the step only when its marker exists and every output and input still has its recorded
sha256: a step whose output was deleted, truncated or edited runs again, and so does every later step that read what
it rewrote (its recorded inputs no longer match). A demo folder written before the records existed has markers and
its ``summary.json`` but no ``demo-steps.json``: its complete steps are adopted, as they are, until one demo has run
every step there (``ablate`` runs two of them); any other folder's files (a workspace's own export) are never
adopted. Timings of skipped steps come from their records, so a resumed demo's summary still
lists every step it ran or skipped, and only those.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rap_deploy.atomic import write_json_atomic
from rap_deploy.cpu_memory import give_back_freed_memory

RECORDS = "demo-steps.json"
RECORDS_FORMAT = "rapdeploy.demo-steps"
# What a finished demo writes into OUT (cli.pipeline): its timings, recalls, engine verdicts. Not a training run's
# summary (workspace.RUN_SUMMARY, which OUT/runs/rap/ holds), though the two share the name.
DEMO_SUMMARY = "summary.json"


class Steps:
    """Runs and reports the pipeline's steps; with a ``root`` folder, records them in ``root/demo-steps.json`` and
    skips the ones whose record matches the files (module docstring). Without a root, a step whose marker exists is
    skipped."""

    def __init__(self, log: Callable[[str], None], root: Path | None = None) -> None:
        self.log = log
        self.root = root
        self.records, self.adopting = _read_records(root, log) if root is not None else ({}, False)
        # the steps of this run only, a skipped one's from its own record (not another marker's of the same name:
        # ablate's backbone of another epoch count, an engine this machine does not build)
        self.timings: dict[str, float] = {}
        if self.adopting and root is not None:  # the summary of a folder being adopted kept the others' timings
            self.timings = _earlier_timings(root / DEMO_SUMMARY)

    def run(self, name: str, outputs: Sequence[Path], fn: Callable[[], Any], inputs: Sequence[Path] = ()) -> bool:
        """Run step ``name`` (``fn``) unless it is complete; returns True when it ran."""
        marker = outputs[0]
        if self._complete(name, outputs, inputs):
            self.log(f"[skip] {name}: {marker} is complete")
            return False
        self.log(f"[run ] {name}")
        t0 = time.perf_counter()
        fn()
        give_back_freed_memory()  # the next step's peak does not sit on this one's kept heap (rap_deploy.cpu_memory)
        self.timings[name] = round(time.perf_counter() - t0, 2)
        self._record(name, outputs, inputs, self.timings[name])
        self.log(f"[done] {name} in {self.timings[name]:.1f}s")
        return True

    def _complete(self, name: str, outputs: Sequence[Path], inputs: Sequence[Path]) -> bool:
        if not nonempty_file(outputs[0]):
            return False
        if self.root is None:
            return True
        record = self.records.get(self._key(name, outputs))
        if record is None:
            if self.adopting:  # a folder from before the records: its steps taken as they are
                self._record(name, outputs, inputs, self.timings.get(name))
                return True
            return False
        changed = _changed(record.get("outputs"), self._hashes(outputs)) or \
            _changed(record.get("inputs"), self._hashes(inputs))
        if changed is None:
            if _seconds(record.get("seconds")):
                self.timings[name] = record["seconds"]
            return True
        self.log(f"[redo] {name}: {changed} changed since the step ran")
        return False

    def recorded(self, name: str, marker: Path) -> bool:
        """Whether step ``name`` with ``marker`` ran in this folder (it has a record): a file of it that cannot be read
        no longer matches that record, so the step writes it again."""
        return self._key(name, [marker]) in self.records

    def every_step_recorded(self) -> None:
        """Call after a run of every step: a folder being adopted is now fully recorded, and a later run adopts no
        marker without a record. (``ablate`` runs two of the steps and never calls it.)"""
        if self.adopting:
            self.adopting = False
            self._write()

    def _record(self, name: str, outputs: Sequence[Path], inputs: Sequence[Path], seconds: float | None) -> None:
        if self.root is None:
            return
        self.records[self._key(name, outputs)] = {"step": name, "outputs": self._hashes(outputs),
                                                  "inputs": self._hashes(inputs), "seconds": seconds}
        self._write()

    def _write(self) -> None:
        write_json_atomic(self.root / RECORDS, {"format": RECORDS_FORMAT, "adopting": self.adopting,
                                                "steps": self.records})

    def _key(self, name: str, outputs: Sequence[Path]) -> str:
        """A step's record key: its name and its marker (one step name writes other files for other recipes, the
        backbone pre-trained for another epoch count for one)."""
        return f"{name}: {self._relative(outputs[0])}"

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() if self.root and path.is_relative_to(self.root) else str(path)

    def _hashes(self, paths: Sequence[Path]) -> dict[str, str | None]:
        """sha256 of every file of ``paths`` (a folder: each file under it, hidden ones left out), by its path
        relative to the root; ``None`` for a path that does not exist."""
        from rap_deploy.data.cache import file_digest, visible_files

        out: dict[str, str | None] = {}
        for path in paths:
            files = list(visible_files(path)) if path.is_dir() else [path]
            for f in files:
                out[self._relative(f)] = file_digest(f) if f.is_file() else None
        return dict(sorted(out.items()))


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e9


def _earlier_timings(summary: Path) -> dict[str, float]:
    """``step_seconds`` of a summary written before the step records, the well-formed entries only (or none)."""
    from rap_deploy.bounds import read_manifest_text
    from rap_deploy.errors import CheckFailedError

    try:
        timings = json.loads(read_manifest_text(summary, "demo summary")).get("step_seconds")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError, CheckFailedError):
        return {}
    return {k: v for k, v in timings.items() if isinstance(k, str) and _seconds(v)} if isinstance(timings, dict) \
        else {}


def _changed(recorded: Any, now: dict[str, str | None]) -> str | None:
    """The first file whose hash differs from the record (or "its files" when the file sets differ), else None."""
    if not isinstance(recorded, dict) or recorded.keys() != now.keys():
        return "the set of its files"
    return next((path for path, digest in now.items() if recorded[path] != digest), None)


def _read_records(root: Path, log: Callable[[str], None]) -> tuple[dict[str, dict[str, Any]], bool]:
    """The step records of ``root`` and whether the folder predates them (no records file, and the ``summary.json``
    a demo writes when it finishes: adopt its steps). A folder without either is new, or a workspace that holds
    other commands' files (the user's own export in ``onnx/``): nothing in it is the demo's until a step records it.
    A damaged records file counts as no record: every step runs again."""
    from rap_deploy.bounds import read_manifest_text
    from rap_deploy.errors import CheckFailedError

    path = root / RECORDS
    if not path.exists() and not path.is_symlink():
        return {}, (root / DEMO_SUMMARY).is_file()
    try:
        if path.is_symlink() or not path.is_file():
            raise ValueError("not a regular file")
        doc = json.loads(read_manifest_text(path, "demo step records"))
        steps = doc["steps"] if isinstance(doc, dict) and doc.get("format") == RECORDS_FORMAT else None
        if not isinstance(steps, dict) or not all(isinstance(r, dict) for r in steps.values()):
            raise ValueError("not a demo step record")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, CheckFailedError) as exc:
        log(f"[note] {path} is damaged ({str(exc)[:80]}): every step runs again")
        return {}, False
    return steps, doc.get("adopting") is True


def nonempty_file(path: Path) -> bool:
    """True for a regular file with content (a step's marker once the step wrote it)."""
    return path.is_file() and path.stat().st_size > 0
