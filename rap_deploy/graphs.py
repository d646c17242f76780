"""Names of the three graphs of the retrieval contract (DESIGN.md §4) and of their inputs and outputs.

They live in the core so that export (which writes the graphs) and engines (which run them) agree without export
importing engines. Deviations from DESIGN.md §4:

- ``video_encoder`` has a second input ``frame_mask [B,T]`` float32 (1 = real frame; real frames form a prefix, as
  the decoder pads) so padded short videos are handled; padded frames give zero rows in ``frame_emb``,
  ``patch_tokens`` and ``asa_tokens``, and ``asa_head`` derives frame validity from the ``frame_emb`` norm.
- With an ASA head, ``video_encoder`` has a fourth output ``asa_tokens [B,T,P,3·d_a]`` float32: per patch token the
  query-independent ASA tensors ``[q_proj(Z) | warp(k_proj(Z)) | warp(v_proj(Z))]`` (route 2 of issue 11,
  index-time precompute), computed from the patch tokens *as the index stores them* (rounded to
  ``INDEX_DTYPES["patch_tokens"]``), so the stored pair is self-consistent. ``asa_head`` takes it as a fourth input
  and reads only the top-k rows per frame of it.
- ``asa_head`` takes the re-rank tensors in the index's dtypes (:data:`INDEX_DTYPES`): ``patch_tokens`` float16 is
  cast inside the graph (selection needs every token), ``asa_tokens`` is gathered before anything else reads it.
"""

from __future__ import annotations

GRAPH_NAMES = ("video_encoder", "text_encoder", "asa_head")

VIDEO_INPUTS = ("frames", "frame_mask")
VIDEO_OUTPUTS = ("video_emb", "frame_emb", "patch_tokens", "asa_tokens")
TEXT_INPUTS = ("input_ids", "eot")
TEXT_OUTPUTS = ("text_emb",)
ASA_INPUTS = ("text_emb", "frame_emb", "patch_tokens", "asa_tokens")
ASA_OUTPUTS = ("similarity",)

# The parts of one ``asa_tokens`` row, in order, each ``d_a`` wide (head-major: channel ``h·d_h + j``).
ASA_TOKEN_PARTS = ("queries", "warped_keys", "warped_values")

GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "video_encoder": (VIDEO_INPUTS, VIDEO_OUTPUTS),
    "text_encoder": (TEXT_INPUTS, TEXT_OUTPUTS),
    "asa_head": (ASA_INPUTS, ASA_OUTPUTS),
}


# What a video index keeps per video, and the dtype it keeps it in (one source of truth for the library, verify,
# bench and the ``asa_head`` graph's input types): ``video_emb`` feeds stage 1, the rest (:func:`rerank_tensors`)
# feed the stage-2 re-rank. ``asa_tokens`` stay float32, so the split head equals the all-tokens ASA on the stored
# patch tokens exactly (measured max abs 0.0); fp16 storage moved it by 6.8e-6 (ViT-B/32 dims, random_adapters) to
# 1.05e-5 (every adapter at std 0.2), at the 1e-5 exactness bar. Only k/P of its rows are read per query.
INDEX_DTYPES: dict[str, str] = {"video_emb": "float32", "frame_emb": "float32", "patch_tokens": "float16",
                                "asa_tokens": "float32"}


def video_outputs(has_asa: bool) -> tuple[str, ...]:
    """The ``video_encoder`` outputs of a model, in order (what ``Engine.encode_video`` returns).

    With an ASA head all four (``video_emb``, ``frame_emb``, ``patch_tokens``, ``asa_tokens``); without one
    (``rap_light``, ``--no-asa``) the first three.
    """
    return VIDEO_OUTPUTS if has_asa else VIDEO_OUTPUTS[:3]


def rerank_tensors(has_asa: bool) -> tuple[str, ...]:
    """The per-video tensors stage 2 reads, in the order ``Engine.asa_similarity`` takes them after ``text_emb``.

    ``frame_emb``, ``patch_tokens``, ``asa_tokens`` with an ASA head; empty without one: then stage 2 is nothing and
    search ranks by ``video_emb`` alone.
    """
    return ASA_INPUTS[1:] if has_asa else ()


def graphs_for(has_asa: bool) -> tuple[str, ...]:
    """The graph names a model exports: all three with an ASA head, else ``video_encoder`` and ``text_encoder``."""
    return GRAPH_NAMES if has_asa else GRAPH_NAMES[:2]


def graph_io(graph: str, has_asa: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(input names, output names)`` of ``graph`` for a model with or without an ASA head.

    Raises ``KeyError`` for an unknown graph name.
    """
    inputs, outputs = GRAPH_IO[graph]
    return inputs, (video_outputs(has_asa) if graph == "video_encoder" else outputs)
