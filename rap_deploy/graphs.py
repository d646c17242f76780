"""Names of the three graphs of the retrieval contract (DESIGN.md §4) and of their inputs and outputs.

They live in the core so that export (which writes the graphs) and engines (which run them) agree without export
importing engines. Deviation from DESIGN.md §4: ``video_encoder`` has a second input ``frame_mask [B,T]`` float32
(1 = real frame) so padded short videos are handled; padded frames give zero rows in ``frame_emb`` and
``patch_tokens``, and ``asa_head`` derives frame validity from the ``frame_emb`` norm.
"""

from __future__ import annotations

GRAPH_NAMES = ("video_encoder", "text_encoder", "asa_head")

VIDEO_INPUTS = ("frames", "frame_mask")
VIDEO_OUTPUTS = ("video_emb", "frame_emb", "patch_tokens")
TEXT_INPUTS = ("input_ids", "eot")
TEXT_OUTPUTS = ("text_emb",)
ASA_INPUTS = ("text_emb", "frame_emb", "patch_tokens")
ASA_OUTPUTS = ("similarity",)

GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "video_encoder": (VIDEO_INPUTS, VIDEO_OUTPUTS),
    "text_encoder": (TEXT_INPUTS, TEXT_OUTPUTS),
    "asa_head": (ASA_INPUTS, ASA_OUTPUTS),
}


# What a video index keeps per video, and the dtype it keeps it in (one source of truth for the library, verify and
# bench): ``video_emb`` feeds stage 1, the rest (:data:`RERANK_TENSORS`) feed the stage-2 re-rank.
INDEX_DTYPES: dict[str, str] = {"video_emb": "float32", "frame_emb": "float32", "patch_tokens": "float16"}


def video_outputs(has_asa: bool) -> tuple[str, ...]:
    """The ``video_encoder`` outputs of a model, in order (what ``Engine.encode_video`` returns)."""
    return VIDEO_OUTPUTS


def rerank_tensors(has_asa: bool) -> tuple[str, ...]:
    """The per-video tensors stage 2 reads, in the order ``Engine.asa_similarity`` takes them after ``text_emb``.

    Empty without an ASA head: then stage 2 is nothing and search ranks by ``video_emb`` alone.
    """
    return ASA_INPUTS[1:] if has_asa else ()


def graphs_for(has_asa: bool) -> tuple[str, ...]:
    """The graph names a model exports: all three with an ASA head, else ``video_encoder`` and ``text_encoder``."""
    return GRAPH_NAMES if has_asa else GRAPH_NAMES[:2]
