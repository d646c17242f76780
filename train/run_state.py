"""What a training run folder holds and whether it can be continued: the options, state and history stored in its
``last.pt`` (checked as untrusted: a damaged or edited file is named, never trained on), the options a resume may
change, the data it must find again, and ``best.pt`` repaired from ``last.pt`` after a kill between the two writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.name_lists import short_repr, shortened, some_names
from rap_deploy.train.loop import (
    BEST,
    LAST,
    RESUMABLE_OVERRIDES,
    UPDATE_ONLY_OPTIONS,
    TrainOptions,
)
from rap_deploy.train.model_setup import MODEL_OPTIONS
from rap_deploy.workspace import user_path


def _not_resumable(run_dir: Path) -> UsageError:
    """Why ``run_dir`` (a folder without ``last.pt``) cannot be resumed: it holds run folders (the workspace's
    ``runs/``, say: it names them), it is not a run folder at all (it names what it holds), or the run stopped before
    its first epoch ended."""
    from rap_deploy.workspace import RUN_BEST, RUN_METRICS, RUN_SUMMARY

    runs = sorted(str(p.parent) for p in run_dir.glob(f"*/{LAST}"))
    if runs:
        return UsageError(f"cannot resume {run_dir}: it holds training runs, not one; pass one of them: "
                          + some_names(runs, 3))
    foreign = sorted(p.name for p in run_dir.iterdir()
                     if not p.name.startswith(".") and p.name not in (RUN_BEST, RUN_METRICS, RUN_SUMMARY))
    if foreign:
        return UsageError(f"cannot resume {run_dir}: it is not a training run folder (no {LAST}; it holds "
                          f"{some_names(foreign, 3)}); pass the --out folder of an earlier `rapdeploy train`")
    return UsageError(f"cannot resume {run_dir}: it has no {LAST} (the run stopped before its first epoch ended; "
                      "start it again without --resume)")


def load_resume(run_dir: Path, overrides: dict[str, Any]):
    """Options, template checkpoint, model and training state of the run in ``run_dir`` (from its ``last.pt``).

    ``overrides`` may set the :data:`RESUMABLE_OVERRIDES`, and ``pretrained`` to a weights file with the sha256 the
    run's checkpoint recorded (:func:`moved_backbone`); any other key whose value differs from the stored run is a
    :class:`UsageError` (a resumed run keeps its data, model and schedule).
    """
    last = run_dir / LAST
    if not last.is_file():
        raise _not_resumable(run_dir)
    ckpt, options, state = stored_run(last)
    options.out = str(run_dir)
    ckpt, overrides = moved_backbone(ckpt, options, overrides)
    mismatch = option_mismatch(options, ckpt.config, overrides)
    if mismatch is not None:
        raise _resume_mismatch(last, ckpt.backbone, mismatch)
    for name, value in overrides.items():
        if value is not None and name in RESUMABLE_OVERRIDES:
            setattr(options, name, value)
    options.max_epochs_this_run = overrides.get("max_epochs_this_run")  # "in this invocation": never inherited
    extra = {k: v for k, v in ckpt.extra.items() if k != "train_state"}
    template = dataclasses.replace(ckpt, extra=extra)
    _check_backbone_there(run_dir, ckpt)
    try:
        model = ckpt.build_model()
    except UsageError:
        _check_backbone_unchanged(run_dir, ckpt)
        raise
    return options, template, model, state


def _referenced_file(ckpt: Any) -> Any:
    """The backbone spec of ``ckpt`` when it references (does not embed) a weights file of a recorded sha256, else
    ``None``."""
    spec = ckpt.backbone
    return spec if ckpt.backbone_state is None and spec.kind == "file" and spec.sha256 else None


def _resume_command(run_dir: Path, spec: Any) -> str:
    """The command that resumes ``run_dir`` on its backbone file wherever it is now (:func:`moved_backbone`)."""
    import shlex

    return (f"`rapdeploy train --resume {shlex.quote(str(run_dir))} --pretrained FILE` (the file of sha256 "
            f"{spec.sha256[:12]}…)")


def _check_backbone_there(run_dir: Path, ckpt: Any) -> None:
    """Raise :class:`UsageError` when the run's ``last.pt`` references (does not embed) a backbone weights file that
    no longer exists at its recorded path: the checkpoint's own refusal says only to put the file back, where a
    resumed run also takes it where it is now (``--pretrained``, :func:`moved_backbone`). A file there that changed
    is left to the checkpoint's check (it hashes the file once), then :func:`_check_backbone_unchanged`."""
    spec = _referenced_file(ckpt)
    if spec is None or Path(spec.value).exists():
        return
    raise UsageError(f"{run_dir / LAST} references the backbone weights file {spec.value}, which does not exist "
                     f"(moved or deleted): pass it where it is now, {_resume_command(run_dir, spec)}, or put it back "
                     "at that path")


