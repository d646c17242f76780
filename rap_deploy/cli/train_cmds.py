"""``rapdeploy train`` and ``rapdeploy pretrain-backbone``."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from rap_deploy import bounds
from rap_deploy.atomic import json_text
from rap_deploy.cli.app import WORKSPACE_DEFAULT, command
from rap_deploy.config import preset_help
from rap_deploy.data import DATASET_NAMES
from rap_deploy.errors import UsageError
from rap_deploy.locks import folder_lock
from rap_deploy.name_lists import some_names
from rap_deploy.train.progress import counted
from rap_deploy.workspace import user_path

if TYPE_CHECKING:
    from rap_deploy.train.loop import TrainOptions

MAX_WORKERS = 256  # TrainOptions.validate's limit on num_workers


@command("train")
def train(
    dataset: str | None = typer.Option(None, "--dataset", help=f"Dataset format: {DATASET_NAMES} (required unless "
                                       "--resume)."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Dataset folder (default: $RAPDEPLOY_DATA)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="RAP checkpoint to fine-tune (from `rapdeploy "
                                           "init` or an earlier run); its model settings are used."),
    clip: str | None = typer.Option(None, "--clip", help="Start from identity adapters on this open_clip model "
                                    "(default ViT-B-32 when neither --checkpoint nor --backbone is given)."),
    pretrained: str | None = typer.Option(None, "--pretrained", help="Backbone weights for --clip: an open_clip tag "
                                          "(in the local cache), a weights file, or 'none' (default: 'openai' where "
                                          "open_clip has it for --clip, else none)."),
    backbone: Path | None = typer.Option(None, "--backbone", help="Backbone file from `rapdeploy pretrain-backbone` "
                                         "(sets --clip and --pretrained)."),
    variant: str | None = typer.Option(None, "--variant", help="rap (LoRM + ASA, default) or rap_light (LoRM only)."),
    preset: str | None = typer.Option(None, "--preset", help=f"Adapter sizes: {preset_help()} (default default); "
                                      "explicit --rank, --topk, --heads, --asa-dim win."),
    lorm: bool | None = typer.Option(None, "--lorm/--no-lorm", help="LoRM in every visual block (default on)."),
    asa: bool | None = typer.Option(None, "--asa/--no-asa", help="The ASA head (default on; ignored for rap_light)."),
    rank: int | None = typer.Option(None, "--rank", help="LoRM rank r (default 4)."),
    topk: int | None = typer.Option(None, "--topk", help="ASA patches kept per frame k (default 8)."),
    heads: int | None = typer.Option(None, "--heads", help="ASA heads (default 4)."),
    asa_dim: int | None = typer.Option(None, "--asa-dim", help="ASA attention width d_a (default 128)."),
    selection: str | None = typer.Option(None, "--selection", help="ASA patch selection: text (default) or "
                                         "saliency."),
    frames: int | None = typer.Option(None, "--frames", help="Frames per video (default: the --checkpoint's, else 12 "
                                      "for msrvtt/msvd, 64 for didemo/activitynet)."),
    context_length: int | None = typer.Option(None, "--context-length", help="Text tokens (default: the "
                                              "--checkpoint's, else 32 for msrvtt/msvd, 64 for didemo/activitynet)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder for best.pt, last.pt, metrics.jsonl, "
                                    "summary.json (default: <workspace>/runs/<dataset>-<time>, with -2, -3... when a "
                                    "run started in the same second took that name)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Training epochs (default 5; 0 only evaluates the "
                                      "starting model)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size (2 or more: the "
                                          "contrastive loss compares the batch's items), split over processes "
                                          "(default 128)."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate of AdamW (default 1e-3)."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="AdamW weight decay on adapter matrices "
                                              "(default 0.05)."),
    offset_lr_mult: float | None = typer.Option(None, "--offset-lr-mult", help="Learning-rate multiplier for the "
                                                "ASA offsets γ/δ (patch and frame units; default 10)."),
    lorm_lr_mult: float | None = typer.Option(None, "--lorm-lr-mult", help="Learning-rate multiplier for LoRM's "
                                              "factors (default 1: the rate of the ASA head; the demo's recipe uses "
                                              "5)."),
    freeze_offsets: bool | None = typer.Option(None, "--freeze-offsets/--learn-offsets", help="Set the ASA offsets "
                                               "γ/δ to zero and keep them there (ablation: no warp); default: "
                                               "learn them."),
    selection_loss_weight: float | None = typer.Option(
        None, "--selection-loss-weight", help="Add this many times the selection alignment loss: InfoNCE of each "
        "caption's best patch per frame, which trains the scores ASA's top-k selection ranks patches by (default 0: "
        "the contrastive loss alone; the demo uses its own recipe's)."),
    warmup: float | None = typer.Option(None, "--warmup", help="Warm-up: a fraction of all steps if < 1, else a step "
                                        "count (default 0.1)."),
    grad_clip: float | None = typer.Option(None, "--grad-clip", help="Gradient norm clip (default 1.0; 0 = off)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for batches and initialisation (default 0)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this folder from its last.pt "
                                       "(options are read from it, the dataset and its folder included: pass "
                                       "--data-root only where that data moved)."),
    eval_every: int | None = typer.Option(None, "--eval-every", help="Evaluate every N epochs (and after the last; "
                                          "default 1)."),
    eval_initial: bool | None = typer.Option(None, "--eval-initial/--no-eval-initial", help="Also evaluate the "
                                             "starting model (logged as epoch 0; default: off). Epoch 0 is then a "
                                             "candidate for best.pt: when no trained epoch scores as high, best.pt "
                                             "holds the starting weights (a note says so; last.pt the trained ones)."),
    max_train_videos: int | None = typer.Option(None, "--max-train-videos", help="Use only the first N training "
                                                "videos."),
    max_test_videos: int | None = typer.Option(None, "--max-test-videos", help="Evaluate on only the first N test "
                                               "videos."),
    epoch_unit: str | None = typer.Option(None, "--epoch-unit", help="caption: every caption once per epoch "
                                          "(CLIP4Clip's MSR-VTT recipe); video: one random caption per video per "
                                          "epoch; auto (default): caption when videos have several captions."),
    test_split: str | None = typer.Option(None, "--test-split", help="Split evaluated after each epoch (default "
                                          "test)."),
    top_m: int | None = typer.Option(None, "--top-m", help="Candidates re-ranked by ASA in the two-stage evaluation "
                                     "(default 100)."),
    workers: int | None = typer.Option(None, "--workers", help="DataLoader worker processes (default 0)."),
    amp: str | None = typer.Option(None, "--amp", help="Mixed precision on CUDA: auto (bf16 where supported, else "
                                   "fp16), bf16, fp16, off. CPU always trains in fp32."),
    device: str | None = typer.Option(None, "--device", help="auto (CUDA if available), cpu or cuda."),
    embed_backbone: bool | None = typer.Option(None, "--embed-backbone/--reference-backbone", help="Store the "
                                               "backbone weights in best.pt/last.pt, or reference the tag/file (a new "
                                               "model, --clip/--backbone, not --checkpoint; default: embed only a "
                                               "random backbone, which is always stored)."),
    max_epochs_this_run: int | None = typer.Option(None, "--max-epochs-this-run", help="Stop after this many epochs "
                                                   "in this invocation (the schedule still spans --epochs); continue "
                                                   "with --resume."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Decoded-frame cache (default: "
                                          "<workspace>/cache/frames)."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder ({WORKSPACE_DEFAULT})."),
    json_out: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or per-epoch lines."),
) -> None:
    """Fine-tune RAP adapters on a frozen CLIP with per-epoch evaluation; writes best.pt, last.pt, metrics.jsonl.

    Data-parallel: `torchrun --nproc_per_node N -m rap_deploy.cli train ...` (gloo on CPU, NCCL on CUDA).

    Exits 1 when training diverges (non-finite weights or scores), a checkpoint (--checkpoint, the run's last.pt) or
    the dataset's annotation files are damaged, or no training video can be read (missing or undecodable videos are
    otherwise skipped and counted); 2 for bad usage: a wrong path, option or value, or a run that --resume cannot
    continue with these options.
    """
    given: dict[str, Any] = {
        "dataset": dataset, "checkpoint": _str(checkpoint), "clip": clip, "pretrained": pretrained,
        "variant": variant, "use_lorm": lorm, "use_asa": asa, "lorm_rank": rank, "asa_topk": topk,
        "asa_heads": heads, "asa_dim": asa_dim, "asa_selection": selection, "frames": frames, "preset": preset,
        "freeze_offsets": freeze_offsets, "selection_loss_weight": selection_loss_weight,
        "context_length": context_length, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "offset_lr_mult": offset_lr_mult, "lorm_lr_mult": lorm_lr_mult,
        "warmup": warmup, "grad_clip": grad_clip,
        "seed": seed,
        "eval_every": eval_every, "eval_initial": eval_initial, "max_train_videos": max_train_videos,
        "max_test_videos": max_test_videos, "epoch_unit": epoch_unit, "test_split": test_split,
        "top_m": top_m, "num_workers": workers, "amp": amp, "device": device, "embed_backbone": embed_backbone,
        "max_epochs_this_run": max_epochs_this_run, "cache_dir": _absolute(cache_dir, "--cache-dir"),
        "workspace": _absolute(workspace, "--workspace"),
        "data_root": _absolute(data_root, "--data-root"),
    }
    _check_train_device(device)
    _check_named_sizes({"--rank": (rank, 1, bounds.MAX_LORM_RANK), "--topk": (topk, 1, bounds.MAX_ASA_TOPK),
                        "--heads": (heads, 1, bounds.MAX_ASA_HEADS), "--asa-dim": (asa_dim, 1, bounds.MAX_ASA_DIM),
                        "--workers": (workers, 0, MAX_WORKERS)})
    given = _given_model_source(given, backbone, checkpoint, clip, pretrained)
    if checkpoint is None and resume is None and (heads is not None or asa_dim is not None):
        from rap_deploy.cli.model_cmds import check_heads_option
        from rap_deploy.config import DEFAULT_CLIP

        check_heads_option(given.get("clip") or DEFAULT_CLIP, preset or "default", heads, asa_dim)
    _check_resume_folder(resume)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with contextlib.ExitStack() as claimed:  # a default run name's lock is held from its choice on
        options = _new_run_options(given, out, resume, workspace, claimed)
        summary = _run_training(options, resume, given, quiet, rank0)
    if not rank0:
        return  # under torchrun only rank 0 reports
    if json_out:
        typer.echo(json_text(summary, default=str))
    else:
        _print_train_summary(summary)
    _note_initial_kept(summary)


def _note_initial_kept(summary: dict[str, Any]) -> None:
    """Say on stderr when ``best.pt`` is the starting model although trained epochs were evaluated
    (:func:`~rap_deploy.train.selection.initial_kept_note`): the run's results would otherwise be the untrained
    model's, with nothing saying so."""
    from rap_deploy.train.selection import initial_kept_note

    note = initial_kept_note(summary)
    if note:
        typer.echo(note, err=True)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _absolute(path: Path | str | None, option: str) -> str | None:
    """``path`` made absolute (``~`` expanded; :func:`~rap_deploy.workspace.user_path` refuses an unknown ``~user``,
    naming ``option``), for the folders a run stores in its ``last.pt`` and reads again on ``--resume``: relative
    ones named other folders when the run was resumed from another directory."""
    return None if path is None else str(user_path(path, option).absolute())


