"""The offline world the demo and ``rapdeploy ablate`` train in: the synthetic dataset and the frozen backbone
pre-trained on its stills (the decoded-frame cache beside them), made once per world folder and checked before
reuse: a world of another recipe (format, distractors, seed, frame size, video counts) or a backbone pre-trained on
other stills is refused rather than silently reused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rap_deploy.cli.demo_recipe import DemoSizes
from rap_deploy.cli.demo_steps import Steps, nonempty_file
from rap_deploy.errors import CheckFailedError, UsageError


@dataclass(frozen=True)
class World:
    """The offline world's files: the synthetic dataset, the frozen backbone and the decoded-frame cache."""

    data: Path
    backbone: Path
    frame_cache: Path


def prepare_world(out: Path, sizes: DemoSizes, steps: Steps, progress: bool, threads: int | None) -> World:
    """Run (or skip when complete) the synth and backbone pre-training steps into ``out``; returns the paths."""
    from rap_deploy.data.synth_dataset import generate_synthetic_dataset
    from rap_deploy.train.backbone import pretrain_backbone

    data = out / "data"
    cache_root = out / "cache"
    backbone = world_backbone(out, sizes)
    annotation = data / "MSRVTT_data.json"
    _check_world(data, sizes, rewritten=steps.recorded("synth", annotation))
    _check_world_backbone(backbone)
    steps.run("synth", [annotation, data], lambda: generate_synthetic_dataset(
        data, videos=sizes.videos, test_videos=sizes.test_videos, seed=sizes.seed, size=sizes.size,
        distractors=sizes.distractors, progress=progress))
    steps.run("pretrain-backbone", [backbone], lambda: pretrain_backbone(
        backbone, size=sizes.size, n_train=sizes.backbone_train, epochs=sizes.backbone_epochs, seed=sizes.seed,
        clip=sizes.backbone_clip, text_weight=sizes.backbone_text_weight, position_init=sizes.backbone_position_init,
        patch_keep=sizes.backbone_patch_keep, unmasked_epochs=sizes.backbone_unmasked_epochs,
        distractors=sizes.distractors,
        progress=progress, threads=threads))
    return World(data, backbone, cache_root / "frames")


def world_backbone(out: Path, sizes: DemoSizes) -> Path:
    """The file the frozen backbone of world folder ``out`` is cached in: its name holds the pre-training recipe."""
    return out / "cache" / "backbones" / (f"{sizes.backbone_clip}-s{sizes.seed}-px{sizes.size}"
                                          f"-n{sizes.backbone_train}-e{sizes.backbone_epochs}"
                                          f"-t{sizes.backbone_text_weight:g}-p{sizes.backbone_position_init}"
                                          f"{_keep_tag(sizes)}{_distractor_tag(sizes)}.safetensors")


def _keep_tag(sizes: DemoSizes) -> str:
    """The backbone file name's token-dropping part: empty when every token is seen."""
    if sizes.backbone_patch_keep >= 1.0:
        return ""
    return f"-k{sizes.backbone_patch_keep:g}u{sizes.backbone_unmasked_epochs}"


def _check_world_backbone(backbone: Path) -> None:
    """Refuse a cached backbone pre-trained on stills of another object size than this version draws (an earlier
    world's backbone would otherwise be reused silently: the pre-training step is skipped when its file exists).
    Files from before the size was recorded had the earlier, smaller objects. An unreadable file is left to the
    pre-training step, which makes it again (its sha256 no longer matches the record). Raises :class:`UsageError`."""
    from rap_deploy.backbone_file import read_backbone_info
    from rap_deploy.data.synth import SIZE_RADIUS
    from rap_deploy.data.synth_dataset import EARLIER_RADIUS, radius_text

    if not nonempty_file(backbone):
        return
    try:
        found = read_backbone_info(backbone).get("object_radius")
    except CheckFailedError:  # damaged: no recipe to refuse
        return
    if found != SIZE_RADIUS:
        was = f"the earlier {radius_text(EARLIER_RADIUS['rapdeploy-synth-1'])}" if found is None else json.dumps(found)
        raise UsageError(f"{backbone} was pre-trained on stills whose objects have radius {was} (fractions of the "
                         f"frame), not {radius_text(SIZE_RADIUS)}; delete it to pre-train it again, or use a new world "
                         "folder")


def _check_world(data: Path, sizes: DemoSizes, rewritten: bool = False) -> None:
    """Refuse a world whose dataset is of an earlier synthetic format, or was written with another distractor rate,
    seed, frame size or number of (test) videos than the recipe asks for (``--tiny`` against the default): it would
    otherwise be reused silently, since the synth step is skipped when its dataset is complete. Raises
    :class:`UsageError` naming the file and the fix, :class:`CheckFailedError` for an unreadable or damaged dataset
    file, unless ``rewritten``: the synth step wrote this folder's dataset (it has a record), so a damaged one no
    longer matches that record and the step writes it again (a folder the demo did not write is never overwritten)."""
    path = data / "MSRVTT_data.json"
    if not path.is_file():
        return
    try:
        info, splits = _read_world(data)
    except CheckFailedError:
        if rewritten:
            return
        raise
    found = info.get("distractors", 0.0)  # datasets written before the option had none
    if found != sizes.distractors:
        raise UsageError(f"{path} was written with distractors {found:g}, but this run asks for "
                         f"{sizes.distractors:g}; use another world folder (--world / --out) or --distractors "
                         f"{found:g}")
    have = {"seed": info.get("seed"), "size": info.get("size"), "videos": len(splits),
            "test_videos": splits.count("test")}
    wanted = {k: getattr(sizes, k) for k in have}
    if have != wanted:
        differ = ", ".join(f"{k} {have[k]} (this run: {wanted[k]})" for k in have if have[k] != wanted[k])
        tiny = " (a world of `rapdeploy demo --tiny`: pass --tiny)" \
            if have == {k: getattr(DemoSizes.tiny(), k) for k in have} else ""
        raise UsageError(f"{path} is another recipe's world: {differ}{tiny}; use another folder (--out / --world), "
                         "e.g. one for the tiny demo and one for the default")


def _read_world(data: Path) -> tuple[dict, list]:
    """The ``info`` block of ``data``'s annotation and its videos' splits. Raises :class:`CheckFailedError` for a file
    that cannot be read or holds a distractor rate that is not one, :class:`UsageError` for an earlier format."""
    from rap_deploy.bounds import read_manifest_text
    from rap_deploy.data.synth_dataset import check_synth_format

    path = data / "MSRVTT_data.json"
    try:
        doc = json.loads(read_manifest_text(path, "synthetic dataset annotation"))
        info, videos = doc.get("info", {}), doc.get("videos")
        splits = [v.get("split") for v in videos]
    except (OSError, ValueError, AttributeError, TypeError, RecursionError) as exc:
        raise CheckFailedError(f"{path} is not a readable synthetic dataset annotation ({str(exc)[:100]}); delete "
                               f"{data} and the demo writes it again") from None
    check_synth_format(path, info)
    found = info.get("distractors", 0.0)  # datasets written before the option had none
    if isinstance(found, bool) or not isinstance(found, (int, float)) or not 0 <= found <= 1:
        raise CheckFailedError(f"{path} holds info.distractors {json.dumps(found)[:40]}, not a rate between 0 and 1; "
                               f"delete {data} and the demo writes it again")
    return info, splits


def _distractor_tag(sizes: DemoSizes) -> str:
    """The backbone file name's distractor part: empty when no still has a distractor."""
    return f"-d{sizes.distractors:g}" if sizes.distractors > 0 else ""