def _check_backbone_unchanged(run_dir: Path, ckpt: Any) -> None:
    """Once building the run's model was refused: raise :class:`UsageError` when the backbone weights file its
    ``last.pt`` references holds other weights now (pre-trained again, or another file put there). The checkpoint's
    refusal says only to put the run's file back; a resumed run also takes that file where it is now. Hashed here
    only on the way to a refusal, so a resume that loads hashes its backbone once."""
    from rap_deploy.data.cache import file_digest

    spec = _referenced_file(ckpt)
    if spec is None or not Path(spec.value).is_file() or file_digest(spec.value) == spec.sha256:
        return
    # the file's own hash is not quoted: the path comes from last.pt, which could name any file to learn its hash
    raise UsageError(f"{run_dir / LAST} references the backbone weights file {spec.value}, which holds other weights "
                     f"now (another sha256): the run was trained on the file of sha256 {spec.sha256[:12]}…; put "
                     f"it back at that path, or pass it where it is now, {_resume_command(run_dir, spec)}") from None


def moved_backbone(ckpt: Any, options: TrainOptions, overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``ckpt`` and ``overrides`` with the backbone file at ``overrides["pretrained"]`` (``options.pretrained`` set to
    it) when that names a weights file of the sha256 ``ckpt`` recorded: the same weights moved (an ablation's world
    folder moved), known by their content; also the recorded path itself, which differs from the stored option when
    the run was started with a relative ``--pretrained``, and the run's own relative text typed again from another
    folder (it names the moved file now). Otherwise both unchanged: another value is compared as any option."""
    spec, wanted = ckpt.backbone, overrides.get("pretrained")
    if not wanted or (wanted == options.pretrained and (spec.kind != "file" or _same_file(wanted, spec.value))):
        return ckpt, overrides
    found = recorded_backbone_at(spec, wanted)
    if found is None:
        return ckpt, overrides
    path = found.resolve()
    options.pretrained = str(path)
    return dataclasses.replace(ckpt, backbone=dataclasses.replace(spec, value=str(path))), \
        {**overrides, "pretrained": str(path)}


def _same_file(typed: str, recorded: str) -> bool:
    """Whether the path ``typed`` (``~`` expanded, relative to the current folder) names the file ``recorded`` (the
    absolute path :meth:`BackboneSpec.parse` stored: never expanded, so a ``~user`` an edited file holds is no
    traceback)."""
    return user_path(typed, "--pretrained").resolve() == Path(recorded).resolve()


def _resume_mismatch(last: Path, spec: Any, mismatch: tuple[str, Any, Any]) -> UsageError:
    """The refusal of an option ``(name, stored value, given value)`` that differs from the run stored in ``last``,
    naming the option as it is typed (``--rank 3``, ``--no-asa``; :func:`option_text`); a ``--pretrained`` other
    than the run's backbone file, by :func:`_other_backbone`."""
    from rap_deploy.train.option_flags import SWITCHES, option_text

    name, stored_value, value = mismatch
    if name == "pretrained" and spec.kind == "file" and spec.sha256:
        return _other_backbone(last, spec, value)
    given = option_text(name, value)
    if stored_value is None:
        stored_text = f"run, started without {given.split()[0]}"
    else:
        stored_text = f"run's {option_text(name, stored_value) if name in SWITCHES else stored_value}"
    return UsageError(f"{given} differs from the resumed {stored_text} (stored in {last}); a resumed run keeps its "
                      "data, model and schedule: drop the option, or start a new run from its last.pt with "
                      "--checkpoint")


def _other_backbone(last: Path, spec: Any, wanted: str) -> UsageError:
    """Why ``--pretrained wanted`` (not a file of the recorded sha256: :func:`moved_backbone` took none) cannot
    resume the run of ``last``, trained on the weights file ``spec`` records. Both files are named with their sha256;
    the fix depends on whether the run's file is still at its recorded path: dropping ``--pretrained`` reads it
    there, and a moved one is passed where it is now."""
    from rap_deploy.data.cache import file_digest

    path = user_path(wanted, "--pretrained")
    held = f"sha256 {file_digest(path)[:12]}…" if path.is_file() else "not a file"
    recorded = f"{spec.value} (sha256 {spec.sha256[:12]}…, stored in {last})"
    if recorded_backbone_at(spec, spec.value) is not None:
        fix = f"drop --pretrained (the run reads {spec.value})"
    else:
        recorded += ", which holds other weights now" if Path(spec.value).exists() else ", which is no longer there"
        fix = f"pass the run's weights file where it is now (--pretrained FILE of sha256 {spec.sha256[:12]}…)"
    return UsageError(f"--pretrained {wanted} ({held}) is not the backbone the resumed run was trained on: "
                      f"{recorded}; a resumed run keeps its backbone: {fix}, or train on other weights in a new run "
                      "(without --resume)")


def recorded_backbone_at(spec: Any, wanted: str | None) -> Path | None:
    """The file ``wanted`` names (``~`` expanded) when ``spec``, the backbone a run's checkpoint recorded, is a
    weights file with a sha256 and ``wanted`` is a regular file of that sha256: the same weights wherever they are now
    (a world folder moved), known by their content. ``None`` otherwise. The one test of "the same backbone at another
    path" for ``train --resume`` (:func:`moved_backbone`) and ``ablate`` (its run folders' check)."""
    from rap_deploy.data.cache import file_digest

    if not wanted or spec.kind != "file" or not spec.sha256:
        return None
    path = user_path(wanted, "--pretrained")
    return path if path.is_file() and file_digest(path) == spec.sha256 else None


def stored_run(last: Path) -> tuple[Any, TrainOptions, dict[str, Any]]:
    """The checkpoint, :class:`TrainOptions` and training state a run stored in its ``last.pt``. Raises
    :class:`UsageError` when the file holds no training state (not written by ``rapdeploy train``), and what loading
    the checkpoint raises."""
    from rap_deploy.checkpoint import load_checkpoint

    ckpt = load_checkpoint(last)
    state = ckpt.extra.get("train_state")
    stored = ckpt.extra.get("train_options")
    if not isinstance(state, dict) or not isinstance(stored, dict):
        raise UsageError(f"{last} holds no training state; it was not written by `rapdeploy train`")
    return ckpt, _stored_options(last, stored), _checked_state(last, state)


def damaged_run(last: Path, what: str) -> CheckFailedError:
    return CheckFailedError(f"{last}: {what}; the file is damaged or was edited: start the run again without --resume "
                            "(or from its best.pt with --checkpoint)")


def _stored_options(last: Path, stored: dict[str, Any]) -> TrainOptions:
    """The run's :class:`TrainOptions`, checked as a new run's are (CheckFailedError: the file says otherwise, its
    reason cut to 300 characters: the options are untrusted and a padded one would make it a megabyte)."""
    try:
        options = TrainOptions.from_dict(stored)
        options.validate()
    except (TypeError, ValueError, UsageError) as exc:
        raise damaged_run(last, f"its training options are invalid ({shortened(str(exc), 300)})") from None
    return options


def _checked_state(last: Path, state: dict[str, Any]) -> dict[str, Any]:
    """``train_state`` with the types and ranges :meth:`TrainingRun.restore` relies on (CheckFailedError)."""
    from rap_deploy import bounds

    for key, high in (("epoch", bounds.MAX_EPOCHS), ("step", bounds.MAX_STEPS), ("total_steps", bounds.MAX_STEPS),
                      ("steps_per_epoch", bounds.MAX_STEPS), ("batch_size", bounds.MAX_BATCH_SIZE)):
        value = state.get(key)
        low = 1 if key == "batch_size" else 0
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise damaged_run(last, f"train_state.{key} {short_repr(value)} is not an integer in [{low}, {high}]")
    if state["step"] > state["total_steps"]:
        raise damaged_run(last, f"train_state.step {state['step']} is past total_steps {state['total_steps']}")
    if not isinstance(state.get("history"), list) or not all(isinstance(r, dict) for r in state["history"]):
        raise damaged_run(last, "train_state.history is not a list of epoch records")
    _check_history(last, state["history"], state["epoch"])
    skipped = state.get("test_skipped")
    if skipped is not None and (not isinstance(skipped, list) or not all(isinstance(v, str) for v in skipped)):
        raise damaged_run(last, "train_state.test_skipped is not a list of test video ids")
    optimizer, rng = state.get("optimizer"), state.get("rng")
    if not isinstance(optimizer, dict) or not {"state", "param_groups"} <= set(optimizer):
        raise damaged_run(last, "train_state.optimizer is not an optimizer state")
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor) or rng["torch"].dtype != torch.uint8:
        raise damaged_run(last, "train_state.rng holds no torch generator state")
    return state


