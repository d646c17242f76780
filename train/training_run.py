"""One training run's state and the named steps :func:`rap_deploy.train.loop.train_rap` runs it through.

:class:`TrainingRun` holds what the steps share (model, optimizer, data, schedule, history, best epoch) so each step
fits on a screen: model, data and schedule, restore, announce, initial evaluation, the epochs, the summary. Only rank 0
writes the run folder; every rank trains and meets at the barriers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.name_lists import short_repr
from rap_deploy.train import distributed as D
from rap_deploy.train.batches import TrainingItems, check_readable, collate_items, epoch_batches, items_per_epoch
from rap_deploy.train.loop import (
    BEST,
    LAST,
    SUMMARY,
    TrainOptions,
    autocast_dtype,
    evaluate_model,
    freeze_offsets_at_zero,
    how_to_continue,
    metrics_record,
    param_groups,
    plain_data,
    restore_rng_state,
    rng_state,
    write_metrics,
)
from rap_deploy.train.losses import batch_loss
from rap_deploy.train.progress import Bars, counted, epoch_line, say
from rap_deploy.train.run_data import load_data, resolve_epoch_unit
from rap_deploy.train.run_state import (
    check_same_data,
    check_same_test_videos,
    data_fingerprint,
    describe_data,
    restore_best,
    skipped_ids,
)
from rap_deploy.train.schedule import cosine_lr, warmup_steps_for
from rap_deploy.train.selection import SELECTION_RULE, best_of, best_trained, improves


class TrainingRun:
    """A run from its options (and, when resuming, the stored ``state``) to its summary."""

    def __init__(self, options: TrainOptions, ctx: D.DistContext, template: Any, model: torch.nn.Module,
                 state: dict[str, Any] | None, show: bool) -> None:
        self.options, self.ctx, self.template, self.model, self.state = options, ctx, template, model, state
        self.show = show
        self.run_dir = Path(options.out)
        self.history: list[dict[str, Any]] = []
        self.best = best_of([])
        self.epoch0, self.step = 0, 0
        self.test_skipped: list[str] | None = None  # test videos the last evaluation skipped (None: none yet)

    # -------------------------------------------------------------------------------------------- set-up steps
    def prepare_model(self) -> None:
        """Model on its device in training mode, frozen parts frozen, optimizer and gradient scaler built."""
        from rap_deploy.model_summary import asa_offsets

        options, model = self.options, self.model.to(self.ctx.device).train()
        self.model = model
        if options.freeze_offsets:
            freeze_offsets_at_zero(model)
        self.offsets_initial = (plain_data(asa_offsets(model)) if self.state is None
                                else self.state.get("offsets_initial"))
        self.params = [p for _, p in model.trained_parameters()]
        if not self.params:
            raise UsageError("the model has no trainable adapter (LoRM and ASA both disabled)")
        D.broadcast_parameters(self.params, self.ctx)
        self.optimizer = torch.optim.AdamW(param_groups(model, options.weight_decay, options.offset_lr_mult,
                                                        options.lorm_lr_mult),
                                           lr=options.lr)
        self.amp_dtype = autocast_dtype(options.amp, self.ctx.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def prepare_data(self) -> None:
        """Training items and test split loaded; the epoch unit, global batch and steps per epoch decided."""
        from rap_deploy.data.cache import FrameCache

        options, ctx = self.options, self.ctx
        self.cache = FrameCache(options.cache_dir) if options.cache_dir else FrameCache.default(options.workspace)
        self.dataset, self.test_split = load_data(options, self.model.config, self.cache, ctx, self.show)
        self.data_id = data_fingerprint(self.dataset, self.test_split)
        _check_same_data_on_every_rank(self.data_id, ctx)
        self.item_video = np.asarray(self.dataset.split.caption_video)[self.dataset.items]
        options.epoch_unit = resolve_epoch_unit(options.epoch_unit, self.item_video)
        per_epoch = items_per_epoch(self.item_video, options.epoch_unit)
        if per_epoch < ctx.world_size:  # not one step: the run would "train" 0 steps per epoch and report loss 0
            raise UsageError(f"an epoch holds {per_epoch} training item(s) ({options.epoch_unit}s), fewer than the "
                             f"{ctx.world_size} processes: a step needs one per process; train with fewer processes "
                             "or more training videos")
        if per_epoch < 2 and options.epochs > 0:  # the contrastive loss of one item is 0: no step would train
            raise UsageError(f"an epoch holds {per_epoch} training item ({options.epoch_unit}s), and the contrastive "
                             "loss of a batch of one is always 0: nothing would train; train on more videos (raise "
                             "--max-train-videos or add videos to the training split)")
        batch = options.batch_size
        if per_epoch < batch:
            batch = max(ctx.world_size, per_epoch - per_epoch % ctx.world_size)
            say(self.show, f"[yellow]batch size {options.batch_size} exceeds the {per_epoch} training items per "
                           f"epoch; using {batch}[/]")
        _check_batch_splits(batch, ctx, f"--batch-size {batch} (the global batch)",
                            "pass another --batch-size or process count")
        self.batch, self.per_epoch = batch, per_epoch
        self.steps_per_epoch = per_epoch // batch
        self.total_steps = options.epochs * self.steps_per_epoch

    def restore(self) -> None:
        """When resuming: optimizer, scaler, RNG, schedule and history as the stored run left them."""
        state = self.state
        if state is not None:
            check_same_data(state.get("data"), self.data_id, self.options)
            mismatch = schedule_mismatch(state, self.options, self.per_epoch)
            if mismatch is not None:
                raise self.state_does_not_fit(mismatch)
            self.load_optimizer_state(state)
            self.epoch0, self.step = int(state["epoch"]), int(state["step"])
            self.total_steps = int(state["total_steps"])
            self.steps_per_epoch = int(state["steps_per_epoch"])
            self.batch = int(state["batch_size"])
            _check_batch_splits(self.batch, self.ctx, f"the resumed run's global batch of {self.batch}",
                                f"resume it with a process count that divides {self.batch}")
            self.history = list(state["history"])
            self.best = best_of(self.history)
            self.test_skipped = state.get("test_skipped")
            if self.ctx.is_main:
                self.check_test_videos()
                write_metrics(self.run_dir, self.history)
                restore_best(self.run_dir, self.template, self.model, self.best, self.epoch0)
        self.warmup_steps = warmup_steps_for(self.options.warmup, self.total_steps)

    def check_test_videos(self) -> None:
        """When the stored run's last evaluation recorded the test videos it skipped: decode the test split (into the
        frame cache the next evaluation reads) and refuse other ones (:func:`check_same_test_videos`)."""
        from rap_deploy.retrieval import usable_videos

        if self.test_skipped is not None:
            _, skipped = usable_videos(self.test_split, self.cache, self.model.config, self.show)
            check_same_test_videos(self.test_skipped, skipped_ids(skipped), self.options)

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Optimizer, gradient scaler and random generators as ``state`` stored them; :class:`CheckFailedError` when
        they do not fit this model and this torch (the types were checked by ``stored_run``)."""
        try:
            mismatch = optimizer_mismatch(state["optimizer"], self.optimizer)
            if mismatch is not None:
                raise self.state_does_not_fit(mismatch)
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler.is_enabled() and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            restore_rng_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise self.state_does_not_fit(str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__) \
                from None

    def state_does_not_fit(self, what: str) -> CheckFailedError:
        """The error (exit 1) for a ``last.pt`` whose training state does not fit this run: ``what`` says how."""
        return CheckFailedError(f"{self.run_dir / LAST}: its training state does not fit the run ({what}); the file "
                                "is damaged or was edited: start the run again without --resume")

    def announce(self) -> None:
        """One line: what is trained on what, with how many parameters and steps."""
        options, ctx, dataset = self.options, self.ctx, self.dataset
        counts = self.model.parameter_counts()
        videos = dataset.split.num_videos - len(dataset.bad_videos)
        say(self.show, f"training {self.model.config.variant} on {options.dataset} ({counted(len(dataset), 'caption')} "
                       f"of {counted(videos, 'video')}, {len(dataset.bad_videos)} skipped), "
                       f"{counts['trainable_params']:,} trainable of {counts['total_params']:,} parameters, "
                       f"{counted(options.epochs, 'epoch')} × {counted(self.steps_per_epoch, 'step')} of {self.batch}, "
                       f"world size {ctx.world_size}, {ctx.device}"
                       + (f", resuming after epoch {self.epoch0}" if self.state is not None else ""))

    # ------------------------------------------------------------------------------------------ per-epoch steps
    def evaluate(self) -> dict[str, Any] | None:
        """Test-split metrics on rank 0 (None elsewhere); every rank waits for them."""
        result = None
        if self.ctx.is_main:
            result = evaluate_model(self.model, self.test_split, self.cache, self.options, self.ctx, self.show)
        D.barrier(self.ctx)
        return result

    def record(self, epoch: int, loss: float | None, lr: float, seconds: float, items: int,
               result: dict[str, Any] | None) -> dict[str, Any]:
        """Append the epoch's ``metrics.jsonl`` line, keep the best epoch, write ``best.pt``/``last.pt`` (rank 0)."""
        rec = metrics_record(epoch, self.step, loss, lr, seconds, items, result, self.model,
                             len(self.dataset.bad_videos))
        self.history.append(rec)
        if result is not None:
            self.test_skipped = skipped_ids(result["skipped"])
        is_best = improves(rec.get("selection_score"), self.best["score"])
        if is_best:
            self.best = best_of(self.history)
        self.save(epoch, rec, is_best)
        return rec

    def save(self, epoch: int, record: dict[str, Any], is_best: bool) -> None:
        """``last.pt`` with the training state, then ``best.pt`` when the epoch is the best so far, then metrics.

        ``last.pt`` comes first: a run killed before ``best.pt`` is written resumes after this epoch and
        :func:`~rap_deploy.train.run_state.restore_best` writes ``best.pt`` from it. (Written the other way round, a
        kill between the two left this epoch's ``best.pt`` beside the previous ``last.pt``; the resumed run trained the
        epoch again, and where the replay was not bit-identical (CUDA kernels, another ``--device``) and no longer
        the best, ``best.pt`` kept weights that ``summary.json`` did not name.)
        """
        from rap_deploy.checkpoint import checkpoint_from_model, save_checkpoint

        options = self.options
        extra = {"epoch": epoch, "step": self.step, "metrics": record, "train_options": options.to_dict(),
                 "source": self.template.extra.get("source", options.checkpoint or options.clip)}
        train_state = {"epoch": epoch, "step": self.step, "total_steps": self.total_steps, "batch_size": self.batch,
                       "steps_per_epoch": self.steps_per_epoch, "optimizer": self.optimizer.state_dict(),
                       "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}, "rng": rng_state(),
                       "data": self.data_id, "history": self.history, "best": self.best,
                       "test_skipped": self.test_skipped,
                       "offsets_initial": self.offsets_initial}
        save_checkpoint(checkpoint_from_model(self.model, self.template, {**extra, "train_state": train_state}),
                        self.run_dir / LAST)
        if is_best:
            save_checkpoint(checkpoint_from_model(self.model, self.template, extra), self.run_dir / BEST)
        write_metrics(self.run_dir, self.history)

    def evaluate_initial(self) -> None:
        """The epoch-0 evaluation (the identity adapters: zero-shot) of a fresh run that asks for it."""
        if self.state is None and (self.options.epochs == 0 or self.options.eval_initial):
            result = self.evaluate()
            if self.ctx.is_main:
                say(self.show, epoch_line(self.record(0, None, 0.0, 0.0, 0, result), self.options.epochs))

    def train_epoch(self, epoch: int, bar: Bars) -> tuple[float, float, int]:
        """One epoch of optimizer steps; returns the mean loss, the last learning rate and the number of batches."""
        options = self.options
        batches = epoch_batches(self.item_video, self.batch, options.seed, epoch, options.epoch_unit)
        local = [D.shard(b, self.ctx) for b in batches]
        video_ids = [torch.as_tensor(self.item_video[b], dtype=torch.int64) for b in batches]
        loader = torch.utils.data.DataLoader(TrainingItems(self.dataset), batch_sampler=local,
                                             num_workers=options.num_workers, collate_fn=collate_items)
        loss_sum, lr = 0.0, options.lr
        for i, items in enumerate(loader):
            check_readable(items, epoch, self.resume_line)
            lr = cosine_lr(self.step, self.total_steps, options.lr, self.warmup_steps, options.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
            loss = self.optimizer_step(items, video_ids[i])
            loss_sum += loss
            self.step += 1
            bar.advance(loss, self.batch)
        return loss_sum / max(1, len(batches)), lr, len(batches)

    def resume_line(self) -> str:
        """How to continue this run after it stopped: resume from ``last.pt``, or (none written yet) start again."""
        return how_to_continue(self.run_dir)

    def optimizer_step(self, items: dict[str, Any], video_ids: torch.Tensor) -> float:
        """One optimizer step on this process's share of a global batch (:func:`_step`); returns the global loss.
        Raises :class:`UsageError` naming the batch when the device runs out of memory (torch's OutOfMemoryError
        was a traceback)."""
        try:
            return _step(self.model, items, video_ids, self.params, self.optimizer, self.scaler, self.amp_dtype,
                         self.options, self.ctx)
        except torch.OutOfMemoryError:
            per = self.batch // self.ctx.world_size
            raise UsageError(f"{self.ctx.device} ran out of memory in a training step of {per} videos x "
                             f"{self.model.config.frames} frames per process (global batch {self.batch}); free the "
                             "device, or start a new run with a smaller --batch-size (or --amp bf16/fp16 on CUDA): a "
                             "resumed run keeps its batch") from None

    def check_finite(self, epoch: int, loss: float) -> None:
        """Raise :class:`CheckFailedError` when an adapter weight is NaN or infinite after ``epoch`` (the run
        diverged), before anything of that epoch is written: an epoch that is not evaluated (``eval_every``, or
        ``max_epochs_this_run`` stopping first) used to write such weights into ``last.pt`` and train on."""
        if not all(bool(torch.isfinite(p).all()) for p in self.params):
            raise CheckFailedError(f"training diverged in epoch {epoch}: adapter weights are NaN or infinite (the "
                                   f"epoch's mean loss: {loss:g}); lower --lr (now {self.options.lr:g}) "
                                   f"or check the --checkpoint it started from (nothing of epoch {epoch} was written)")

    def train_epochs(self) -> float:
        """Every remaining epoch (up to ``max_epochs_this_run``), evaluated every ``eval_every`` and at the end;
        returns the training seconds of the whole run so far."""
        options = self.options
        train_seconds = sum(r.get("seconds", 0.0) for r in self.history)
        stop_at = options.epochs if options.max_epochs_this_run is None else \
            min(options.epochs, self.epoch0 + options.max_epochs_this_run)
        bar = Bars(self.show, options.epochs, self.epoch0, self.steps_per_epoch)
        with bar:
            for epoch in range(self.epoch0 + 1, stop_at + 1):
                t0 = time.perf_counter()
                bar.start_epoch(epoch)
                loss, lr, batches = self.train_epoch(epoch, bar)
                self.check_finite(epoch, loss)
                seconds = time.perf_counter() - t0
                train_seconds += seconds
                evaluate_this = epoch % options.eval_every == 0 or epoch == options.epochs
                result = self.evaluate() if evaluate_this else None
                if self.ctx.is_main:
                    bar.log(epoch_line(self.record(epoch, loss, lr, seconds, batches * self.batch, result),
                                       options.epochs))
                D.barrier(self.ctx)
                bar.end_epoch()
        return train_seconds

    # --------------------------------------------------------------------------------------------------- the end
    def write_summary(self, t_start: float, train_seconds: float) -> dict[str, Any]:
        """The run's ``summary.json`` (written by rank 0) and return value."""
        options, config, history = self.options, self.model.config, self.history
        done = history[-1]["epoch"] if history else self.epoch0
        summary = {
            "run_dir": str(self.run_dir), "dataset": options.dataset, "variant": config.variant,
            "adapters": config.adapters, "clip": config.clip,
            "pretrained": options.pretrained, "epochs": options.epochs, "epochs_done": done,
            "selection_loss_weight": options.selection_loss_weight, "lorm_lr_mult": options.lorm_lr_mult,
            "complete": done >= options.epochs,
            "steps": self.step, "batch_size": self.batch, "world_size": self.ctx.world_size,
            "device": self.ctx.device, "train_seconds": round(train_seconds, 3),
            "wall_seconds": round(time.perf_counter() - t_start, 3),
            **self.model.parameter_counts(), "train_captions": len(self.dataset),
            "skipped_videos": self.dataset.bad_videos, "test_split": options.test_split,
            "test_skipped_videos": self.test_skipped or [],
            "best_epoch": self.best["epoch"],
            "best_is_initial": self.best["epoch"] == 0,  # best.pt holds the starting model's weights (selection.py)
            "best_trained": best_trained(history),
            "selection_rule": SELECTION_RULE, "offsets_initial": self.offsets_initial,
            "best": next((r for r in history if r["epoch"] == self.best["epoch"]), None),
            "last": history[-1] if history else None,
            "resumed_after_epoch": self.epoch0 if self.state is not None else None,
        }
        if self.ctx.is_main:
            from rap_deploy.atomic import write_json_atomic

            write_json_atomic(self.run_dir / SUMMARY, summary)
        return summary


def _check_same_data_on_every_rank(data_id: dict[str, Any], ctx: D.DistContext) -> None:
    """Raise :class:`UsageError` on every rank when the processes prepared different training or test data (each
    node reads its own --data-root: a copy lacking or holding another video). Their epochs would hold other items
    and other step counts: a rank that finished its epoch waited for the others at a collective, up to the process
    group's 24 h timeout."""
    import json

    seen = D.gather_strings(json.dumps(data_id, sort_keys=True), ctx)
    other = [rank for rank, value in enumerate(seen) if value != seen[0]]
    if other:
        ours, theirs = json.loads(seen[0]), json.loads(seen[other[0]])
        same = "; the same counts, other videos, captions or content" if describe_data(ours) == \
            describe_data(theirs) else ""
        raise UsageError(f"the training processes read different data: process 0 found {describe_data(ours)}, "
                         f"process {other[0]} {describe_data(theirs)}{same} ({len(other)} of {len(seen)} processes "
                         "differ from process 0); every node must hold the same --data-root (check each with "
                         "`rapdeploy data-check`)")


def schedule_mismatch(state: dict[str, Any], options: TrainOptions, per_epoch: int) -> str | None:
    """How a stored ``train_state``'s global batch, steps per epoch or total steps differ from what the run's stored
    ``options`` give on an epoch of ``per_epoch`` training items (:meth:`TrainingRun.prepare_data`), else ``None``.

    The batch is ``--batch-size`` unless an epoch holds fewer items; then it was capped to at most ``per_epoch`` (by
    the process count of the run that stored it, which a resumed run may not share, so any such cap is accepted).
    """
    batch = state["batch_size"]
    if options.batch_size <= per_epoch and batch != options.batch_size:
        return f"train_state.batch_size {batch} is not the run's --batch-size {options.batch_size}"
    low = min(2, per_epoch)  # a capped batch is 2 or more: an epoch of one item only evaluates (--epochs 0)
    if not low <= batch <= per_epoch:
        return f"train_state.batch_size {batch} is not in [{low}, {per_epoch}] (the training items per epoch)"
    steps = per_epoch // batch
    if state["steps_per_epoch"] != steps:
        return (f"train_state.steps_per_epoch {state['steps_per_epoch']} is not the {steps} steps of {batch} an epoch "
                f"of {per_epoch} items makes")
    if state["total_steps"] != options.epochs * steps:
        return (f"train_state.total_steps {state['total_steps']} is not the {options.epochs * steps} steps of "
                f"{options.epochs} epoch(s)")
    return None


def optimizer_mismatch(stored: dict[str, Any], optimizer: torch.optim.Optimizer) -> str | None:
    """How a stored optimizer state does not fit ``optimizer``'s parameters (``load_state_dict`` checks only the
    group sizes: a moment of another shape failed the first step with a size-mismatch traceback), else ``None``.

    Every tensor of a parameter's state but its ``step`` must be a dense floating-point tensor of the parameter's
    shape; ``step`` one number. Raises ``TypeError`` or ``KeyError`` for a state not laid out as torch writes it.
    """
    groups = stored["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        return f"its optimizer state has {short_repr(len(groups) if isinstance(groups, list) else groups)} parameter " \
               f"groups, the model {len(optimizer.param_groups)}"
    params: dict[Any, torch.Tensor] = {}
    for saved, group in zip(groups, optimizer.param_groups, strict=True):
        if not isinstance(saved["params"], list) or len(saved["params"]) != len(group["params"]):
            return "its optimizer state's parameter groups are not the model's"
        params.update(zip(saved["params"], group["params"], strict=True))
    for key, entry in dict(stored["state"]).items():
        if key not in params or not isinstance(entry, dict):
            return f"its optimizer state names parameter {short_repr(key)}, which the model does not have"
        for name, value in entry.items():
            wrong = _wrong_moment(value, params[key], name == "step")
            if wrong:
                return f"the optimizer's {short_repr(name)} of parameter {short_repr(key)} is {wrong}"
    return None


def _wrong_moment(value: Any, param: torch.Tensor, step: bool) -> str | None:
    """What is wrong with one stored optimizer value for ``param`` (a step count when ``step``), else ``None``."""
    if not isinstance(value, torch.Tensor):
        ok = step and isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"a {type(value).__name__}, not a tensor"
    if value.layout != torch.strided or value.is_meta or not value.is_floating_point():
        return f"a {str(value.layout).removeprefix('torch.')} tensor of {str(value.dtype).removeprefix('torch.')}"
    if step and value.numel() != 1:
        return f"a tensor of shape {tuple(value.shape)}, not one number"
    if not step and value.shape != param.shape:
        return f"of shape {tuple(value.shape)}, the parameter's {tuple(param.shape)}"
    return None


def _check_batch_splits(batch: int, ctx: D.DistContext, what: str, fix: str) -> None:
    """Raise :class:`UsageError` unless the global ``batch`` splits evenly over the processes (``what`` names it,
    ``fix`` says what to change).

    A resumed run keeps the global batch it stored, which a small training set may have set below --batch-size (to
    the items of one epoch); resumed under another process count it may not split.
    """
    if batch % ctx.world_size:
        raise UsageError(f"{what} must be a multiple of the {ctx.world_size} processes; {fix}")


def _step(model, items: dict[str, Any], video_ids: torch.Tensor, params: list[torch.nn.Parameter], optimizer,
          scaler, amp_dtype: torch.dtype | None, options: TrainOptions, ctx: D.DistContext) -> float:
    """One optimizer step on a (local share of a) global batch; returns the global loss."""
    dev = ctx.device
    frames = items["frames"].to(dev, non_blocking=True)
    mask = items["frame_mask"].to(dev)
    ids, eot = items["ids"].to(dev), items["eot"].to(dev)
    video_ids = video_ids.to(dev)  # the duplicate-caption mask is built on the logits' device
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=amp_dtype, enabled=amp_dtype is not None) if amp_dtype is not None \
            else _nullcontext():
        loss = batch_loss(model, frames, mask, ids, eot, video_ids, ctx, options.selection_loss_weight)
    scaler.scale(loss).backward()
    D.all_reduce_gradients(params, ctx)
    if options.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return float(D.all_reduce_sum(loss.detach(), ctx))


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
