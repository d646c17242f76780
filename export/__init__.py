"""Export: ONNX graphs of a RAP checkpoint, their checks, parity and fp16 variants (DESIGN.md §4, §7).

Public API: :func:`export_checkpoint` (what ``rapdeploy export`` runs), :func:`read_export_manifest` (how later
stages open an export folder) and :func:`read_metadata` (the ``rapdeploy.*`` props of one ONNX file). The submodules
import torch/onnx, so they are loaded on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_checkpoint", "read_export_manifest", "read_metadata"]


def __getattr__(name: str) -> Any:
    if name == "export_checkpoint":
        from rap_deploy.export.onnx_export import export_checkpoint

        return export_checkpoint
    if name in ("read_export_manifest", "read_metadata"):
        from rap_deploy.export import manifest

        return getattr(manifest, name)
    raise AttributeError(f"module 'rap_deploy.export' has no attribute {name!r}")
