"""An :class:`~rap_deploy.engines.base.Engine` wrapper that lets one thread at a time into the engine.

The server calls the engine from its batcher thread (text), from request threads (video, ASA head) and through the
library (stage-2 re-rank). TensorRT execution contexts and the PyTorch reference are not safe to call concurrently,
and on a CPU every backend already uses all cores per call, so every call takes one lock. The wrapper also counts
calls and engine seconds per graph for ``GET /stats``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rap_deploy.engines.base import Engine, EngineInfo
from rap_deploy.engines.serving.contract import ASA_GRAPH, TEXT_GRAPH, VIDEO_GRAPH


class SerialEngine(Engine):
    """``engine`` behind a lock (see the module docstring); same config, limits and results."""

    def __init__(self, engine: Engine) -> None:
        self.inner = engine
        self.config = engine.config
        self.max_batch = dict(getattr(engine, "max_batch", {}) or {})
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    @property
    def has_asa(self) -> bool:
        return self.inner.has_asa

    @property
    def video_block(self) -> int | None:
        """The wrapped engine's videos per ASA-head call (the library hands it its re-rank in such blocks), ``None``
        when it has none."""
        return getattr(self.inner, "video_block", None)

    def _call(self, graph: str, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.calls[graph] = self.calls.get(graph, 0) + 1
                self.seconds[graph] = self.seconds.get(graph, 0.0) + time.perf_counter() - t0

    def encode_video(self, frames: np.ndarray, frame_mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """See :meth:`Engine.encode_video` (serialised)."""
        return self._call(VIDEO_GRAPH, self.inner.encode_video, frames, frame_mask)

    def encode_text(self, input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """See :meth:`Engine.encode_text` (serialised)."""
        return self._call(TEXT_GRAPH, self.inner.encode_text, input_ids, eot)

    def asa_similarity(self, text_emb: np.ndarray, *rerank: np.ndarray) -> np.ndarray:
        """See :meth:`Engine.asa_similarity` (serialised); takes the re-rank tensors in the contract's order."""
        return self._call(ASA_GRAPH, self.inner.asa_similarity, text_emb, *rerank)

    def describe(self) -> EngineInfo:
        """The wrapped engine's description."""
        return self.inner.describe()

    def stats(self) -> dict[str, Any]:
        """Calls and engine seconds (to the microsecond) per graph since start."""
        return {g: {"calls": self.calls[g], "seconds": round(self.seconds.get(g, 0.0), 6)} for g in sorted(self.calls)}

    def reset_stats(self) -> None:
        """Forget the calls counted so far (the server's warm-up; after the call in progress)."""
        with self._lock:
            self.calls.clear()
            self.seconds.clear()

    def close(self) -> None:
        """Close the wrapped engine (after the call in progress)."""
        with self._lock:
            self.inner.close()