def _given_model_source(given: dict[str, Any], backbone: Path | None, checkpoint: Path | None, clip: str | None,
                        pretrained: str | None) -> dict[str, Any]:
    """``given`` with ``--backbone`` resolved into clip/pretrained and the unset (None) options dropped.

    Raises :class:`UsageError` when ``--clip`` contradicts the backbone file, ``--pretrained`` meets ``--backbone``
    (which it silently replaced) or ``--checkpoint`` meets ``--clip``/``--backbone`` or ``--embed-backbone``/
    ``--reference-backbone`` (the run stores the backbone as the checkpoint does; the option was ignored).
    """
    from rap_deploy.backbone_file import backbone_clip, check_one_backbone_source

    check_one_backbone_source(backbone, pretrained)
    if checkpoint is not None and (clip or backbone is not None or pretrained):
        named = [f"{flag} {value}" for flag, value in (("--clip", clip), ("--backbone", backbone),
                                                        ("--pretrained", pretrained)) if value is not None]
        raise UsageError(f"--checkpoint {checkpoint} brings its own backbone: drop {' and '.join(named)}, or, to "
                         "train on other weights, drop --checkpoint (or make a checkpoint on them with `rapdeploy "
                         "init --clip NAME --pretrained FILE --out ckpt.pt`)")
    if backbone is not None:
        given.update(clip=backbone_clip(backbone, clip), pretrained=str(backbone))
    if checkpoint is not None and given["embed_backbone"] is not None:
        flag = "--embed-backbone" if given["embed_backbone"] else "--reference-backbone"
        raise UsageError(f"{flag} chooses how a new model (--clip/--backbone) stores its backbone; a run from "
                         f"--checkpoint {checkpoint} stores it in best.pt and last.pt as that checkpoint does "
                         f"(embedded or referenced): drop {flag}")
    return {k: v for k, v in given.items() if v is not None}


