"""``rapdeploy ablate``: issue 14's ablation table, every row trained with the demo's recipe over several seeds."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from rap_deploy import bounds
from rap_deploy.atomic import json_text
from rap_deploy.cli.app import WORKSPACE_DEFAULT, command
from rap_deploy.config import PRESETS, preset_help
from rap_deploy.data.synth_heldout import MAX_HELDOUT_VIDEOS
from rap_deploy.errors import UsageError
from rap_deploy.locks import folder_lock

if TYPE_CHECKING:
    from rap_deploy.cli.demo_recipe import DemoSizes


@command("ablate", resume="re-run the same command to resume: finished runs are read back, stopped ones resumed")
def ablate(
    out: Path | None = typer.Option(None, "--out", help="Folder for the runs, ablation.json and ablation.md "
                                    "(default: <world>/ablation)."),
    world: Path | None = typer.Option(None, "--world", help="Folder of the demo's world (data, backbone, frame "
                                      "cache), made here when missing (default: the workspace, where `rapdeploy "
                                      "demo` writes it)."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated training seeds."),
    rows: str | None = typer.Option(None, "--rows", help="Comma-separated rows (default all): zero_shot, rap_light, "
                                    "no_asa, no_lorm, offsets_zero, saliency, rap, paper."),
    tiny: bool = typer.Option(False, "--tiny", help="The tiny demo's world and recipe (a plumbing check)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="RAP epochs per run (default: the demo's "
                                      "recipe). A run folder trained with another count is refused: use --out."),
    backbone_epochs: int | None = typer.Option(None, "--backbone-epochs", min=1, max=1000,
                                               help="Pre-train the world's frozen backbone for this many epochs "
                                                    "of stills (default: the demo's 12; another count is its own "
                                                    "cached backbone, and its runs need their own --out)."),
    backbone_patch_keep: float | None = typer.Option(None, "--backbone-patch-keep", min=0.01, max=1.0,
                                                     help="Fraction of patch tokens the backbone's pre-training "
                                                          "steps see (default: the demo's; 1 = every token, the "
                                                          "recipe before token dropping)."),
    distractors: float | None = typer.Option(None, "--distractors", min=0.0, max=1.0,
                                             help="Fraction of the world's videos and stills with a distractor, an "
                                                  "object no caption names (default: the demo's; a world folder "
                                                  "holds one rate: use its own --world)."),
    selection_loss_weight: float | None = typer.Option(None, "--selection-loss-weight", min=0.0, max=100.0,
                                                       help="Weight of the selection alignment loss (default: the "
                                                            "demo's recipe). A run folder trained with another "
                                                            "weight is refused: use --out."),
    lorm_lr_mult: float | None = typer.Option(None, "--lorm-lr-mult",
                                              help="Learning-rate multiplier of LoRM's factors in every row "
                                                   "(default: the demo's recipe, 5). A run folder trained with "
                                                   "another multiplier is refused: use --out."),
    heldout_videos: int = typer.Option(0, "--heldout-videos", min=0, max=MAX_HELDOUT_VIDEOS,
                                       help="Also score every run's best.pt on a held-out split of this many test "
                                            "videos: the world's settings, another seed, none of the world's "
                                            "scenes (written once into <world>/heldout-N; results cached in each "
                                            "run folder). 0 = off. Slow: the full ASA similarity scores N x N "
                                            "pairs (about 3 min per run at 800 on one core), N x G with "
                                            "--heldout-gallery G."),
    heldout_gallery: int = typer.Option(0, "--heldout-gallery", min=0, max=MAX_HELDOUT_VIDEOS,
                                        help="Score the held-out split as consecutive galleries of this many "
                                             "videos, each query ranked within its own: N x G pairs instead of "
                                             "N x N, so more queries at the same cost. G must divide "
                                             "--heldout-videos N (every gallery equally hard). 0 = one gallery of "
                                             "all N."),
    preset: str | None = typer.Option(None, "--preset", help=f"Adapter sizes of every row: {preset_help()}. The "
                                      "`rap` row is then that preset, and the `paper` row reads its runs when the two "
                                      "match. Default: the demo's own, the paper preset. A folder holding runs of "
                                      "other sizes is refused: use --out."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Intra-op threads for PyTorch (with --jobs: "
                                       "per run; default the CPU count shared out)."),
    jobs: int = typer.Option(1, "--jobs", min=1, max=64, help="Runs trained at once, each in its own process with "
                             "its own progress in its folder's metrics.jsonl; the table is the same. Each holds its "
                             "own model and data in memory: on the demo's recipe about 2 GiB while training, 2.5 GiB "
                             "while scoring --heldout-videos 2400 --heldout-gallery 800 (measured)."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder ({WORKSPACE_DEFAULT})."),
    json_out: bool = typer.Option(False, "--json", help="Print ablation.json instead of the table."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Regenerate the ablation table: zero-shot, rap_light, --no-asa, --no-lorm, offsets frozen at zero, saliency
    selection, rap and the paper preset, each trained with the demo's recipe over several seeds (mean ± std).

    Completed runs are read back and killed ones resumed, so a rerun only trains what is missing. --jobs N trains N
    runs at once in worker processes (the table is the same).
    """
    import torch

    from rap_deploy.cli.demo_recipe import DemoSizes, train_options
    from rap_deploy.cli.demo_steps import Steps
    from rap_deploy.cli.demo_world import prepare_world
    from rap_deploy.train.ablate import run_ablation
    from rap_deploy.train.heldout_eval import check_gallery, heldout_scorer
    from rap_deploy.workspace import workspace_root

    parts = [s.strip() for s in seeds.split(",") if s.strip()]
    if not all(s.isdecimal() and s.isascii() for s in parts):  # int() would also take "1_0" and "+1"
        raise UsageError(f"--seeds must be comma-separated integers >= 0 (e.g. 0,1,2), got '{seeds}'")
    seed_list = [int(s) for s in parts]
    bounds.check_ints(seed_list, "--seeds", 0, bounds.MAX_SEED)
    repeated = sorted({s for s in seed_list if seed_list.count(s) > 1})
    if repeated:  # one run folder per seed: a repeat would count the same run twice in mean ± std
        raise UsageError(f"--seeds lists {', '.join(map(str, repeated))} more than once; give each seed once")
    bounds.check_threads(threads)
    # every option is checked before the world is prepared (that can take minutes)
    row_names = _ablation_rows(rows)
    check_gallery(heldout_gallery, heldout_videos)
    if heldout_videos:
        bounds.check_int(heldout_videos, "--heldout-videos", 2, MAX_HELDOUT_VIDEOS)
    if epochs is not None:
        bounds.check_int(epochs, "--epochs", 1, bounds.MAX_EPOCHS)
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"--preset '{preset}' is unknown; use one of {', '.join(PRESETS)}")
    if threads:
        torch.set_num_threads(threads)
    if lorm_lr_mult is not None:
        bounds.check_float(lorm_lr_mult, "--lorm-lr-mult", 0.0, 1e6, low_open=True)
    sizes = _recipe_with(DemoSizes.tiny() if tiny else DemoSizes(), epochs=epochs, backbone_epochs=backbone_epochs,
                         backbone_patch_keep=backbone_patch_keep, distractors=distractors,
                         selection_loss_weight=selection_loss_weight, lorm_lr_mult=lorm_lr_mult)
    root = Path(world or workspace_root(workspace)).resolve()
    out = _check_ablate_folders(root, out)
    log = (lambda msg: None) if json_out else (lambda msg: typer.echo(msg, err=True))
    with folder_lock(root, "ablate", "world folder"):  # the lock `rapdeploy demo` holds on the same folder
        w = prepare_world(root, sizes, Steps(log, root), progress=not quiet, threads=threads)
    base = train_options(sizes, w.data, root, w.frame_cache, clip=sizes.backbone_clip, pretrained=str(w.backbone),
                         frames=sizes.frames, asa_topk=sizes.asa_topk, asa_heads=sizes.asa_heads,
                         asa_dim=None if preset else sizes.asa_dim, preset=preset or sizes.preset)
    scorer = (heldout_scorer(root, w.data, heldout_videos, base.top_m, not quiet and jobs == 1, heldout_gallery)
              if heldout_videos else None)
    result = run_ablation(base, out, seed_list, row_names, progress=not quiet, log=log,
                          heldout=scorer, jobs=jobs, threads=threads)
    if json_out:
        typer.echo(json_text(result))
        return
    from rap_deploy.train.ablate_report import ablation_markdown

    typer.echo(ablation_markdown(result))


