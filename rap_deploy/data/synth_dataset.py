"""The synthetic dataset writer (DESIGN.md §10): random scenes of :mod:`rap_deploy.data.synth` rendered to ``.mp4``
with their captions, in the exact MSR-VTT layout, and read back (:func:`load_scenes`).

The test split comes in time-reversed pairs with captions unique in the split; the training split never holds a
test scene or its reverse. Everything is deterministic for a seed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.atomic import save_with, write_json_atomic, write_text_atomic
from rap_deploy.data import SYNTH_DISTRACTORS
from rap_deploy.data.folder_layout import DATASET_MARKERS
from rap_deploy.data.progress import progress_bar
from rap_deploy.data.synth import (
    ACTIONS,
    COLOURS,
    SHAPES,
    SIZE_RADIUS,
    SceneSpec,
    distinct_scene_keys,
    paraphrases,
    random_scene,
    render_scene,
    reverse_scene,
    scene_key,
)
from rap_deploy.errors import UsageError

FORMAT = "rapdeploy-synth-2"
# The object radius of each earlier format: its scenes render differently now, so such a dataset is refused.
EARLIER_RADIUS = {"rapdeploy-synth-1": {"small": 0.10, "big": 0.16}}


# The most test videos, as a share of the distinct scenes the generator can draw (distinct_scene_keys): each must be
# new to the split, and random draws find new ones ever more slowly as they run out (half of them: ~N ln 2 draws)
TEST_SHARE_OF_SCENES = 0.5

# Written into ``--out`` before the first video: a folder holding it (or a synthetic ``MSRVTT_data.json``) is synth's
# own, so an interrupted synth may write it again; any other folder with videos is refused (``rapdeploy synth``).
SYNTH_MARKER = ".rapdeploy-synth.json"


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write uint8 frames ``[T,H,W,3]`` as an MPEG-4 Part 2 ``.mp4`` (yuv420p, high quality) atomically."""
    import av

    def writer(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
            stream.pix_fmt = "yuv420p"
            stream.thread_count = 1  # deterministic output
            stream.options = {"qmin": "1", "qmax": "2"}  # near-lossless quantiser (~37 dB PSNR at 4:2:0)
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    save_with(path, writer)


def _check_readable(path: Path, size: int) -> None:
    """decord cannot read back MPEG-4 files of a few frame sizes (16, 24, 48, 72 px); fail early, not in training."""
    from rap_deploy.config import FrameSamplingConfig, PreprocessConfig
    from rap_deploy.data.video import VideoDecodeError, decode_video

    try:
        decode_video(path, FrameSamplingConfig(max_frames=2), PreprocessConfig(image_size=size))
    except VideoDecodeError as exc:
        raise UsageError(f"decord cannot read the {size}px videos written to {path.parent} ({exc.reason}); "
                         "use --size 32, 64 or 96") from None


def _unique_scene(rng: np.random.Generator, seconds: float, taken: set, distractors: float,
                  exclude: frozenset = frozenset()) -> SceneSpec:
    for _ in range(10_000):
        spec = random_scene(rng, seconds, distractors)
        key, rkey = scene_key(spec), scene_key(reverse_scene(spec))
        if not {key, rkey} & taken and not {key, rkey} & exclude:
            return spec
    raise UsageError("could not find enough distinct scenes; ask for fewer test videos")


def generate_synthetic_dataset(
    out: str | os.PathLike[str],
    videos: int = 300,
    test_videos: int = 60,
    seed: int = 0,
    size: int = 96,
    fps: int = 4,
    seconds: int = 12,
    progress: bool = True,
    captions_per_video: int = 5,
    distractors: float = SYNTH_DISTRACTORS,
    exclude: frozenset = frozenset(),
) -> dict[str, Any]:
    """Write the synthetic dataset in the MSR-VTT layout under ``out`` and return a summary dict.

    ``videos`` is the total count (as MSR-VTT's 10k), ``test_videos`` of them form the test split (``video<i>`` ids
    after the training ones). Writes ``videos/video<i>.mp4`` (``size`` px square, ``fps`` frames per second,
    ``seconds`` long), ``MSRVTT_data.json`` (``videos`` with a ``synth`` scene description, ``sentences`` with
    ``captions_per_video`` paraphrases each), ``MSRVTT_train.9k.csv`` and ``MSRVTT_JSFUSION_test.csv`` (the canonical
    caption of each test video, unique in the split). Test videos come in time-reversed pairs; half of the training
    videos too. Each scene holds, with a probability a little under ``distractors``
    (:func:`~rap_deploy.data.synth.random_scene`), one more object that does nothing and that no caption names.
    ``exclude`` holds scene keys (:func:`~rap_deploy.data.synth.scene_key`) no test scene may have, nor its time
    reverse: another world's scenes, for a held-out split (:mod:`rap_deploy.data.synth_heldout`).
    Deterministic for a seed. Raises :class:`UsageError` for impossible settings.
    """
    _check_settings(videos, test_videos, size, fps, seconds, distractors)
    started = time.perf_counter()
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / SYNTH_MARKER, {"format": FORMAT})  # before any video: this folder's videos are synth's
    _remove_annotation_files(out)
    rng = np.random.default_rng(seed)
    n_train = videos - test_videos
    with progress_bar(videos, "drawing scenes", enabled=progress) as advance:
        test_specs, taken = _test_scenes(rng, seconds, test_videos, distractors, exclude, advance)
        specs = _train_scenes(rng, seconds, n_train, taken, distractors, advance) + test_specs
    ids = [f"video{i}" for i in range(videos)]
    _write_videos(out, ids, specs, size, fps, seconds, progress)
    _remove_stale_videos(out / "videos", set(ids))
    video_items, sentences, test_rows = _annotations(ids, specs, n_train, seed, seconds, captions_per_video)
    info = _info(seed, size, fps, seconds, distractors)
    _write_annotation_files(out, ids[:n_train], test_rows, video_items, sentences, info)
    return {
        "out": str(out),
        "videos": videos,
        "train_videos": n_train,
        "test_videos": test_videos,
        "test_reverse_pairs": _reverse_pairs(test_specs, taken) // 2,
        "sentences": len(sentences),
        "size": size,
        "fps": fps,
        "seconds_per_video": seconds,
        "distractors": distractors,
        "seed": seed,
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


def _remove_annotation_files(out: Path) -> None:
    """Delete every MSR-VTT annotation file in ``out`` (the test split reads ``MSRVTT_JSFUSION_test.csv`` alone,
    training the train csv and ``MSRVTT_data.json``) before the first video is rewritten.

    The annotation is written last and marks a complete dataset, so a run killed while it rewrites the videos never
    leaves an earlier run's captions over new videos: the readers then refuse the folder for its missing annotation.
    """
    for name in DATASET_MARKERS["msrvtt"]:
        (out / name).unlink(missing_ok=True)


def _remove_stale_videos(folder: Path, ids: set[str]) -> None:
    """Delete ``video<i>.mp4`` files of an earlier, larger synth into the same folder: no annotation names them, and
    ``--videos`` / ``index --videos`` over the folder would take them for this world's."""
    for path in folder.glob("video*.mp4"):
        if re.fullmatch(r"video\d+\.mp4", path.name) and path.stem not in ids and path.is_file():
            path.unlink()


def _check_settings(videos: int, test_videos: int, size: int, fps: int, seconds: int, distractors: float) -> None:
    """Raise :class:`UsageError` for split sizes, a frame size, a timing or a distractor rate the generator cannot
    honour."""
    if videos < 2 or not 1 <= test_videos < videos:
        raise UsageError(f"need 1 <= test videos < videos, got --videos {videos} --test-videos {test_videos}")
    if size < 16 or size % 2:
        raise UsageError(f"--size must be an even number of pixels >= 16, got {size}")
    if fps < 1 or seconds < 3:
        raise UsageError(f"need fps >= 1 and seconds >= 3, got fps {fps}, seconds {seconds}")
    if not 0.0 <= distractors <= 1.0:
        raise UsageError(f"--distractors is the fraction of scenes with a distractor, 0 to 1; got {distractors}")
    _check_test_count(test_videos)
    from rap_deploy.bounds import check_memory

    # one video is rendered whole in float32, with about as much again in per-object temporaries
    check_memory(2 * fps * seconds * size * size * 3 * 4, f"rendering one {seconds} s video of {size}x{size} px at "
                 f"{fps} fps", "pass a smaller --size, --fps or --seconds")


def _check_test_count(test_videos: int) -> None:
    """Raise :class:`UsageError` for more test videos than the generator can draw distinct scenes for in reasonable
    time (:data:`TEST_SHARE_OF_SCENES` of :func:`~rap_deploy.data.synth.distinct_scene_keys`)."""
    scenes = distinct_scene_keys()
    most = int(scenes * TEST_SHARE_OF_SCENES)
    if test_videos > most:
        raise UsageError(f"--test-videos {test_videos:,} is more than synth can draw: every test video needs a caption "
                         f"of its own, the generator has at most {scenes:,} distinct scenes ({len(COLOURS)} colours x "
                         f"{len(SHAPES)} shapes x 2 sizes x {len(ACTIONS)} actions, one or two events), and random "
                         f"draws find new ones ever more slowly as they run out: pass --test-videos {most:,} or fewer")


def _test_scenes(rng: np.random.Generator, seconds: float, count: int, distractors: float,
                 exclude: frozenset = frozenset(),
                 advance: Callable[[int], None] = lambda n=1: None) -> tuple[list[SceneSpec], set]:
    """Draw the test split, shuffled, and the set of its scene keys (each unique in the split, none in ``exclude``
    nor the reverse of one there); ``advance`` is called per scene drawn."""
    # Time-reversed pairs with keys unique in the whole split (and, see _train_scenes, absent from training).
    taken: set = set()
    specs: list[SceneSpec] = []
    while len(specs) < count:
        spec = _unique_scene(rng, seconds, taken, distractors, exclude)
        group = [spec, reverse_scene(spec)] if count - len(specs) >= 2 else [spec]
        for s in group:
            taken.add(scene_key(s))
            specs.append(s)
        advance(len(group))
    order = rng.permutation(len(specs))
    return [specs[i] for i in order], taken


def _train_scenes(rng: np.random.Generator, seconds: float, count: int, taken: set, distractors: float,
                  advance: Callable[[int], None] = lambda n=1: None) -> list[SceneSpec]:
    """Draw the training split: scenes whose key and reverse key are not ``taken`` by the test split, about half of
    them followed by their time reverse; ``advance`` is called per scene drawn. (Scenes may repeat, so any count
    can be drawn: the test split takes at most half the keys, :func:`_check_test_count`.)"""
    specs: list[SceneSpec] = []
    while len(specs) < count:
        spec = random_scene(rng, seconds, distractors)
        if scene_key(spec) in taken or scene_key(reverse_scene(spec)) in taken:
            continue
        before = len(specs)
        specs.append(spec)
        if len(specs) < count and rng.random() < 0.5:
            specs.append(reverse_scene(spec))
        advance(len(specs) - before)
    return specs


def _reverse_pairs(test_specs: list[SceneSpec], taken: set) -> int:
    """How many test scenes have their time reverse in the test split (twice the number of pairs)."""
    return sum(1 for s in test_specs if scene_key(reverse_scene(s)) in taken)


def _write_videos(out: Path, ids: list[str], specs: list[SceneSpec], size: int, fps: int, seconds: int,
                  progress: bool) -> None:
    """Render and write ``videos/<id>.mp4`` for every scene; the first one is read back (see _check_readable)."""
    times = np.arange(fps * seconds) / fps
    with progress_bar(len(ids), "rendering videos", enabled=progress) as advance:
        for i, (vid, spec) in enumerate(zip(ids, specs, strict=True)):
            write_video(out / "videos" / f"{vid}.mp4", render_scene(spec, times, size, seconds), fps)
            if i == 0:
                _check_readable(out / "videos" / f"{vid}.mp4", size)
            advance()


def _annotations(ids: list[str], specs: list[SceneSpec], n_train: int, seed: int, seconds: int,
                 captions_per_video: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``videos`` and ``sentences`` entries of ``MSRVTT_data.json`` and the rows of the test csv."""
    cap_rng = np.random.default_rng([seed, 1])
    sentences, video_items, test_rows = [], [], []
    for i, (vid, spec) in enumerate(zip(ids, specs, strict=True)):
        split = "train" if i < n_train else "test"
        video_items.append({
            "category": 0, "url": f"synthetic://rapdeploy/{seed}/{vid}", "video_id": vid,
            "start time": 0.0, "end time": float(seconds), "split": split, "id": i, "synth": spec.to_dict(),
        })
        caps = paraphrases(spec, cap_rng, captions_per_video)
        for cap in caps:
            sentences.append({"caption": cap, "video_id": vid, "sen_id": len(sentences)})
        if split == "test":
            row = {"key": f"ret{len(test_rows)}", "vid_key": f"msr{i}", "video_id": vid, "sentence": caps[0]}
            test_rows.append(row)
    return video_items, sentences, test_rows


def _info(seed: int, size: int, fps: int, seconds: int, distractors: float) -> dict[str, Any]:
    """The ``info`` block of ``MSRVTT_data.json`` (what :func:`load_scenes` checks and returns)."""
    return {
        "description": "rapdeploy synthetic text-video retrieval dataset (moving shapes), MSR-VTT layout",
        "format": FORMAT, "seed": seed, "size": size, "fps": fps, "seconds": seconds, "distractors": distractors,
        "colours": list(COLOURS), "shapes": list(SHAPES), "actions": list(ACTIONS), "object_radius": dict(SIZE_RADIUS),
    }


def _write_annotation_files(out: Path, train_ids: list[str], test_rows: list[dict[str, Any]],
                            video_items: list[dict[str, Any]], sentences: list[dict[str, Any]],
                            info: dict[str, Any]) -> None:
    """Write the train and test csvs, then ``MSRVTT_data.json``."""
    write_text_atomic(out / "MSRVTT_train.9k.csv", _csv([{"video_id": v} for v in train_ids], ["video_id"]))
    write_text_atomic(out / "MSRVTT_JSFUSION_test.csv", _csv(test_rows, ["key", "vid_key", "video_id", "sentence"]))
    # The JSON goes last: a folder with it is complete.
    write_json_atomic(out / "MSRVTT_data.json", {"info": info, "videos": video_items, "sentences": sentences})


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def radius_text(radius: dict[str, float]) -> str:
    """``"0.13 / 0.21"``: a small and a big object's radius (fractions of the frame side), for messages."""
    return f"{radius['small']:.2f} / {radius['big']:.2f}"


def check_synth_format(path: Path, info: Any) -> None:
    """Check that ``info`` (the ``info`` block of ``path``, a ``MSRVTT_data.json``) is this version's synthetic world.

    Raises :class:`UsageError` naming the file, its format and the fix: a dataset of an earlier format (whose scenes
    this version would render differently) is to be written again into a new folder.
    """
    found = info.get("format") if isinstance(info, dict) else None
    if found == FORMAT:
        return
    if found in EARLIER_RADIUS:
        raise UsageError(f"{path} is a synthetic dataset of an earlier rapdeploy ({found}): its objects are smaller "
                         f"(radius {radius_text(EARLIER_RADIUS[found])} of the frame, now {radius_text(SIZE_RADIUS)}); "
                         "write it again with `rapdeploy synth --out NEW_FOLDER` (or `rapdeploy demo --out "
                         "NEW_FOLDER`)")
    raise UsageError(f"{path} is not a rapdeploy synthetic dataset (info.format is {found!r}, not {FORMAT!r})")


def check_synth_finished(root: Path) -> None:
    """Return unless ``root`` is a folder ``rapdeploy synth`` began to write (it holds :data:`SYNTH_MARKER`) and never
    finished (no ``MSRVTT_data.json``, the file written last).

    Raises :class:`UsageError` naming the folder and the fix, ``rapdeploy synth --out ROOT`` again: its videos may be
    of two runs, and no annotation names them (:func:`_remove_annotation_files`).
    """
    if (root / SYNTH_MARKER).is_file() and not (root / "MSRVTT_data.json").is_file():
        raise UsageError(f"{root} holds a synthetic dataset that rapdeploy synth did not finish (it was stopped "
                         "before writing MSRVTT_data.json, so its videos may be of two runs): run "
                         f"`rapdeploy synth --out {shlex.quote(str(root))}` again, with the options it had")


def load_scenes(data_root: str | os.PathLike[str]) -> tuple[dict[str, SceneSpec], dict[str, Any]]:
    """Read the scene of every video and the ``info`` block from a synthetic ``MSRVTT_data.json``.

    Raises :class:`UsageError` when the folder was not written by :func:`generate_synthetic_dataset`.
    """
    path = Path(data_root) / "MSRVTT_data.json"
    if not path.is_file():
        raise UsageError(f"{path} is missing; run rapdeploy synth --out {data_root}")
    data = json.loads(path.read_text(encoding="utf-8"))
    info = data.get("info", {})
    check_synth_format(path, info)
    return {v["video_id"]: SceneSpec.from_dict(v["synth"]) for v in data["videos"]}, info
