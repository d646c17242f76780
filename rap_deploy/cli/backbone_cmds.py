"""``rapdeploy pretrain-backbone``: the offline default backbone, a small open_clip CLIP pre-trained on synthetic
stills (colour, shape, position), written as one safetensors file that checkpoints name by path and sha256."""

from __future__ import annotations

from pathlib import Path

import typer

from rap_deploy import bounds
from rap_deploy.atomic import json_text
from rap_deploy.cli.app import WORKSPACE_DEFAULT, command
from rap_deploy.data import SYNTH_DISTRACTORS
from rap_deploy.errors import UsageError
from rap_deploy.locks import folder_lock
from rap_deploy.train.progress import counted


def _refuse_existing_backbone(out: Path, force: bool) -> None:
    """Refuse (:class:`UsageError`) to replace an existing backbone file without ``--force``."""
    if out.exists() and not force:  # checkpoints and ablation runs name a backbone file by its path and sha256
        raise UsageError(f"--out {out} exists; pass --force to replace it (checkpoints made on it will then refuse "
                         "it: their recorded sha256 no longer matches), or another --out")


def _check_stills_folder(data_root: Path | None) -> None:
    """Refuse (:class:`UsageError`) a ``--data-root`` that is a file, or a path a symbolic link hides: the stills
    cache is a folder in it (a missing folder is made)."""
    if data_root is None or data_root.is_dir():
        return
    from rap_deploy.safe_paths import absent

    if data_root.exists():
        raise UsageError(f"--data-root {data_root} is a file; pass a folder (the stills are cached in FOLDER/stills/"
                         "*.npz), or leave --data-root out to make them in memory")
    if absent(data_root) != "does not exist":
        raise UsageError(f"--data-root {data_root} {absent(data_root)}; pass a folder for the stills cache")
    above = next((p for p in data_root.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():  # a folder cannot be made under a file
        raise UsageError(f"--data-root {data_root} is under {above}, which is a file; pass a folder for the stills "
                         "cache")


@command("pretrain-backbone")
def pretrain_backbone(
    out: Path | None = typer.Option(None, "--out", help="Backbone file to write (.safetensors; default: "
                                    "<workspace>/cache/backbone/CLIP.safetensors, CLIP the --clip name: "
                                    "rap-tiny.safetensors unless --clip is given)."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Folder where the generated still images are "
                                          "cached (DIR/stills/*.npz) and reused; without it they are generated in "
                                          "memory."),
    epochs: int = typer.Option(4, "--epochs", help="Passes over the training stills."),
    seed: int = typer.Option(0, "--seed", help="Seed for the stills, the initialisation and the batches."),
    size: int = typer.Option(64, "--size", help="Still image size in pixels (resized to the model input if "
                             "different)."),
    train_stills: int = typer.Option(4000, "--train-stills", help="Number of training stills."),
    test_stills: int = typer.Option(400, "--test-stills", help="Number of held-out stills for the reported R@1."),
    batch_size: int = typer.Option(128, "--batch-size", help="Contrastive batch size."),
    lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate (AdamW, warm-up then cosine)."),
    patch_weight: float = typer.Option(1.0, "--patch-weight", help="Weight of the patch localisation loss that "
                                       "aligns the object patches with the caption (what RAP's ASA selects by); 0 "
                                       "trains the CLS embedding only."),
    text_weight: float = typer.Option(0.0, "--text-weight", help="Weight of a text-only loss on video-style captions "
                                      "(order-aware text tower; 0 = off, the default: it lowers zero-shot and RAP "
                                      "retrieval on the synthetic benchmark, see the README)."),
    position_init: str | None = typer.Option(None, "--position-init", help="Initial ViT position table: sincos "
                                             "(2-D sine-cosine, then learned: the frozen features carry where an "
                                             "object is; the default) or random (open_clip's)."),
    position_twins: bool | None = typer.Option(None, "--position-twins/--no-position-twins",
                                               help="Pair every still with the same objects in other cells, in one "
                                               "batch (hard negatives that differ only by position). Default: off."),
    patch_keep: float = typer.Option(1.0, "--patch-keep", help="Fraction of each still's patch tokens the image "
                                     "tower sees while training, object patches first (1 = all; 0.5 makes a step "
                                     "~1.6x cheaper, 0.25 ~2.5x: docs/demo-history.md)."),
    unmasked_epochs: int = typer.Option(1, "--unmasked-epochs", help="With --patch-keep below 1: the last epochs "
                                        "that see every token."),
    distractors: float = typer.Option(SYNTH_DISTRACTORS, "--distractors", min=0.0, max=1.0,
                                      help="Fraction of stills that also show an object the caption does not name "
                                      "(as `rapdeploy synth --distractors`); the localisation loss then asks for the "
                                      "named objects' patches only."),
    clip: str = typer.Option("rap-tiny", "--clip", help="open_clip model config to train from scratch."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder ({WORKSPACE_DEFAULT})."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    json_out: bool = typer.Option(False, "--json", help="Print the stored info (held-out metrics, seconds) as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Pre-train the offline default backbone (a small open_clip CLIP) on synthetic stills: colour, shape, position."""
    from rap_deploy.train.backbone import pretrain_backbone as run
    from rap_deploy.workspace import subdir

    bounds.check_int(epochs, "--epochs", 1, bounds.MAX_EPOCHS)
    bounds.check_int(seed, "--seed", 0, bounds.MAX_SEED)
    bounds.check_float(text_weight, "--text-weight", 0.0, 1000.0)
    bounds.check_int(size, "--size", bounds.MIN_IMAGE_SIZE, bounds.MAX_IMAGE_SIZE)
    bounds.check_int(train_stills, "--train-stills", 2, bounds.MAX_VIDEOS)
    bounds.check_int(test_stills, "--test-stills", 2, bounds.MAX_VIDEOS)
    bounds.check_int(batch_size, "--batch-size", 2, bounds.MAX_BATCH_SIZE)
    bounds.check_float(lr, "--lr", 0.0, bounds.MAX_LR, low_open=True)
    bounds.check_float(patch_weight, "--patch-weight", 0.0, 1000.0)
    bounds.check_float(patch_keep, "--patch-keep", 0.0, 1.0, low_open=True)
    bounds.check_int(unmasked_epochs, "--unmasked-epochs", 0, bounds.MAX_EPOCHS)
    if unmasked_epochs > epochs:
        raise UsageError(f"--unmasked-epochs {unmasked_epochs} is more than --epochs {epochs}: the epochs that see "
                         "every token are the last of --epochs; pass at most that many")
    bounds.check_memory((train_stills + test_stills) * size * size * 3, f"{train_stills + test_stills:,} stills of "
                        f"{size}x{size} px", "pass fewer --train-stills/--test-stills or a smaller --size")
    _check_stills_folder(data_root)
    out = out or subdir("cache", workspace) / "backbone" / f"{clip}.safetensors"
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; pass a file path such as {out / (clip + '.safetensors')}")
    _refuse_existing_backbone(out, force)  # before the work, and again under the lock (another run may finish)
    with folder_lock(out, "pretrain-backbone", "backbone file"):
        _refuse_existing_backbone(out, force)
        info = run(out, size=size, n_train=train_stills, n_test=test_stills, epochs=epochs, seed=seed, clip=clip,
                   batch_size=batch_size, lr=lr, patch_weight=patch_weight, text_weight=text_weight,
                   patch_keep=patch_keep, unmasked_epochs=unmasked_epochs, distractors=distractors,
                   data_root=data_root,
                   **{k: v for k, v in (("position_init", position_init), ("position_twins", position_twins))
                      if v is not None},
                   progress=not quiet)
    if json_out:
        typer.echo(json_text(info))
        return
    h = info["heldout"]
    a = h["attributes"]
    typer.echo(f"wrote {out} ({clip}, {counted(info['steps'], 'step')}, {info['seconds']:.0f} s)")
    typer.echo(f"held-out stills ({info['n_test']}): image→caption R@1 {h['i2t']['R1']:.1f} R@5 {h['i2t']['R5']:.1f}, "
               f"caption→image R@1 {h['t2i']['R1']:.1f} R@5 {h['t2i']['R5']:.1f} (by meaning); top-1 attribute "
               f"accuracy: colour {a['colour']:.1f}, shape {a['shape']:.1f}, size {a['size']:.1f}, "
               f"position {a['position']:.1f}")
    typer.echo(f"use it: rapdeploy init --backbone {out} --out ckpt.pt")