def _check_ablate_folders(root: Path, out: Path | None) -> Path:
    """The ablation's output folder (``out``, default ``root/ablation``), after refusing a ``--world`` or ``--out``
    that is a file or cannot be written, or an ``--out`` inside the world's own files (exit 2): found before the
    world is prepared, not minutes later."""
    from rap_deploy.locks import check_writable_folder

    if root.exists() and not root.is_dir():
        raise UsageError(f"--world {root} is a file; pass a folder for the world (data, backbone, frame cache)")
    if out is not None:
        _refuse_out_in_world_files(root, out)
    return check_writable_folder(out or root / "ablation", "ablate", "ablation folder")


# The world's folders that `ablate` reads and must find unchanged (prepare_world's dataset and caches; each held-out
# split, heldout_folder's `heldout-<videos>`): runs written inside one change its files.
_WORLD_FILES = ("data", "cache")
_HELDOUT_PREFIX = "heldout-"


def _refuse_out_in_world_files(root: Path, out: Path) -> None:
    """Raise :class:`UsageError` (exit 2) when ``out`` is the world's dataset, cache or a held-out split folder, or
    inside one: the next call would find the world's files changed (its dataset synthesised again). The world folder
    itself is allowed (its runs go into folders of their own)."""
    from rap_deploy.workspace import user_path

    try:
        parts = user_path(out, "--out").resolve().relative_to(root).parts
    except ValueError:  # not inside the world
        return
    if parts and (parts[0] in _WORLD_FILES or parts[0].startswith(_HELDOUT_PREFIX)):
        raise UsageError(f"--out {out} is inside the world's {root / parts[0]} folder, which `ablate` reads and must "
                         "find unchanged (its runs would change the world's files); pass an --out outside it, e.g. "
                         f"{root / 'ablation'} (the default)")


def _ablation_rows(rows: str | None) -> list[str]:
    """The row names of ``--rows`` (every row when not given); raises :class:`UsageError` for an unknown name or a
    list that names none."""
    from rap_deploy.train.ablate import select_rows

    if rows is None:
        return []
    names = [r.strip() for r in rows.split(",") if r.strip()]
    if not names:
        raise UsageError(f"--rows names no row ('{rows}'); leave it out for every row")
    select_rows(names)
    return names


def _recipe_with(sizes: DemoSizes, **overrides: Any) -> DemoSizes:
    """``sizes`` with every override that was given (not None) replaced: the demo's recipe as `ablate` trains it."""
    return dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