def _check_named_sizes(limits: dict[str, tuple[int | None, int, int]]) -> None:
    """Check each given option ``{name: (value, low, high)}`` under the name the user typed (the model config and
    the training options name them ``lorm_rank``, ``asa_topk``, ``--num-workers``...); raises :class:`UsageError`."""
    for name, (value, low, high) in limits.items():
        if value is not None:
            bounds.check_int(value, name, low, high)


def _check_train_device(device: str | None) -> None:
    """Raise :class:`UsageError` for a ``--device`` other than auto, cpu or cuda (anything else trained on the CPU
    without a word: ``tpu``, ``cuda:1``)."""
    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got '{device}' (to choose a GPU set "
                         "CUDA_VISIBLE_DEVICES; under torchrun each rank uses its LOCAL_RANK's GPU)")


def _check_resume_folder(resume: Path | None) -> None:
    """Raise :class:`UsageError` when ``--resume`` names something other than a folder."""
    if resume is not None and not Path(resume).is_dir():
        from rap_deploy.safe_paths import absent

        why = "it is a file" if Path(resume).exists() else f"it {absent(resume)}"
        raise UsageError(f"--resume {resume} is not a run folder ({why}); pass the --out folder of an earlier "
                         "`rapdeploy train`")


def _new_run_options(given: dict[str, Any], out: Path | None, resume: Path | None, workspace: Path | None,
                     claim: contextlib.ExitStack) -> TrainOptions | None:
    """The :class:`TrainOptions` of a new run (``given["data_root"]`` resolved in place), or None to resume.

    A ``--resume`` folder holding a ``last.pt`` is resumed (None) even with ``--dataset``: its stored options, the
    data folder included, are used, and the given ones compared with them (``--data-root`` only where given: the
    default, ``$RAPDEPLOY_DATA``, named another folder than the run's). With ``--dataset`` and no ``last.pt`` yet (a
    run killed in its first epoch) the run starts again in that folder. Without ``--out`` a new run's folder is
    :func:`default_run_dir`'s, its lock held in ``claim``. Raises :class:`UsageError` without ``--dataset`` for a new
    run, for a new run under torchrun without ``--out``, and for a resumed run whose ``--out`` differs.
    """
    from rap_deploy.train.loop import LAST, TrainOptions

    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder for the run (best.pt, last.pt, metrics.jsonl)")
    if resume is None or (given.get("dataset") and not (Path(resume) / LAST).is_file()):
        if not given.get("dataset"):
            raise UsageError("--dataset is required (or --resume RUN_DIR to continue a run)")
        from rap_deploy.workspace import data_root as resolve_data_root
        from rap_deploy.workspace import subdir

        given["data_root"] = _absolute(resolve_data_root(given.get("data_root"), workspace), "--data-root")
        if out is None and resume is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("under torchrun pass --out: each process would choose the default run folder from its "
                             "own clock and which names are taken, and every process must name the same folder")
        run_dir = out or resume or default_run_dir(subdir("runs", workspace), given["dataset"], claim)
        return TrainOptions(out=str(run_dir), **given)
    if out is not None and Path(out).resolve() != Path(resume).resolve():
        raise UsageError(f"--out {out} differs from --resume {resume}; a resumed run continues in its own folder")
    return None


