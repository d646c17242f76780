"""Retrieval over a video index: encoding a split, full ASA similarity, two-stage search, evaluation.

Works with anything that has the :class:`~rap_deploy.engines.base.Engine` methods (numpy in, numpy out): an engine,
or :class:`~rap_deploy.model_encoder.ModelEncoder` around a PyTorch :class:`~rap_deploy.model.rap.RAPModel`.
Training, verify and bench all evaluate through :func:`evaluate`, so the numbers they print are computed the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rap_deploy.config import FrameSamplingConfig, RAPConfig
from rap_deploy.graphs import INDEX_DTYPES, rerank_tensors, video_outputs
from rap_deploy.name_lists import PATH_CHARS, shortened, some_names
from rap_deploy.safe_paths import absent
from rap_deploy.tokenizer import tokenize


class Encoder(Protocol):
    """The Engine methods retrieval needs (see ``rap_deploy.engines.base.Engine``)."""

    config: RAPConfig

    def encode_video(self, frames: np.ndarray, frame_mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]: ...

    def encode_text(self, input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray: ...

    def asa_similarity(self, text_emb: np.ndarray, *rerank: np.ndarray) -> np.ndarray: ...


def has_asa_head(encoder: Any) -> bool:
    """Whether ``encoder`` (an Engine or :class:`ModelEncoder`) has an ASA head."""
    return bool(getattr(encoder, "has_asa", encoder.config.has_asa))


def checked_output(out: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``out`` (an encoder's output) as an array whose leading dimensions are ``shape``.

    numpy would broadcast a ``[1, ...]`` answer into every row of a batch (the same embedding for every video, the
    same scores for every query) and refuse other wrong shapes with a traceback; an engine or server that answers
    with another shape is a failed check instead: :class:`~rap_deploy.errors.CheckFailedError` naming ``what``.
    """
    from rap_deploy.errors import CheckFailedError

    out = np.asarray(out)
    if out.shape[:len(shape)] != tuple(shape):
        raise CheckFailedError(f"the {what} returned shape {list(out.shape)} for {list(shape)}: the engine (or the "
                               "server running it) does not answer as its model does")
    return out


