"""Input checks and block loops shared by the backends (numpy only).

The ``asa_head`` graph works on ONE (query × video) block: its intermediates grow as Q·V·T·k·d_a, so every backend
walks the full ``[Q, V]`` similarity in bounded blocks and stitches the result. The re-rank tensors travel in the
index's dtypes (``rap_deploy.graphs.INDEX_DTYPES``): a block is sliced, never converted, on its way to the graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rap_deploy.bounds import available_memory, check_memory
from rap_deploy.config import RAPConfig
from rap_deploy.errors import UsageError
from rap_deploy.tokenizer import vocab_size

DEFAULT_QUERY_BLOCK = 32
DEFAULT_VIDEO_BLOCK = 64
# One re-rank call may take this share of the memory available when it starts (the rest: the result, the index,
# the sessions). A call estimated below UNCHECKED_CALL_BYTES is fed as asked without reading the memory: the read
# (psutil, about 60 us measured) would add 5 % to a one-pair call; ViT-B/32 at 12 frames searches one query in
# blocks of about 150 MB.
ASA_MEMORY_SHARE = 0.5
UNCHECKED_CALL_BYTES = 256 << 20


def check_video_inputs(frames: np.ndarray, frame_mask: np.ndarray | None, config: RAPConfig
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Return ``frames`` float32 ``[B,T,3,S,S]`` and ``frame_mask`` float32 ``[B,T]`` (all ones when ``None``).

    Raises :class:`UsageError` for a wrong rank, frame count or image size.
    """
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    s = config.preprocess.image_size
    if frames.ndim != 5 or frames.shape[1] != config.frames or frames.shape[2:] != (3, s, s):
        raise UsageError(f"frames must be [B,{config.frames},3,{s},{s}] (the model's frames and image size), got "
                         f"{list(frames.shape)}; preprocess with rap_deploy.preprocess")
    if frame_mask is None:
        mask = np.ones(frames.shape[:2], dtype=np.float32)
    else:
        mask = np.ascontiguousarray(frame_mask, dtype=np.float32)
        if mask.shape != frames.shape[:2]:
            raise UsageError(f"frame_mask must be {list(frames.shape[:2])}, got {list(mask.shape)}")
        check_prefix_mask(mask)
    return frames, mask


def check_prefix_mask(mask: np.ndarray) -> None:
    """Raise :class:`UsageError` unless every row of ``mask [B,T]`` is 1…1 0…0 (real frames first, as
    ``rap_deploy.data.video.decode_video`` pads): the ASA warp clamps time to each video's first ``n_valid`` frames."""
    binary = np.isin(mask, (0.0, 1.0)).all()
    if not binary or (np.diff(mask, axis=1) > 0).any():
        bad = int(np.flatnonzero(~np.isin(mask, (0.0, 1.0)).all(1) | (np.diff(mask, axis=1) > 0).any(1))[0])
        raise UsageError(f"frame_mask row {bad} is {mask[bad].tolist()}: it must be 1 for the real frames followed by "
                         "0 for padding (real frames first, as rap_deploy.data.video pads short videos)")