MAX_RUN_NAME_SUFFIX = 100  # runs started in one second that default_run_dir tells apart


def default_run_dir(runs: Path, dataset: str, claim: contextlib.ExitStack, now: float | None = None) -> Path:
    """``<runs>/<dataset>-<YYYYmmdd-HHMMSS>`` (local time ``now``, default the current time) for a run without
    ``--out``; ``-2``, ``-3``... appended when that folder exists or another run holds its lock (runs started in the
    same second chose one folder, and the second failed with FolderBusyError).

    The chosen folder's lock is taken into ``claim``, so no other run can choose that name until ``claim`` closes
    (torchrun runs never get here: without ``--out`` they are refused, as each process would choose its own name).
    Raises :class:`UsageError` for an unknown dataset (the name becomes a path) and when every suffix is taken.
    """
    from rap_deploy.data.datasets import check_dataset

    check_dataset(dataset)  # the name becomes a path
    base = f"{dataset}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
    for n in range(1, MAX_RUN_NAME_SUFFIX + 1):
        candidate = runs / (base if n == 1 else f"{base}-{n}")
        if not _taken(candidate) and _claim(candidate, claim):
            return candidate
    raise UsageError(f"{runs}: {base} and its {MAX_RUN_NAME_SUFFIX - 1} suffixed names are taken; pass --out")


