"""The :class:`Engine` interface every backend implements (DESIGN.md §4, §8).

Inputs and outputs are numpy arrays with the dtypes and shapes of the three-graph contract (names and order from
:mod:`rap_deploy.graphs`, never hard-coded by callers):

- ``encode_video(frames float32 [B,T,3,H,W], frame_mask float32 [B,T] | None)`` → a tuple in
  ``video_outputs(has_asa)`` order: ``video_emb [B,d]``, ``frame_emb [B,T,d]``, ``patch_tokens [B,T,P,d]`` (all
  L2-normalised, zero rows for padded frames) and, with an ASA head, ``asa_tokens [B,T,P,3·d_a]`` (the
  query-independent ASA tensors, zero rows for padded frames). All float32; an index stores each in
  ``INDEX_DTYPES``. ``frame_mask`` marks real frames as a prefix (1…1 0…0), as the decoder pads.
- ``encode_text(input_ids int32 [B,L], eot int32 [B])`` → ``text_emb [B,d]`` float32.
- ``asa_similarity(text_emb [Q,d], *rerank)`` with ``rerank`` the ``rerank_tensors(has_asa)`` of V videos in order
  (``frame_emb [V,T,d]``, ``patch_tokens [V,T,P,d]``, ``asa_tokens [V,T,P,3·d_a]``), best passed in the index's
  dtypes (other dtypes are cast to them first, so every backend sees the same values) → cosine similarity ``[Q,V]``
  float32; the engine feeds its graph bounded blocks so memory does not grow with Q×V. Without an ASA head there is
  nothing to re-rank (``rerank_tensors(False)`` is empty); given ``frame_emb`` it returns the meanP similarity.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rap_deploy.config import RAPConfig

# Graph and input / output names shared by export and every backend: defined in the core, re-exported here.
from rap_deploy.graphs import (  # noqa: F401
    ASA_INPUTS,
    ASA_OUTPUTS,
    GRAPH_NAMES,
    INDEX_DTYPES,
    TEXT_INPUTS,
    TEXT_OUTPUTS,
    VIDEO_INPUTS,
    VIDEO_OUTPUTS,
    rerank_tensors,
    video_outputs,
)


@dataclass
class EngineInfo:
    """What ``describe()`` returns: enough to reproduce and compare runs."""

    backend: str
    precision: str
    device: str
    provider: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "device": self.device,
                "provider": self.provider, "versions": self.versions, "path": self.path, **self.extra}


def engine_info(engine: Any) -> dict[str, Any] | None:
    """``engine.describe()`` as a plain dict (an :class:`EngineInfo`, or the mapping a stand-in engine returns);
    ``None`` for an object without ``describe``."""
    describe = getattr(engine, "describe", None)
    if describe is None:
        return None
    info = describe()
    return info.to_dict() if hasattr(info, "to_dict") else dict(info)


class Engine(ABC):
    """A runnable RAP model. ``config`` is the model config the engine was built from."""

    config: RAPConfig
    #: Largest batch per call for each graph (``None`` = unbounded); callers split larger inputs.
    max_batch: dict[str, int | None]
    #: The engine or export manifest :func:`~rap_deploy.engines.loader.load_engine` opened this engine's files from
    #: (``None`` for a checkpoint, a server, or an engine made without the loader): what ``rapdeploy serve`` takes
    #: the graphs' shapes and batch limits from, since the folder may be rebuilt after the load.
    source_manifest: dict[str, Any] | None = None

    @property
    def has_asa(self) -> bool:
        """Whether the engine has an ASA head (``rap`` variant); otherwise similarity is meanP."""
        return self.config.has_asa

    @abstractmethod
    def encode_video(self, frames: np.ndarray, frame_mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Encode a batch of preprocessed videos: the ``video_outputs(has_asa)``, float32 (see the module docstring).

        Raises :class:`~rap_deploy.errors.UsageError` for inputs of the wrong shape or a mask that is not a prefix.
        """

    @abstractmethod
    def encode_text(self, input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """Encode a batch of tokenised texts; returns ``text_emb [B,d]``."""

    @abstractmethod
    def asa_similarity(self, text_emb: np.ndarray, *rerank: np.ndarray) -> np.ndarray:
        """Text-conditioned similarity ``[Q,V]`` of ``text_emb`` with the videos of ``rerank`` (the
        ``rerank_tensors(has_asa)`` in order); meanP cosine of ``frame_emb`` for engines without an ASA head.

        Raises :class:`~rap_deploy.errors.UsageError` when ``rerank`` does not match the model.
        """

    @abstractmethod
    def describe(self) -> EngineInfo:
        """Backend, device, precision, provider and library versions."""

    def meanp_similarity(self, text_emb: np.ndarray, video_emb: np.ndarray) -> np.ndarray:
        """Stage-1 similarity: inner product of normalised text and meanP video embeddings ``[Q,V]``."""
        return np.asarray(text_emb, dtype=np.float32) @ np.asarray(video_emb, dtype=np.float32).T

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions / device memory (optional)."""
