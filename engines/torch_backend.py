"""The PyTorch reference engine: a RAP checkpoint run eagerly (CPU fp32, or CUDA fp32/fp16)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.engines.base import Engine, EngineInfo
from rap_deploy.engines.blocks import (
    DEFAULT_QUERY_BLOCK,
    check_text_inputs,
    check_video_inputs,
    rerank_inputs,
)
from rap_deploy.errors import BackendUnavailableError, UsageError

PRECISIONS = ("fp32", "fp16")
# Videos per ASA call in eager PyTorch. The selection casts a block's fp16 patch tokens to fp32: 16 ViT-B/32 videos
# are 19 MB, which glibc serves from the heap after the first call, while 64 (77 MB) are mmapped and page-faulted
# anew on every call; measured (1 thread, 100 candidates, shared 2-core EPYC): 221 ms at 16 against 577 ms at 64.
TORCH_VIDEO_BLOCK = 16


class TorchEngine(Engine):
    """PyTorch eager RAP (the reference every other engine is compared with).

    ``checkpoint`` is a checkpoint path (``.pt`` / ``.safetensors``) or an already built ``RAPModel``. ``precision``
    ``fp16`` casts the whole model to half precision and needs ``device="cuda"``. Wraps
    :class:`rap_deploy.retrieval.ModelEncoder`, so the numbers are those training and verify compute.
    """

    backend = "torch"

    def __init__(self, checkpoint: str | os.PathLike[str] | Any, device: str = "cpu", precision: str = "fp32",
                 query_block: int = DEFAULT_QUERY_BLOCK, video_block: int = TORCH_VIDEO_BLOCK) -> None:
        import torch

        from rap_deploy.model_encoder import ModelEncoder

        if precision not in PRECISIONS:
            raise UsageError(f"torch precision '{precision}' is unknown; use one of {', '.join(PRECISIONS)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device} requested but torch {torch.__version__} sees no CUDA GPU; "
                                          "use --device cpu")
        if precision == "fp16" and not device.startswith("cuda"):
            raise UsageError("PyTorch fp16 runs only on CUDA (half-precision CPU kernels are slow and incomplete); "
                             "use --device cuda or fp32")
        if isinstance(checkpoint, (str, os.PathLike)):
            from rap_deploy.checkpoint import load_checkpoint

            self.checkpoint_path: str | None = str(Path(checkpoint))
            model = load_checkpoint(checkpoint).build_model()
        else:
            self.checkpoint_path = None
            model = checkpoint
        dtype = torch.float16 if precision == "fp16" else torch.float32
        self.encoder = ModelEncoder(model, device=device, dtype=dtype, query_chunk=query_block,
                                    video_chunk=video_block)
        self.config = model.config
        self.device, self.precision = device, precision
        self.max_batch = {"video_encoder": None, "text_encoder": None, "asa_head": None}

    @property
    def model(self) -> Any:
        """The underlying ``RAPModel``."""
        return self.encoder.model

    def encode_video(self, frames: np.ndarray, frame_mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """See :meth:`Engine.encode_video`."""
        frames, mask = check_video_inputs(frames, frame_mask, self.config)
        return self.encoder.encode_video(frames, mask)

    def encode_text(self, input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """See :meth:`Engine.encode_text`."""
        ids, pos = check_text_inputs(input_ids, eot, self.config)
        return self.encoder.encode_text(ids, pos)

    def asa_similarity(self, text_emb: np.ndarray, *rerank: np.ndarray) -> np.ndarray:
        """See :meth:`Engine.asa_similarity` (blocks of ``query_block × video_block`` inside the model)."""
        return self.encoder.asa_similarity(text_emb, *rerank_inputs(self.has_asa, rerank))

    def describe(self) -> EngineInfo:
        """Backend ``torch``, device, precision, torch version and the checkpoint path."""
        import torch

        extra: dict[str, Any] = {"checkpoint": self.checkpoint_path}
        if self.device.startswith("cuda"):
            extra["gpu"] = torch.cuda.get_device_name(torch.device(self.device))
        else:
            extra["threads"] = torch.get_num_threads()
        return EngineInfo(backend=self.backend, precision=self.precision, device=self.device,
                          versions={"torch": torch.__version__}, path=self.checkpoint_path, extra=extra)