def _taken(folder: Path) -> bool:
    return folder.exists() or folder.is_symlink()


def _claim(folder: Path, claim: contextlib.ExitStack) -> bool:
    """Take ``folder``'s run-folder lock into ``claim`` when it is free and ``folder`` still missing under it."""
    from rap_deploy.locks import FolderBusyError

    attempt = contextlib.ExitStack()
    try:
        attempt.enter_context(folder_lock(folder, "train", "run folder"))
    except FolderBusyError:
        return False
    if _taken(folder):  # made between the look and the lock: a run that finished meanwhile
        attempt.close()
        return False
    claim.enter_context(attempt)
    return True


def _run_training(options: TrainOptions | None, resume: Path | None, given: dict[str, Any], quiet: bool,
                  rank0: bool) -> dict[str, Any]:
    """Train (or resume) the run; returns :func:`train_rap`'s summary. Only rank 0 holds the run folder's lock."""
    from rap_deploy.train.loop import train_rap

    run_dir = Path(options.out if options is not None else resume)
    # Only rank 0 writes the run folder (and locks it); under torchrun the other ranks run unlocked.
    with folder_lock(run_dir, "train", "run folder") if rank0 else contextlib.nullcontext():
        return train_rap(options, progress=not quiet, resume=resume, overrides=given)


