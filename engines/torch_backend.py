"""The PyTorch reference engine: a RAP checkpoint run eagerly (CPU fp32, or CUDA fp32/fp16)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.engines.base import Engine, EngineInfo
from rap_deploy.engines.blocks import (
    DEFAULT_QUERY_BLOCK,
    batched,
    check_similarity_memory,
    check_text_emb,
    check_text_inputs,
    check_video_inputs,
    rerank_inputs,
)
from rap_deploy.errors import BackendUnavailableError, UsageError

PRECISIONS = ("fp32", "fp16")
# Videos per ASA call in eager PyTorch. Measured on the in-place re-rank (asa_similarity_rows; ViT-B/32, 100
# candidates, 1 thread, 2-core EPYC with a training job on the other core): 39.1 ms at 16, 39.4 at 32, 54.3 at 100
# (the [V,H,96,96] logits of a larger block leave the cache). The copied-blocks path took 117.5 ms in the same run.
TORCH_VIDEO_BLOCK = 16


def strict_fp32_on_cuda() -> None:
    """Switch TF32 off for CUDA matmuls and cuDNN convolutions, process-wide.

    PyTorch allows TF32 in cuDNN by default, so an "fp32" model on an Ampere-or-later GPU would run its patch
    embedding with 10-bit mantissas. The PyTorch engine is the fp32 reference (``verify``) and the fp32 row every
    engine is timed against (``bench``; TensorRT builds with TF32 off too), so a CUDA fp32 ``TorchEngine`` and the
    reference of ``verify --reference-device cuda`` call this. The flags are global in PyTorch: they stay off for
    the rest of the process.
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def check_cuda_device(device: str) -> None:
    """Raise :class:`BackendUnavailableError` unless torch sees a CUDA GPU, and GPU ``N`` for ``device`` ``cuda:N``."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"device {device} requested but torch {torch.__version__} sees no CUDA GPU; "
                                      "use the CPU (--device cpu; bench: --torch-device cpu)")
    index = device.partition(":")[2]
    count = torch.cuda.device_count()
    if index.isdigit() and int(index) >= count:
        raise BackendUnavailableError(f"device {device} requested but this machine has {count} CUDA GPUs "
                                      f"(cuda:0 .. cuda:{count - 1}); pick one of them")


def load_hashed_checkpoint(path: Path) -> tuple[Any, str]:
    """``(checkpoint, sha256)``: the :class:`~rap_deploy.checkpoint.Checkpoint` at ``path`` and the sha256 of the
    bytes it was loaded from, so an engine names the weights it holds even after the file is replaced.

    Raises what :func:`~rap_deploy.checkpoint.load_checkpoint` raises, and :class:`UsageError` when the file was
    written or replaced between the start of the load and the end of the hash (the hash may not be of the weights
    loaded).
    """
    from rap_deploy.atomic import file_identity
    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.data.cache import file_digest

    before = file_identity(path)
    loaded = load_checkpoint(path)  # first: it names a missing file, a folder or a FIFO as what it is
    sha256 = file_digest(path)
    if file_identity(path) != before:
        raise UsageError(f"checkpoint {path} changed while it was loaded (written or replaced by another process), "
                         "so the sha256 of the weights loaded is unknown; run again once nothing writes it")
    return loaded, sha256


def _block(name: str, block: Any) -> int:
    """``block`` when it is a positive int (a call size); raises :class:`UsageError` naming ``name`` otherwise."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise UsageError(f"{name} must be a positive int, got {block!r}")
    return block


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

        query_block, video_block = _block("query_block", query_block), _block("video_block", video_block)
        if precision not in PRECISIONS:
            raise UsageError(f"torch precision '{precision}' is unknown; use one of {', '.join(PRECISIONS)}")
        if device.startswith("cuda"):
            check_cuda_device(device)
        if precision == "fp16" and not device.startswith("cuda"):
            raise UsageError("PyTorch fp16 runs only on CUDA (half-precision CPU kernels are slow and incomplete); "
                             "use --device cuda or fp32")
        if isinstance(checkpoint, (str, os.PathLike)):
            self.checkpoint_path: str | None = str(Path(checkpoint))
            loaded, self.checkpoint_sha256 = load_hashed_checkpoint(Path(checkpoint))
            model = loaded.build_model()
        else:
            self.checkpoint_path, self.checkpoint_sha256 = None, None
            model = checkpoint
        if precision == "fp32" and device.startswith("cuda"):
            strict_fp32_on_cuda()
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

    @property
    def video_block(self) -> int:
        """Videos per ASA call inside :meth:`asa_similarity` and :meth:`asa_similarity_rows` (a speed setting: the
        scores do not depend on it)."""
        return self.encoder.video_chunk

    @video_block.setter
    def video_block(self, block: int) -> None:
        self.encoder.video_chunk = _block("video_block", block)

    def encode_video(self, frames: np.ndarray, frame_mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """See :meth:`Engine.encode_video`."""
        frames, mask = check_video_inputs(frames, frame_mask, self.config)
        return batched(self.encoder.encode_video, (frames, mask), None)

    def encode_text(self, input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """See :meth:`Engine.encode_text`."""
        ids, pos = check_text_inputs(input_ids, eot, self.config)
        return batched(lambda i, e: (self.encoder.encode_text(i, e),), (ids, pos), None)[0]

    def asa_similarity(self, text_emb: np.ndarray, *rerank: np.ndarray) -> np.ndarray:
        """See :meth:`Engine.asa_similarity` (blocks of ``query_block × video_block`` inside the model)."""
        rerank = rerank_inputs(self.has_asa, rerank)
        check_text_emb(text_emb, rerank[0])
        check_similarity_memory(np.shape(text_emb)[0], rerank[0].shape[0])
        return self.encoder.asa_similarity(text_emb, *rerank)

    def asa_similarity_rows(self, text_emb: np.ndarray, stores: tuple[np.ndarray, ...],
                            rows: np.ndarray) -> np.ndarray:
        """The ASA similarity ``[Q, len(rows)]`` of the videos ``rows`` of whole re-rank ``stores`` (an index's
        ``rerank()``), read in place (see :meth:`ModelEncoder.asa_similarity_rows`); equal to
        ``asa_similarity(text_emb, *(s[rows] for s in stores))``. Raises :class:`UsageError` for bad stores or rows."""
        stores = rerank_inputs(self.has_asa, tuple(stores))
        check_text_emb(text_emb, stores[0])
        check_similarity_memory(np.shape(text_emb)[0], np.size(rows))
        return self.encoder.asa_similarity_rows(text_emb, stores, rows)

    def describe(self) -> EngineInfo:
        """Backend ``torch``, device, precision, torch version, the checkpoint path and the sha256 of the bytes the
        weights were loaded from (``None`` for an engine made on a model object)."""
        import torch

        extra: dict[str, Any] = {"checkpoint": self.checkpoint_path, "checkpoint_sha256": self.checkpoint_sha256}
        if self.device.startswith("cuda"):
            extra["gpu"] = torch.cuda.get_device_name(torch.device(self.device))
        else:
            extra["threads"] = torch.get_num_threads()
        return EngineInfo(backend=self.backend, precision=self.precision, device=self.device,
                          versions={"torch": torch.__version__}, path=self.checkpoint_path, extra=extra)
