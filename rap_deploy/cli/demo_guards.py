"""Checks that a demo folder's model and training run were made by the demo's current recipe.

Every demo step is skipped when its output is complete, so a folder made by an earlier recipe would otherwise be
reused silently by every later step. Each check raises :class:`UsageError` naming the file, the value it holds, the
value the recipe has now, and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.workspace import RUN_LAST, RUN_SUMMARY

# The training numbers of the demo's recipe (DemoSizes) that a finished or killed run must share to be reused.
TRAINING_RECIPE = ("epochs", "batch_size", "lr", "offset_lr_mult", "lorm_lr_mult", "selection_loss_weight",
                   "epoch_unit", "seed")


def _fix(out: Path) -> str:
    return (f"pass a new --out, or keep the world ({out / 'data'}, {out / 'cache'}) and remove everything else in "
            f"{out} to make the demo's model again")


def check_demo_model(init_ckpt: Path, config: Any, out: Path) -> None:
    """Raise :class:`UsageError` when the init checkpoint of demo folder ``out`` exists with another model than
    ``config`` (the demo's recipe changed since it was made): every later step would be skipped and reuse it. An
    unreadable file holds no recipe: the init step makes it again (its sha256 no longer matches the record)."""
    if not (init_ckpt.is_file() and init_ckpt.stat().st_size > 0):
        return
    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.errors import RapDeployError
    from rap_deploy.train.model_setup import MODEL_OPTIONS

    try:
        have = load_checkpoint(init_ckpt).config
    except RapDeployError:  # damaged or not a checkpoint
        return
    changed = {k: getattr(config, k) for k in ("clip", *MODEL_OPTIONS) if getattr(have, k) != getattr(config, k)}
    if changed:
        was = ", ".join(f"{k} = {getattr(have, k)!r}" for k in changed)
        now = ", ".join(f"{k} = {v!r}" for k, v in changed.items())
        raise UsageError(f"{init_ckpt} holds a model with {was}, but the demo's recipe now has {now}: {_fix(out)}")


def check_demo_training(run_dir: Path, options: Any, out: Path) -> None:
    """Raise :class:`UsageError` when the training run in ``run_dir`` (finished, or killed with a ``last.pt``) was
    trained with other :data:`TRAINING_RECIPE` numbers than ``options`` (a
    :class:`~rap_deploy.train.loop.TrainOptions`): resuming it or reusing its ``best.pt`` would deploy the earlier
    recipe's model. A folder without ``last.pt`` passes (nothing trained yet), and so does a finished run whose
    ``last.pt`` cannot be read: the train step trains it again from the start (its files changed), reusing nothing.
    A killed run whose ``last.pt`` cannot be read cannot be resumed: :class:`CheckFailedError` says to remove it."""
    last = run_dir / RUN_LAST
    if not last.is_file():
        return
    from rap_deploy.train.ablate_runs import unreadable_run_file, without_fix
    from rap_deploy.train.run_state import option_mismatch, stored_run

    try:
        ckpt, stored, _ = stored_run(last)
    except (CheckFailedError, UsageError) as exc:
        if not unreadable_run_file(exc):
            raise
        if finished_run(run_dir):
            return
        raise CheckFailedError(f"{without_fix(exc)}: the demo's killed training run cannot be resumed; remove "
                               f"{run_dir} and the demo trains it again from the start") from None
    mismatch = option_mismatch(stored, ckpt.config, {k: getattr(options, k) for k in TRAINING_RECIPE})
    if mismatch is not None:
        name, have, wanted = mismatch
        raise UsageError(f"{last} was trained with {name} = {have!r}, but the demo's recipe now has {name} = "
                         f"{wanted!r}: {_fix(out)}")


def finished_run(run_dir: Path) -> bool:
    """Whether ``run_dir``'s summary says its training finished (False when it is missing or unreadable)."""
    try:
        summary = json.loads((run_dir / RUN_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(summary, dict) and summary.get("complete") is True