def check_text_inputs(input_ids: np.ndarray, eot: np.ndarray, config: RAPConfig) -> tuple[np.ndarray, np.ndarray]:
    """Return ``input_ids`` int32 ``[B,n]`` (``1 <= n <= context_length``) and ``eot`` int32 ``[B]``.

    Raises :class:`UsageError` on a bad shape, an EOT position outside its row, or an id that is no token id (below 0,
    at least the tokenizer's :func:`~rap_deploy.tokenizer.vocab_size`, not a whole number): the int32 cast would
    wrap or truncate it and ONNX Runtime's Gather reads a negative id from the end of the table, each a silent
    embedding of other tokens.
    """
    raw_ids, raw_pos = _whole_numbers("input_ids", input_ids), _whole_numbers("eot", eot).reshape(-1)
    length = config.context_length
    if raw_ids.ndim != 2 or not 1 <= raw_ids.shape[1] <= length or raw_pos.shape[0] != raw_ids.shape[0]:
        raise UsageError(f"input_ids must be [B,n] with 1 <= n <= {length} (the model's context) and eot [B], got "
                         f"{list(raw_ids.shape)} and {list(raw_pos.shape)}; tokenize with rap_deploy.tokenizer")
    vocab = vocab_size(config.tokenizer)
    if raw_ids.size and (raw_ids.min() < 0 or raw_ids.max() >= vocab or not _integral(raw_ids)):
        raise UsageError(f"input_ids must be token ids in [0, {vocab}) (whole numbers), got values "
                         f"{raw_ids.min()}..{raw_ids.max()}; tokenize with rap_deploy.tokenizer")
    if not _integral(raw_pos):
        raise UsageError(f"eot positions must be whole numbers, got {raw_pos.tolist()[:8]}")
    if raw_pos.size and (raw_pos.min() < 0 or raw_pos.max() >= raw_ids.shape[1]):
        raise UsageError(f"eot positions must lie in [0, {raw_ids.shape[1]}) (inside their rows), got "
                         f"{int(raw_pos.min())}..{int(raw_pos.max())}")
    return np.ascontiguousarray(raw_ids, dtype=np.int32), np.ascontiguousarray(raw_pos, dtype=np.int32)


def _whole_numbers(name: str, values: np.ndarray) -> np.ndarray:
    """``values`` as a numpy array of a numeric dtype; raises :class:`UsageError` naming ``name`` otherwise."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise UsageError(f"{name} must be an array of numbers, got dtype {arr.dtype}")
    return arr


def _integral(arr: np.ndarray) -> bool:
    """Whether every value of ``arr`` (ints, or floats) is a finite whole number."""
    return arr.dtype.kind != "f" or bool(np.isfinite(arr).all() and (arr == np.floor(arr)).all())


def trim_tokens(input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray:
    """``input_ids [B,n]`` cut to its first ``max(eot) + 1`` columns.

    Exact for a text graph with a dynamic ``tokens`` axis: under CLIP's causal mask a row's embedding, read at its
    EOT, depends only on the tokens up to the EOT (``rap_deploy.model.text_tower``), so a query pays for its own
    tokens and a batch for its longest query, not for the full context.
    """
    n = int(np.max(eot)) + 1 if np.size(eot) else 1
    return np.ascontiguousarray(input_ids[:, :n])


def fit_tokens(input_ids: np.ndarray, eot: np.ndarray, context_length: int, dynamic: bool) -> np.ndarray:
    """The token ids a text graph takes: trimmed (:func:`trim_tokens`) when its ``tokens`` axis is ``dynamic``,
    else zero-padded to ``context_length`` (graphs exported before the axis was dynamic take ``[B, L]`` only;
    what follows the EOT never changes the embedding)."""
    if dynamic:
        return trim_tokens(input_ids, eot)
    missing = context_length - input_ids.shape[1]
    return np.pad(input_ids, ((0, 0), (0, missing))) if missing > 0 else input_ids


def tokens_axis_is_dynamic(shape: object) -> bool:
    """Whether a text graph's declared ``input_ids`` shape (ONNX Runtime's list of ints/names, TensorRT's dims with
    ``-1``, KServe metadata's ``-1``) leaves the token axis (dimension 1) free."""
    dims = list(shape) if shape is not None else []
    return len(dims) == 2 and not (isinstance(dims[1], int) and dims[1] > 0)


def batched(run: Callable[..., tuple[np.ndarray, ...]], arrays: tuple[np.ndarray, ...], max_batch: int | None
            ) -> tuple[np.ndarray, ...]:
    """Call ``run(*chunk)`` on chunks of at most ``max_batch`` rows and concatenate each output.

    With zero rows ``run`` gets one row of zeros and every output comes back with none of its rows: the graphs fail
    on an empty batch (a Reshape or Gather of ONNX Runtime, PyTorch's encoders), and the outputs keep their shapes.
    """
    n = arrays[0].shape[0]
    if n == 0:
        return tuple(o[:0] for o in run(*(np.zeros((1, *a.shape[1:]), a.dtype) for a in arrays)))
    if max_batch is None or n <= max_batch:
        return run(*arrays)
    parts = [run(*(a[i:i + max_batch] for a in arrays)) for i in range(0, n, max_batch)]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(len(parts[0])))


