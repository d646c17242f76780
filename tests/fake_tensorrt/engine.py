"""The fake's builder, serialized engine, inspector and runtime.

A model of what the real calls require and report, not of TensorRT's results:

- build: every network input needs a valid profile (else the build fails, as in TensorRT); a strongly typed network
  (always on TensorRT 11) takes its types from the graph; a weakly typed fp16 build (TensorRT 10, ``FP16`` flag)
  runs compute layers in fp16 except those pinned with ``precision`` + ``OBEY_PRECISION_CONSTRAINTS`` (or whose op
  type the test lists in ``_knobs["drop_constraints"]``: those lose their constraint, as Myelin fusions are reported
  to do); data movement follows its input; network outputs keep their declared type (a reformat layer converts);
- the serialized engine is JSON holding the ONNX graph; its I/O tensors are listed in an order unrelated to the
  graph's (reversed), so code that unpacks by position is caught;
- the inspector reports Myelin-style layers (``__myl_*``, ``kgen`` / ``gemm``, ``[ONNX Layer: ...]`` metadata joined
  by ``\\x1f``, unregistered helper layers fused into their consumer), ``Format/Datatype`` as in TensorRT 10.x dumps
  (NVIDIA/TensorRT issues 4020 and 4397), separate ``Format`` and ``DataType`` and ``I/O Tensors`` in 11.x (NVIDIA's
  10.x-to-11.x inspector migration page), and "N/A due to dynamic shapes" for every type unless the inspector has an
  execution context with all input shapes set (``IEngineInspector::setExecutionContext``);
- execution reads the bound host addresses (tests bind CPU tensors), runs the graph with ONNX Runtime on the CPU and
  writes the outputs in the engine's output types: it checks the plumbing, never stands in for TensorRT's numbers.
"""

from __future__ import annotations

import base64
import ctypes
import json
from typing import Any

import numpy as np

from fake_tensorrt.api import Checked, Dims
from fake_tensorrt.network import Network

NP_OF = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8,
         "BOOL": np.bool_, "UINT8": np.uint8}
DATA_MOVEMENT = {"SHUFFLE", "GATHER", "SLICE", "CONCATENATION", "IDENTITY", "SHAPE", "CONSTANT", "FILL", "SELECT"}
INSPECTOR_TYPE = {"SHUFFLE": "Shuffle", "SLICE": "Slice", "CONCATENATION": "Concatenation", "GATHER": "gather",
                  "IDENTITY": "NoOp", "SHAPE": "shape_call", "FILL": "shape_call", "CONSTANT": "Constant",
                  "MATRIX_MULTIPLY": "gemm", "CAST": "Cast"}


class HostMemory(Checked):
    _cls = "IHostMemory"

    def __init__(self, data: bytes) -> None:
        self._data = data

    nbytes = property(lambda self: len(self._data))

    def __bytes__(self) -> bytes:
        return self._data


class TimingCache(Checked):
    _cls = "ITimingCache"

    def __init__(self, data: bytes) -> None:
        self._data = data

    def serialize(self) -> HostMemory:
        return HostMemory(self._data or b"fake-timing-cache")


class Profile(Checked):
    _cls = "IOptimizationProfile"

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - the binding's names
        shapes = tuple(tuple(int(d) for d in s) for s in (min, opt, max))
        if not all(a <= b <= c for a, b, c in zip(*shapes, strict=True)):  # the binding's PY_ASSERT_RUNTIME_ERROR
            raise RuntimeError(f"Shape provided for max is inconsistent with other shapes ({input}: {shapes}).")
        self._shapes[input] = shapes

    def get_shape(self, input: str) -> list[tuple[int, ...]]:  # noqa: A002
        return list(self._shapes[input])

    def __bool__(self) -> bool:
        return bool(self._shapes)


class BuilderConfig(Checked):
    _cls = "IBuilderConfig"

    def __init__(self, trt: Any) -> None:
        self._trt = trt
        self._flags = {trt.BuilderFlag.TF32}  # on by default, as in TensorRT
        self._profiles: list[Profile] = []
        self._cache: TimingCache | None = None
        self._pools: dict[Any, int] = {}
        self._verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY

    def set_flag(self, flag: Any) -> None:
        self._flags.add(flag)

    def clear_flag(self, flag: Any) -> None:
        self._flags.discard(flag)

    def get_flag(self, flag: Any) -> bool:
        return flag in self._flags

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self._pools[pool] = int(pool_size)

    @property
    def profiling_verbosity(self) -> Any:
        return self._verbosity

    @profiling_verbosity.setter
    def profiling_verbosity(self, value: Any) -> None:
        self._verbosity = value

    def add_optimization_profile(self, profile: Profile) -> int:
        forced = self._trt._knobs.get("profile_index")
        if forced is not None:
            return forced
        if not profile:
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> TimingCache:
        data = bytes(serialized_timing_cache)
        if data and not data.startswith(b"fake-timing-cache"):  # a damaged file (the real binding's answer varies)
            raise RuntimeError("ITimingCache: invalid serialized timing cache")
        return TimingCache(data)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self._cache = cache
        return True

    def get_timing_cache(self) -> TimingCache | None:
        return self._cache


