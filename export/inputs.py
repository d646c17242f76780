"""Real inputs for export parity: decoded, preprocessed video frames and tokenized captions.

With a dataset folder, the first decodable test videos and their first captions are used. Without one, a few
synthetic videos (DESIGN.md §10) are rendered into a temporary folder and decoded the same way: full-length ones and
short ones, so the pool has padded frames (mask 0) as real short videos do.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rap_deploy.config import RAPConfig
from rap_deploy.data import DEFAULT_DATASET
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.name_lists import some_names

SYNTH_SEED = 0
SYNTH_SIZE = 96


@dataclass
class ParityInputs:
    """A pool of ``N`` videos and ``N`` captions, in model input form (numpy)."""

    frames: np.ndarray  # float32 [N,T,3,S,S], CLIP-normalised
    frame_mask: np.ndarray  # float32 [N,T], 1 = real frame
    input_ids: np.ndarray  # int32 [N,L]
    eot: np.ndarray  # int32 [N]
    video_ids: list[str]
    captions: list[str]
    source: str
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.video_ids)

    def describe(self) -> dict:
        """A JSON-able summary (for parity.json)."""
        return {"source": self.source, "videos": self.video_ids, "captions": self.captions,
                "valid_frames": self.frame_mask.sum(1).astype(int).tolist(), "skipped": self.skipped}


def _decode_pool(entries: list[tuple[str, Path, float | None, float | None]], config: RAPConfig, want: int
                 ) -> tuple[list[str], list[np.ndarray], list[np.ndarray], list[dict[str, str]]]:
    """Decode ``(video id, path, start, end)`` entries (the split's clip window, as training and verify decode it)
    until ``want`` decoded; returns the ids, normalised frames, masks and the skipped videos with their reasons."""
    from rap_deploy.data.video import VideoDecodeError, decode_video
    from rap_deploy.preprocess import normalize

    ids, frames, masks, skipped = [], [], [], []
    for vid, path, start, end in entries:
        if len(ids) == want:
            break
        try:
            video = decode_video(path, config.sampling, config.preprocess, start, end)
        except VideoDecodeError as exc:
            skipped.append({"video_id": vid, "reason": exc.reason})
            continue
        ids.append(vid)
        frames.append(normalize(video.frames, config.preprocess).numpy())
        masks.append(video.mask.astype(np.float32))
    return ids, frames, masks, skipped


def _tokenize(captions: list[str], config: RAPConfig) -> tuple[np.ndarray, np.ndarray]:
    from rap_deploy.tokenizer import tokenize

    return tokenize(captions, config.tokenizer)


def dataset_inputs(config: RAPConfig, data_root: Path, dataset: str = DEFAULT_DATASET, count: int = 6) -> ParityInputs:
    """The first ``count`` decodable test videos of ``dataset`` under ``data_root`` and their first captions.

    Raises :class:`UsageError` for a folder the dataset reader cannot read (exit 2), :class:`CheckFailedError` when
    fewer than 3 of the videos its annotations name are there and decode (exit 1: a dataset that does not hold what
    its captions name is damaged, as data-check and verify judge it).
    """
    from rap_deploy.data.datasets import load_split

    split = load_split(dataset, data_root, "test", max_frames=config.frames)
    entries = [(v.video_id, v.path, v.start, v.end) for v in split.videos]  # DiDeMo: the first 31 s
    ids, frames, masks, skipped = _decode_pool(entries, config, count)
    if len(ids) < 3:
        from rap_deploy.retrieval import videos_folder_hint

        named = some_names([f"{s['video_id']}: {s['reason']}" for s in skipped], shown=3, sep="; ")
        hint = videos_folder_hint(split, skipped) if not ids else ""
        raise CheckFailedError(f"only {len(ids)} test videos of {dataset} under {data_root} could be decoded (need 3 "
                               f"for parity; skipped {named}){hint}; fix the dataset or omit --data-root to use "
                               "synthetic videos")
    index = {v.video_id: i for i, v in enumerate(split.videos)}
    captions = [split.captions_of(index[v])[0] if split.captions_of(index[v]) else v for v in ids]
    input_ids, eot = _tokenize(captions, config)
    return ParityInputs(np.stack(frames), np.stack(masks), input_ids, eot, ids, captions,
                        f"{dataset} test split at {data_root}", skipped)


def synthetic_inputs(config: RAPConfig, count: int = 6, seed: int = SYNTH_SEED) -> ParityInputs:
    """Render ``count`` synthetic test videos (about a third of them shorter than ``T`` seconds, so padded).

    The videos go to a temporary folder that is deleted afterwards. Returns the decoded pool and test captions.
    """
    from rap_deploy.data.datasets import load_split
    from rap_deploy.data.synth_dataset import generate_synthetic_dataset

    t = config.frames
    n_short = count // 3 if max(3, t // 2) < t else 0
    n_full = count - n_short
    pools: dict[str, list[tuple[str, Path, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="rapdeploy-parity-") as tmp:
        for kind, n, seconds, kind_seed in (("full", n_full, max(3, t + 1), seed),
                                            ("short", n_short, max(3, t // 2), seed + 1)):
            if n == 0:
                pools[kind] = []
                continue
            root = Path(tmp) / kind
            generate_synthetic_dataset(root, videos=n + 1, test_videos=n, seed=kind_seed, size=SYNTH_SIZE,
                                       seconds=seconds, progress=False, captions_per_video=1)
            split = load_split("msrvtt", root, "test", max_frames=t)
            pools[kind] = [(f"{kind}/{v.video_id}", v.path, split.captions_of(i)[0])
                           for i, v in enumerate(split.videos)]
        order: list[tuple[str, Path, str]] = []
        full, short = list(pools["full"]), list(pools["short"])
        while full or short:  # interleave so every batch slice mixes full and padded videos
            for src in (full, short, full):
                if src:
                    order.append(src.pop(0))
        caption_of = {vid: cap for vid, _, cap in order}
        ids, frames, masks, skipped = _decode_pool([(v, p, None, None) for v, p, _ in order], config, count)
    if len(ids) < 3:
        raise UsageError(f"could not decode the synthetic parity videos ({skipped[:3]}); check decord/PyAV")
    captions = [caption_of[v] for v in ids]
    input_ids, eot = _tokenize(captions, config)
    return ParityInputs(np.stack(frames), np.stack(masks), input_ids, eot, ids, captions,
                        f"synthetic videos (seed {seed}, rendered at {SYNTH_SIZE} px)", skipped)


def parity_inputs(config: RAPConfig, data_root: Path | None = None, dataset: str = DEFAULT_DATASET,
                  count: int = 6) -> ParityInputs:
    """Real parity inputs: from ``data_root`` (``dataset`` test split) when given, else rendered synthetic videos."""
    if data_root is not None:
        return dataset_inputs(config, Path(data_root), dataset, count)
    return synthetic_inputs(config, count)
