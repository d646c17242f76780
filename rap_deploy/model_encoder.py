"""The PyTorch reference behind the Engine methods: :class:`ModelEncoder` wraps a
:class:`~rap_deploy.model.rap.RAPModel` so retrieval, verify and bench run it exactly as they run an engine.

Its own module so that :mod:`rap_deploy.retrieval` (and with it search over ONNX Runtime engines) never imports torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rap_deploy.config import RAPConfig
from rap_deploy.graphs import rerank_tensors
from rap_deploy.retrieval import as_index_dtypes


class ModelEncoder:
    """Numpy-in / numpy-out wrapper of a :class:`RAPModel` with the Engine method names (the PyTorch reference)."""

    def __init__(self, model: Any, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 query_chunk: int = 32, video_chunk: int = 16) -> None:
        self.model = model.to(device=device).eval()
        if dtype != torch.float32:
            self.model = self.model.to(dtype)
        self.config: RAPConfig = model.config
        self.device, self.dtype = device, dtype
        self.query_chunk, self.video_chunk = query_chunk, video_chunk

    @property
    def has_asa(self) -> bool:
        return self.model.asa is not None

    def _t(self, x: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x))
        return t.to(self.device, self.dtype) if t.is_floating_point() else t.to(self.device)

    @staticmethod
    def _np(x: torch.Tensor) -> np.ndarray:
        return x.detach().to("cpu", torch.float32).numpy()

    @torch.inference_mode()
    def encode_video(self, frames: np.ndarray, frame_mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """See ``Engine.encode_video``: float32 outputs in ``rap_deploy.graphs.video_outputs(has_asa)`` order."""
        mask = None if frame_mask is None else self._t(frame_mask)
        return tuple(self._np(x) for x in self.model.encode_video(self._t(frames), mask))

    @torch.inference_mode()
    def encode_text(self, input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """See ``Engine.encode_text``; only the first ``max(eot) + 1`` tokens run (exact under the causal mask)."""
        from rap_deploy.engines.blocks import trim_tokens

        return self._np(self.model.encode_text(self._t(trim_tokens(input_ids, eot)), self._t(eot)))

    @torch.inference_mode()
    def asa_similarity(self, text_emb: np.ndarray, *rerank: np.ndarray) -> np.ndarray:
        """See ``Engine.asa_similarity``: ``rerank`` in ``rerank_tensors(has_asa)`` order, taken in the index's dtypes
        (an fp16 block stays fp16 until the model gathers from it)."""
        if self.has_asa:
            rerank = as_index_dtypes(rerank_tensors(True), rerank)
        tensors = [_tensor_view(x).to(self.device) for x in rerank]
        if tensors:  # frame_emb in the compute dtype (fp16 on CUDA); the stored tensors keep theirs
            tensors[0] = tensors[0].to(self.dtype)
        q, v = self._chunks(text_emb, len(rerank[0]) if rerank else 0, rerank)
        return self._np(self.model.asa_similarity(self._t(text_emb), *tensors, query_chunk=q, video_chunk=v))

    def _chunks(self, text_emb: np.ndarray, videos: int, rerank: tuple[np.ndarray, ...]) -> tuple[int, int]:
        """``(query_chunk, video_chunk)`` for one ASA similarity: on the CPU fitted to the memory available
        (:func:`~rap_deploy.engines.blocks.fit_asa_blocks`; the scores do not depend on them), else as set."""
        if not self.has_asa or str(self.device) != "cpu" or len(rerank) != 3 or np.ndim(rerank[1]) != 4:
            return self.query_chunk, self.video_chunk  # the model refuses what is not its re-rank tensors
        from rap_deploy.engines.blocks import fit_asa_blocks, model_call_bytes

        queries = np.shape(text_emb)[0] if np.ndim(text_emb) else 0
        return fit_asa_blocks(self.query_chunk, self.video_chunk, queries, videos,
                              model_call_bytes(self.config, rerank[1].shape))

    @torch.inference_mode()
    def asa_similarity_rows(self, text_emb: np.ndarray, stores: tuple[np.ndarray, ...],
                            rows: np.ndarray) -> np.ndarray:
        """:meth:`asa_similarity` of the videos ``rows`` (int indices) of whole re-rank ``stores`` (an index's
        ``rerank()``), read in place on the CPU: only each candidate's patch tokens and its selected ``asa_tokens``
        rows are touched, none is copied out first. Same values as ``asa_similarity(text_emb, *(s[rows] for s in
        stores))``. Raises :class:`UsageError` for rows outside the stores."""
        from rap_deploy.errors import UsageError

        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = stores[0].shape[0] if stores else 0
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise UsageError(f"candidate rows must lie in [0, {n}), got {rows.min()}..{rows.max()}")
        if self.device != "cpu" or not self.has_asa:  # a GPU gets only the candidates' blocks, never the stores
            return self.asa_similarity(text_emb, *(s[rows] for s in stores))
        tensors = [_tensor_view(x) for x in as_index_dtypes(rerank_tensors(True), stores)]
        q, v = self._chunks(text_emb, len(rows), stores)
        return self._np(self.model.asa_similarity(self._t(text_emb), *tensors, query_chunk=q, video_chunk=v,
                                                  video_rows=torch.from_numpy(rows)))


def _tensor_view(x: np.ndarray) -> torch.Tensor:
    """``x`` as a CPU tensor sharing its memory (read-only memory-mapped index shards too: nothing writes to it)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(x))
