"""The :class:`Engine` interface every backend implements (DESIGN.md §4, §8).

Inputs and outputs are numpy arrays with the dtypes and shapes of the three-graph contract:

- ``encode_video(frames float32 [B,T,3,H,W], frame_mask float32 [B,T] | None)`` →
  ``(video_emb [B,d], frame_emb [B,T,d], patch_tokens [B,T,P,d])``, all L2-normalised, zero rows for padded frames.
- ``encode_text(input_ids int32 [B,L], eot int32 [B])`` → ``text_emb [B,d]``.
- ``asa_similarity(text_emb [Q,d], frame_emb [V,T,d], patch_tokens [V,T,P,d])`` → cosine similarity ``[Q,V]``;
  the engine feeds its graph bounded blocks so memory does not grow with Q×V.

Outputs are float32 whatever the engine's internal precision.
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
    TEXT_INPUTS,
    TEXT_OUTPUTS,
    VIDEO_INPUTS,
    VIDEO_OUTPUTS,
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


class Engine(ABC):
    """A runnable RAP model. ``config`` is the model config the engine was built from."""

    config: RAPConfig
    #: Largest batch per call for each graph (``None`` = unbounded); callers split larger inputs.
    max_batch: dict[str, int | None]

    @property
    def has_asa(self) -> bool:
        """Whether the engine has an ASA head (``rap`` variant); otherwise similarity is meanP."""
        return self.config.has_asa

    @abstractmethod
    def encode_video(self, frames: np.ndarray, frame_mask: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encode a batch of preprocessed videos; see the module docstring for shapes."""

    @abstractmethod
    def encode_text(self, input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """Encode a batch of tokenised texts; returns ``text_emb [B,d]``."""

    @abstractmethod
    def asa_similarity(self, text_emb: np.ndarray, frame_emb: np.ndarray, patch_tokens: np.ndarray) -> np.ndarray:
        """Text-conditioned similarity ``[Q,V]`` (meanP cosine for engines without an ASA head)."""

    @abstractmethod
    def describe(self) -> EngineInfo:
        """Backend, device, precision, provider and library versions."""

    def meanp_similarity(self, text_emb: np.ndarray, video_emb: np.ndarray) -> np.ndarray:
        """Stage-1 similarity: inner product of normalised text and meanP video embeddings ``[Q,V]``."""
        return np.asarray(text_emb, dtype=np.float32) @ np.asarray(video_emb, dtype=np.float32).T

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions / device memory (optional)."""
