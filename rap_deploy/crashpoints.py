"""Named crash points, so tests can kill a command at an exact step instead of racing it with sleeps.

Writers call :func:`crash_point` at the steps where an interruption matters (a staging folder created, a manifest
written, between the renames of a folder swap, ...). Normally it does nothing. When the environment variable
``RAPDEPLOY_CRASH_AT`` names that step, the process kills itself there:

- ``RAPDEPLOY_CRASH_AT=build.manifest-written`` sends ``SIGKILL`` (nothing runs after it, as with ``kill -9`` or the
  OOM killer);
- ``RAPDEPLOY_CRASH_AT=atomic.tmp-created:TERM`` sends ``SIGTERM`` (what a scheduler or ``torchrun`` sends first);
- ``RAPDEPLOY_CRASH_AT=index.shard-written@2`` kills at the second time the step is reached (steps that repeat).

Only tests set the variable. The names in use are listed in :data:`CRASH_POINTS` (a test that names an unknown
point would otherwise pass without ever crashing).
"""

from __future__ import annotations

import os
import signal

ENV = "RAPDEPLOY_CRASH_AT"
CRASH_POINTS = (
    "atomic.tmp-created",        # rap_deploy.atomic: the temporary file exists, nothing written yet
    "cache.entry-written",       # frame cache: an entry's temporary file is written and locked, not yet renamed
    "build.staging-created",     # build-engine: the hidden staging folder exists
    "build.manifest-written",    # build-engine: the staging folder holds a complete manifest, not yet validated
    "export.graphs-written",     # export: the new graphs are in the staging folder, checks and parity not run
    "export.before-swap",        # export: the new export passed, about to replace the old one
    "swap.exchanged",            # folder swap: the new folder is in place, the old one not yet removed
    "swap.between-renames",      # folder swap without an atomic exchange: the old folder moved aside
    "index.shard-written",       # index: one more shard of the library committed
)
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill this process at step ``name`` when ``$RAPDEPLOY_CRASH_AT`` names it (``name``, ``name:TERM``, and
    ``name@N`` for the N-th time the step is reached).

    Returns normally otherwise. Raises ``ValueError`` for a name missing from :data:`CRASH_POINTS` (a typo in the
    code would make the crash test vacuous).
    """
    if name not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {name!r}; add it to rap_deploy.crashpoints.CRASH_POINTS")
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, how = wanted.partition(":")
    point, _, nth = point.partition("@")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if nth.isdigit() and _hits[name] < int(nth):
        return
    os.kill(os.getpid(), signal.SIGTERM if how.upper() == "TERM" else signal.SIGKILL)
