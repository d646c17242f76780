"""The assembled RAP model: frozen open_clip CLIP + LoRM in every visual block + the ASA head.

It exposes the three parts of the retrieval contract (DESIGN.md §4): :meth:`RAPModel.encode_video`,
:meth:`RAPModel.encode_text` and :meth:`RAPModel.asa_similarity`, and :meth:`RAPModel.similarity` for training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rap_deploy.config import RAPConfig
from rap_deploy.errors import UsageError
from rap_deploy.graphs import INDEX_DTYPES
from rap_deploy.model.asa import AsynchronousSelfAttention, in_score_precision, l2_normalize, valid_frames
from rap_deploy.model.clip_loader import freeze
from rap_deploy.model.lorm import LowRankModulation
from rap_deploy.model.text_tower import text_tower

_STORED_PATCH_DTYPE = getattr(torch, INDEX_DTYPES["patch_tokens"])


def _check_text_tower(clip: nn.Module, config: RAPConfig) -> None:
    """Refuse a CLIP whose text tower does not read rapdeploy's token ids: open_clip's CLIP BPE (its ids as the
    embedding rows), pooled at the first EOT under a causal mask (what :meth:`RAPModel.encode_text` and the engines'
    token trim rely on). The MetaCLIP 2 'worldwide' models pool at another tokenizer's EOS id and CLIPA at the last
    position without a causal mask: their text embeddings of rapdeploy's ids are silently meaningless."""
    from rap_deploy.tokenizer import vocab_size

    pool = getattr(clip, "text_pool_type", "argmax")
    causal = getattr(clip, "attn_mask", None) is not None
    rows, ids = clip.token_embedding.num_embeddings, vocab_size(config.tokenizer)
    if pool != "argmax" or not causal or rows != ids:
        mask = "" if causal else ", no causal mask"
        raise UsageError(f"backbone {config.clip}'s text tower does not take CLIP's tokens ({rows:,} token ids, "
                         f"pooling '{pool}'{mask}; rapdeploy tokenizes with open_clip's CLIP BPE, {ids:,} ids, and "
                         "reads the EOT under a causal mask); use a model with CLIP's tokenizer, such as ViT-B-32")


def topk_excess(config: RAPConfig, grid: tuple[int, int]) -> str | None:
    """Why ASA's top-k of ``config`` cannot run on a backbone of ``grid`` patches per frame (k more than the patches),
    or ``None`` (also without an ASA head). The model refuses it when made, a checkpoint's loader when read."""
    patches = int(grid[0]) * int(grid[1])
    if config.has_asa and config.asa_topk > patches:
        return f"asa_topk {config.asa_topk} exceeds the {patches} patches per frame of {config.clip}"
    return None


