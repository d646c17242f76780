"""Export-friendly ``nn.Module`` wrappers: one per graph of the retrieval contract (DESIGN.md §4).

Each wrapper holds the :class:`~rap_deploy.model.RAPModel` and exposes exactly the graph's inputs and outputs as
positional tensors, so ``torch.onnx.export`` sees a plain function of tensors. They compute exactly what the
model's own methods compute (they call them), so PyTorch parity is checked against the model itself.
"""

from __future__ import annotations

import torch
from torch import nn

from rap_deploy.model.asa import AsynchronousSelfAttention
from rap_deploy.model.rap import RAPModel


class VideoEncoderGraph(nn.Module):
    """``(frames [B,T,3,S,S], frame_mask [B,T]) -> (video_emb [B,d], frame_emb [B,T,d], patch_tokens [B,T,P,d][,
    asa_tokens [B,T,P,3·d_a]])``.

    All float32. LoRM runs inside the frozen ViT; padded frames (mask 0) give zero rows in ``frame_emb``,
    ``patch_tokens`` and ``asa_tokens``. With an ASA head the query-independent part of it (projections and the
    warp, clamped per video to its own valid frames) runs here, once per video.
    """

    def __init__(self, model: RAPModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.encode_video(frames, frame_mask)


class AsaTokensGraph(nn.Module):
    """``(patch_tokens [V,T,P,d], frame_mask [V,T]) -> asa_tokens [V,T,P,3·d_a]``: the ASA part of the video encoder
    on its own (projections and the per-video clamped warp), for checks of the head without a backbone."""

    def __init__(self, asa: AsynchronousSelfAttention) -> None:
        super().__init__()
        self.asa = asa

    def forward(self, patch_tokens: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        return self.asa.video_tokens(patch_tokens, frame_mask)


class TextEncoderGraph(nn.Module):
    """``(input_ids [B,L] int32, eot [B] int32) -> text_emb [B,d]``; the EOT position is an input (no ArgMax)."""

    def __init__(self, model: RAPModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, eot)


class AsaHeadGraph(nn.Module):
    """``(text_emb [Q,d], frame_emb [V,T,d], patch_tokens [V,T,P,d] fp16, asa_tokens [V,T,P,3·d_a]) -> similarity
    [Q,V]`` on ONE block (the stored tensors in the index's dtypes).

    Per (query, video) pair only the selection (cosine of the text with every patch token), a gather of the k
    selected ``asa_tokens`` rows per frame and a (T·k)² attention remain. There is no chunk loop in the graph: its
    intermediate tensors are ``O(Q·V·T·k·d_a)``, so the caller feeds bounded (Q, V) blocks (the engines do;
    :meth:`RAPModel.asa_similarity` does the same in PyTorch). A loop inside the graph would need ONNX
    ``Loop``/``Scan`` with data-dependent trip counts, which TensorRT handles poorly and which hides the memory bound
    from the runtime's shape profiles.
    """

    def __init__(self, model: RAPModel | AsynchronousSelfAttention) -> None:
        super().__init__()
        asa = model if isinstance(model, AsynchronousSelfAttention) else model.asa
        if asa is None:
            raise ValueError("the model has no ASA head (rap_light or --no-asa): there is no asa_head graph")
        self.asa = asa

    def forward(self, text_emb: torch.Tensor, frame_emb: torch.Tensor, patch_tokens: torch.Tensor,
                asa_tokens: torch.Tensor) -> torch.Tensor:
        if self.asa.selection == "saliency":
            # Selection by each frame's own embedding: one conditioned embedding per video, shared by every query.
            cond = self.asa.conditioned_embedding(text_emb, frame_emb, patch_tokens, asa_tokens)[0]  # [V, d]
            return text_emb @ cond.T
        return self.asa(text_emb, frame_emb, patch_tokens, asa_tokens)


def graph_modules(model: RAPModel) -> dict[str, nn.Module]:
    """The wrappers of the graphs ``model`` exports, by graph name (no ``asa_head`` without an ASA head)."""
    mods: dict[str, nn.Module] = {"video_encoder": VideoEncoderGraph(model), "text_encoder": TextEncoderGraph(model)}
    if model.asa is not None:
        mods["asa_head"] = AsaHeadGraph(model)
    return {k: m.eval() for k, m in mods.items()}