def as_index_dtypes(names: tuple[str, ...], arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """``arrays`` (named ``names``) in the index's dtypes (``rap_deploy.graphs.INDEX_DTYPES``), contiguous.

    Arrays already in their dtype are passed through without a copy (an fp16 index block is never converted).
    Raises :class:`~rap_deploy.errors.UsageError` when the counts differ.
    """
    from rap_deploy.errors import UsageError

    if len(names) != len(arrays):
        raise UsageError(f"expected the re-rank tensors {list(names)} (rap_deploy.graphs.rerank_tensors), got "
                         f"{len(arrays)} arrays")
    return tuple(np.ascontiguousarray(a, dtype=INDEX_DTYPES[n]) for n, a in zip(names, arrays, strict=True))


@dataclass
class VideoIndex:
    """The offline video index: the video encoder's outputs for a library, each in its ``INDEX_DTYPES`` dtype.

    ``asa_tokens`` is ``None`` for models without an ASA head. :meth:`rerank` gives the stage-2 tensors.
    """

    video_ids: list[str]
    video_emb: np.ndarray  # [V, d] float32
    frame_emb: np.ndarray  # [V, T, d] float32
    patch_tokens: np.ndarray  # [V, T, P, d] float16
    asa_tokens: np.ndarray | None = None  # [V, T, P, 3·d_a] float32
    skipped: list[dict[str, str]] = field(default_factory=list)
    _gather: Any = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def has_asa(self) -> bool:
        """Whether the index holds ASA tensors (a model with an ASA head encoded it)."""
        return self.asa_tokens is not None

    def rerank(self, rows: Any = slice(None)) -> tuple[np.ndarray, ...]:
        """The stage-2 tensors (``rerank_tensors(has_asa)`` order) of the videos ``rows`` (a slice or indices)."""
        return tuple(getattr(self, name)[rows] for name in rerank_tensors(self.has_asa))

    def candidate_gather(self) -> CandidateGather:
        """This index's :class:`CandidateGather`, kept so its buffers serve every later search (one at a time)."""
        if self._gather is None or self._gather.index is not self:
            self._gather = CandidateGather(self)
        return self._gather

    def subset(self, count: int) -> VideoIndex:
        """The first ``count`` videos (views, no copy)."""
        return self.window(0, count)

    def window(self, start: int, stop: int) -> VideoIndex:
        """The videos ``start`` to ``stop`` (exclusive), as views: no copy."""
        rows = slice(start, stop)
        return VideoIndex(self.video_ids[rows], self.video_emb[rows], self.frame_emb[rows],
                          self.patch_tokens[rows], None if self.asa_tokens is None else self.asa_tokens[rows],
                          list(self.skipped))


def sampling_for(config: RAPConfig, split_sampling: FrameSamplingConfig) -> FrameSamplingConfig:
    """The model's frame count with the dataset's sampling rate."""
    return FrameSamplingConfig(max_frames=config.frames, fps=split_sampling.fps)


@dataclass
class VideoList:
    """Videos to decode and their sampling rate: the two attributes :func:`load_video_batch` reads of a split."""

    videos: list[Any]  # rap_deploy.data.datasets.VideoEntry
    sampling: FrameSamplingConfig


def load_video_batch(split: Any, indices: list[int], cache: Any, config: RAPConfig) -> tuple[np.ndarray, np.ndarray]:
    """Decode (through ``cache``) and preprocess videos ``indices`` of ``split``.

    Returns ``frames float32 [B,T,3,S,S]`` and ``frame_mask float32 [B,T]``; raises ``VideoDecodeError``.
    """
    from rap_deploy.preprocess import normalize

    sampling = sampling_for(config, split.sampling)
    frames, masks = [], []
    for i in indices:
        entry = split.videos[i]
        video = cache.get(entry.path, sampling, config.preprocess, entry.start, entry.end)
        frames.append(normalize(video.frames, config.preprocess).numpy())
        masks.append(video.mask.astype(np.float32))
    return np.stack(frames), np.stack(masks)


def load_video_files(paths: Sequence[str | os.PathLike[str]], config: RAPConfig, fps: float = 1.0,
                     cache: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess video files exactly as ``rapdeploy index`` does for an engine or model of ``config``:
    ``fps`` frames per second, then ``config.frames`` picked uniformly, ``config.preprocess`` applied.

    Returns the video encoder's inputs ``frames float32 [B,T,3,S,S]`` and ``frame_mask float32 [B,T]`` (real
    frames first). ``cache``: a :class:`~rap_deploy.data.cache.FrameCache` (default: none, decode every time).
    Raises ``VideoDecodeError`` naming the file that is missing or unreadable, and
    ``ValueError`` for no path or an ``fps`` outside ``(0, 1000]`` (a library manifest's bound).
    """
    from rap_deploy.bounds import MAX_FPS
    from rap_deploy.data.cache import FrameCache
    from rap_deploy.data.datasets import VideoEntry

    if not paths:
        raise ValueError("load_video_files needs at least one path")
    # sampling allocates a time per 1/fps second: fps 1e9 asked for 80 GB on a 10 s clip; 0 or NaN blamed every file
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= MAX_FPS:
        raise ValueError(f"fps must be a number in (0, {MAX_FPS}] (rapdeploy index samples at 1), got {fps!r}")
    videos = VideoList([VideoEntry(Path(p).name, Path(p)) for p in paths],
                       FrameSamplingConfig(max_frames=config.frames, fps=fps))
    return load_video_batch(videos, list(range(len(videos.videos))), cache or FrameCache(None), config)


def usable_videos(split: Any, cache: Any, config: RAPConfig, progress: bool = True) -> tuple[Any, list[dict[str, str]]]:
    """Decode every video once; return the split without undecodable videos (and their captions) and the skipped list.

    Skipped videos are reported by id and reason, never replaced by zeros. Raises
    :class:`~rap_deploy.errors.CheckFailedError` (exit 1: the dataset is damaged) when none of the split's videos
    decodes, naming the first few and why, or when no caption is left to query with (:func:`_check_captions`).
    """
    from rap_deploy.errors import CheckFailedError

    good, skipped = decodable_videos(split, cache, config, progress)
    if skipped and not good:
        named = some_names([f"{s['video_id']}: {s['reason']}" for s in skipped], 3, sep="; ")
        raise CheckFailedError(f"none of the {len(skipped)} videos of the {split.split} split decodes ({named})"
                               f"{videos_folder_hint(split, skipped)}; check the videos with `rapdeploy data-check`")
    kept = split if not skipped else split.subset(good)
    _check_captions(split, kept, skipped)
    return kept, skipped


def videos_folder_hint(split: Any, skipped: list[dict[str, str]]) -> str:
    """``": FOLDER does not exist; put the videos there ..."`` when every one of ``skipped`` (``{video_id, reason}``)
    is missing: where ``split``'s videos were looked for (its videos folder) and whether that folder exists, since a
    ``--data-root`` without its videos, or with them in a folder of another name, is the likely cause; then also
    its data root itself when video files lie in it, and the few other folders of its data root that hold video files
    (:func:`video_folders_elsewhere`); else ``""``."""
    folder = getattr(split, "videos_dir", None)
    if folder is None or any(s["reason"] != "missing" for s in skipped):
        return ""
    return missing_videos_hint(folder) + video_folders_elsewhere(getattr(split, "data_root", None), Path(folder))


def video_folders_elsewhere(root: str | os.PathLike[str] | None, folder: Path, named: tuple[Path, ...] = ()) -> str:
    """``"; ROOT/clips holds video files: if they are this split's, move them into FOLDER"`` for up to three
    sub-folders of ``root`` besides ``folder`` and the folders ``named`` already where a video file was seen, led by
    ``"ROOT itself"`` when the root's own entries include a video file (videos unpacked straight into the
    ``--data-root``, beside its annotation files): one bounded look,
    :func:`~rap_deploy.data.video_files.video_files_near`, each path shortened; ``""`` when none or no root."""
    from rap_deploy.data.video_files import video_files_near

    if root is None:
        return ""
    near = video_files_near(Path(root), folder, named=named)
    places = ([f"{shortened(str(root), PATH_CHARS)} itself"] if near.in_root else []) + [
        shortened(str(other), PATH_CHARS) for other in near.folders]
    if not places:
        return ""
    return (f"; {some_names(places, len(places))} {'holds' if len(places) == 1 else 'hold'} video files: if they are "
            f"this split's, move them into {shortened(str(folder), PATH_CHARS)}")


def missing_videos_hint(folder: str | os.PathLike[str]) -> str:
    """``": FOLDER does not exist; put the videos there ..."`` (or ``": FOLDER holds none of them; ..."`` when it
    exists): what to say when every video of a split is missing from the videos folder ``folder``."""
    if not Path(folder).is_dir():
        what = absent(folder) if not Path(folder).exists() else "is not a folder"
        return (f": {folder} {what}; put the videos there (<video_id>.<ext>, any sub-folder) or pass the --data-root "
                "that holds them")
    return f": {folder} holds none of them; put them there or pass the --data-root that holds them"


def decodable_videos(split: Any, cache: Any, config: RAPConfig, progress: bool = True, limit: int | None = None
                     ) -> tuple[list[int], list[dict[str, str]]]:
    """Decode ``split``'s videos in order (each into ``cache``) until ``limit`` of them decode (all, without a limit);
    return the indices of those that decode and the ``{video_id, reason}`` of those that do not, met on the way."""
    from rap_deploy.data.progress import progress_bar
    from rap_deploy.data.video import VideoDecodeError

    sampling = sampling_for(config, split.sampling)
    good: list[int] = []
    skipped: list[dict[str, str]] = []
    total = split.num_videos if limit is None else min(limit, split.num_videos)
    with progress_bar(total, "decoding videos", progress) as advance:
        for i, entry in enumerate(split.videos):
            if len(good) == limit:
                break
            try:
                cache.get(entry.path, sampling, config.preprocess, entry.start, entry.end)
                good.append(i)
            except VideoDecodeError as exc:
                skipped.append({"video_id": entry.video_id, "reason": exc.reason})
                if limit is not None:
                    continue  # the bar counts the videos taken
            advance(1)
    return good, skipped


def _check_captions(split: Any, kept: Any, skipped: list[dict[str, str]]) -> None:
    """Raise :class:`~rap_deploy.errors.CheckFailedError` when ``kept`` (``split``'s decodable videos) has videos but
    no caption: there is no text query to score (the text encoder was then called on nothing, a numpy traceback)."""
    from rap_deploy.errors import CheckFailedError

    if not kept.num_videos or kept.num_captions:
        return
    if not split.num_captions:
        raise CheckFailedError(f"the {split.split} split's annotations give none of its {split.num_videos} videos a "
                               "caption: there is no text query to score; check the dataset with `rapdeploy "
                               "data-check`")
    named = some_names([f"{s['video_id']}: {s['reason']}" for s in skipped], 3, sep="; ")
    raise CheckFailedError(f"every captioned video of the {split.split} split was skipped ({named}): no caption of "
                           "a decodable video is left to score; check the videos with `rapdeploy data-check`")


def encode_videos(encoder: Encoder, split: Any, cache: Any, batch_size: int = 8, progress: bool = True) -> VideoIndex:
    """Run the video encoder over every video of ``split`` (all must decode: see :func:`usable_videos`).

    Every output is kept in its ``INDEX_DTYPES`` dtype. Raises :class:`~rap_deploy.errors.CheckFailedError` when the
    encoder returns another number of outputs than its model has, :class:`~rap_deploy.errors.UsageError` for a
    split without videos or an index larger than the memory available (sized from the first batch's outputs).
    """
    from rap_deploy.data.progress import progress_bar
    from rap_deploy.errors import CheckFailedError, UsageError

    names = video_outputs(has_asa_head(encoder))
    if split.num_videos == 0:
        raise UsageError(f"the {split.split} split has no video to encode")
    # Each output is allocated once at its full size and filled batch by batch: collecting the batches and
    # concatenating them held the index twice at the end (measured: 7.5 GB peak for a 3.1 GB index of 2,400 videos).
    arrays: dict[str, np.ndarray] = {}
    with progress_bar(split.num_videos, "encoding videos", progress) as advance:
        for start in range(0, split.num_videos, batch_size):
            idx = list(range(start, min(start + batch_size, split.num_videos)))
            frames, mask = load_video_batch(split, idx, cache, encoder.config)
            outs = encoder.encode_video(frames, mask)
            if len(outs) != len(names):
                raise CheckFailedError(f"the video encoder returned {len(outs)} outputs, expected {list(names)}")
            outs = [checked_output(out, (len(idx),), f"video encoder's {n}").astype(INDEX_DTYPES[n], copy=False)
                    for n, out in zip(names, outs, strict=True)]
            arrays = arrays or _index_arrays(names, outs, split.num_videos)
            for n, out in zip(names, outs, strict=True):
                arrays[n][start:start + len(idx)] = out
            advance(len(idx))
    return VideoIndex([v.video_id for v in split.videos], arrays["video_emb"], arrays["frame_emb"],
                      arrays["patch_tokens"], arrays.get("asa_tokens"))


# What to change when a split's index or scores do not fit in memory (_index_arrays, check_score_memory).
SCORE_MEMORY_FIX = "score fewer videos at once (verify --max-videos N, ablate --heldout-gallery G) or free memory"


def _index_arrays(names: tuple[str, ...], batch: list[np.ndarray], videos: int) -> dict[str, np.ndarray]:
    """Empty index arrays of ``videos`` rows shaped like the encoder's first ``batch``, once their size is known to fit
    in memory (``np.empty`` reserves without touching: a split too large failed hours later, mid-encoding)."""
    from rap_deploy.bounds import check_memory

    row_bytes = sum(out.dtype.itemsize * int(np.prod(out.shape[1:])) for out in batch)
    check_memory(videos * row_bytes, f"the video index of {videos:,} videos ({row_bytes / 2**20:.2f} MiB each)",
                 SCORE_MEMORY_FIX)
    return {n: np.empty((videos, *out.shape[1:]), dtype=out.dtype) for n, out in zip(names, batch, strict=True)}


# Peak memory of evaluate's scoring per text-video pair: the three similarity matrices (float32 full ASA and stage 1,
# float64 two-stage) and the metrics' temporaries (a reordered copy, the video→text matrices, comparison masks).
# Measured with tracemalloc: 34.8 bytes a pair for 1,000 captions x 1,000 videos, 26 for 6,000 x 300.
SCORE_BYTES_PER_PAIR = 40


def check_score_memory(queries: int, videos: int) -> None:
    """Raise :class:`~rap_deploy.errors.UsageError` unless scoring ``queries`` captions against ``videos`` videos
    (:data:`SCORE_BYTES_PER_PAIR` each) fits in the memory available now."""
    from rap_deploy.bounds import check_memory

    check_memory(SCORE_BYTES_PER_PAIR * queries * videos, f"scoring {queries:,} captions against {videos:,} videos",
                 SCORE_MEMORY_FIX)


def encode_texts(encoder: Encoder, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Tokenise with the encoder's tokenizer settings and run the text encoder; returns ``[N, d]`` float32."""
    ids, eot = tokenize(texts, encoder.config.tokenizer)
    out = [checked_output(encoder.encode_text(ids[i:i + batch_size], eot[i:i + batch_size]),
                          (len(ids[i:i + batch_size]),), "text encoder") for i in range(0, len(texts), batch_size)]
    return np.concatenate(out).astype(np.float32)


def full_similarity(encoder: Encoder, text_emb: np.ndarray, index: VideoIndex, query_block: int = 64,
                    progress: bool = True, video_block: int = 256) -> np.ndarray:
    """ASA similarity of every text with every video ``[Q, V]``, computed in ``video_block × query_block`` blocks.

    The encoder's working memory stays bounded whatever Q and V: it sees at most ``query_block`` texts and
    ``video_block`` videos of the index at a time, in the index's own dtypes (no block is converted here). The result
    is allocated whole (``Q x V`` float32): :func:`evaluate` checks first that it fits (:func:`check_score_memory`).
    """
    from rap_deploy.data.progress import progress_bar

    if not has_asa_head(encoder):
        return meanp_similarity(text_emb, index)
    n_q, n_v = len(text_emb), len(index)
    out = np.empty((n_q, n_v), dtype=np.float32)
    n_blocks = max(1, -(-n_v // video_block))
    with progress_bar(n_q * n_blocks, "ASA similarity", progress) as advance:
        for v0 in range(0, n_v, video_block):
            v1 = min(v0 + video_block, n_v)
            rerank = index.rerank(slice(v0, v1))
            for q0 in range(0, n_q, query_block):
                block = text_emb[q0:q0 + query_block]
                out[q0:q0 + len(block), v0:v1] = checked_output(encoder.asa_similarity(block, *rerank),
                                                                (len(block), v1 - v0), "ASA similarity")
                advance(len(block))
    return out


def meanp_similarity(text_emb: np.ndarray, index: VideoIndex) -> np.ndarray:
    """Stage-1 similarity: text · meanP video embedding ``[Q, V]``."""
    return (text_emb.astype(np.float32) @ index.video_emb.astype(np.float32).T).astype(np.float32)


# Re-ranked candidates are lifted above every stage-1 score: cosines lie in [-1, 1]. The lifted scores are float64:
# in float32, 3 + s has a step of 2.4e-7, four times that of s near 0.3, so distinct ASA scores would tie there.
RERANK_OFFSET = 3.0


class CandidateGather:
    """Copies the re-rank tensors of a query's candidates into buffers reused from query to query.

    A fresh ``index.patch_tokens[candidates]`` per query allocates (and page-faults) tens of MB each time; one
    contiguous copy per candidate into a kept buffer does not (measured on ViT-B/32 shapes, 100 candidates: about
    half the time of fancy indexing, and ``np.take(..., out=)`` was slower than both). The arrays it returns are
    overwritten by the next call: one caller at a time.
    """

    def __init__(self, index: VideoIndex) -> None:
        self.index = index
        self._buffers: dict[int, tuple[np.ndarray, ...]] = {}

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """The stage-2 tensors of the videos ``rows`` (int indices), as arrays owned by this object."""
        arrays = self.index.rerank()
        bufs = self._buffers.get(len(rows))
        if bufs is None:
            bufs = tuple(np.empty((len(rows), *a.shape[1:]), dtype=a.dtype) for a in arrays)
            self._buffers = {len(rows): bufs}  # one size at a time (the top-M of every query)
        for a, b in zip(arrays, bufs, strict=True):
            for i, row in enumerate(rows):
                b[i] = a[row]
        return bufs


def two_stage_similarity(encoder: Encoder, text_emb: np.ndarray, index: VideoIndex, top_m: int = 100,
                         progress: bool = True) -> np.ndarray:
    """Two-stage search scores ``[Q, V]``: stage 1 ranks by meanP inner product, stage 2 re-ranks the top ``top_m``
    with the ASA head. Candidates carry ``3 + ASA score`` (so they rank above all others, in ASA order); the rest keep
    their stage-1 score. float64 (float32 for a model without ASA head: stage 1 alone), so the offset never merges
    two distinct ASA scores into a tie. Raises :class:`~rap_deploy.errors.UsageError` for ``top_m`` below 1."""
    from rap_deploy.data.progress import progress_bar
    from rap_deploy.errors import UsageError

    if isinstance(top_m, bool) or not isinstance(top_m, (int, np.integer)) or top_m < 1:
        raise UsageError(f"the two-stage search re-ranks top_m >= 1 candidates, got {top_m!r}")
    stage1 = meanp_similarity(text_emb, index)
    if not has_asa_head(encoder):
        return stage1
    m = min(top_m, stage1.shape[1])
    cands = np.argpartition(-stage1, m - 1, axis=1)[:, :m]
    out = stage1.astype(np.float64)
    rerank = candidate_reranker(encoder, index)
    with progress_bar(len(text_emb), "two-stage re-rank", progress) as advance:
        for q in range(len(text_emb)):
            c = np.sort(cands[q])
            scores = checked_output(rerank(text_emb[q:q + 1], c), (1, len(c)), "ASA re-rank")
            out[q, c] = RERANK_OFFSET + scores[0].astype(np.float64)
            advance(1)
    return out


def candidate_reranker(encoder: Encoder, index: VideoIndex) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A function ``(text_emb [Q,d], rows) -> [Q, len(rows)]``: the ASA similarity of the index's videos ``rows``.

    Encoders that read an index in place (``asa_similarity_rows``: the PyTorch reference on the CPU) get the whole
    stores and the rows; every other one gets the candidates' blocks copied out by the index's
    :class:`CandidateGather` (a graph takes contiguous inputs).
    """
    in_place = getattr(encoder, "asa_similarity_rows", None)
    if in_place is not None:
        stores = index.rerank()
        return lambda text_emb, rows: in_place(text_emb, stores, rows)
    gather = index.candidate_gather()
    return lambda text_emb, rows: encoder.asa_similarity(text_emb, *gather(rows))


def encode_split(encoder: Encoder, split: Any, cache: Any, batch_size: int = 8,
                 progress: bool = True) -> tuple[Any, list[dict[str, str]], VideoIndex, np.ndarray]:
    """``(split, skipped, index, text_emb)``: ``split`` without its undecodable videos and their captions
    (:func:`usable_videos`), the videos it dropped, its :class:`VideoIndex` and its captions' embeddings. Raises
    :class:`~rap_deploy.errors.UsageError` before encoding when scoring them all would not fit in memory
    (:func:`check_score_memory`), and what :func:`usable_videos` and :func:`encode_videos` raise."""
    split, skipped = usable_videos(split, cache, encoder.config, progress)
    check_score_memory(split.num_captions, split.num_videos)
    index = encode_videos(encoder, split, cache, batch_size, progress)
    return split, skipped, index, encode_texts(encoder, split.captions)


def evaluate(encoder: Encoder, split: Any, cache: Any, top_m: int = 100, batch_size: int = 8, progress: bool = True,
             return_scores: bool = False) -> dict[str, Any]:
    """Encode ``split`` and compute retrieval metrics of the full ASA similarity (``asa``), the two-stage search
    (``two_stage``) and stage 1 alone (``meanp``), each ``{"t2v": ..., "v2t": ...}``.

    Undecodable videos are dropped with their captions and listed under ``skipped``. With ``return_scores`` the
    similarity matrices, embeddings and index are returned under ``scores``.
    """
    from rap_deploy.metrics import retrieval_metrics

    t0 = time.perf_counter()
    split, skipped, index, text_emb = encode_split(encoder, split, cache, batch_size, progress)
    sims = {"asa": full_similarity(encoder, text_emb, index, progress=progress),
            "two_stage": two_stage_similarity(encoder, text_emb, index, top_m, progress),
            "meanp": meanp_similarity(text_emb, index)}
    result: dict[str, Any] = {name: retrieval_metrics(s, split.caption_video) for name, s in sims.items()}
    result.update(videos=split.num_videos, captions=split.num_captions, skipped=skipped + index.skipped,
                  seconds=round(time.perf_counter() - t0, 3), top_m=top_m)
    if return_scores:
        result["scores"] = {"sims": sims, "text_emb": text_emb, "index": index, "split": split}
    return result