class RAPModel(nn.Module):
    """RAP on a frozen open_clip ViT CLIP. Only the adapters (``lorm_*``, ``asa``) have trainable parameters."""

    def __init__(self, clip: nn.Module, config: RAPConfig) -> None:
        super().__init__()
        visual = getattr(clip, "visual", None)
        if visual is None or not hasattr(visual, "conv1") or not hasattr(clip, "token_embedding"):
            raise UsageError(f"backbone {config.clip} is not an open_clip ViT CLIP (needs visual.conv1 and a built-in "
                             "text tower); use a ViT model such as ViT-B-32")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
            raise UsageError(f"backbone {config.clip} uses attentional or post-pool LayerNorm pooling; not supported")
        if getattr(visual, "pool_type", "tok") != "tok":  # frame_emb is the class token, as CLIP's image embedding
            raise UsageError(f"backbone {config.clip} pools its image embedding by '{visual.pool_type}', not by its "
                             "class token; not supported")
        blocks = visual.transformer.resblocks
        if not all(hasattr(b, "ls_1") and hasattr(b, "attention") for b in blocks):
            raise UsageError(f"backbone {config.clip} uses custom residual blocks; not supported")
        _check_text_tower(clip, config)
        self.config = config
        self.clip = freeze(clip)
        width = visual.transformer.width
        self.grid = tuple(visual.grid_size)
        self.embed_dim = int(visual.output_dim)
        self.num_patches = self.grid[0] * self.grid[1]
        excess = topk_excess(config, self.grid)  # a checkpoint of it would not load (checkpoint.py)
        if excess:
            raise UsageError(f"{excess}; pass --topk {self.num_patches} or less")
        positions = clip.positional_embedding.shape[0]
        if config.context_length > positions:  # DiDeMo and ActivityNet ask for 64 tokens by default
            raise UsageError(f"context_length {config.context_length} exceeds {config.clip}'s {positions} text "
                             f"positions; pass --context-length {positions} or less (text past it is cut), or a "
                             "--clip with more")
        if config.use_lorm:
            self.lorm_attn = nn.ModuleList(LowRankModulation(config.frames, width, config.lorm_rank) for _ in blocks)
            self.lorm_mlp = nn.ModuleList(LowRankModulation(config.frames, width, config.lorm_rank) for _ in blocks)
        else:
            self.lorm_attn = self.lorm_mlp = None
        self.asa = (AsynchronousSelfAttention(self.embed_dim, self.grid, config.asa_topk, config.asa_heads,
                                              config.asa_dim, config.asa_selection) if config.has_asa else None)

    # ------------------------------------------------------------------ bookkeeping
    def train(self, mode: bool = True) -> RAPModel:
        """Train mode for the adapters only: the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable adapter weights (everything outside ``clip.``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("clip.")}

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The frozen backbone weights, keyed as open_clip names them."""
        return self.clip.state_dict()

    def trained_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of every parameter training updates: the adapters' (outside ``clip.``) that require
        gradients. Not the frozen backbone, the ASA key bias (gradient-free under softmax, frozen by
        :class:`AsynchronousSelfAttention`) nor offsets frozen for an ablation. The optimizer's groups and the
        trainable-parameter count both come from this list."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and not n.startswith("clip.")]

    def parameter_counts(self) -> dict[str, int]:
        """``trainable_params`` (the elements of :meth:`trained_parameters`) and ``total_params`` (backbone +
        adapters, the frozen ones included)."""
        trainable = sum(p.numel() for _, p in self.trained_parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"trainable_params": trainable, "total_params": total}

    @property
    def logit_scale(self) -> torch.Tensor:
        """The frozen CLIP temperature, ``exp(logit_scale)``."""
        return self.clip.logit_scale.detach().exp()

    # ------------------------------------------------------------------ graphs
    def encode_frames_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Run the (LoRM-modulated) ViT on ``[B*T,3,H,W]`` frames; returns joint-space tokens ``[B*T, 1+P, d]``."""
        visual = self.clip.visual
        x = visual.conv1(frames)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)
        batch_first = getattr(visual.transformer, "batch_first", True)
        for i, blk in enumerate(visual.transformer.resblocks):
            # ResidualAttentionBlock.forward, with LoRM on each branch before it joins the residual stream. x stays
            # batch-first; only a sequence-first block's attention takes and gives [N, B*T, D].
            attn = blk.ls_1(self._seq_layout(blk.attention(q_x=self._seq_layout(blk.ln_1(x), batch_first)),
                                             batch_first))
            x = x + self._modulate(self.lorm_attn, i, attn)
            x = x + self._modulate(self.lorm_mlp, i, blk.ls_2(blk.mlp(blk.ln_2(x))))
        x = visual.ln_post(x)
        return x @ visual.proj if visual.proj is not None else x

    @staticmethod
    def _seq_layout(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
        """``x`` swapped between ``[B*T, N, D]`` and ``[N, B*T, D]`` for a sequence-first block (unchanged else)."""
        return x if batch_first else x.transpose(0, 1)

    @staticmethod
    def _modulate(sites: nn.ModuleList | None, i: int, y: torch.Tensor) -> torch.Tensor:
        """Branch output ``y [B*T, N, D]`` through LoRM site ``i`` (unchanged without LoRM)."""
        return sites[i](y) if sites is not None else y

    def encode_video(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, ...]:
        """Encode ``frames [B,T,3,H,W]`` (``frame_mask [B,T]``, 1 = real frame, default all ones; real frames form a
        prefix, as the decoder pads).

        Returns, in ``rap_deploy.graphs.video_outputs(has_asa)`` order: ``video_emb [B,d]`` (L2-normalised masked
        mean of frame embeddings, i.e. meanP), ``frame_emb [B,T,d]`` and ``patch_tokens [B,T,P,d]`` (L2-normalised,
        zero for padded frames), and with an ASA head ``asa_tokens [B,T,P,3·d_a]`` (the query-independent ASA
        tensors, see :meth:`AsynchronousSelfAttention.video_tokens`), computed from the patch tokens rounded to the
        index's dtype so that the stored ``patch_tokens`` and ``asa_tokens`` agree exactly.
        """
        b, t = frames.shape[:2]
        if t != self.config.frames:
            raise UsageError(f"model expects {self.config.frames} frames per video, got {t}")
        tokens = self.encode_frames_tokens(frames.reshape(b * t, *frames.shape[2:]))
        tokens = F.normalize(tokens.reshape(b, t, 1 + self.num_patches, -1), dim=-1)
        mask = torch.ones(b, t, dtype=tokens.dtype, device=tokens.device) if frame_mask is None \
            else frame_mask.to(tokens.dtype)
        frame_emb = tokens[:, :, 0] * mask.unsqueeze(-1)
        patch_tokens = tokens[:, :, 1:] * mask.view(b, t, 1, 1)
        video_emb = l2_normalize(frame_emb.sum(1))
        if self.asa is None:
            return video_emb, frame_emb, patch_tokens
        stored = patch_tokens.to(_STORED_PATCH_DTYPE).to(patch_tokens.dtype)  # what the index will hold
        return video_emb, frame_emb, patch_tokens, self.asa.video_tokens(stored, mask)

    def encode_text(self, tokens: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Encode token ids ``[B,L]`` (``1 <= L <= context_length``; positions after a row's EOT never change its
        embedding) with EOT positions ``[B]``; returns L2-normalised ``text_emb [B,d]``."""
        clip = self.clip
        x = text_tower(clip, tokens)  # any L <= context_length: the exported graph's tokens axis is dynamic
        idx = eot.long().view(-1, 1, 1).expand(-1, 1, x.shape[-1])
        x = x.gather(1, idx)[:, 0]  # not squeeze(1): the TorchScript exporter turns that into an ONNX If
        proj = clip.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x, dim=-1)

    def asa_similarity(self, text_emb: torch.Tensor, *rerank: torch.Tensor, query_chunk: int = 64,
                       video_chunk: int = 64, video_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine similarity ``[Q, V]`` of each text with its text-conditioned embedding of each video.

        ``rerank`` are the video encoder's re-rank outputs in ``rap_deploy.graphs.rerank_tensors(True)`` order
        (``frame_emb``, ``patch_tokens``, ``asa_tokens``; the latter two may be in the index's dtypes). Without an ASA
        head (``rap_light`` or ``--no-asa``) only ``frame_emb`` is used and this is meanP: ``text_emb @
        mean(frame_emb)``. Computed in ``query_chunk × video_chunk`` blocks so memory stays bounded. With
        ``video_rows`` (int64 ``[V]``, eager only) the re-rank tensors are whole index stores and the videos at those
        rows are scored in place (see :meth:`AsynchronousSelfAttention.conditioned_embedding`). Raises
        :class:`UsageError` when the re-rank tensors do not match the model.
        """
        self._check_rerank_shapes(text_emb, rerank)
        if self.asa is None:
            if not rerank:
                raise UsageError("a model without an ASA head has no re-rank tensors: rank by video_emb, or pass "
                                 "frame_emb for its meanP similarity")
            frame_emb = rerank[0] if video_rows is None else rerank[0].index_select(0, video_rows)
            n_valid = valid_frames(frame_emb).sum(-1, keepdim=True).clamp_min(1)
            text_emb, frame_emb = in_score_precision(text_emb, frame_emb)
            return text_emb @ F.normalize(frame_emb.sum(1) / n_valid, dim=-1).T
        if len(rerank) != 3:
            raise UsageError(f"the ASA head needs frame_emb, patch_tokens and asa_tokens (the video encoder's outputs "
                             f"after video_emb), got {len(rerank)} tensors")
        rows = []
        videos = rerank[0].shape[0] if video_rows is None else len(video_rows)
        if text_emb.shape[0] == 0 or videos == 0:  # no block to join: [Q, 0] or [0, V], as rap_light and ORT give
            return in_score_precision(text_emb)[0].new_zeros(text_emb.shape[0], videos)
        for q0 in range(0, text_emb.shape[0], query_chunk):
            texts = text_emb[q0:q0 + query_chunk]
            if video_rows is None:
                cols = [self.asa(texts, *(x[v0:v0 + video_chunk] for x in rerank))
                        for v0 in range(0, videos, video_chunk)]
            else:
                cols = [self.asa(texts, *rerank, video_rows=video_rows[v0:v0 + video_chunk])
                        for v0 in range(0, videos, video_chunk)]
            rows.append(torch.cat(cols, dim=1))
        return torch.cat(rows, dim=0)

    def _check_rerank_shapes(self, text_emb: torch.Tensor, rerank: tuple[torch.Tensor, ...]) -> None:
        """Raise :class:`UsageError` unless ``text_emb`` is ``[Q, d]`` and each re-rank tensor has this model's
        per-video shape: the head takes T, P and widths from its inputs, so another model's tensors (or an
        ``asa_tokens`` cut short, read by row offsets) scored silently."""
        t, p, d = self.config.frames, self.num_patches, self.embed_dim
        shapes = {"frame_emb": (t, d), "patch_tokens": (t, p, d)}
        if self.asa is not None:
            shapes["asa_tokens"] = (t, p, self.asa.token_width)
        if text_emb.dim() != 2 or text_emb.shape[1] != d:
            raise UsageError(f"text_emb must be [Q, {d}] for this model, got {list(text_emb.shape)}")
        for (name, shape), x in zip(shapes.items(), rerank, strict=False):
            if tuple(x.shape[1:]) != shape:
                raise UsageError(f"{name} must be [V, {', '.join(map(str, shape))}] for this model (the video "
                                 f"encoder's output), got {list(x.shape)}; encode the videos with the same model")

    def similarity(self, frames: torch.Tensor, frame_mask: torch.Tensor | None, tokens: torch.Tensor,
                   eot: torch.Tensor) -> torch.Tensor:
        """Training similarity ``[B_text, B_video]`` (cosine, before the logit scale) for a batch.

        Goes through the deployed split: each video is encoded once (with its ``asa_tokens``), then scored.
        """
        rerank = self.encode_video(frames, frame_mask)[1:]
        return self.asa_similarity(self.encode_text(tokens, eot), *rerank)
