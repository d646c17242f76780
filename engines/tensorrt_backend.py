"""TensorRT backend (TensorRT 10 and 11): the runtime, and access to the ``tensorrt`` module and the GPU.

The build lives in :mod:`rap_deploy.engines.trt_build`; this module loads serialized engines and runs them.
:class:`TrtEngine` keeps one execution context per graph on one CUDA device (``device_id`` is made the current device
while engines are deserialized, contexts created and work enqueued), binds torch CUDA tensors with
``set_tensor_address`` and runs ``execute_async_v3`` on a CUDA stream; batches larger than the profile's maximum are
split and smaller than its minimum padded, so any batch size works.

Every tensor is handled by name: inputs are bound by name, outputs collected by name and returned in the order of
the retrieval contract (:mod:`rap_deploy.graphs`: ``video_outputs(has_asa)``, ``rerank_tensors(has_asa)``), never in
the engine's I/O order (TensorRT does not define it). Each tensor's data type comes from the engine: fp32, fp16 and
bf16 inputs are converted on the device, and every floating-point output is returned as float32.

``tensorrt`` is imported lazily: nothing here is needed to import the package.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.config import RAPConfig
from rap_deploy.engines.base import Engine, EngineInfo
from rap_deploy.engines.blocks import (
    batched,
    blocked_similarity,
    check_text_inputs,
    check_video_inputs,
    fit_tokens,
    meanp_similarity_from_frames,
    rerank_inputs,
    tokens_axis_is_dynamic,
)
from rap_deploy.engines.rebuild_commands import EXPORT_PLACEHOLDER, cpu_builds_instead, export_placeholder_note
from rap_deploy.engines.trt_plan import build_mode
from rap_deploy.errors import BackendUnavailableError, CheckFailedError, UsageError
from rap_deploy.graphs import graph_io, graphs_for

#: Why a refusal names the ``<export folder>`` placeholder, by default: an engine folder that records no export.
NOT_RECORDED = "the engine's folder does not record it"


def onnxruntime_instead(export_dir: str | os.PathLike[str] | None = None, why: str = NOT_RECORDED) -> str:
    """What to run instead of TensorRT here: the two ONNX Runtime CPU builds (fp32, int8) of ``export_dir``, as
    runnable commands; without ``export_dir`` they name :data:`~rap_deploy.engines.rebuild_commands.EXPORT_PLACEHOLDER`,
    explained after them with ``why`` the folder is unknown, not build-engine's default (the workspace's latest
    export, maybe another checkpoint's), as :func:`~rap_deploy.engines.ort_backend.fp16_on_cpu_fix` does."""
    if export_dir is not None:
        return cpu_builds_instead(shlex.quote(str(export_dir)))
    return cpu_builds_instead(EXPORT_PLACEHOLDER) + export_placeholder_note(why)


#: torch dtype name per TensorRT ``DataType`` name. Types without one (FP8, INT4, FP4, E8M0) are refused.
TORCH_DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                     "INT8": "int8", "BOOL": "bool", "UINT8": "uint8"}


def import_tensorrt(export_dir: str | os.PathLike[str] | None = None, why: str = NOT_RECORDED) -> Any:
    """Import and return the ``tensorrt`` module; raises :class:`BackendUnavailableError` (one line, naming the ONNX
    Runtime builds of ``export_dir`` to run instead, or the placeholder explained by ``why``) if missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"TensorRT is not installed ({exc}); it needs an NVIDIA GPU machine "
                                      f"(pip install -e '.[trt]'); {onnxruntime_instead(export_dir, why)}") from None
    build_mode(trt.__version__)  # refuses TensorRT < 10
    return trt


def gpu_info(device_id: int = 0) -> dict[str, Any] | None:
    """Name and compute capability of CUDA GPU ``device_id`` as torch sees it, or ``None`` without a GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or device_id >= torch.cuda.device_count():
        return None
    major, minor = torch.cuda.get_device_capability(device_id)
    return {"name": torch.cuda.get_device_name(device_id), "compute_capability": f"{major}.{minor}",
            "device_id": device_id}


def runtime_info(device_id: int = 0) -> dict[str, Any]:
    """This machine for TensorRT engines: ``{"tensorrt": version or None, "gpu": gpu_info() or None}``."""
    try:
        import tensorrt as trt

        version: str | None = trt.__version__
    except ImportError:
        version = None
    return {"tensorrt": version, "gpu": gpu_info(device_id)}


