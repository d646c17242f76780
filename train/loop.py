"""RAP fine-tuning: the training loop, per-epoch evaluation, ``best.pt`` / ``last.pt`` / ``metrics.jsonl``, resume.

Only the adapter parameters are optimized (AdamW, warm-up then cosine, gradient clipping); the backbone stays frozen
and in eval mode. Everything that decides the outcome is a function of the options and the seed, so a run that is
killed and resumed from ``last.pt`` (model, optimizer, schedule step, RNG, epoch) ends where the uninterrupted run
ends. Files are written by rank 0 only, atomically, in the order ``last.pt`` → ``best.pt`` → ``metrics.jsonl``; on
resume ``metrics.jsonl`` is rewritten from the history stored in ``last.pt``, and ``best.pt`` from ``last.pt`` when
it is the best epoch and ``best.pt`` does not hold it, so a kill between two writes loses nothing and duplicates
nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rap_deploy.errors import CheckFailedError, UsageError, note_how_to_resume
from rap_deploy.name_lists import short_repr
from rap_deploy.train import distributed as D
from rap_deploy.train.batches import EPOCH_UNITS
from rap_deploy.train.params import (  # noqa: F401  (OFFSETS: also used from here)
    OFFSETS,
    freeze_offsets_at_zero,
    param_groups,
)
from rap_deploy.train.selection import selection_score
from rap_deploy.workspace import RUN_BEST as BEST
from rap_deploy.workspace import RUN_LAST as LAST
from rap_deploy.workspace import RUN_METRICS as METRICS
from rap_deploy.workspace import RUN_SUMMARY as SUMMARY

# Options a resumed run may change without changing the outcome.
RESUMABLE_OVERRIDES = ("data_root", "cache_dir", "num_workers", "max_epochs_this_run", "device", "workspace")
# Options that only shape the optimizer's updates: a run of zero epochs made none.
UPDATE_ONLY_OPTIONS = ("lr", "weight_decay", "offset_lr_mult", "lorm_lr_mult", "selection_loss_weight", "warmup",
                       "min_lr_ratio", "grad_clip")


# Why an integer option has the lower bound it has, said when a value below it is refused.
_INT_FIXES = {"batch_size": "the contrastive loss of a batch of one item is always 0: nothing would train"}


@dataclass
class TrainOptions:
    """Everything that defines a training run (stored in ``last.pt`` so ``--resume`` can continue it).

    Model: ``checkpoint`` (a RAP checkpoint to fine-tune) or ``clip`` + ``pretrained`` (+ the adapter options) to
    start from identity adapters; ``None`` adapter options take the ``RAPConfig`` defaults, ``None`` ``frames`` /
    ``context_length`` the dataset's protocol (12/32 for MSR-VTT and MSVD, 64/64 for DiDeMo and ActivityNet).
    ``preset`` (``default``/``paper``, :func:`rap_deploy.config.preset_changes`) sets adapter sizes before the
    explicit adapter options. ``warmup`` < 1 is a fraction of all steps, >= 1 a step count. ``offset_lr_mult``
    multiplies the learning rate of the ASA offsets γ/δ, ``lorm_lr_mult`` that of LoRM's factors;
    ``freeze_offsets`` sets them to zero and keeps them there
    (the ablation of the warp). ``selection_loss_weight`` adds that many times the selection alignment loss
    (:func:`rap_deploy.train.losses.patch_alignment`; 0, the default, is the contrastive loss alone).
    ``epoch_unit`` ``video`` draws one caption per video per epoch, ``caption`` visits every caption (CLIP4Clip's
    MSR-VTT recipe), ``auto`` (default) is ``caption`` when the training split has more captions than videos, else
    ``video``. ``epochs=0`` only evaluates the starting model.
    ``max_epochs_this_run`` stops this invocation early (the schedule still spans ``epochs``; continue with resume).
    """

    dataset: str
    data_root: str
    out: str
    checkpoint: str | None = None
    clip: str | None = None
    pretrained: str | None = None
    variant: str | None = None
    use_lorm: bool | None = None
    use_asa: bool | None = None
    lorm_rank: int | None = None
    asa_topk: int | None = None
    asa_heads: int | None = None
    asa_dim: int | None = None
    asa_selection: str | None = None
    frames: int | None = None
    context_length: int | None = None
    preset: str | None = None
    embed_backbone: bool | None = None
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    offset_lr_mult: float = 10.0
    lorm_lr_mult: float = 1.0
    freeze_offsets: bool = False
    selection_loss_weight: float = 0.0
    warmup: float = 0.1
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 1
    eval_initial: bool = False
    max_train_videos: int | None = None
    max_test_videos: int | None = None
    epoch_unit: str = "auto"
    test_split: str = "test"
    top_m: int = 100
    num_workers: int = 0
    amp: str = "auto"
    device: str = "auto"
    cache_dir: str | None = None
    workspace: str | None = None
    max_epochs_this_run: int | None = None

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the bad value (NaN, infinities and values beyond
        :mod:`rap_deploy.bounds` included), before anything is built or allocated."""
        from rap_deploy import bounds

        ints = {"batch_size": (2, bounds.MAX_BATCH_SIZE), "eval_every": (1, bounds.MAX_EPOCHS),
                "top_m": (1, bounds.MAX_VIDEOS), "epochs": (0, bounds.MAX_EPOCHS), "num_workers": (0, 256),
                "max_train_videos": (1, bounds.MAX_VIDEOS), "max_test_videos": (1, bounds.MAX_VIDEOS),
                "max_epochs_this_run": (1, bounds.MAX_EPOCHS), "seed": (0, bounds.MAX_SEED),
                "frames": (1, bounds.MAX_FRAMES), "context_length": (2, bounds.MAX_CONTEXT_LENGTH)}
        for name, (low, high) in ints.items():
            if getattr(self, name) is not None:
                bounds.check_int(getattr(self, name), f"--{name.replace('_', '-')}", low, high,
                                 fix=_INT_FIXES.get(name, ""))
        bounds.check_float(self.lr, "--lr", 0.0, bounds.MAX_LR, low_open=True)
        bounds.check_float(self.weight_decay, "--weight-decay", 0.0, 100.0)
        bounds.check_float(self.warmup, "--warmup", 0.0, float(bounds.MAX_STEPS))
        bounds.check_float(self.grad_clip, "--grad-clip", 0.0, 1e6, fix="0 turns clipping off")
        bounds.check_float(self.min_lr_ratio, "min_lr_ratio", 0.0, 1.0)
        bounds.check_float(self.offset_lr_mult, "--offset-lr-mult", 0.0, 1e6, low_open=True)
        bounds.check_float(self.lorm_lr_mult, "--lorm-lr-mult", 0.0, 1e6, low_open=True)
        bounds.check_float(self.selection_loss_weight, "--selection-loss-weight", 0.0, 100.0,
                           fix="0 trains with the contrastive loss alone")
        if self.epoch_unit not in ("auto", *EPOCH_UNITS):
            raise UsageError(f"epoch unit {short_repr(self.epoch_unit)} is unknown; use auto, {', '.join(EPOCH_UNITS)}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):  # both may come from a resumed run's untrusted last.pt
            raise UsageError(f"--amp {short_repr(self.amp)} is unknown; use auto, bf16, fp16 or off")
        if self.max_train_videos is not None and self.max_train_videos < 1:
            raise UsageError(f"--max-train-videos must be >= 1, got {self.max_train_videos}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def autocast_dtype(amp: str, device: str) -> torch.dtype | None:
    """The autocast dtype for ``amp`` (off, fp16, bf16 or auto) on ``device``: None off CUDA or for ``off``; ``auto``
    picks bf16 where supported, else fp16. Raises nothing."""
    if not device.startswith("cuda") or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# ------------------------------------------------------------------------------------------------ checkpoints


def rng_state() -> dict[str, Any]:
    """The random generators' states to save in ``last.pt``: ``torch`` (the CPU generator's) and, when CUDA is
    available, ``cuda`` (one per visible GPU); :func:`restore_rng_state` restores them. Raises nothing."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators :func:`rng_state` saved; returns None. ``cuda`` holds one state per GPU the saving
    process saw; a process that sees fewer (another node, ``CUDA_VISIBLE_DEVICES``) restores those it has (torch's
    ``set_rng_state_all`` raised IndexError for the others). Raises KeyError when ``state`` has no ``torch``."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(list(state["cuda"])[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Write ``history`` (one record per epoch) to ``run_dir``'s ``metrics.jsonl``, one sorted JSON object a line,
    atomically; returns None. Raises OSError when the folder cannot be written."""
    from rap_deploy.atomic import json_text, write_text_atomic

    write_text_atomic(run_dir / METRICS, "".join(json_text(r, indent=None, sort_keys=True) + "\n" for r in history))


def plain_data(obj: Any) -> Any:
    """``obj`` after a JSON round trip: metric dicts become plain Python data (safe for ``weights_only``
    checkpoints), numbers JSON cannot hold (numpy, tensors) as floats. Raises TypeError or ValueError for what
    float() refuses."""
    return json.loads(json.dumps(obj, default=float))


# ------------------------------------------------------------------------------------------------ evaluation


def _asa_is_identity(model) -> bool:
    """True when the ASA head cannot change a similarity: its output projection is exactly zero (as at
    initialisation), so the text-conditioned embedding is the mean of the frame embeddings, i.e. meanP."""
    proj = getattr(getattr(model, "asa", None), "out_proj", None)
    return proj is not None and not bool(proj.weight.any()) and (proj.bias is None or not bool(proj.bias.any()))


def evaluation_encoder(model: torch.nn.Module, device: Any = "cpu") -> Any:
    """The :class:`~rap_deploy.model_encoder.ModelEncoder` to evaluate ``model`` with on ``device``.

    An identity ASA head (zero output projection, e.g. the epoch-0 evaluation) scores every pair exactly as meanP
    does, so for such a model the encoder is one without the head: its full and two-stage similarities are then
    computed as meanP, without running the head on every pair.
    """
    from rap_deploy.graphs import video_outputs
    from rap_deploy.model_encoder import ModelEncoder

    class MeanPEncoder(ModelEncoder):
        has_asa = False

        def encode_video(self, frames, frame_mask=None):  # the outputs of a model without ASA head
            return super().encode_video(frames, frame_mask)[:len(video_outputs(False))]

    return (MeanPEncoder if _asa_is_identity(model) else ModelEncoder)(model, device=device)


def evaluate_model(model, test_split, cache, options: TrainOptions, ctx: D.DistContext,
                   progress: bool) -> dict[str, Any]:
    """The test-split metrics of ``model`` (full ASA, two-stage, meanP; :func:`rap_deploy.retrieval.evaluate`) with
    :func:`evaluation_encoder`, leaving the model in the train/eval mode it was in. Raises
    :class:`CheckFailedError` when the scores are not finite (training diverged)."""
    from rap_deploy.metrics import NonFiniteScoresError
    from rap_deploy.retrieval import evaluate

    was_training = model.training
    try:
        result = evaluate(evaluation_encoder(model, ctx.device), test_split, cache, top_m=options.top_m,
                          progress=progress)
    except NonFiniteScoresError as exc:
        raise CheckFailedError(f"training diverged: the model's test {exc}; lower --lr (now {options.lr:g}) or "
                               "check the --checkpoint it started from") from None
    model.train(was_training)
    return result


def metrics_record(epoch: int, step: int, loss: float | None, lr: float, seconds: float, train_items: int,
                   result: dict[str, Any] | None, model: torch.nn.Module, train_skipped: int = 0) -> dict[str, Any]:
    """One ``metrics.jsonl`` record as plain data (:func:`plain_data`): schedule, loss, the training videos skipped
    as undecodable, metrics, the selection score, the ASA offsets and LoRM's size. Raises KeyError when ``result``
    lacks a section :func:`evaluate_model` returns."""
    from rap_deploy.model_summary import asa_offsets, lorm_modulation

    rec: dict[str, Any] = {"epoch": epoch, "step": step, "loss": loss, "lr": lr, "seconds": round(seconds, 3),
                           "train_items": train_items, "train_skipped": train_skipped}
    if result is not None:
        rec.update(t2v=result["asa"]["t2v"], v2t=result["asa"]["v2t"], two_stage=result["two_stage"],
                   meanp=result["meanp"], eval_seconds=result["seconds"], test_videos=result["videos"],
                   test_captions=result["captions"], test_skipped=len(result["skipped"]))
        rec["selection_score"] = selection_score(rec)
    rec.update(offsets=asa_offsets(model), lorm=lorm_modulation(model))
    return plain_data(rec)


# ------------------------------------------------------------------------------------------------ the loop


def train_rap(options: TrainOptions | None, progress: bool = True, resume: str | Path | None = None,
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train RAP as ``options`` say, or continue the run in the folder ``resume``; returns the run summary.

    Writes ``best.pt`` (the evaluated epoch chosen by :data:`~rap_deploy.train.selection.SELECTION_RULE`: the
    highest t2v RSum + v2t RSum, later epoch on ties; with ``--eval-initial`` (or ``--epochs 0``) the starting model,
    epoch 0, is a candidate too, so ``best.pt`` may hold the starting weights), ``last.pt`` (with the training state)
    and ``metrics.jsonl`` (one line per epoch: epoch, step, loss, lr, seconds, train_skipped (training videos skipped
    as undecodable; named in ``summary.json``), t2v, v2t, two_stage, meanp, selection_score, the ASA offsets γ/δ and
    LoRM's distance from the identity) into ``options.out`` (rank 0 only), and ``summary.json`` at the end.

    Resuming reads the options stored in ``resume/last.pt``; ``overrides`` (explicitly given values) may change only
    where the data and cache live, the workers, the device and ``max_epochs_this_run``; any other value that differs
    from the stored run is an error. When ``resume`` has no ``last.pt`` yet (killed during the first epoch) and
    ``options`` is given, the run starts from scratch in that folder; a new run (no ``resume``) whose ``out`` holds
    a ``last.pt`` is refused.
    Raises :class:`UsageError` for bad options, missing data, or a run folder that cannot be resumed.
    """
    t_start = time.perf_counter()
    options, template, model, state = _resolve_run(options, resume, overrides)
    options.validate()
    ctx = D.setup(options.device)
    try:
        with _run_folder(Path(options.out), ctx.is_main):
            return _train(options, template, model, state, ctx, progress, t_start,
                          given=overrides if state is None else None)
    finally:
        D.cleanup(ctx)


@contextlib.contextmanager
def _run_folder(run_dir: Path, is_main: bool) -> Iterator[None]:
    """Hold the run folder's lock on the main process (re-entrant: the commands take it first; a caller that did
    not, ``gpu_check`` say, is refused while another process writes the run) and delete, under it, the temporary files
    a killed write of the run's own files left (:func:`~rap_deploy.atomic.remove_temporaries`: only ``SIGKILL``
    leaves one, as large as a checkpoint). A folder made here is removed again when the run fails before writing into
    it; whether it was made is judged under the lock (judged before, it could be another run's, just made). Other
    processes (torchrun's other ranks) write nothing there."""
    if not is_main:
        yield
        return
    from rap_deploy.atomic import remove_temporaries
    from rap_deploy.locks import folder_lock

    with folder_lock(run_dir, "train", "run folder"):
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(run_dir, (LAST, BEST, METRICS, SUMMARY))
        try:
            yield
        except BaseException as exc:
            if created:
                _remove_if_empty(run_dir)
            if not isinstance(exc, Exception):  # Ctrl-C or SIGTERM: the CLI's line says how to carry on
                note_how_to_resume(exc, how_to_continue(run_dir))
            raise


def how_to_continue(run_dir: Path) -> str:
    """How to carry on a run stopped in ``run_dir``: resume it from its ``last.pt``, or (none written yet) run the
    same command again."""
    if (run_dir / LAST).is_file():
        return f"continue the run with `rapdeploy train --resume {shlex.quote(str(run_dir))}`"
    return "run the same command again"


def _train(options: TrainOptions, template: Any, model: torch.nn.Module | None, state: dict[str, Any] | None,
           ctx: D.DistContext, progress: bool, t_start: float, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`train_rap`'s run, in its (locked, cleaned) run folder; returns the summary. ``given`` (a new run's
    options as the user passed them) is checked against the model: one that acts on a part it lacks is refused."""
    from rap_deploy.train.model_setup import fresh_model
    from rap_deploy.train.training_run import TrainingRun

    torch.manual_seed(options.seed)
    if model is None:
        template, model = fresh_model(options, given)
    run = TrainingRun(options, ctx, template, model, state, progress and ctx.is_main)
    run.prepare_model()
    run.prepare_data()
    run.restore()
    run.announce()
    run.evaluate_initial()
    train_seconds = run.train_epochs()
    return run.write_summary(t_start, train_seconds)


def _remove_if_empty(folder: Path) -> None:
    """Remove the run folder this call created when it failed before writing anything into it."""
    try:
        folder.rmdir()
    except OSError:  # not empty (a killed run resumes from what it wrote) or already gone
        pass


def _resolve_run(options: TrainOptions | None, resume: str | Path | None, overrides: dict[str, Any] | None):
    """The options, template, model and training state to run: from ``resume/last.pt`` when it exists (model and
    state built from it), else ``options`` (with ``out`` set to ``resume`` when given; model and state None).
    Raises :class:`UsageError` when there is nothing to train, when ``options.out`` is not ``resume`` (the folder
    the caller locked would not be the one written), and for a new run whose folder holds a run's ``last.pt``
    (starting again there would replace a run that ``resume`` continues) or, without it, the run's other files."""
    from rap_deploy.train.run_state import load_resume

    template = model = state = None
    if resume is not None and options is not None and Path(options.out).resolve() != Path(resume).resolve():
        raise UsageError(f"--out {options.out} differs from --resume {resume}; a resumed run continues in its own "
                         "folder: drop --out (or pass the same folder)")
    if resume is not None:
        if (Path(resume) / LAST).is_file() or options is None:
            options, template, model, state = load_resume(Path(resume), overrides or {})
        else:
            options = dataclasses.replace(options, out=str(resume))
    elif options is not None and (Path(options.out) / LAST).is_file():
        raise UsageError(f"--out {options.out} holds a training run already ({LAST}); continue it with `rapdeploy "
                         f"train --resume {options.out}`, or pass another --out (or remove that run's folder) to "
                         "start a new run")
    if options is None:
        raise UsageError("nothing to train: pass the training options or a run folder to resume")
    if state is None:
        _refuse_run_files(Path(options.out))
    return options, template, model, state


def finished_files(run_dir: Path) -> list[str]:
    """The names of the run files other than ``last.pt`` (``best.pt``, ``metrics.jsonl``, ``summary.json``) that
    ``run_dir`` holds: with no ``last.pt`` beside them, a run that cannot be resumed and that a new run would
    replace."""
    return [name for name in (BEST, METRICS, SUMMARY) if (run_dir / name).exists()]


def _refuse_run_files(out: Path) -> None:
    """Raise :class:`UsageError` when the folder a new run would write holds a run's ``best.pt``, ``metrics.jsonl``
    or ``summary.json`` without its ``last.pt`` (removed to save space once the run finished): the new run would
    replace them, silently. (A run writes ``last.pt`` before the others, so no killed run leaves them alone.)"""
    found = finished_files(out)
    if found:
        raise UsageError(f"--out {out} holds a training run already ({', '.join(found)}; no {LAST} to resume it "
                         "from); pass another --out, or move those files away (or remove that run's folder) to "
                         "start a new run there")