def _check_history(last: Path, history: list[dict[str, Any]], epoch: int) -> None:
    """Raise :class:`CheckFailedError` unless ``history`` holds one record per epoch up to ``epoch`` (from 0 when the
    starting model was evaluated, else from 1) with finite numbers where the resumed run reads them (seconds, the
    recalls of the best.pt selection)."""
    epochs = [r.get("epoch") for r in history]
    if epochs not in (list(range(0, epoch + 1)), list(range(1, epoch + 1))):
        shown = some_names([short_repr(e) for e in epochs])  # the file's values: each cut, so the line stays short
        raise damaged_run(last, f"train_state.history holds epochs [{shown}], not one record per epoch up to its "
                                 f"epoch {epoch}")
    for r in history:
        numbers = [r["seconds"]] if "seconds" in r else []
        for direction in ("t2v", "v2t"):
            if direction in r:
                recalls = r[direction] if isinstance(r[direction], dict) else {}
                numbers += [recalls.get(k) for k in ("R1", "R5", "R10")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise damaged_run(last, f"train_state.history's epoch {r['epoch']} holds seconds or recalls that are "
                                     "not finite numbers")


def option_mismatch(stored: TrainOptions, config: Any, wanted: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first option of ``wanted`` in which a stored run differs: ``(name, stored value, wanted value)``, or
    ``None`` when they agree. ``None`` values, ``out`` and the :data:`RESUMABLE_OVERRIDES` are not compared; the
    :data:`MODEL_OPTIONS` are compared on ``config``, the stored run's model (what a preset resolved them to).
    ``lorm_lr_mult`` is not compared for a model without LoRM, nor the :data:`UPDATE_ONLY_OPTIONS` between two runs
    of zero epochs (the zero-shot row): they change nothing there.
    Raises :class:`UsageError` for a name that is no training option."""
    no_updates = stored.epochs == 0 and wanted.get("epochs") == 0
    for name, value in wanted.items():
        if value is None or name == "out" or name in RESUMABLE_OVERRIDES:
            continue
        if name == "lorm_lr_mult" and not getattr(config, "use_lorm", True):
            continue
        if no_updates and name in UPDATE_ONLY_OPTIONS:
            continue
        if name == "epoch_unit" and value == "auto":  # the stored run resolved it from the same data
            continue
        if not hasattr(stored, name):
            raise UsageError(f"unknown training option '{name}'")
        stored_value = getattr(config, name) if name in MODEL_OPTIONS else getattr(stored, name)
        if stored_value != value:
            return name, stored_value, value
    return None


def restore_best(run_dir: Path, template, model, best: dict[str, Any], epoch: int) -> None:
    """Rewrite ``best.pt`` from ``last.pt``'s weights when ``last.pt`` is the best epoch and ``best.pt`` does not hold
    that epoch's weights: the run was killed between writing ``last.pt`` and ``best.pt`` (or ``best.pt`` was deleted,
    damaged, or left by another run)."""
    from rap_deploy.checkpoint import save_checkpoint

    adapters = {k: v.detach().cpu().clone() for k, v in model.adapter_state_dict().items()}
    if best.get("epoch") == epoch and not _holds_epoch(run_dir / BEST, epoch, adapters):
        save_checkpoint(dataclasses.replace(template, adapter_state=adapters), run_dir / BEST)


def _holds_epoch(path: Path, epoch: int, adapters: dict[str, torch.Tensor]) -> bool:
    """Whether the checkpoint ``path`` records training epoch ``epoch`` with exactly these adapter weights (False
    when it is missing or cannot be read)."""
    from rap_deploy.checkpoint import load_checkpoint

    if not path.is_file():
        return False
    try:
        ckpt = load_checkpoint(path)
    except Exception:  # noqa: BLE001 - damaged or not a checkpoint: rewritten from last.pt
        return False
    held = ckpt.adapter_state
    return ckpt.extra.get("epoch") == epoch and held.keys() == adapters.keys() and \
        all(torch.equal(held[k], adapters[k]) for k in adapters)


def data_fingerprint(dataset: Any, test_split: Any) -> dict[str, Any]:
    """What a resumed run must find again under its ``--data-root``: a sha256 of the training items (video id,
    segment and caption of every usable caption, in order) and of the evaluation split (its videos, captions and
    which video each caption is of), a sha256 of the training videos' content (:func:`_content_digest`: a file
    replaced under its name is other data), with the counts an error message names."""
    import hashlib

    digest = hashlib.sha256()
    train = dataset.split
    for c in dataset.items.tolist():
        v = train.videos[int(train.caption_video[c])]
        digest.update(json.dumps(["train", v.video_id, v.start, v.end, train.captions[c]]).encode())
    for v in test_split.videos:
        digest.update(json.dumps(["test video", v.video_id, v.start, v.end]).encode())
    for caption, v in zip(test_split.captions, test_split.caption_video.tolist(), strict=True):
        digest.update(json.dumps(["test caption", int(v), caption]).encode())
    return {"sha256": digest.hexdigest(), "content_sha256": _content_digest(dataset),
            "train_captions": len(dataset.items), "train_videos": train.num_videos - len(dataset.bad_videos),
            "test_videos": test_split.num_videos, "test_captions": test_split.num_captions}


def _content_digest(dataset: Any) -> str:
    """A sha256 of the content of every usable training video, each file's sha256 as the frame cache keyed it when
    the run decoded the training set (memoised: nothing is read again; ``missing`` for a file gone since). The test
    videos are not read for it: every process would hash them, where only rank 0 evaluates."""
    import hashlib

    from rap_deploy.data.cache import file_digest

    def content(path: Any) -> str:
        try:
            return file_digest(path)
        except OSError:
            return "missing"

    train = dataset.split
    digest = hashlib.sha256()
    for v in sorted({int(train.caption_video[c]) for c in dataset.items.tolist()}):
        digest.update(json.dumps([train.videos[v].video_id, content(train.videos[v].path)]).encode())
    return digest.hexdigest()


def describe_data(d: dict[str, Any]) -> str:
    """The counts of a :func:`data_fingerprint`, as an error message names them."""
    return (f"{d.get('train_captions')} training captions of {d.get('train_videos')} usable videos, "
            f"{d.get('test_captions')} test captions of {d.get('test_videos')} videos")


def check_same_data(stored: Any, now: dict[str, Any], options: TrainOptions) -> None:
    """Raise :class:`UsageError` when a resumed run's data (``now``, :func:`data_fingerprint`) is not what it was
    trained on (``stored`` in ``last.pt``; runs saved before the fingerprint existed hold none and are not checked):
    its remaining epochs would draw other batches and be evaluated on another split."""
    if not isinstance(stored, dict):
        return
    if "content_sha256" not in stored:  # saved before the content was fingerprinted: compared without it
        now = {k: v for k, v in now.items() if k != "content_sha256"}
    if stored == now:
        return

    same_counts = all(stored.get(k) == v for k, v in now.items() if "sha256" not in k)
    other = ", but other videos, captions or undecodable videos" if stored.get("sha256") != now["sha256"] else \
        ", the same videos and captions, but other video content (a file replaced or re-encoded)"
    raise UsageError(f"--data-root {options.data_root} does not hold the data the run in {options.out} was trained "
                     f"on ({describe_data(stored)}; now {describe_data(now)}" + (other if same_counts else "")
                     + "): resume it with the data it was trained on, or start a new run")


def skipped_ids(skipped: list[dict[str, Any]]) -> list[str]:
    """The sorted ids of the test videos an evaluation skipped (its ``skipped`` list: undecodable or missing)."""
    return sorted({str(s["video_id"]) for s in skipped})


def check_same_test_videos(stored: Any, now: list[str], options: TrainOptions) -> None:
    """Raise :class:`UsageError` when the test videos skipped as undecodable ``now`` (:func:`skipped_ids`) are not
    those the run's last evaluation skipped (``stored`` in ``last.pt``; ``None``: none recorded, not checked): its
    remaining epochs would be scored on other test videos than its earlier ones, and ``best.pt`` chosen across both."""
    if stored is None or sorted(stored) == now:
        return

    def named(ids: set[str]) -> str:
        return some_names(sorted(ids)) or "none"

    fixed, broken = named(set(stored) - set(now)), named(set(now) - set(stored))
    raise UsageError(f"the test videos in --data-root {options.data_root} do not decode as they did when the run in "
                     f"{options.out} was last evaluated ({len(stored)} undecodable then, {len(now)} now; decodes now: "
                     f"{fixed}; undecodable now: {broken}): its remaining epochs would be scored on other test videos "
                     "than its earlier ones; resume it with the test videos as they were, or start a new run")