def require_tensorrt(device_id: int = 0, export_dir: str | os.PathLike[str] | None = None, why: str = NOT_RECORDED
                     ) -> tuple[Any, dict[str, Any]]:
    """Return ``(tensorrt module, gpu info)``; raise :class:`BackendUnavailableError` naming what is missing and the
    ONNX Runtime builds of ``export_dir`` to run instead (without it, the placeholder, explained by ``why``)."""
    trt = import_tensorrt(export_dir, why)
    gpu = gpu_info(device_id)
    if gpu is None:
        import torch

        raise BackendUnavailableError(f"TensorRT {trt.__version__} is installed but CUDA GPU {device_id} is not "
                                      f"visible (torch {torch.__version__}: cuda available = "
                                      f"{torch.cuda.is_available()}, devices = {torch.cuda.device_count()}); "
                                      f"{onnxruntime_instead(export_dir, why)}")
    return trt, gpu


def logger(trt: Any) -> Any:
    """A TensorRT logger at WARNING."""
    return trt.Logger(trt.Logger.WARNING)


class CudaPlacement:
    """Where TensorRT work and buffers live: CUDA device ``device_id`` (one place, so every step uses the same one)."""

    def scope(self, device_id: int) -> AbstractContextManager[Any]:
        """Make ``device_id`` the current CUDA device (TensorRT builds, deserializes and enqueues there)."""
        import torch

        return torch.cuda.device(device_id)

    def device(self, device_id: int) -> Any:
        """The torch device buffers are allocated on."""
        import torch

        return torch.device(f"cuda:{device_id}")

    def stream(self, device: Any) -> Any:
        """A CUDA stream on ``device`` (``.cuda_stream`` is the handle TensorRT takes)."""
        import torch

        return torch.cuda.Stream(device=device)

    def on_stream(self, stream: Any) -> AbstractContextManager[Any]:
        """Make ``stream`` torch's current stream (so copies and TensorRT work are ordered on it)."""
        import torch

        return torch.cuda.stream(stream)


CUDA = CudaPlacement()


def torch_dtype(trt: Any, dtype: Any, what: str) -> Any:
    """The torch dtype of a TensorRT ``DataType`` (bf16 included); raises :class:`UsageError` for types torch cannot
    hold as one element per value (FP8, INT4, FP4), naming ``what`` (the engine tensor)."""
    import torch

    name = str(getattr(dtype, "name", dtype)).split(".")[-1].upper()
    if name not in TORCH_DTYPE_NAMES:
        raise UsageError(f"{what} has TensorRT data type {name}, which rapdeploy cannot bind (it takes "
                         f"{', '.join(TORCH_DTYPE_NAMES)}); re-export the graph with float32/float16 I/O")
    return getattr(torch, TORCH_DTYPE_NAMES[name])


def engine_io(trt: Any, engine: Any) -> tuple[list[str], list[str]]:
    """``(input names, output names)`` of a deserialized engine, in the engine's (undefined) I/O order."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    return inputs, outputs


def check_engine_io(graph: str, path: Any, inputs: Sequence[str], outputs: Sequence[str], has_asa: bool) -> None:
    """Raise :class:`CheckFailedError` unless an engine's tensor names are exactly the contract's for ``graph``."""
    want_in, want_out = graph_io(graph, has_asa)
    if set(inputs) != set(want_in) or set(outputs) != set(want_out):
        raise CheckFailedError(f"{path}: {graph} engine has inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                               f"this rapdeploy expects {list(want_in)} -> {list(want_out)}; rebuild the engine from "
                               "an export of this version (`rapdeploy export`, then `rapdeploy build-engine`)")


def config_dims(graph: str, config: RAPConfig) -> dict[str, tuple[int, ...]]:
    """The dimensions after the batch axis that the model ``config`` gives ``graph``'s inputs (the encoders';
    ``input_ids`` by its profile's largest token count, which the build sets to the context length)."""
    s = config.preprocess.image_size
    return {"video_encoder": {"frames": (config.frames, 3, s, s), "frame_mask": (config.frames,)},
            "text_encoder": {"input_ids": (config.context_length,)}}.get(graph, {})


