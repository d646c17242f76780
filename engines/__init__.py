"""Engines: one interface (:class:`Engine`) and its backends: PyTorch reference, ONNX Runtime, TensorRT.

Public API: :class:`Engine` / :class:`EngineInfo` (the interface), :func:`load_engine` (an engine folder, an export
folder or a checkpoint → the right backend) and :func:`build_engine` (what ``rapdeploy build-engine`` runs). The
backends import onnxruntime / torch / tensorrt, so they are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from rap_deploy.engines.base import GRAPH_NAMES, Engine, EngineInfo

__all__ = ["GRAPH_NAMES", "Engine", "EngineInfo", "build_engine", "load_engine"]


def __getattr__(name: str) -> Any:
    if name == "load_engine":
        from rap_deploy.engines.loader import load_engine

        return load_engine
    if name == "build_engine":
        from rap_deploy.engines.build import build_engine

        return build_engine
    raise AttributeError(f"module 'rap_deploy.engines' has no attribute {name!r}")