def meanp_similarity_from_frames(text_emb: np.ndarray, frame_emb: np.ndarray) -> np.ndarray:
    """Similarity without an ASA head (``rap_light``): text · L2-normalised mean of the valid frames ``[Q,V]``.

    Padded frames have zero rows; this matches ``RAPModel.asa_similarity`` without ASA.
    """
    check_text_emb(text_emb, frame_emb)
    check_similarity_memory(np.shape(text_emb)[0], np.shape(frame_emb)[0])
    f = np.asarray(frame_emb, dtype=np.float32)
    n_valid = np.maximum((np.square(f).sum(-1) > 0.5).sum(-1, keepdims=True), 1).astype(np.float32)
    mean = f.sum(1) / n_valid
    mean /= np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
    return np.asarray(text_emb, dtype=np.float32) @ mean.T


def check_text_emb(text_emb: np.ndarray, frame_emb: np.ndarray) -> None:
    """Raise :class:`UsageError` unless ``text_emb`` is ``[Q, D]`` and ``frame_emb`` ``[V, T, D]`` (one width D)."""
    text, frames = np.shape(text_emb), np.shape(frame_emb)
    if len(frames) != 3:
        raise UsageError(f"frame_emb must be [V,T,D] (the video encoder's frame embeddings), got {list(frames)}")
    if len(text) != 2 or text[1] != frames[2]:
        raise UsageError(f"text_emb must be [Q,{frames[2]}] (the width of frame_emb {list(frames)}), got {list(text)}; "
                         "encode the queries with the same model as the videos")


def check_similarity_memory(queries: int, videos: int) -> None:
    """Raise :class:`UsageError` when the float32 ``[queries, videos]`` similarity would not fit in the memory
    available now (it is allocated whole; with overcommit a process would be killed while filling it)."""
    check_memory(4 * int(queries) * int(videos), f"the [{queries}, {videos}] similarity",
                 "score fewer queries or videos per call (a search keeps only each query's top candidates)")


