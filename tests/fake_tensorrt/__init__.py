"""An API-surface fake of the ``tensorrt`` Python module, 10.x or 11.x, for call-validity tests (DESIGN.md §8).

It is NOT TensorRT and never stands in for its results. What it is for: driving rapdeploy's build and run code
(``build_trt_graphs``, the precision plan, profiles, the post-build check, ``TrtEngine``'s I/O plumbing) on machines
without TensorRT, so that a call the real bindings of a major version do not have fails here as it would there.

- Surface: every fake object and enum exposes only members listed for its real class in :mod:`.surface`, generated
  by ``extract_surface.py`` from github.com/NVIDIA/TensorRT at v10.0.0 ∩ v10.16 (TensorRT 10) and v11.0 ∩ v11.1
  (TensorRT 11): ``python/src/infer/pyCore.cpp``, ``pyGraph.cpp``, ``pyFoundationalTypes.cpp``,
  ``python/src/parsers/pyOnnx.cpp`` and ``python/packaging/bindings_wheel/tensorrt/__init__.py``. So on 11 there is
  no ``BuilderFlag.FP16`` / ``OBEY_PRECISION_CONSTRAINTS``, no ``ILayer.precision`` / ``set_output_type``, and every
  network is strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is deprecated and ignored there).
- Behaviour: :mod:`.network` (parser, modelled on onnx-tensorrt's layer naming and metadata) and :mod:`.engine`
  (build rules, inspector JSON, execution through ONNX Runtime on host addresses).
- Test knobs (private, ``module._knobs``): ``profile_index`` (what ``add_optimization_profile`` returns),
  ``refuse_address`` (tensor names whose ``set_tensor_address`` fails), ``drop_constraints`` (ONNX op types whose
  pinned layers lose their constraint), ``last_build`` (flags and pinned layers of the last build, written by it).

``make_module(10)`` / ``make_module(11)`` returns a fresh module to put in ``sys.modules["tensorrt"]``.
"""

from __future__ import annotations

import importlib.machinery
import types
from typing import Any

import numpy as np

from fake_tensorrt.api import Enum, version_class
from fake_tensorrt.engine import Builder as _Builder
from fake_tensorrt.engine import (
    BuilderConfig,
    Context,
    CudaEngine,
    HostMemory,
    Inspector,
    Profile,
    Runtime,
    TimingCache,
)
from fake_tensorrt.network import Layer, Network, OnnxParser, ParserError, Tensor
from fake_tensorrt.surface import SOURCES, SURFACE

VERSIONS = {10: "10.16.1.11", 11: "11.1.0.7"}
DATA_TYPE_VALUES = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6, "BF16": 7,
                    "INT64": 8, "INT4": 9, "FP4": 10, "E8M0": 11}
MODULE_DTYPES = {"float32": "FLOAT", "float16": "HALF", "bfloat16": "BF16", "int8": "INT8", "int32": "INT32",
                 "int64": "INT64", "bool": "BOOL", "uint8": "UINT8", "fp8": "FP8", "int4": "INT4", "fp4": "FP4",
                 "e8m0": "E8M0"}
ENUMS = ("BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType", "ProfilingVerbosity",
         "LayerInformationFormat", "TensorIOMode", "LayerType")


class Logger:
    """``trt.Logger``: severities as class attributes (copied from ``ILogger.Severity`` by tensorrt/__init__.py)."""

    def __init__(self, min_severity: Any = None) -> None:
        self.min_severity = min_severity


def make_module(major: int) -> types.ModuleType:
    """A fresh fake ``tensorrt`` module of major version 10 or 11 (see the module docstring)."""
    if major not in SURFACE:
        raise ValueError(f"the fake knows TensorRT {sorted(SURFACE)}, not {major}")
    m = types.ModuleType("tensorrt", f"fake tensorrt {VERSIONS[major]} (API surface of {SOURCES[major]})")
    m.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    m.__version__ = VERSIONS[major]
    m._knobs = {}
    m.DataType = Enum(major, "DataType", DATA_TYPE_VALUES)
    for name, dtype in MODULE_DTYPES.items():
        if name in SURFACE[major]["<module>"]:
            setattr(m, name, getattr(m.DataType, dtype))
    for name in ENUMS:
        setattr(m, name, Enum(major, name))
    severity = Enum(major, "ILogger")
    logger_cls = type("Logger", (Logger,), {})
    for name in ("VERBOSE", "INFO", "WARNING", "ERROR", "INTERNAL_ERROR"):
        setattr(logger_cls, name, getattr(severity, name))
    m.Logger = logger_cls
    classes: dict[str, type] = {}
    for cls in (Network, Layer, Tensor, ParserError, OnnxParser, BuilderConfig, Profile, TimingCache, HostMemory,
                CudaEngine, Context, Inspector, _Builder, Runtime):
        classes[cls.__name__] = version_class(cls, major)
    for cls in classes.values():
        cls._classes, cls._module = classes, m
    m.Builder, m.Runtime, m.OnnxParser = classes["Builder"], classes["Runtime"], classes["OnnxParser"]

    def nptype(trt_type: Any) -> Any:
        mapping = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                   "BOOL": np.bool_, "UINT8": np.uint8}
        if trt_type.name in mapping:
            return mapping[trt_type.name]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    m.nptype = nptype
    m.volume = lambda iterable: int(np.prod(list(iterable))) if list(iterable) else 1
    return m