class Builder(Checked):
    _cls = "Builder"

    def __init__(self, logger: Any) -> None:
        self._trt = type(self)._module

    def create_network(self, flags: int = 0) -> Network:
        strongly = self._major >= 11 or bool(int(flags) & (1 << int(self._trt.NetworkDefinitionCreationFlag
                                                                    .STRONGLY_TYPED)))
        return type(self)._classes["Network"](self._trt, strongly)

    def create_builder_config(self) -> BuilderConfig:
        return type(self)._classes["BuilderConfig"](self._trt)

    def create_optimization_profile(self) -> Profile:
        return type(self)._classes["Profile"]()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> HostMemory | None:
        trt, flags = self._trt, config._flags
        fp16 = any(f.name == "FP16" for f in flags)
        obey = any(f.name == "OBEY_PRECISION_CONSTRAINTS" for f in flags)
        if network._strongly_typed and (fp16 or any(layer._precision is not None for layer in network._layers)):
            return None  # TensorRT refuses precision flags / constraints on a strongly typed network
        profile = config._profiles[0] if config._profiles else None
        for t in network._inputs:
            if -1 in t.shape and (profile is None or t.name not in profile._shapes):
                return None  # a dynamic input without a profile
        layers = _precisions(trt, network, fp16 and not network._strongly_typed, obey)
        io = _io(network, profile)
        pinned = [layer._name for layer in network._layers if layer._precision is not None]
        trt._knobs["last_build"] = {"flags": sorted(f.name for f in flags), "strongly_typed": network._strongly_typed,
                                    "pinned": pinned}
        engine = {"major": self._major, "onnx": base64.b64encode(network._onnx).decode(), "io": io,
                  "layers": layers, "verbosity": config._verbosity.name}
        return HostMemory(json.dumps(engine).encode())


def _dtype_name(dtype: Any) -> str:
    return dtype.name


def _precisions(trt: Any, network: Network, fp16: bool, obey: bool) -> list[dict[str, Any]]:
    """Per layer: name, type, metadata, ONNX op and the engine dtype of each output (see the module docstring)."""
    dropped = set(trt._knobs.get("drop_constraints", ()))
    engine_dtype: dict[str, str] = {t.name: _dtype_name(t.dtype) for t in network._inputs}
    declared = {t.name: _dtype_name(t.dtype) for t in network._outputs}
    out = []
    for layer in network._layers:
        outs = []
        for j, t in enumerate(layer._outputs):
            name = _dtype_name(t.dtype)
            if fp16 and name == "FLOAT":
                if layer._type in DATA_MOVEMENT:
                    src = layer._inputs[0].name if layer._inputs else None
                    name = engine_dtype.get(src, "FLOAT") if layer._type != "CONSTANT" else "FLOAT"
                    name = name if name in ("FLOAT", "HALF") else "FLOAT"
                else:
                    pinned = obey and layer._precision is not None and layer._op not in dropped
                    name = _dtype_name(layer._output_types.get(j, t.dtype)) if pinned else "HALF"
            engine_dtype[t.name] = name
            outs.append({"name": t.name, "dtype": name})
        out.append({"name": layer._name, "type": layer._type, "metadata": layer._metadata, "outputs": outs,
                    "inputs": [t.name for t in layer._inputs if t is not None]})
    for entry in out:  # network outputs keep their declared type: TensorRT adds a reformat layer
        for o in entry["outputs"]:
            if o["name"] in declared and o["dtype"] != declared[o["name"]]:
                out.append({"name": f"Reformatting CopyNode for Output Tensor 0 to {entry['name']}",
                            "type": "REFORMAT", "metadata": "", "inputs": [f"Reformatted {o['name']}"],
                            "outputs": [{"name": o["name"], "dtype": declared[o["name"]]}]})
                o["name"] = f"Reformatted {o['name']}"
    return out