def rerank_inputs(has_asa: bool, rerank: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Check the re-rank arrays an engine's ``asa_similarity`` got and bring them to the index's dtypes.

    With an ASA head they must be the ``rerank_tensors(True)`` (three arrays, same number of videos); arrays already
    in their ``INDEX_DTYPES`` dtype are not copied. Without one, ``frame_emb`` (the first) is all that is used.
    Raises :class:`UsageError` naming what is expected.
    """
    from rap_deploy.graphs import rerank_tensors
    from rap_deploy.retrieval import as_index_dtypes

    if not has_asa:
        if not rerank:
            raise UsageError("this model has no ASA head, so nothing is re-ranked: rank by video_emb, or pass "
                             "frame_emb for its meanP similarity")
        return rerank
    arrays = as_index_dtypes(rerank_tensors(True), rerank)
    if len({a.shape[0] for a in arrays}) != 1:
        raise UsageError(f"re-rank tensors {list(rerank_tensors(True))} hold different numbers of videos: "
                         f"{[a.shape[0] for a in arrays]}")
    return arrays


def asa_call_bytes(frames: int, patches: int, width: int, topk: int, heads: int, attn_dim: int) -> tuple[int, int]:
    """Estimated working memory of one ASA re-rank call: ``(bytes per (query, video) pair, bytes per video)``.

    Per pair (float32) the selection scores ``T·P``, the gathered ``asa_tokens`` rows ``3·T·k·d_a`` and the attention
    output ``T·k·d_a``, and the attention logits and weights ``2·H·(T·k)²``; per video the float32 copy of the stored
    patch tokens the selection reads (``T·P·d``). ``k`` is at most ``P``. The export records it in the manifest
    (``graphs.asa_head.block_memory``); the ONNX Runtime CPU and PyTorch CPU re-ranks size their blocks with it.
    """
    tk = frames * min(topk, patches)
    per_pair = 4 * (frames * patches + 4 * tk * attn_dim + 2 * heads * tk * tk)
    return per_pair, 4 * frames * patches * width


def model_call_bytes(config: RAPConfig, patch_tokens_shape: tuple[int, ...]) -> tuple[int, int]:
    """:func:`asa_call_bytes` of ``config``'s ASA head on re-rank tensors whose ``patch_tokens`` are
    ``[V, T, P, d]``."""
    frames, patches, width = (int(n) for n in patch_tokens_shape[1:4])
    return asa_call_bytes(frames, patches, width, config.asa_topk, config.asa_heads, config.asa_dim)


def fit_asa_blocks(query_block: int, video_block: int, queries: int, videos: int,
                   call_bytes: tuple[int, int]) -> tuple[int, int]:
    """The ``(query_block, video_block)`` to feed: as asked when one call fits in :data:`ASA_MEMORY_SHARE` of the
    memory available now (or cannot be read), else fewer videos per call, then fewer queries. Block sizes change the
    call size, not the scores.

    Raises :class:`UsageError` with the numbers when not even one (query, video) pair fits.
    """
    per_pair, per_video = call_bytes
    q, v = max(1, min(query_block, queries)), max(1, min(video_block, videos))
    need = q * v * per_pair + v * per_video
    if need <= UNCHECKED_CALL_BYTES:
        return query_block, video_block
    available = available_memory()
    budget = int(ASA_MEMORY_SHARE * available) if available is not None else need
    if need <= budget:
        return query_block, video_block
    if budget >= q * per_pair + per_video:
        return q, budget // (q * per_pair + per_video)
    if budget >= per_pair + per_video:
        return (budget - per_video) // per_pair, 1
    gib = 2 ** 30
    raise UsageError(f"one ASA re-rank call of a single (query, video) pair needs about "
                     f"{(per_pair + per_video) / gib:.2f} GiB (estimated: {per_pair / gib:.2f} GiB per pair, "
                     f"{per_video / gib:.2f} GiB per video), more than {ASA_MEMORY_SHARE:.0%} of the "
                     f"{available / gib:.1f} GiB of memory available; free memory or run on a larger machine")


def blocked_similarity(run: Callable[..., np.ndarray], text_emb: np.ndarray, rerank: tuple[np.ndarray, ...],
                       query_block: int = DEFAULT_QUERY_BLOCK, video_block: int = DEFAULT_VIDEO_BLOCK,
                       call_bytes: tuple[int, int] | None = None) -> np.ndarray:
    """Fill the ``[Q, V]`` similarity by calling ``run(text[q0:q1], *(x[v0:v1] for x in rerank))`` per block.

    ``run`` is the ``asa_head`` graph on one block (at most ``query_block`` texts × ``video_block`` videos);
    ``rerank`` are the re-rank arrays (sliced, never converted). With ``call_bytes`` (:func:`asa_call_bytes`, for a
    runtime whose blocks live in this machine's memory) the blocks are first fitted to the memory available
    (:func:`fit_asa_blocks`). Returns float32 ``[Q, V]``.
    """
    if query_block < 1 or video_block < 1:
        raise UsageError(f"ASA block sizes must be >= 1, got {query_block} x {video_block}")
    check_text_emb(text_emb, rerank[0])
    check_similarity_memory(np.shape(text_emb)[0], rerank[0].shape[0])
    if call_bytes is not None:
        query_block, video_block = fit_asa_blocks(query_block, video_block, np.shape(text_emb)[0],
                                                  rerank[0].shape[0], call_bytes)
    text = np.ascontiguousarray(text_emb, dtype=np.float32)
    n_videos = rerank[0].shape[0]
    out = np.empty((text.shape[0], n_videos), dtype=np.float32)
    for q0 in range(0, text.shape[0], query_block):
        q1 = min(q0 + query_block, text.shape[0])
        for v0 in range(0, n_videos, video_block):
            v1 = min(v0 + video_block, n_videos)
            out[q0:q1, v0:v1] = run(text[q0:q1], *(x[v0:v1] for x in rerank))
    return out
