"""The machine and library versions a ``verify`` or ``bench`` report records beside its measurements.

Nothing here measures a result; :mod:`rap_deploy.engines.bench_report` and :mod:`rap_deploy.engines.verify_output`
record these beside theirs.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

# Library versions worth recording beside a measurement (distribution names). TensorRT's `tensorrt` is a meta
# package: an install of only `tensorrt-cu12` / `-cu13` (or their `-bindings`, which hold the module) has no
# `tensorrt` distribution, so those are looked up too.
_DISTRIBUTIONS = ("rapdeploy", "torch", "open_clip_torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt",
                  "tensorrt-cu12", "tensorrt-cu12-bindings", "tensorrt-cu13", "tensorrt-cu13-bindings", "numpy")


def library_versions() -> dict[str, str]:
    """Return ``{distribution: version}`` for the installed libraries that decide numerics and speed, and Python."""
    out = {"python": platform.python_version()}
    for name in _DISTRIBUTIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict[str, Any]:
    """Describe the machine: CPU model, logical cores (and those this process may use), memory, GPU if CUDA works,
    and the thread settings of PyTorch and the OpenMP/MKL environment."""
    import torch

    from rap_deploy.engines.machine_load import usable_cpus

    usable = len(usable_cpus())
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "gpu": None,
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}
    return info


def describe_device(info: dict[str, Any]) -> str:
    """One line for a report header: ``CPU (n cores)`` or the GPU name."""
    cpu = f"{info.get('cpu')} ({info.get('usable_cores')} cores, torch threads {info.get('torch_threads')})"
    gpu = info.get("gpu")
    return f"{gpu['name']} + {cpu}" if gpu else cpu
