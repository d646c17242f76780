"""One run folder of the ablation (``OUT/<row>/seed<k>/``): checked, then read back, resumed or trained.

A run is read back only when the folder is its own (neither the folder nor its files are symbolic links), its
``summary.json`` is a small JSON object written for this folder (its recorded ``run_dir`` ends in the same row and
seed) whose metrics are finite and in range and are those its ``best.pt`` stored (a finished run has a ``best.pt``,
and its ``last.pt``, when kept, is at the last epoch), and its options and backbone are the recipe's. A run of another
recipe is refused (:class:`UsageError`, exit 2: use another ``--out``); a damaged one is named
(:class:`CheckFailedError`, exit 1: remove the folder and the next call trains it again).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.name_lists import short_repr, shortened, text_repr
from rap_deploy.train.loop import BEST, LAST, SUMMARY, TrainOptions, finished_files, train_rap

# What a summary records of its options, compared when the run has no last.pt to compare (the zero-shot row).
SUMMARY_OPTIONS = ("epochs", "batch_size", "variant", "pretrained", "selection_loss_weight")


def run_one(options: TrainOptions, progress: bool) -> dict[str, Any]:
    """Train (or read back, or resume) one run; returns its ``summary.json``. Raises :class:`UsageError` when the
    folder holds a run of another recipe and :class:`CheckFailedError` when it is damaged (:func:`checked_run`)."""
    run_dir = Path(options.out)
    summary = checked_run(run_dir, options)
    if summary is not None and summary.get("complete"):
        return summary
    if (run_dir / LAST).is_file():
        return train_rap(None, progress=progress, resume=run_dir, overrides=world_paths(options))
    _refuse_unresumable(run_dir)
    return train_rap(options, progress=progress)


def _refuse_unresumable(run_dir: Path) -> None:
    """Raise :class:`UsageError` for an unfinished run that lost its ``last.pt`` (removed by hand): train refuses to
    start again over its files with a fix that names ``train``'s own ``--out``, which is not ``ablate``'s."""
    left = finished_files(run_dir)
    if left:
        raise UsageError(f"ablation run {run_dir} holds {', '.join(left)} but no {LAST}: it stopped before it "
                         f"finished and cannot be resumed; remove {run_dir} and the next `rapdeploy ablate` trains "
                         "that run again")


def world_paths(options: TrainOptions) -> dict[str, Any]:
    """Where ``options`` find the world now, as overrides of a resumed run: its data, frame cache and backbone file.
    A killed run resumed after its world folder moved read them at the paths its ``last.pt`` stored (gone, or the
    old copy's); the data is checked against the run's fingerprint and the backbone against its sha256 on resume."""
    return {"data_root": options.data_root, "cache_dir": options.cache_dir, "pretrained": options.pretrained}


def checked_run(run_dir: Path, options: TrainOptions) -> dict[str, Any] | None:
    """The run's checked ``summary.json`` (``None`` when it has none yet), after :func:`check_same_recipe`, its
    ``run_dir`` the folder it was read from: a run read back after its folder moved named where it was trained."""
    refuse_links(run_dir, (SUMMARY, LAST, BEST))
    summary = read_summary(run_dir)
    check_same_recipe(run_dir, summary, options)
    return None if summary is None else {**summary, "run_dir": str(run_dir)}


def without_fix(exc: Exception) -> str:
    """An error's message without the fix it ends with (the text after its last '; '), for an error caught where
    that fix does not apply (a checkpoint's 're-create it with `rapdeploy train`' inside a run the caller owns)."""
    return str(exc).rsplit("; ", 1)[0]


def run_checkpoint(path: Path, load: Callable[[Path], Any]) -> Any:
    """``load(path)`` for a checkpoint of an ablation run (its ``last.pt`` or ``best.pt``); one that cannot be read
    is raised with the ablation's fix (remove the run folder: the next call trains it again), not the loader's
    (``re-create it with `rapdeploy init```, ``start the run again without --resume``: options ``ablate`` has not)."""
    try:
        return load(path)
    except (CheckFailedError, UsageError) as exc:
        if not unreadable_run_file(exc):
            raise
        raise type(exc)(f"{without_fix(exc)}; the ablation run cannot be read back or resumed: remove {path.parent} "
                        "and the next `rapdeploy ablate` trains that run again") from None


# What a loader's UsageError says of a file that is no checkpoint `rapdeploy train` wrote (its fix names another
# command or option); others keep their own fix (a newer format: upgrade; too large for this machine's memory).
_NOT_TRAINS = ("rapdeploy init", "rapdeploy train", "--resume", "not a checkpoint", "not a rapdeploy checkpoint",
               "not a RAP checkpoint")


def unreadable_run_file(exc: Exception) -> bool:
    """Whether a run's checkpoint failed to load because the file is damaged or is not a checkpoint ``rapdeploy
    train`` wrote: then removing the run is the fix, not the loader's."""
    return isinstance(exc, CheckFailedError) or any(words in str(exc) for words in _NOT_TRAINS)


def damaged_run(path: Path, what: str) -> CheckFailedError:
    """The error for a run folder whose file ``path`` cannot be read back: remove the folder to train it again."""
    return CheckFailedError(f"{path}: {what}; the run folder is damaged or was edited: remove {path.parent} and "
                            "the next `rapdeploy ablate` trains that run again")


def refuse_links(run_dir: Path, names: tuple[str, ...]) -> None:
    """Raise :class:`CheckFailedError` when the run folder, its row folder or one of its files ``names`` is a
    symbolic link: a run writes and reads its own files only."""
    for path in (run_dir.parent, run_dir, *(run_dir / n for n in names)):
        if path.is_symlink():
            raise CheckFailedError(f"{path} is a symbolic link; an ablation run folder holds its own files: replace "
                                   "it with a real folder (or pass another --out)")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``summary.json``, or ``None`` when it has none yet. Raises :class:`CheckFailedError` when it is
    oversized, not a JSON object, written for another run folder, or (for a complete run) holds metrics that are not
    finite numbers in range."""
    from rap_deploy.bounds import read_manifest_text

    path = run_dir / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(read_manifest_text(path, "run summary"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise damaged_run(path, f"it is not readable JSON ({exc})") from None
    if not isinstance(summary, dict):
        raise damaged_run(path, "it is not a JSON object")
    recorded = summary.get("run_dir")
    if not isinstance(recorded, str) or Path(recorded).parts[-2:] != run_dir.parts[-2:]:
        raise damaged_run(path, f"it was written for the run {text_repr(recorded)}, not this folder")
    if summary.get("complete"):
        _check_numbers(path, summary)
    return summary


def _check_numbers(path: Path, summary: dict[str, Any]) -> None:
    """Every number the table reads from a complete run's summary is there, finite and in range: the best epoch's
    t2v and v2t (and both directions of its two_stage when it has one), its offsets and their starting values (when
    the model has ASA: non-empty, finite, of the same heads) and the trainable parameter count."""
    best = summary.get("best")
    if not isinstance(best, dict):
        raise damaged_run(path, "its 'best' epoch is not a JSON object")
    for where, metrics in (("best", best), *((("best.two_stage", best["two_stage"]),) if "two_stage" in best else ())):
        if not isinstance(metrics, dict):
            raise damaged_run(path, f"'{where}' is not a JSON object")
        for direction in ("t2v", "v2t"):
            _check_recalls(path, f"{where}.{direction}", metrics.get(direction))
    pair = (("best.offsets", best.get("offsets")), ("offsets_initial", summary.get("offsets_initial")))
    for where, offsets in pair:
        if offsets is not None and not _offsets_ok(offsets):
            raise damaged_run(path, f"'{where}' does not hold finite gamma and delta offsets of at least one head")
    if all(offsets is not None for _, offsets in pair) and not all(
            _same_shape(pair[0][1][k], pair[1][1][k]) for k in ("gamma", "delta")):
        raise damaged_run(path, "'best.offsets' and 'offsets_initial' do not hold the same heads")
    params = summary.get("trainable_params")
    if isinstance(params, bool) or not isinstance(params, int) or params < 0:
        raise damaged_run(path, f"its trainable_params {short_repr(params)} is not an integer >= 0")


def _offsets_ok(offsets: Any) -> bool:
    """True for ``{"gamma": ..., "delta": ...}`` holding finite numbers, at least one of each."""
    import numpy as np

    return isinstance(offsets, dict) and all(
        _finite_numbers(offsets.get(k)) and isinstance(offsets.get(k), list) and _same_shape(offsets[k], offsets[k])
        and np.asarray(offsets[k], dtype=np.float64).size > 0 for k in ("gamma", "delta"))


def _same_shape(a: Any, b: Any) -> bool:
    """True when two (nested) lists of numbers have the same shape (a ragged list matches nothing)."""
    import numpy as np

    try:
        return np.asarray(a, dtype=np.float64).shape == np.asarray(b, dtype=np.float64).shape
    except ValueError:  # ragged
        return False


def _check_recalls(path: Path, where: str, metrics: Any) -> None:
    if metrics is None:
        raise damaged_run(path, f"it has no '{where}' metrics")
    if not recalls_ok(metrics):
        raise damaged_run(path, f"'{where}' does not hold R1, R5, R10 in [0, 100] and a finite MnR >= 1")


def recalls_ok(metrics: Any) -> bool:
    """True when ``metrics`` holds R1, R5, R10 in [0, 100] and a finite MnR >= 1 (what the table reads)."""
    return isinstance(metrics, dict) and all(_number_in(metrics.get(k), 0.0, 100.0) for k in ("R1", "R5", "R10")) \
        and _number_in(metrics.get("MnR"), 1.0, math.inf)


def _number_in(value: Any, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


def _finite_numbers(value: Any) -> bool:
    """True for a number or a (nested) list of numbers, all finite."""
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    return _number_in(value, -math.inf, math.inf)


def check_same_recipe(run_dir: Path, summary: dict[str, Any] | None, options: TrainOptions) -> None:
    """Raise :class:`UsageError` when the run already in ``run_dir`` was trained with other options or another
    backbone than ``options``: reading it back (or resuming it) would put it in the wrong table.

    A run with a ``last.pt`` is compared on every option it stored there, the model's sizes as built
    (:func:`~rap_deploy.train.run_state.option_mismatch`); a finished run, also on the options its ``best.pt``
    stored (a finished run without ``best.pt`` is damaged). Its summary is compared on what it records (epoch count,
    batch size, variant, pre-trained backbone, selection loss weight, 0 in summaries written before the weight was;
    and without stored options, the LoRM multiplier of a run that trained). The backbone file's sha256 must still
    be the one the run's checkpoint recorded; a weights file of that sha256 at another path (the world folder moved)
    is the same backbone. Raises :class:`CheckFailedError` when the run is damaged: ``best.pt`` stored options that
    are not valid, or a finished run's summary is not what its checkpoints hold (:func:`_check_finished`)."""
    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.train.run_state import option_mismatch, stored_run

    last, best = run_dir / LAST, run_dir / BEST
    complete = summary is not None and bool(summary.get("complete"))
    if complete and not best.is_file():
        raise damaged_run(run_dir / SUMMARY, f"it says the run finished, but the folder has no {BEST}")
    stored_runs, state = [], None  # (checkpoint, its stored options) of last.pt, then of a finished run's best.pt
    if last.is_file():
        ckpt, stored, state = run_checkpoint(last, stored_run)
        stored_runs.append((ckpt, stored))
    if complete:
        ckpt = run_checkpoint(best, load_checkpoint)  # loaded once: its options here, its metrics below
        stored_runs.append((ckpt, _best_options(best, ckpt)))
    each = [_same_backbone_as_recorded(options, ckpt.backbone, summary, stored) for ckpt, stored in stored_runs]
    for (ckpt, stored), same in zip(stored_runs, each, strict=True):
        if stored is not None:
            _refuse_mismatch(run_dir, option_mismatch(stored, ckpt.config, same.to_dict()))
    wanted = each[0] if each else options  # the summary and backbone file: as the first checkpoint recorded them
    if summary is not None:
        keys = SUMMARY_OPTIONS + (("lorm_lr_mult",) if not any(s for _, s in stored_runs) and summary.get("epochs")
                                  else ())
        _refuse_mismatch(run_dir, _summary_mismatch(summary, wanted, keys))
    if stored_runs:
        _check_backbone(run_dir, stored_runs[0][0].backbone, wanted)
    if complete:
        _check_finished(run_dir, summary, stored_runs[-1][0], state, stored_runs[0][1])


def _refuse_mismatch(run_dir: Path, mismatch: tuple[str, Any, Any] | None) -> None:
    """Raise :class:`UsageError` naming the option in which the run in ``run_dir`` differs (none: nothing)."""
    if mismatch is not None:
        key, have, wanted = mismatch
        raise UsageError(f"{run_dir} holds a run trained with {key} = {text_repr(have)}, not {text_repr(wanted)}: pass "
                         "--out with a new folder (or remove that run)")


def _check_finished(run_dir: Path, summary: dict[str, Any], best: Any, state: dict[str, Any] | None,
                    stored: TrainOptions | None) -> None:
    """Raise :class:`CheckFailedError` unless a finished run's summary is what its checkpoints hold: its best epoch
    and that epoch's metrics and offsets (t2v, v2t, two_stage, offsets) those ``best.pt`` (``best``) stored, its
    starting offsets those of ``last.pt``'s training ``state``, and ``last.pt`` (when kept) at the run's last epoch:
    the table reads the summary, so an edited one (or one beside the checkpoints of a killed run) would enter it."""
    path = run_dir / SUMMARY
    if state is not None and stored is not None and state["epoch"] != stored.epochs:
        raise damaged_run(path, f"it says the run finished its {stored.epochs} epochs, but its {LAST} holds epoch "
                                f"{state['epoch']}")
    held = best.extra.get("metrics") if isinstance(best.extra.get("metrics"), dict) else {}
    said = summary.get("best") or {}
    pairs = [("best_epoch", summary.get("best_epoch"), best.extra.get("epoch")),
             ("best.epoch", said.get("epoch"), best.extra.get("epoch")),
             *((f"best.{k}", said.get(k), held.get(k)) for k in ("t2v", "v2t", "two_stage", "offsets"))]
    if state is not None and "offsets_initial" in state:
        pairs.append(("offsets_initial", summary.get("offsets_initial"), state["offsets_initial"]))
    for key, have, kept in pairs:
        if _canonical(have) != _canonical(kept):
            where = LAST if key == "offsets_initial" else BEST
            key, have, kept = _difference(key, have, kept)
            raise damaged_run(path, f"its {key} {short_repr(have)} is not what its {where} holds "
                                    f"({short_repr(kept)})")


def _difference(key: str, have: Any, kept: Any) -> tuple[str, Any, Any]:
    """The first place where two different values differ: ``(dotted key, one value, the other)``, inside the
    mappings both are (``best.t2v`` -> ``best.t2v.R1``)."""
    if isinstance(have, dict) and isinstance(kept, dict):
        for k in sorted(set(have) | set(kept), key=str):
            if _canonical(have.get(k)) != _canonical(kept.get(k)):
                return _difference(f"{key}.{k}", have.get(k), kept.get(k))
    return key, have, kept


def _canonical(value: Any) -> str:
    """``value`` as JSON text with sorted keys: equal for the same plain data read from a checkpoint or from JSON
    (tuples and lists alike; a NaN equals a NaN)."""
    from rap_deploy.atomic import json_text

    return json_text(value, indent=None, sort_keys=True, default=repr)


def _same_backbone_as_recorded(options: TrainOptions, spec: Any, summary: dict[str, Any] | None,
                               stored: TrainOptions | None) -> TrainOptions:
    """``options`` with ``pretrained`` replaced by the run's own path when both name a weights file and the file
    ``options`` names has the sha256 the run's checkpoint recorded: a weights file is known by its content, so runs
    still read back after their world folder moved (the path alone refused them). Otherwise ``options`` unchanged."""
    from rap_deploy.train.run_state import recorded_backbone_at

    recorded = stored.pretrained if stored is not None else (summary or {}).get("pretrained")
    wanted = options.pretrained
    if not isinstance(recorded, str) or recorded == wanted or recorded_backbone_at(spec, wanted) is None:
        return options
    return dataclasses.replace(options, pretrained=recorded)


def _best_options(best: Path, ckpt: Any) -> TrainOptions | None:
    """The training options ``best.pt`` stored (``None`` when it stored none); :class:`CheckFailedError` when they
    are not valid options."""
    stored = ckpt.extra.get("train_options")
    if stored is None:
        return None
    try:
        if not isinstance(stored, dict):
            raise TypeError("not a mapping")
        options = TrainOptions.from_dict(stored)
        options.validate()
    except (TypeError, ValueError, UsageError) as exc:
        raise damaged_run(best, f"its training options are invalid ({shortened(str(exc), 300)})") from None
    return options


def _summary_mismatch(summary: dict[str, Any], options: TrainOptions,
                      keys: tuple[str, ...]) -> tuple[str, Any, Any] | None:
    recorded = {"selection_loss_weight": 0.0, **summary}
    return next(((key, recorded[key], getattr(options, key)) for key in keys
                 if getattr(options, key) is not None and key in recorded and recorded[key] != getattr(options, key)),
                None)


def _check_backbone(run_dir: Path, spec: Any, options: TrainOptions) -> None:
    """A run trained on a backbone file that has since been replaced (pre-trained again) is another recipe's."""
    from rap_deploy.data.cache import file_digest

    path = Path(options.pretrained or "")
    if spec.kind != "file" or not spec.sha256 or not options.pretrained or not path.is_file():
        return
    now = file_digest(path)
    if now != spec.sha256:
        raise UsageError(f"{run_dir} holds a run trained on backbone sha256 {spec.sha256[:12]}…, but {path} is now "
                         f"{now[:12]}… (pre-trained again): pass --out with a new folder (or remove that run)")