def _io(network: Network, profile: Any) -> list[dict[str, Any]]:
    """I/O tensors (reversed against the graph's order) with their types and profile ranges."""
    io = [{"name": t.name, "mode": "INPUT", "dtype": _dtype_name(t.dtype), "shape": list(t.shape),
           "profile": [list(s) for s in profile._shapes[t.name]] if profile and t.name in profile._shapes else None}
          for t in network._inputs]
    io += [{"name": t.name, "mode": "OUTPUT", "dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
           for t in network._outputs]
    return io[::-1]


class Inspector(Checked):
    _cls = "EngineInspector"

    def __init__(self, engine: CudaEngine) -> None:
        self._engine = engine
        self._context: Context | None = None

    execution_context = property(lambda self: self._context, lambda self, ctx: setattr(self, "_context", ctx))

    def get_engine_information(self, format: Any) -> str:  # noqa: A002 - the binding's name
        data = self._engine._data
        if data["verbosity"] != "DETAILED":
            return json.dumps({"Layers": [layer["name"] for layer in data["layers"]]})
        layers = _inspector_layers(data["layers"])
        inputs = [t["name"] for t in data["io"] if t["mode"] == "INPUT"]
        if self._context is None or any(n not in self._context._shapes for n in inputs):
            for entry in layers:  # as TensorRT prints a dynamic-shape engine without a context of input shapes
                for o in entry["Outputs"]:
                    o["Format/Datatype"] = "N/A due to dynamic shapes"
        if self._major < 11:
            return json.dumps({"Layers": layers, "Bindings": [t["name"] for t in data["io"]]})
        for entry in layers:  # TensorRT 11 splits the field in two and lists the I/O tensors as objects
            for o in entry["Outputs"]:
                fmt = o.pop("Format/Datatype")
                o["Format"], o["DataType"] = ("N/A", fmt) if fmt.startswith("N/A") else _split_format(fmt)
        return json.dumps({"Layers": layers, "I/O Tensors": [{"Name": t["name"], "Mode": t["mode"].title(),
                                                              "DataType": t["dtype"].title()} for t in data["io"]]})


def _split_format(text: str) -> tuple[str, str]:
    """A 10.x ``Format/Datatype`` text as 11.x's separate ``Format`` and ``DataType``."""
    for token, name in (("FP16", "Half"), ("FP32", "Float"), ("HALF", "Half"), ("FLOAT", "Float")):
        if token in text.upper():
            return "Row major linear", name
    return "Row major linear", text


def _format(dtype: str, myelin: bool) -> str:
    if myelin:
        return {"FLOAT": "Float", "HALF": "Half", "INT32": "Int32", "INT64": "Int64", "BOOL": "Bool"}.get(dtype, dtype)
    return {"FLOAT": "Row major linear FP32", "HALF": "Row major linear FP16 format"}.get(dtype, dtype.title())


def _inspector_layers(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Myelin-style entries; an unregistered helper layer (no metadata) is fused into the layer that reads it."""
    entries: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for i, layer in enumerate(layers):
        if layer["type"] == "CONSTANT":
            continue
        if not layer["metadata"] and layer["type"] != "REFORMAT":
            pending.append(layer)
            continue
        group = [p for p in pending if any(o["name"] in layer["inputs"] for o in p["outputs"])] + [layer]
        pending = [p for p in pending if p not in group]
        myelin = layer["type"] not in ("REFORMAT",)
        ltype = INSPECTOR_TYPE.get(layer["type"], "kgen") if myelin else "Reformat"
        metas = "\x1f".join(dict.fromkeys(m["metadata"] for m in group if m["metadata"]))
        entries.append({"Name": f"__myl_{layer['type'].title()}_myl0_{i}" if myelin else layer["name"],
                        "LayerType": ltype, "Metadata": metas, "TacticName": "fake",
                        "Outputs": [{"Name": o["name"], "Location": "Device",
                                     "Format/Datatype": _format(o["dtype"], myelin)} for o in layer["outputs"]]})
    for p in pending:  # helpers that feed a network output directly
        entries.append({"Name": p["name"], "LayerType": "kgen", "Metadata": "",
                        "Outputs": [{"Name": o["name"], "Format/Datatype": _format(o["dtype"], True)}
                                    for o in p["outputs"]]})
    return entries


class CudaEngine(Checked):
    _cls = "ICudaEngine"

    def __init__(self, trt: Any, data: dict[str, Any]) -> None:
        self._trt, self._data = trt, data
        self._io = {t["name"]: t for t in data["io"]}

    num_io_tensors = property(lambda self: len(self._data["io"]))
    num_layers = property(lambda self: len(self._data["layers"]))

    def get_tensor_name(self, index: int) -> str:
        return self._data["io"][index]["name"]

    def get_tensor_mode(self, name: str) -> Any:
        t = self._io.get(name)
        return getattr(self._trt.TensorIOMode, t["mode"] if t else "NONE")

    def get_tensor_dtype(self, name: str) -> Any:
        return getattr(self._trt.DataType, self._io[name]["dtype"])

    def get_tensor_shape(self, name: str) -> Dims:
        t = self._io.get(name)
        return Dims(t["shape"]) if t else Dims.invalid()

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        """[min, opt, max] Dims of an input in that profile; ``Dims{-1}`` three times for any other name or index
        (pyCore.cpp ``get_tensor_profile_shape`` over ``getProfileShape``)."""
        t = self._io.get(name)
        if t is None or t["mode"] != "INPUT" or profile_index != 0:
            return [Dims.invalid() for _ in range(3)]
        return [Dims(s) for s in (t["profile"] or [t["shape"]] * 3)]

    def create_execution_context(self) -> Context:
        return type(self)._classes["Context"](self)

    def create_engine_inspector(self) -> Inspector:
        return type(self)._classes["Inspector"](self)


class Context(Checked):
    _cls = "IExecutionContext"

    def __init__(self, engine: CudaEngine) -> None:
        self._engine, self._shapes, self._addresses = engine, {}, {}
        self._session = None

    def set_input_shape(self, name: str, shape: Any) -> bool:
        t = self._engine._io.get(name)
        shape = tuple(int(d) for d in shape)
        if t is None or t["mode"] != "INPUT" or len(shape) != len(t["shape"]):
            return False
        lo, _, hi = t["profile"] or (t["shape"], t["shape"], t["shape"])
        if not all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True)):
            return False
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        t = self._engine._io.get(name)
        if t is None:
            return Dims.invalid()
        if t["mode"] == "INPUT":  # the shape set, else the engine's (-1 for dynamic axes)
            return Dims(self._shapes.get(name, t["shape"]))
        import onnx

        model = onnx.load_from_string(base64.b64decode(self._engine._data["onnx"]))
        sizes = {}
        for vi in model.graph.input:
            for d, v in zip(vi.type.tensor_type.shape.dim, self._shapes.get(vi.name, ()), strict=False):
                if d.dim_param:
                    sizes[d.dim_param] = v
        out = next(o for o in model.graph.output if o.name == name)
        return Dims(d.dim_value if d.HasField("dim_value") else sizes.get(d.dim_param, -1)
                    for d in out.type.tensor_type.shape.dim)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name in self._engine._trt._knobs.get("refuse_address", ()) or name not in self._engine._io:
            return False
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        import onnxruntime as ort

        io = self._engine._data["io"]
        if any(t["name"] not in self._addresses for t in io) or any(
                t["name"] not in self._shapes for t in io if t["mode"] == "INPUT"):
            return False
        if self._session is None:
            options = ort.SessionOptions()  # ORT_ENABLE_ALL crashes ONNX Runtime 1.32 on the micro video encoder
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            options.intra_op_num_threads = 1
            self._session = ort.InferenceSession(base64.b64decode(self._engine._data["onnx"]), options,
                                                 providers=["CPUExecutionProvider"])
        feeds = {t["name"]: _read(self._addresses[t["name"]], self._shapes[t["name"]], NP_OF[t["dtype"]])
                 for t in io if t["mode"] == "INPUT"}
        names = [o.name for o in self._session.get_outputs()]
        for name, value in zip(names, self._session.run(names, feeds), strict=True):
            t = self._engine._io[name]
            _write(self._addresses[name], np.asarray(value).astype(NP_OF[t["dtype"]]))
        return True


def _read(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_char * n).from_address(address)
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _write(address: int, value: np.ndarray) -> None:
    value = np.ascontiguousarray(value)
    ctypes.memmove(address, value.ctypes.data, value.nbytes)


class Runtime(Checked):
    _cls = "Runtime"

    def __init__(self, logger: Any) -> None:
        self._trt = type(self)._module

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> CudaEngine | None:
        try:
            data = json.loads(bytes(serialized_engine).decode())
        except (ValueError, UnicodeDecodeError):
            return None
        if data.get("major") != self._major:
            return None
        return type(self)._classes["CudaEngine"](self._trt, data)