def check_engine_config(graph: str, path: Any, engine: Any, config: RAPConfig) -> None:
    """Raise :class:`CheckFailedError` when an engine's inputs contradict the manifest's model ``config`` (frames,
    image size, context length): the inputs are checked and shaped by the config, which the engine would refuse."""
    for name, want in config_dims(graph, config).items():
        have = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[2])[1:]
        if have != want:
            raise CheckFailedError(f"{path}: {graph} input {name} takes {list(have)} after the batch axis, the "
                                   f"manifest's model config gives {list(want)}; the manifest was edited or the "
                                   "engine replaced, rebuild the engine")


def require_graphs(files: Mapping[str, Any], config: RAPConfig) -> None:
    """Raise :class:`UsageError` unless ``files`` hold both encoders and, for a model with an ASA head, ``asa_head``
    (without it the re-rank would silently be the mean-pooled similarity instead of the model's ASA scores)."""
    missing = [g for g in graphs_for(config.has_asa) if g not in files]
    if missing:
        raise UsageError(f"TensorRT engine lacks graphs {missing} for a {config.variant} model; rebuild it with "
                         "`rapdeploy build-engine`")


def held_ranges(where: Any, engine: Any, inputs: Sequence[str], claimed: Mapping[str, Mapping[str, int]]
                ) -> dict[str, dict[str, int]]:
    """The batch-like ranges a deserialized engine holds in its optimisation profile 0 (``get_tensor_profile_shape``):
    ``axis -> {min, opt, max}`` of each input's first dimension (``batch``, ``queries``, ``videos``:
    :data:`~rap_deploy.engines.trt_plan.INPUT_AXIS`), which the engine splits and pads batches by.

    ``claimed`` is what the manifest's ``profiles`` say for this graph; an axis it gives with other values raises
    :class:`CheckFailedError` naming ``where`` (an edited manifest would have batches split or padded past what the
    engine takes, and a Triton repository configured for them).
    """
    from rap_deploy.engines.trt_plan import INPUT_AXIS

    out: dict[str, dict[str, int]] = {}
    for name in inputs:
        shapes = [tuple(s) for s in engine.get_tensor_profile_shape(name, 0)]
        axis = INPUT_AXIS.get(name)
        if axis is None or len(shapes) != 3 or not all(shapes):
            continue
        out.setdefault(axis, dict(zip(("min", "opt", "max"), (int(s[0]) for s in shapes), strict=True)))
    for axis, held in out.items():
        told = claimed.get(axis)
        if told is not None and {k: told.get(k) for k in held} != held:
            raise CheckFailedError(f"{where}: the manifest's profile {axis} {dict(told)} is not the one the engine "
                                   f"holds ({held}); the manifest was edited, rebuild the engine")
    return out


