"""``rapdeploy synth`` and ``rapdeploy data-check``."""

from __future__ import annotations

from pathlib import Path

import typer

from rap_deploy import bounds
from rap_deploy.atomic import json_text
from rap_deploy.cli.app import WORKSPACE_DEFAULT, command
from rap_deploy.data import DATASET_NAMES, SYNTH_DISTRACTORS
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.name_lists import some_names


@command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the dataset into (MSR-VTT layout)."),
    videos: int = typer.Option(300, "--videos", help="Total number of videos (training + test)."),
    test_videos: int = typer.Option(60, "--test-videos", help="How many of them form the test split."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same dataset."),
    size: int = typer.Option(96, "--size", help="Frame width and height in pixels: even, at least 16 "
                      "(decord reads 32, 64 and 96 back; 16, 24, 48 and 72 it cannot, and they are refused)."),
    fps: int = typer.Option(4, "--fps", help="Frames per second of the written videos."),
    seconds: int = typer.Option(12, "--seconds", help="Length of every video in seconds."),
    distractors: float = typer.Option(SYNTH_DISTRACTORS, "--distractors", min=0.0, max=1.0,
                                      help="Chance that a scene gets one more object that does nothing and that no "
                                      "caption names (0 = every object in view is in the caption; 0.5 gives about "
                                      "40 % of the scenes one, as redrawn scenes that do not fit lose theirs more "
                                      "often)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Write the synthetic moving-shapes text-video dataset (the offline default) in the MSR-VTT layout."""
    from rap_deploy.data.synth_dataset import generate_synthetic_dataset
    from rap_deploy.locks import folder_lock

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder for the dataset")
    bounds.check_int(seed, "--seed", 0, bounds.MAX_SEED)
    bounds.check_int(videos, "--videos", 2, bounds.MAX_VIDEOS)
    bounds.check_int(test_videos, "--test-videos", 1, bounds.MAX_VIDEOS)
    bounds.check_int(size, "--size", bounds.MIN_IMAGE_SIZE, bounds.MAX_IMAGE_SIZE)
    bounds.check_int(fps, "--fps", 1, 240)
    bounds.check_int(seconds, "--seconds", 3, 3600)
    with folder_lock(out, "synth", "dataset folder"):
        _refuse_foreign_dataset(out)
        summary = generate_synthetic_dataset(out, videos=videos, test_videos=test_videos, seed=seed, size=size,
                                             fps=fps, seconds=seconds, distractors=distractors,
                                             progress=not quiet)
    if json_out:
        typer.echo(json_text(summary))
    else:
        typer.echo(f"wrote {summary['videos']} videos ({summary['train_videos']} train, {summary['test_videos']} test, "
                   f"{summary['test_reverse_pairs']} time-reversed test pairs) and {summary['sentences']} captions "
                   f"to {out} in {summary['elapsed_s']} s")


def _refuse_foreign_dataset(out: Path) -> None:
    """Raise :class:`UsageError` when ``out`` holds an ``MSRVTT_data.json`` that ``rapdeploy synth`` did not write, or
    videos without one in a folder synth never wrote to (no :data:`~rap_deploy.data.synth_dataset.SYNTH_MARKER`).

    Writing removes that file and replaces ``videos/video<i>.mp4``, the names MSR-VTT's own videos have, so a real
    dataset folder given as ``--out`` would lose its annotation and its first videos.
    """
    import json

    from rap_deploy.data.synth_dataset import EARLIER_RADIUS, FORMAT, SYNTH_MARKER

    path = out / "MSRVTT_data.json"
    if not path.exists():
        videos = out / "videos"
        if videos.is_dir() and not (out / SYNTH_MARKER).is_file() and any(videos.iterdir()):
            raise UsageError(f"--out {out} has videos in {videos} but no annotation that rapdeploy synth wrote "
                             "(MSR-VTT videos without MSRVTT_data.json?); writing would replace its "
                             "videos/video<i>.mp4: pass a new folder")
        return
    try:
        info = json.loads(path.read_text(encoding="utf-8")).get("info")
    except (OSError, ValueError, RecursionError, AttributeError):
        info = None
    if not (isinstance(info, dict) and info.get("format") in (FORMAT, *EARLIER_RADIUS)):
        raise UsageError(f"--out {out} holds {path.name}, which is not a rapdeploy synthetic dataset (a real MSR-VTT "
                         "folder?); writing would delete it and replace its videos/video<i>.mp4: pass a new folder")


@command("data-check")
def data_check(
    dataset: str = typer.Option(..., "--dataset", help=f"Dataset format: {DATASET_NAMES}."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Dataset folder (default: $RAPDEPLOY_DATA)."),
    split: str = typer.Option("test", "--split", help="Split to check: train, val or test."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON (dataset, split, videos, captions, "
                                  "missing, undecodable, per_video, ok)."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Store the decoded frames in the workspace frame "
                               "cache, so training and verify do not decode them again."),
    image_size: int = typer.Option(224, "--image-size", help="Frame size after CLIP preprocessing (the model's input "
                                   "size; it is part of the cache key)."),
    frames: int | None = typer.Option(None, "--frames", help="Frames per video (default: 12 for msrvtt/msvd, 64 for "
                                      "didemo/activitynet)."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder for the cache "
                                          f"({WORKSPACE_DEFAULT})."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Read a dataset folder as training and verify would; exit 1 naming every missing or undecodable video."""
    from rap_deploy.config import PreprocessConfig
    from rap_deploy.data.cache import FrameCache
    from rap_deploy.data.check import check_dataset
    from rap_deploy.workspace import data_root as resolve_data_root

    bounds.check_int(image_size, "--image-size", bounds.MIN_IMAGE_SIZE, bounds.MAX_IMAGE_SIZE)
    if frames is not None:
        bounds.check_int(frames, "--frames", 1, bounds.MAX_FRAMES)
    root = resolve_data_root(data_root, workspace)
    frame_cache = FrameCache.default(workspace) if cache else FrameCache(None)
    report = check_dataset(dataset, root, split, cache=frame_cache, progress=not quiet,
                           preprocess=PreprocessConfig(image_size=image_size), max_frames=frames)
    if json_out:
        typer.echo(json_text(report))
    else:
        _print_report(report)
    if report["videos"] == 0:
        raise CheckFailedError(f"the {dataset} {split} split under {root} lists no videos: its annotation files are "
                               "empty or are not this dataset's")
    if not report["ok"]:
        problems = [f"{p} (missing)" for p in report["missing_paths"]]
        problems += [f"{u['path']} ({u['reason']})" for u in report["undecodable"]]
        shown = some_names(problems, 20, sep="; ")
        raise CheckFailedError(f"{len(problems)} of {report['videos']} videos unusable: {shown}"
                               f"{_all_missing_hint(report, root)}")


def _all_missing_hint(report: dict, root: Path) -> str:
    """Where the videos were looked for, when ``report`` (:func:`check_dataset`'s on the data root ``root``) finds
    every one of them missing (a ``--data-root`` holding the annotation files but not the videos, or them in a folder
    of another name), then the candidate videos folders left unread and the other folders of ``root`` that hold video
    files (as ``train``, ``export``, ``verify`` and ``bench`` name them); else ``""``."""
    from rap_deploy.retrieval import missing_videos_hint, video_folders_elsewhere

    if report["undecodable"] or len(report["missing"]) != report["videos"]:
        return ""
    videos_dir = Path(report["videos_dir"])
    unread = tuple(Path(folder) for folder in report["unread_videos_dirs"])
    return missing_videos_hint(videos_dir) + "".join(
        f"; {folder} also holds videos but is not read ({videos_dir.name}/ comes before it: rename {videos_dir.name}/ "
        "to read it instead)" for folder in unread) + video_folders_elsewhere(root, videos_dir, named=unread)


def _print_report(report: dict) -> None:
    counts = [v["frames"] for v in report["per_video"].values()]
    frames = "" if not counts else (f", {counts[0]} frames each" if min(counts) == max(counts)
                                    else f", {min(counts)}-{max(counts)} frames")
    typer.echo(f"{report['dataset']} {report['split']}: {report['videos']} videos, {report['captions']} captions"
               f"{frames}, {len(report['missing'])} missing, {len(report['undecodable'])} undecodable")
    if report["unread_videos_dirs"]:  # several candidate folders hold videos: say which one was read
        typer.echo(f"  videos read from {report['videos_dir']}; not read, though they hold videos: "
                   f"{', '.join(report['unread_videos_dirs'])} (move the videos wanted into {report['videos_dir']} "
                   "or rename the folder not wanted)")
    for note in report["not_searched"]:  # a video only there is reported missing, never taken from elsewhere
        typer.echo(f"  not searched for videos: {note}")
    for vid, path in zip(report["missing"], report["missing_paths"], strict=True):
        typer.echo(f"  missing      {vid}: {path}")
    for u in report["undecodable"]:
        typer.echo(f"  undecodable  {u['video_id']}: {u['path']} ({u['reason']})")