def _print_test_skipped(console: Any, summary: dict[str, Any]) -> None:
    """Say which test videos (missing or undecodable) every evaluation left out: the figures above are over the rest,
    which only ``metrics.jsonl``'s ``test_videos`` and ``test_skipped`` counts said before."""
    from rich.markup import escape

    skipped = summary.get("test_skipped_videos") or []
    if not skipped:
        return
    scored = (summary.get("last") or {}).get("test_videos")
    console.print(f"[yellow]{counted(len(skipped), 'test video')} missing or undecodable, left out of every "
                  f"evaluation (the recalls above are over {scored if scored is not None else 'the other'} test "
                  f"videos): {escape(some_names(skipped, 10))}; "
                  f"`rapdeploy data-check --dataset {escape(summary['dataset'])} --split "
                  f"{escape(summary.get('test_split') or 'test')}` names why[/]")


def _wall_words(summary: dict[str, Any]) -> str:
    """The wall time, said as what it covers: ``train_seconds`` counts every epoch of the run, ``wall_seconds`` this
    command only, which for a resumed run is less (a resumed run read as wall < training time looked wrong)."""
    resumed = summary.get("resumed_after_epoch")
    if resumed is None:
        return f"{summary['wall_seconds']:.1f} s wall"
    return f"all epochs; this command, resumed after epoch {resumed}, took {summary['wall_seconds']:.1f} s wall"


def _print_train_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(title=escape(f"RAP training: {summary['run_dir']}"), show_header=True)
    table.add_column("epoch")
    for col in ("loss", "t2v R@1", "R@5", "R@10", "MnR", "v2t R@1", "R@5", "R@10", "MnR"):
        table.add_column(col, justify="right")
    for name in ("best", "last"):
        rec = summary.get(name)
        if not rec or "t2v" not in rec:
            continue
        t, v = rec["t2v"], rec["v2t"]
        loss = "-" if rec.get("loss") is None else f"{rec['loss']:.4f}"
        table.add_row(f"{name} ({rec['epoch']})", loss, *(f"{t[k]:.1f}" for k in ("R1", "R5", "R10", "MnR")),
                      *(f"{v[k]:.1f}" for k in ("R1", "R5", "R10", "MnR")))
    console.print(table)
    skipped = summary.get("skipped_videos") or []
    adapters = f" ({summary['adapters']})" if summary.get("adapters") else ""
    console.print(f"{summary['variant']}{adapters} on {summary['clip']}: {summary['trainable_params']:,} trainable "
                  f"of {summary['total_params']:,} parameters; {counted(summary['steps'], 'step')} of "
                  f"{summary['batch_size']} in {summary['train_seconds']:.1f} s of training "
                  f"({_wall_words(summary)}), world size {summary['world_size']} on {summary['device']}; "
                  f"{len(skipped)} undecodable training video(s) skipped"
                  + (": " + some_names([s["video_id"] for s in skipped], 10) if skipped else ""), markup=False)
    _print_test_skipped(console, summary)
    resumed = summary.get("resumed_after_epoch")
    if resumed is not None and resumed >= summary["epochs"]:  # --resume of a finished run
        console.print(f"nothing trained: the run was already complete ({summary['epochs']} of "
                      f"{summary['epochs']} epochs); the figures above are its own", markup=False)
    if not summary.get("complete"):
        console.print(f"[yellow]stopped after epoch {summary['epochs_done']} of {summary['epochs']}; continue with "
                      f"`rapdeploy train --resume {escape(summary['run_dir'])}`[/]")
    else:
        console.print(f"best.pt = epoch {summary['best_epoch']} (rule: {summary['selection_rule']}); last.pt, "
                      f"metrics.jsonl and summary.json in {summary['run_dir']}", markup=False)
    offsets = (summary.get("best") or {}).get("offsets")
    if offsets:
        console.print("best.pt ASA offsets: γ (patch y, x) " + "  ".join(f"({y:+.3f}, {x:+.3f})"
                                                                          for y, x in offsets["gamma"])
                      + "; δ (frames) " + "  ".join(f"{d:+.3f}" for d in offsets["delta"]))
