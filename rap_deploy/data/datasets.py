"""Dataset readers in the CLIP4Clip file formats (DESIGN.md §5) and the training dataset.

``load_split`` turns a dataset folder into a :class:`RetrievalSplit`: the videos, every caption (a query) and the
video each caption belongs to. MSR-VTT test (1k-A) has one caption per video; MSVD test has many (every caption is a
query); DiDeMo and ActivityNet have one paragraph per video (all its sentences joined). Video files that do not exist
are still listed, so ``data-check`` and training can report them by name. The checked readers of the annotation files
themselves are :mod:`rap_deploy.data.annotation_files`; where each video's file is, :mod:`rap_deploy.data.video_files`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from rap_deploy.config import FrameSamplingConfig, PreprocessConfig, TokenizerConfig
from rap_deploy.data import DATASET_NAMES, DATASETS
from rap_deploy.data.annotation_files import (
    caption_text,
    damaged,
    duration_seconds,
    numbered_csv_rows,
    plain_video_id,
    read_csv,
    read_json,
    read_list,
    read_pickle,
    require_key,
)
from rap_deploy.data.cache import FrameCache
from rap_deploy.data.folder_layout import check_dataset_layout
from rap_deploy.data.video_files import StemFinder, msrvtt_video, video_folder_choice
from rap_deploy.errors import UsageError
from rap_deploy.safe_paths import absent
from rap_deploy.workspace import user_path

# Split names each reader accepts, and the file set they map to (CLIP4Clip: MSR-VTT validates on its test split,
# ActivityNet tests on val_1).
_SPLITS = {
    "msrvtt": {"train": "train", "test": "test", "val": "test"},
    "msvd": {"train": "train", "val": "val", "test": "test"},
    "didemo": {"train": "train", "val": "val", "test": "test"},
    "activitynet": {"train": "train", "val": "val", "test": "val"},
}
# CLIP4Clip uses the first 31 seconds of a DiDeMo video: the annotations cover only the first 30.
DIDEMO_END_SECONDS = 31.0


@dataclass
class VideoEntry:
    """One video of a split: its id, its file (which may not exist) and an optional segment in seconds."""

    video_id: str
    path: Path
    start: float | None = None
    end: float | None = None


@dataclass
class RetrievalSplit:
    """A split of a retrieval dataset: ``videos``, ``captions`` and ``caption_video[i]`` = video index of caption i."""

    dataset: str
    split: str
    videos: list[VideoEntry]
    captions: list[str]
    caption_video: np.ndarray
    sampling: FrameSamplingConfig
    context_length: int
    data_root: Path | None = field(default=None)
    videos_dir: Path | None = field(default=None)
    # the other candidate videos folders that hold videos, left unread (video_files.unread_video_folders)
    unread_videos_dirs: tuple[Path, ...] = field(default=())
    # what the search for videos in sub-folders left out (video_files.StemFinder.not_searched): a video only there
    # is missing
    not_searched: tuple[str, ...] = field(default=())

    @property
    def num_videos(self) -> int:
        """Number of videos (candidates), including those whose file is missing."""
        return len(self.videos)

    @property
    def num_captions(self) -> int:
        """Number of captions (text queries)."""
        return len(self.captions)

    @property
    def tokenizer(self) -> TokenizerConfig:
        """The tokenizer settings of this dataset (open_clip BPE at ``context_length``)."""
        return TokenizerConfig(context_length=self.context_length)

    @property
    def multi_caption(self) -> bool:
        """True when some video has more than one caption (MSVD-style evaluation)."""
        return bool(np.any(np.bincount(self.caption_video, minlength=self.num_videos) > 1))

    def video_captions(self) -> list[list[int]]:
        """Return, for every video, the indices of its captions (empty list for a video without captions)."""
        groups: list[list[int]] = [[] for _ in self.videos]
        for c, v in enumerate(self.caption_video.tolist()):
            groups[v].append(c)
        return groups

    def captions_of(self, video_index: int) -> list[str]:
        """Return the captions of video ``video_index``."""
        return [self.captions[c] for c in np.flatnonzero(self.caption_video == video_index)]

    def subset(self, video_indices: list[int] | np.ndarray) -> RetrievalSplit:
        """Return a split with only the given videos (in that order) and their captions."""
        keep = [int(v) for v in video_indices]
        new_index = {v: i for i, v in enumerate(keep)}
        caps, owner = [], []
        for c, v in enumerate(self.caption_video.tolist()):
            if v in new_index:
                caps.append(self.captions[c])
                owner.append(new_index[v])
        return replace(
            self,
            videos=[self.videos[v] for v in keep],
            captions=caps,
            caption_video=np.asarray(owner, dtype=np.int64),
        )


def dataset_defaults(name: str) -> tuple[FrameSamplingConfig, int]:
    """Return ``(frame sampling, text context length)`` of a dataset: 12 frames / 32 tokens for MSR-VTT and MSVD,
    64 frames / 64 tokens for the paragraph datasets DiDeMo and ActivityNet. Raises :class:`UsageError` if unknown."""
    check_dataset(name)
    if name in ("didemo", "activitynet"):
        return FrameSamplingConfig(max_frames=64, fps=1.0), 64
    return FrameSamplingConfig(max_frames=12, fps=1.0), 32


def load_split(
    dataset: str,
    data_root: str | os.PathLike[str],
    split: str = "test",
    max_frames: int | None = None,
) -> RetrievalSplit:
    """Read ``split`` of ``dataset`` from ``data_root`` (CLIP4Clip layout, videos under ``data_root/videos`` or the
    folder CLIP4Clip's README names, :func:`~rap_deploy.data.video_files.videos_folder`; the other candidate folders
    holding videos, left unread, are ``unread_videos_dirs``).

    ``max_frames`` overrides the dataset's default frame count. Raises :class:`UsageError` (exit 2) for an unknown
    dataset or split, a missing folder or annotation file; :class:`CheckFailedError` (exit 1) for a damaged
    annotation file: not UTF-8 text, invalid JSON or CSV, a missing key or column, a value of the wrong type, a
    video id that is not a plain file name (``../../x`` would read outside the videos folder), an empty or
    non-Unicode caption, or two video ids that name one file (:func:`distinct_files`), naming file, key and value.
    """
    check_dataset(dataset)
    splits = _SPLITS[dataset]
    if split not in splits:
        raise UsageError(f"{dataset} has no split '{split}'; use one of {', '.join(splits)}")
    root = user_path(data_root, "--data-root")
    if not root.is_dir():
        what = "is not a folder" if root.exists() else absent(root)
        raise UsageError(f"dataset folder {root} {what}; pass --data-root pointing at the {dataset} folder")
    _check_finished(root, dataset)
    check_dataset_layout(root, dataset)
    sampling, context_length = dataset_defaults(dataset)
    if max_frames is not None:
        if max_frames < 1:
            raise UsageError(f"max_frames must be >= 1, got {max_frames}")
        sampling = replace(sampling, max_frames=int(max_frames))
    videos_dir, unread = video_folder_choice(root, dataset)
    finders: dict[Path, StemFinder] = {}  # the sub-folder searches the reader made, for what they left out
    videos, captions, owner = _READERS[dataset](root, splits[split], videos_dir, finders)
    return RetrievalSplit(
        dataset=dataset,
        split=split,
        videos=videos,
        captions=captions,
        caption_video=np.asarray(owner, dtype=np.int64),
        sampling=sampling,
        context_length=context_length,
        data_root=root,
        videos_dir=videos_dir,
        unread_videos_dirs=tuple(unread),
        not_searched=tuple(note for finder in finders.values() for note in finder.not_searched),
    )


def reads_test_files(dataset: str, split: str) -> bool:
    """Whether ``split`` of ``dataset`` reads the annotation files its ``test`` split reads (the split evaluations
    default to): True for ``test``, MSR-VTT's ``val`` and ActivityNet's ``val``; False for another split and for an
    unknown dataset or split (which :func:`load_split` refuses)."""
    splits = _SPLITS.get(dataset, {})
    return split in splits and splits[split] == splits["test"]


def _check_finished(root: Path, dataset: str) -> None:
    """Refuse (:class:`UsageError`) an MSR-VTT folder that an interrupted ``rapdeploy synth`` left behind."""
    if dataset == "msrvtt":
        from rap_deploy.data.synth_dataset import check_synth_finished

        check_synth_finished(root)


def check_dataset(name: str) -> None:
    """Refuse (:class:`UsageError`, exit 2) a dataset name that is not one of :data:`DATASETS`."""
    if name not in DATASETS:
        raise UsageError(f"dataset '{name}' is unknown; use one of {DATASET_NAMES}")


# ---------------------------------------------------------------------------------------------------------- readers

Readout = tuple[list[VideoEntry], list[str], list[int]]


def _read_msrvtt(root: Path, split: str, videos_dir: Path, finders: dict[Path, StemFinder]) -> Readout:
    # finders: videos_dir walked once, when some video is in neither videos/ nor videos/all/
    videos: list[VideoEntry] = []
    captions: list[str] = []
    owner: list[int] = []
    if split == "test":
        # 1k-A: one row per test video with its one caption.
        path = root / "MSRVTT_JSFUSION_test.csv"
        index: dict[str, int] = {}
        for line, row in numbered_csv_rows(path, ("video_id", "sentence")):
            vid = plain_video_id(row["video_id"], path)
            if vid not in index:
                index[vid] = len(videos)
                videos.append(VideoEntry(vid, msrvtt_video(videos_dir, vid, finders)))
            captions.append(caption_text(row["sentence"] or "", path, f"row {line}, video '{vid}'"))
            owner.append(index[vid])
        return distinct_files(videos, path), captions, owner
    train_csv = root / "MSRVTT_train.9k.csv"
    ids = [plain_video_id(row["video_id"], train_csv) for row in read_csv(train_csv, ("video_id",))]
    data_path = root / "MSRVTT_data.json"
    data = read_json(data_path)
    sentences = require_key(data, "sentences", data_path, kind=list)
    by_video: dict[str, list[tuple[int, str]]] = {}  # video id -> (index in sentences, caption)
    for i, item in enumerate(sentences):
        vid = require_key(item, "video_id", data_path, f"sentences[{i}]", kind=(str, int))
        caption = require_key(item, "caption", data_path, f"sentences[{i}]", kind=str)
        by_video.setdefault(str(vid), []).append((i, caption))
    for vid in dict.fromkeys(ids):  # unique, in file order
        if vid not in by_video:
            raise damaged(data_path, f"has no sentences for training video '{vid}' listed in MSRVTT_train.9k.csv")
        for i, cap in by_video[vid]:
            captions.append(caption_text(cap, data_path, f"sentences[{i}], video '{vid}'"))
            owner.append(len(videos))
        videos.append(VideoEntry(vid, msrvtt_video(videos_dir, vid, finders)))
    return distinct_files(videos, train_csv), captions, owner


# The caption text one split may hold (MSVD's 80,000 captions are about 3 million characters).
MAX_CAPTION_CHARS = 20_000_000


def _read_msvd(root: Path, split: str, videos_dir: Path, finders: dict[Path, StemFinder]) -> Readout:
    list_path = root / f"{split}_list.txt"
    ids = [plain_video_id(v, list_path) for v in read_list(list_path)]
    cap_path = root / "raw-captions.pkl"
    raw = read_pickle(cap_path)
    if not isinstance(raw, dict):
        raise damaged(cap_path, f"should hold a dict video id -> list of token lists, found {type(raw).__name__}")
    finders[videos_dir] = finder = StemFinder(videos_dir, root)
    videos: list[VideoEntry] = []
    captions: list[str] = []
    owner: list[int] = []
    chars = 0
    for vid in ids:
        if vid not in raw:
            raise damaged(cap_path, f"has no key '{vid}' (listed in {split}_list.txt)")
        if not isinstance(raw[vid], (list, tuple)):
            raise damaged(cap_path, f"key '{vid}' holds a {type(raw[vid]).__name__}, not a list of captions")
        for k, tokens in enumerate(raw[vid]):
            # a caption is text or a flat list of words: nested or shared lists could expand to any size
            if not (isinstance(tokens, str) or (isinstance(tokens, (list, tuple))
                                                and all(isinstance(t, str) for t in tokens))):
                raise damaged(cap_path, f"key '{vid}' holds a caption that is neither text nor a list of words "
                                        f"({type(tokens).__name__})")
            # one list pickled once can be referenced by every caption: count what the captions would hold first
            chars += len(tokens) if isinstance(tokens, str) else sum(len(t) + 1 for t in tokens)
            if chars > MAX_CAPTION_CHARS:
                raise damaged(cap_path, f"holds captions of more than {MAX_CAPTION_CHARS:,} characters for the "
                                        f"{split} split (the real file holds a few million)")
            text = tokens if isinstance(tokens, str) else " ".join(tokens)
            captions.append(caption_text(text, cap_path, f"caption {k} of video '{vid}'"))
            owner.append(len(videos))
        videos.append(VideoEntry(vid, finder.find(vid, default_ext=".avi")))
    return distinct_files(videos, list_path), captions, owner


def _read_didemo(root: Path, split: str, videos_dir: Path, finders: dict[Path, StemFinder]) -> Readout:
    list_path = root / f"{split}_list.txt"
    ids = [plain_video_id(v, list_path) for v in read_list(list_path)]
    data_path = root / f"{split}_data.json"
    data = read_json(data_path)
    if not isinstance(data, list):
        raise damaged(data_path, "should be a list of LocalizingMoments annotations")
    wanted = set(ids)
    paragraphs: dict[str, list[str]] = {}
    for i, item in enumerate(data):
        vid = str(require_key(item, "video", data_path, f"[{i}]", kind=(str, int)))
        description = require_key(item, "description", data_path, f"[{i}]", kind=str).strip()
        if vid in wanted:
            paragraphs.setdefault(vid, []).append(description)
    finders[videos_dir] = finder = StemFinder(videos_dir, root)
    videos: list[VideoEntry] = []
    captions: list[str] = []
    owner: list[int] = []
    for vid in ids:
        if vid not in paragraphs:
            raise damaged(data_path, f"has no description for video '{vid}' (listed in {split}_list.txt)")
        captions.append(caption_text(" ".join(paragraphs[vid]), data_path, f"the descriptions of video '{vid}'"))
        owner.append(len(videos))
        videos.append(VideoEntry(vid, finder.find(vid, default_ext=".mp4"), start=None, end=DIDEMO_END_SECONDS))
    return distinct_files(videos, list_path), captions, owner


def _read_activitynet(root: Path, split: str, videos_dir: Path, finders: dict[Path, StemFinder]) -> Readout:
    ids_path = root / f"{split}_ids.json"
    ids = read_json(ids_path)
    if not isinstance(ids, list):
        raise damaged(ids_path, "should be a JSON list of video ids like 'v_QOlSCBRmfWY'")
    data_path = root / ("train.json" if split == "train" else "val_1.json")
    data = read_json(data_path)
    if not isinstance(data, dict):
        raise damaged(data_path, "should map 'v_<id>' to {duration, timestamps, sentences}")
    finders[videos_dir] = finder = StemFinder(videos_dir, root)
    videos: list[VideoEntry] = []
    captions: list[str] = []
    owner: list[int] = []
    for pseudo in dict.fromkeys(plain_video_id(i, ids_path) for i in ids):
        item = require_key(data, pseudo, data_path)
        sentences = require_key(item, "sentences", data_path, pseudo, kind=list)
        duration = duration_seconds(require_key(item, "duration", data_path, pseudo), data_path, pseudo)
        bad = next((s for s in sentences if not isinstance(s, str)), None)
        if bad is not None:  # str() would make the text of a list or an object a caption
            raise damaged(data_path, f"has a sentence of type {type(bad).__name__} ({str(bad)[:40]!r}) in {pseudo}, "
                                     "expected text")
        captions.append(caption_text(" ".join(s.strip() for s in sentences), data_path, f"the sentences of {pseudo}"))
        owner.append(len(videos))
        # CLIP4Clip strips the "v_" prefix to find the file; many copies keep it, so look for both.
        bare = pseudo[2:] if pseudo.startswith("v_") else pseudo
        path = finder.find(bare, default_ext=".mp4", alternatives=(pseudo,))
        # a duration of 0 says nothing (a segment [0, 0] would read one frame): read to the video's end
        videos.append(VideoEntry(pseudo, path, start=None, end=float(np.ceil(duration)) if duration > 0 else None))
    return distinct_files(videos, ids_path), captions, owner


def distinct_files(videos: list[VideoEntry], source: Path) -> list[VideoEntry]:
    """``videos``, checked to be distinct candidates: two ids listed in ``source`` that name one file and segment
    (``abc`` and ``abc.avi``, or ActivityNet's ``v_abc`` and ``abc``) would put the same video in the gallery twice,
    tied with itself; raises :class:`CheckFailedError` naming both ids and the file."""
    seen: dict[tuple[Path, float | None, float | None], str] = {}
    for entry in videos:
        first = seen.setdefault((entry.path, entry.start, entry.end), entry.video_id)
        if first != entry.video_id:
            raise damaged(source, f"lists video ids '{first}' and '{entry.video_id}', which are the same file "
                                  f"{entry.path}; keep one of them")
    return videos


_READERS: dict[str, Callable[[Path, str, Path, dict[Path, StemFinder]], Readout]] = {
    "msrvtt": _read_msrvtt,
    "msvd": _read_msvd,
    "didemo": _read_didemo,
    "activitynet": _read_activitynet,
}


# ------------------------------------------------------------------------------------------------ training dataset


def video_tensors(cache: FrameCache, split: RetrievalSplit, index: int,
                  preprocess: PreprocessConfig) -> dict[str, torch.Tensor]:
    """Video ``index`` of ``split`` as the model takes it (both datasets' items): ``frames`` decoded through
    ``cache`` and normalised, ``frame_mask`` (1.0 for a real frame, 0.0 for padding)."""
    from rap_deploy.preprocess import normalize

    entry = split.videos[index]
    video = cache.get(entry.path, split.sampling, preprocess, entry.start, entry.end)
    return {"frames": normalize(video.frames, preprocess),
            "frame_mask": torch.from_numpy(video.mask.astype(np.float32))}


class VideoCaptionDataset(torch.utils.data.Dataset):
    """Training pairs: one item per caption of a :class:`RetrievalSplit`, with its video's frames.

    Call :meth:`prepare` first (it runs automatically on first use): it decodes every video once into the
    :class:`FrameCache`, records the videos that fail in ``bad_videos`` (``{video_id, reason}``) and drops their
    captions. An item is a dict: ``frames`` float32 ``[T,3,S,S]`` (CLIP-normalised), ``frame_mask`` float32 ``[T]``,
    ``ids`` int32 ``[L]``, ``eot`` int32 scalar, ``video_index`` and ``caption_index`` ints.
    """

    def __init__(
        self,
        split: RetrievalSplit,
        cache: FrameCache,
        preprocess: PreprocessConfig,
        tokenizer: TokenizerConfig | None = None,
    ) -> None:
        from rap_deploy.tokenizer import tokenize

        self.split = split
        self.cache = cache
        self.preprocess = preprocess
        self.tokenizer = tokenizer or split.tokenizer
        self.ids, self.eot = tokenize(split.captions, self.tokenizer)
        self.bad_videos: list[dict[str, str]] = []
        self.items: np.ndarray | None = None

    def prepare(self, progress: bool = False) -> VideoCaptionDataset:
        """Decode every video once (into the cache); keep the captions of the videos that decode. Returns self."""
        from rap_deploy.data.progress import progress_bar
        from rap_deploy.data.video import VideoDecodeError

        good = np.zeros(self.split.num_videos, dtype=bool)
        bad: list[dict[str, str]] = []
        with progress_bar(self.split.num_videos, "decoding videos", enabled=progress) as advance:
            for i, entry in enumerate(self.split.videos):
                try:
                    self.cache.get(entry.path, self.split.sampling, self.preprocess, entry.start, entry.end)
                    good[i] = True
                except VideoDecodeError as exc:
                    bad.append({"video_id": entry.video_id, "reason": exc.reason, "path": str(entry.path)})
                advance()
        self.bad_videos = bad
        self.items = np.flatnonzero(good[self.split.caption_video])
        return self

    def __len__(self) -> int:
        if self.items is None:
            self.prepare()
        assert self.items is not None
        return int(len(self.items))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.items is None:
            self.prepare()
        assert self.items is not None
        c = int(self.items[index])
        v = int(self.split.caption_video[c])
        return {
            **video_tensors(self.cache, self.split, v, self.preprocess),
            "ids": torch.from_numpy(self.ids[c].copy()),
            "eot": torch.tensor(int(self.eot[c]), dtype=torch.int32),
            "video_index": v,
            "caption_index": c,
        }


class VideoDataset(torch.utils.data.Dataset):
    """Evaluation videos: one item per video of a split (``frames``, ``frame_mask``, ``video_index``).

    A video that cannot be decoded raises :class:`~rap_deploy.data.video.VideoDecodeError` (evaluation must not
    drop candidates silently; run ``data-check`` first).
    """

    def __init__(self, split: RetrievalSplit, cache: FrameCache, preprocess: PreprocessConfig) -> None:
        self.split = split
        self.cache = cache
        self.preprocess = preprocess

    def __len__(self) -> int:
        return self.split.num_videos

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**video_tensors(self.cache, self.split, index, self.preprocess), "video_index": int(index)}