class TrtEngine(Engine):
    """The engines of one engine folder, each with its own execution context, on one CUDA device.

    ``files`` maps graph name to a serialized engine; each engine's own optimisation profile gives its batch range
    (``profiles``, the manifest's record of them, must agree: :func:`held_ranges`): bigger video / text batches are
    split, smaller ones padded (:func:`pad_to_min_batch`), and
    ``asa_similarity`` feeds the ``asa_head`` engine blocks of at most (max Q) × (max V) — the ASA graph's
    intermediates grow as Q·V·T·k·d_a, so it only ever sees bounded blocks.
    Raises :class:`CheckFailedError` when an engine does not deserialize or its tensor names are not the contract's.
    """

    backend = "tensorrt"

    def __init__(self, files: Mapping[str, str | os.PathLike[str]], config: RAPConfig,
                 profiles: Mapping[str, Mapping[str, Mapping[str, int]]], precision: str = "fp16",
                 path: str | os.PathLike[str] | None = None, device_id: int = 0,
                 extra: Mapping[str, Any] | None = None) -> None:
        from rap_deploy.engines.ort_backend import graphs_export_folder

        require_graphs(files, config)
        trt, gpu = require_tensorrt(device_id, graphs_export_folder(files, path))  # its refusal names the export
        self.trt, self.gpu, self.config, self.precision = trt, gpu, config, precision
        self.path = str(path) if path is not None else None
        self._extra = dict(extra or {})  # what describe() adds: the loader's checkpoint record
        self.device_id = device_id
        self.device = CUDA.device(device_id)
        self.engines: dict[str, Any] = {}
        self.contexts: dict[str, Any] = {}
        self.io: dict[str, tuple[list[str], list[str]]] = {}
        self.runtime: Any = None
        self.stream: Any = None
        try:  # a refusal half-way releases what was created, on its device (close), not whenever GC gets to it
            self._open(files, config)
            ranges = {g: held_ranges(Path(path) / "manifest.json" if path is not None else f, self.engines[g],
                                     self.io[g][0], profiles.get(g) or {}) for g, f in files.items()}
        except BaseException:
            self.close()
            raise
        self.max_batch = {"video_encoder": ranges.get("video_encoder", {}).get("batch", {}).get("max"),
                          "text_encoder": ranges.get("text_encoder", {}).get("batch", {}).get("max"),
                          "asa_head": None}
        self.min_batch = {g: ranges.get(g, {}).get("batch", {}).get("min") for g in ("video_encoder", "text_encoder")}
        asa = ranges.get("asa_head", {})
        self.query_block = int(asa.get("queries", {}).get("max", 32))
        self.video_block = int(asa.get("videos", {}).get("max", 64))

    def _open(self, files: Mapping[str, str | os.PathLike[str]], config: RAPConfig) -> None:
        """Deserialize each engine, check its tensors against the contract and the model config, create its execution
        context, then the stream; all with ``device_id`` current. Raises :class:`CheckFailedError`."""
        trt = self.trt
        with CUDA.scope(self.device_id):
            self.runtime = trt.Runtime(logger(trt))
            for name, f in files.items():
                engine = self.runtime.deserialize_cuda_engine(Path(f).read_bytes())
                if engine is None:
                    raise CheckFailedError(f"TensorRT {trt.__version__} cannot deserialize {f}; rebuild the engine "
                                           "here")
                self.io[name] = engine_io(trt, engine)
                check_engine_io(name, f, *self.io[name], config.has_asa)
                check_engine_config(name, f, engine, config)
                self.engines[name] = engine
                self.contexts[name] = engine.create_execution_context()
                if self.contexts[name] is None:
                    raise CheckFailedError(f"TensorRT could not create an execution context for {f} (out of device "
                                           f"memory on GPU {self.device_id}?)")
            self.stream = CUDA.stream(self.device)

    def _bind_input(self, graph: str, name: str, array: np.ndarray, keep: list[Any]) -> None:
        import torch

        engine, ctx = self.engines[graph], self.contexts[graph]
        dtype = torch_dtype(self.trt, engine.get_tensor_dtype(name), f"{graph} input {name}")
        t = torch.from_numpy(np.ascontiguousarray(array)).to(self.device).to(dtype).contiguous()
        if not ctx.set_input_shape(name, tuple(t.shape)):
            lo, _, hi = ([int(d) for d in dims] for dims in engine.get_tensor_profile_shape(name, 0))
            raise UsageError(f"{graph}: input {name} shape {list(t.shape)} is outside the engine's optimisation "
                             f"profile ({lo} to {hi})")
        if not ctx.set_tensor_address(name, t.data_ptr()):
            raise CheckFailedError(f"TensorRT refused the address of {graph} input {name}")
        keep.append(t)

    def _bind_output(self, graph: str, name: str) -> Any:
        import torch

        engine, ctx = self.engines[graph], self.contexts[graph]
        shape = tuple(ctx.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise CheckFailedError(f"{graph}: TensorRT cannot infer the shape of output {name} ({list(shape)}) from "
                                   "the bound inputs")
        out = torch.empty(shape, dtype=torch_dtype(self.trt, engine.get_tensor_dtype(name), f"{graph} output {name}"),
                          device=self.device)
        if not ctx.set_tensor_address(name, out.data_ptr()):
            raise CheckFailedError(f"TensorRT refused the address of {graph} output {name}")
        return out

    def _run(self, graph: str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one graph on ``feeds`` (input name → array); return its outputs in the contract's order."""
        inputs, outputs = self.io[graph]
        missing = sorted(set(inputs) - set(feeds))
        if missing or set(feeds) - set(inputs):
            raise UsageError(f"{graph} engine takes inputs {sorted(inputs)}, got {sorted(feeds)}")
        keep: list[Any] = []
        stream = self.stream
        try:
            with CUDA.scope(self.device_id), CUDA.on_stream(stream):
                for name in inputs:
                    self._bind_input(graph, name, feeds[name], keep)
                outs = {name: self._bind_output(graph, name) for name in outputs}
                if not self.contexts[graph].execute_async_v3(stream.cuda_stream):
                    raise CheckFailedError(f"TensorRT execute_async_v3 failed for {graph} (see the log above)")
        finally:  # the buffers are released when this returns or raises: never while the stream may still use them
            stream.synchronize()
        order = graph_io(graph, self.config.has_asa)[1]
        return [_to_numpy(outs[name]) for name in order]

    def _require_open(self) -> None:
        """Raise :class:`UsageError` once :meth:`close` has released the engines (a closed ASA engine would otherwise
        answer the mean-pooled similarity, having no ``asa_head`` left)."""
        if self.stream is None:
            raise UsageError(f"TensorRT engine {self.path or '(no folder)'} is closed (close() was called); load it "
                             "again")

    def _runner(self, graph: str, names: tuple[str, ...]) -> Callable[..., tuple[np.ndarray, ...]]:
        def run(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
            return tuple(self._run(graph, dict(zip(names, arrays, strict=True))))
        return run

    def encode_video(self, frames: np.ndarray, frame_mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """See :meth:`Engine.encode_video` (batches above the profile maximum are split)."""
        self._require_open()
        frames, mask = check_video_inputs(frames, frame_mask, self.config)
        run = self._runner("video_encoder", graph_io("video_encoder", self.has_asa)[0])
        return batched(pad_to_min_batch(run, self.min_batch["video_encoder"]), (frames, mask),
                       self.max_batch["video_encoder"])

    def encode_text(self, input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """See :meth:`Engine.encode_text`."""
        self._require_open()
        ids, pos = check_text_inputs(input_ids, eot, self.config)
        names = graph_io("text_encoder", self.has_asa)[0]
        run = self._runner("text_encoder", names)
        dynamic = tokens_axis_is_dynamic(tuple(self.engines["text_encoder"].get_tensor_shape(names[0])))

        def fitted(i: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, ...]:
            return run(fit_tokens(i, e, self.config.context_length, dynamic), e)

        return batched(pad_to_min_batch(fitted, self.min_batch["text_encoder"]), (ids, pos),
                       self.max_batch["text_encoder"])[0]

    def asa_similarity(self, text_emb: np.ndarray, *rerank: np.ndarray) -> np.ndarray:
        """Similarity ``[Q, V]`` in blocks of at most the ``asa_head`` profile's (max Q) × (max V)."""
        self._require_open()
        rerank = rerank_inputs(self.has_asa and "asa_head" in self.engines, rerank)
        if "asa_head" not in self.engines:
            return meanp_similarity_from_frames(text_emb, rerank[0])
        run = self._runner("asa_head", graph_io("asa_head", True)[0])
        return blocked_similarity(lambda *arrays: run(*arrays)[0], text_emb, rerank, self.query_block,
                                  self.video_block)

    def describe(self) -> EngineInfo:
        """Backend ``tensorrt``, precision, GPU and TensorRT version."""
        return EngineInfo(backend=self.backend, precision=self.precision, device=str(self.device),
                          provider="TensorRT", versions={"tensorrt": self.trt.__version__}, path=self.path,
                          extra={"gpu": self.gpu, "query_block": self.query_block, "video_block": self.video_block,
                                 "max_batch": self.max_batch, **self._extra})

    def close(self) -> None:
        """Release everything this engine holds, with its CUDA device current (TensorRT frees on the current device;
        Triton's TensorRT backend, too, sets the instance's device before destroying its objects): first wait for the
        stream (TensorRT may still use the bound buffers until then), then drop the execution contexts, the engines,
        the runtime and the stream, in that order. Closing twice does nothing more."""
        with CUDA.scope(self.device_id):
            if self.stream is not None:
                self.stream.synchronize()
            self.contexts.clear()
            self.engines.clear()
            self.runtime = None
            self.stream = None


def pad_to_min_batch(run: Callable[..., tuple[np.ndarray, ...]], min_batch: int | None
                     ) -> Callable[..., tuple[np.ndarray, ...]]:
    """``run`` for batches of any size: a batch smaller than the profile's ``min_batch`` (``--min-batch``) is padded
    with copies of its last row up to it, and the outputs are cut back (the encoders are per sample, so the copies
    change no other row); TensorRT refuses shapes below the profile's minimum."""
    def padded(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        n = arrays[0].shape[0]
        if not min_batch or n == 0 or n >= min_batch:
            return run(*arrays)
        rows = np.minimum(np.arange(int(min_batch)), n - 1)
        return tuple(out[:n] for out in run(*(a[rows] for a in arrays)))

    return padded


def _to_numpy(t: Any) -> np.ndarray:
    """A device tensor as numpy: floating point as float32 (bf16 / fp16 included), integers as they are."""
    return (t.float() if t.is_floating_point() else t).cpu().numpy()

