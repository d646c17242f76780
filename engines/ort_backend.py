"""ONNX Runtime backend: sessions over the three graphs on CPU (fp32, int8) or CUDA (fp32, fp16).

A requested execution provider must be both installed (``onnxruntime.get_available_providers()``) and active in the
created session (``session.get_providers()``: ONNX Runtime silently drops a provider whose libraries fail to load,
e.g. CUDA without cuDNN). Otherwise :class:`~rap_deploy.errors.BackendUnavailableError` is raised: there is never a
silent CPU fallback.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.config import RAPConfig
from rap_deploy.engines.base import Engine, EngineInfo
from rap_deploy.engines.blocks import (
    DEFAULT_QUERY_BLOCK,
    DEFAULT_VIDEO_BLOCK,
    batched,
    blocked_similarity,
    check_text_inputs,
    check_video_inputs,
    fit_tokens,
    meanp_similarity_from_frames,
    model_call_bytes,
    rerank_inputs,
    tokens_axis_is_dynamic,
)
from rap_deploy.engines.rebuild_commands import EXPORT_PLACEHOLDER, export_placeholder_note, recorded_export_dir
from rap_deploy.errors import BackendUnavailableError, CheckFailedError, UsageError
from rap_deploy.folder_swap import check_not_replaced, folder_identity
from rap_deploy.graphs import graph_io
from rap_deploy.safe_paths import absent

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# Why fp16 graphs are refused on the CPU (the engine here, a CPU instance in triton-repo): one sentence for all
FP16_ON_CPU = ("fp16 ONNX Runtime graphs run on CUDAExecutionProvider only: the CPU provider crashes the process "
               "(segfault) creating the fp16 video encoder's session")
LEVELS = ("disable", "basic", "extended", "all")
_NP_OF_ORT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(double)": np.float64}


def fp16_on_cpu_fix(export_dir: str | os.PathLike[str] | None) -> str:
    """What to do instead of fp16 graphs on the CPU provider, for the engine's refusals: the ``rapdeploy
    build-engine`` commands of ``export_dir``'s CPU fp32 and int8 engines and CUDA fp16 engine, shell-quoted; without
    ``export_dir`` they name :data:`~rap_deploy.engines.rebuild_commands.EXPORT_PLACEHOLDER`, explained after them, not
    build-engine's default (the workspace's latest export, maybe another checkpoint's), as
    :func:`~rap_deploy.engines.rebuild_commands.cpu_engine_instead` does."""
    folder = shlex.quote(str(export_dir)) if export_dir is not None else EXPORT_PLACEHOLDER

    def command(*flags: str) -> str:
        return " ".join(["rapdeploy build-engine", folder, *map(shlex.quote, flags)])

    note = "" if export_dir is not None else export_placeholder_note("the graphs' folder does not record it")
    return (f"on the CPU use the export's fp32 graphs (`{command()}`, or `{command('--int8')}`), on a GPU an fp16 "
            f"engine (`{command('--backend', 'onnxruntime', '--device', 'cuda', '--fp16')}`){note}")


def graphs_export_folder(graphs: Mapping[str, str | os.PathLike[str]], path: str | os.PathLike[str] | None
                         ) -> Path | None:
    """The export folder an engine's graphs come from, for its refusals' commands: the folder ``path`` (else the
    graphs' one folder) when its manifest is an export's, the ``export_dir`` it records when an engine's (bounded as
    :func:`~rap_deploy.engines.rebuild_commands.recorded_export_dir` reads it: the manifest is untrusted); ``None``
    when that manifest is missing, a link, unreadable or neither, or records no usable folder."""
    folders = {Path(file).parent for file in graphs.values()}
    folder = Path(path) if path is not None else (folders.pop() if len(folders) == 1 else None)
    manifest_path = folder / "manifest.json" if folder is not None else None
    if manifest_path is None or manifest_path.is_symlink() or not manifest_path.is_file():
        return None
    from rap_deploy.bounds import read_manifest_text

    try:
        manifest = json.loads(read_manifest_text(manifest_path, "manifest"))
    except (OSError, ValueError, CheckFailedError):  # only a message's command depends on it
        return None
    if not isinstance(manifest, dict):
        return None
    if manifest.get("format") == "rapdeploy.export":
        return folder
    if manifest.get("format") != "rapdeploy.engine":
        return None
    recorded = recorded_export_dir(manifest)
    return Path(recorded) if recorded else None


def provider_for(device: str) -> str:
    """The execution provider name for ``device`` (``cpu`` / ``cuda``); raises :class:`UsageError` otherwise."""
    try:
        return PROVIDERS[device]
    except KeyError:
        raise UsageError(f"device '{device}' is unknown for ONNX Runtime; use cpu or cuda") from None


def runtime_info() -> dict[str, Any]:
    """This machine's ONNX Runtime: ``{"onnxruntime": version, "providers": [...], "host": the CPU}`` (empty if not
    installed; ``host`` as :func:`rap_deploy.engines.manifest.host_info` records it in a manifest)."""
    from rap_deploy.engines.manifest import host_info

    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    return {"onnxruntime": ort.__version__, "providers": list(ort.get_available_providers()), "host": host_info()}


def gpu_wheel() -> str:
    """The ONNX Runtime GPU wheel as rapdeploy's ``gpu`` extra pins it (``onnxruntime-gpu==X``); it replaces the CPU
    wheel, a base dependency providing the same module, so ``pip install '.[gpu]'`` alone would keep the CPU one."""
    from importlib import metadata

    try:
        pins = [r.split(";")[0].strip() for r in metadata.requires("rapdeploy") or []
                if r.startswith("onnxruntime-gpu") and 'extra == "gpu"' in r]
    except metadata.PackageNotFoundError:
        pins = []
    return pins[0] if pins else "onnxruntime-gpu"


def require_provider(provider: str) -> None:
    """Raise :class:`BackendUnavailableError` if ``provider`` is not in ``onnxruntime.get_available_providers()``."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        hint = (f"on a machine with an NVIDIA GPU replace the CPU wheel (pip uninstall -y onnxruntime && pip install "
                f"{gpu_wheel()}), or build a CPU engine instead: --backend onnxruntime --device cpu (fp32, or --int8)"
                if provider == "CUDAExecutionProvider" else "use --device cpu")
        raise BackendUnavailableError(f"ONNX Runtime {ort.__version__} has no {provider} (available: "
                                      f"{', '.join(available)}); {hint}")


def session_options(threads: int | None = None, inter_threads: int | None = None, level: str = "all",
                    optimized_model_path: str | os.PathLike[str] | None = None,
                    config_entries: Mapping[str, str] | None = None) -> Any:
    """``onnxruntime.SessionOptions`` with graph optimisation ``level`` (default all), thread counts (``None`` /
    0 = ONNX Runtime's default), when given the path the optimised graph is saved to, and extra session config
    entries."""
    import onnxruntime as ort

    if level not in LEVELS:
        raise UsageError(f"optimisation level '{level}' is unknown; use one of {', '.join(LEVELS)}")
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if threads:
        so.intra_op_num_threads = int(threads)
    if inter_threads:
        so.inter_op_num_threads = int(inter_threads)
        if int(inter_threads) > 1:  # inter-op threads only run independent branches in parallel mode
            so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    for key, value in (config_entries or {}).items():
        so.add_session_config_entry(key, value)
    so.log_severity_level = 3
    return so


def create_session(path: str | os.PathLike[str], provider: str = "CPUExecutionProvider", threads: int | None = None,
                   inter_threads: int | None = None, level: str = "all",
                   optimized_model_path: str | os.PathLike[str] | None = None, device_id: int = 0,
                   config_entries: Mapping[str, str] | None = None) -> Any:
    """Create an ``InferenceSession`` for ``path`` on ``provider`` and check the provider is active in it.

    Raises :class:`BackendUnavailableError` when the provider is not installed or not active in the session (never a
    silent CPU fallback), :class:`UsageError` when the file does not exist.
    """
    import onnxruntime as ort

    if not Path(path).is_file():
        raise UsageError(f"ONNX graph {path} {absent(path) if not Path(path).exists() else 'is not a regular file'}")
    require_provider(provider)
    providers: list[Any] = [provider]
    if provider == "CUDAExecutionProvider":
        # CPU stays listed for the few shape ops ONNX Runtime places there itself; the check below makes sure CUDA
        # actually runs the graph. use_tf32 0: fp32 MatMul/Conv in fp32, not TF32 (the provider's default on Ampere
        # and later), as in the PyTorch reference and TensorRT builds.
        providers = [(provider, {"device_id": int(device_id), "use_tf32": 0}), "CPUExecutionProvider"]
    options = session_options(threads, inter_threads, level, optimized_model_path, config_entries)
    try:  # no fallback: ONNX Runtime would build the session again on the CPU, or re-run a failed call there
        sess = ort.InferenceSession(str(path), options, providers=providers, enable_fallback=0)
    except Exception as exc:
        if provider == "CPUExecutionProvider" or not _provider_failure(exc):
            raise
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise BackendUnavailableError(f"{provider} (device {device_id}) could not start a session for "
                                      f"{Path(path).name}: {first[:300]}; check that GPU {device_id} exists and is "
                                      "visible (CUDA_VISIBLE_DEVICES) and that the CUDA/cuDNN versions match "
                                      "onnxruntime-gpu") from None
    sess.disable_fallback()
    active = sess.get_providers()
    if provider not in active:
        raise BackendUnavailableError(f"{provider} was requested for {Path(path).name} but the session runs on "
                                      f"{', '.join(active)} (its libraries failed to load: check CUDA/cuDNN versions "
                                      "match onnxruntime-gpu); refusing to fall back to the CPU silently")
    return sess


def check_feed_shape(graph: str, name: str, declared: Any, shape: tuple[int, ...]) -> None:
    """Raise :class:`UsageError` unless ``shape`` has the rank and the fixed dims of the graph input's ``declared``
    shape (ONNX Runtime's list: ints, names or ``None`` for free axes); ONNX Runtime itself answers with a traceback."""
    dims = list(declared or [])
    if len(shape) == len(dims) and all(not _fixed(d) or d == n for d, n in zip(dims, shape, strict=True)):
        return
    want = ",".join(str(d) if _fixed(d) else str(d or "?") for d in dims)
    raise UsageError(f"{graph} graph input '{name}' must be [{want}], got {list(shape)}")


def run_failure(graph: str, provider: str, exc: Exception) -> Exception:
    """The one-line error for an ONNX Runtime call that failed after its inputs were checked: the execution
    provider's failure (EPFail, a C++ exception such as a CUDA error) is a :class:`BackendUnavailableError`, any
    other (a kernel of the graph) a :class:`CheckFailedError`."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:300]
    what = f"the {graph} graph failed on {provider} ({type(exc).__name__}: {first})"
    if type(exc).__name__ == "EPFail" or isinstance(exc, RuntimeError):
        return BackendUnavailableError(f"{what}; check the device and its memory, or run on the CPU")
    return CheckFailedError(f"{what}; the engine or its inputs are not what the graph expects")


def _fixed(dim: Any) -> bool:
    return isinstance(dim, int) and dim >= 0


def _provider_failure(exc: Exception) -> bool:
    """Whether a session creation error is the GPU provider's (a C++ exception such as ``CUDA failure 100: no
    CUDA-capable device``, or a RUNTIME_EXCEPTION / EP_FAIL status naming CUDA), not the graph's."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) or (type(exc).__name__ in ("RuntimeException", "EPFail")
                                             and any(word in text for word in ("cuda", "cudnn", "cublas")))


def _graphs_place(graphs: Mapping[str, str | os.PathLike[str]], path: str | os.PathLike[str] | None) -> str:
    """Where an engine's graphs are, for its messages: the engine folder ``path`` when known, else the graph files'
    folders."""
    if path is not None:
        return f"engine {path}"
    folders = sorted({str(Path(file).parent) for file in graphs.values()})
    return f"the graphs in {', '.join(folders)}"


class OrtEngine(Engine):
    """The three graphs in ONNX Runtime sessions (one per graph).

    ``graphs`` maps graph name to an ONNX file (``asa_head`` absent for ``rap_light``). ``asa_similarity`` feeds the
    ``asa_head`` graph bounded blocks of ``query_block`` texts × ``video_block`` videos (defaults 32 × 64) and
    stitches the ``[Q, V]`` result, because the graph's intermediates grow as Q·V·(T·k)². On the CPU provider a
    block too large for the memory available is fed as smaller ones (``engines.blocks.fit_asa_blocks``; at 64
    frames on ViT-B/32 one 32 × 64 call is estimated at about 20 GB). Inputs are cast to each
    graph's input types (a no-op for index arrays, which already have them) and outputs returned as float32.

    ``lazy`` creates each graph's session on its first call instead of up front, so a process that only searches
    (text encoder and ASA head) never holds the video encoder (about 540 MB resident for ViT-B/32); lazy creation is
    not meant to race, so a multi-threaded server opens its engine eagerly (the default).

    ``precision`` fp16 on the CPU provider is refused (:class:`UsageError`) before any session is created, and so is
    a graph holding float16 tensors on the CPU provider whatever its label (before its session; with ``lazy``, on its
    first call). ``checked_graphs``: the caller has just parsed every graph and refused those float16 tensors itself
    (``validate_engine_dir``'s precision claim, ``read_export_manifest``'s claims), so an eager engine does not parse
    them again (about 0.1 s per 100 MB); a lazy one still checks each before its session.
    """

    backend = "onnxruntime"

    def __init__(self, graphs: Mapping[str, str | os.PathLike[str]], config: RAPConfig,
                 provider: str = "CPUExecutionProvider", precision: str = "fp32", threads: int | None = None,
                 inter_threads: int | None = None, level: str = "all", query_block: int = DEFAULT_QUERY_BLOCK,
                 video_block: int = DEFAULT_VIDEO_BLOCK, max_batch: Mapping[str, int | None] | None = None,
                 path: str | os.PathLike[str] | None = None, device_id: int = 0,
                 extra: Mapping[str, Any] | None = None, lazy: bool = False, checked_graphs: bool = False) -> None:
        import onnxruntime as ort

        missing = [g for g in ("video_encoder", "text_encoder") if g not in graphs]
        if missing or (config.has_asa and "asa_head" not in graphs):
            raise UsageError(f"ONNX Runtime engine lacks graphs {missing or ['asa_head']} for a {config.variant} model")
        if precision == "fp16" and provider == PROVIDERS["cpu"]:  # before any session: the crash takes the process
            raise UsageError(f"{_graphs_place(graphs, path)}: precision fp16 on {provider}: {FP16_ON_CPU}; "
                             f"{fp16_on_cpu_fix(graphs_export_folder(graphs, path))}")
        self.config = config
        self.provider, self.precision, self.path = provider, precision, path
        self.threads, self.inter_threads = threads, inter_threads
        self.query_block, self.video_block = int(query_block), int(video_block)
        self.files = {name: str(p) for name, p in graphs.items()}
        self.sessions: dict[str, Any] = {}
        self._session_options = (provider, threads, inter_threads, level, device_id)
        self.max_batch = {g: None for g in self.files}
        self.max_batch.update(dict(max_batch or {}))
        self._ort_version = ort.__version__
        self._extra = dict(extra or {})
        self._content_checked: set[str] = set(self.files) if checked_graphs and not lazy else set()
        # the folder as loaded: a lazy session refuses a folder swapped since (its manifest was checked, not this one)
        self._folder = folder_identity(path) if path is not None else None
        if not lazy:
            for graph in self.files:  # every graph before any session
                self._check_content(graph)
            for graph in self.files:
                self._session(graph)

    def _check_content(self, graph: str) -> None:
        """Refuse (:class:`UsageError`) a graph holding float16 tensors on the CPU provider, whatever ``precision``
        says: ONNX Runtime's CPU provider crashes the process creating such a session. The graph is parsed without
        external data (about 0.1 s per 100 MB), once, before its session."""
        if graph in self._content_checked or self.provider != PROVIDERS["cpu"]:
            return
        from rap_deploy.export.integrity import graph_facts

        path = Path(self.files[graph])
        if not path.is_file():
            raise UsageError(f"ONNX graph {path} {absent(path) if not path.exists() else 'is not a regular file'}")
        fp16 = graph_facts(path, f"graph '{graph}'", path.parent)["fp16_tensors"]
        if fp16:
            raise UsageError(f"{graph} graph {path} holds {fp16} float16 tensors (an fp16 graph, labelled "
                             f"{self.precision}): {FP16_ON_CPU}; "
                             f"{fp16_on_cpu_fix(graphs_export_folder(self.files, self.path))}")
        self._content_checked.add(graph)

    def _check_same_folder(self) -> None:
        """Refuse (:class:`CheckFailedError`) to open a session once the engine's folder was replaced (``rapdeploy
        build-engine --force``): its graphs are not the ones whose manifest and hashes were checked at load."""
        if self._folder is not None:
            check_not_replaced(self.path, self._folder, "since this process loaded it",
                               "start the command again to load the new one")

    def _session(self, graph: str) -> Any:
        """The graph's session, created on first use (see ``lazy``)."""
        sess = self.sessions.get(graph)
        if sess is None:
            from rap_deploy.engines.loader import runtime_errors

            self._check_same_folder()
            self._check_content(graph)

            provider, threads, inter_threads, level, device_id = self._session_options
            with runtime_errors(Path(self.files[graph]).parent):
                sess = create_session(self.files[graph], provider, threads, inter_threads, level, device_id=device_id)
            self.sessions[graph] = sess
        return sess

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        sess = self._session(graph)
        typed = {}
        for inp in sess.get_inputs():
            if inp.name not in feeds:
                raise UsageError(f"{graph} graph needs input '{inp.name}'")
            typed[inp.name] = np.ascontiguousarray(feeds[inp.name], dtype=_NP_OF_ORT.get(inp.type, np.float32))
            check_feed_shape(graph, inp.name, inp.shape, typed[inp.name].shape)
        try:
            outputs = sess.run(None, typed)
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise run_failure(graph, self.provider, exc) from None
        return [np.asarray(o, dtype=np.float32) for o in outputs]

    def encode_video(self, frames: np.ndarray, frame_mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """See :meth:`Engine.encode_video`."""
        frames, mask = check_video_inputs(frames, frame_mask, self.config)
        inputs, _ = graph_io("video_encoder", self.has_asa)

        def run(f: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, ...]:
            return tuple(self._run("video_encoder", dict(zip(inputs, (f, m), strict=True))))

        return batched(run, (frames, mask), self.max_batch.get("video_encoder"))

    def encode_text(self, input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """See :meth:`Engine.encode_text`."""
        ids, pos = check_text_inputs(input_ids, eot, self.config)
        inputs, _ = graph_io("text_encoder", self.has_asa)
        dynamic = tokens_axis_is_dynamic(self._session("text_encoder").get_inputs()[0].shape)

        def run(i: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, ...]:
            i = fit_tokens(i, e, self.config.context_length, dynamic)
            return tuple(self._run("text_encoder", dict(zip(inputs, (i, e), strict=True))))

        return batched(run, (ids, pos), self.max_batch.get("text_encoder"))[0]

    def asa_similarity(self, text_emb: np.ndarray, *rerank: np.ndarray) -> np.ndarray:
        """Similarity ``[Q, V]``, computed in blocks of ``query_block × video_block`` (see the class docstring)."""
        rerank = rerank_inputs(self.has_asa and "asa_head" in self.files, rerank)
        if "asa_head" not in self.files:
            return meanp_similarity_from_frames(text_emb, rerank[0])
        inputs, _ = graph_io("asa_head", True)

        def run(*arrays: np.ndarray) -> np.ndarray:
            return self._run("asa_head", dict(zip(inputs, arrays, strict=True)))[0]

        # on the CPU a block's intermediates are this machine's memory: blocks are fitted to what is available
        host = model_call_bytes(self.config, rerank[1].shape) if self.provider == PROVIDERS["cpu"] else None
        return blocked_similarity(run, text_emb, rerank, self.query_block, self.video_block, host)

    def describe(self) -> EngineInfo:
        """Backend, provider, precision, ONNX Runtime version, thread settings and block sizes."""
        device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        return EngineInfo(backend=self.backend, precision=self.precision, device=device, provider=self.provider,
                          versions={"onnxruntime": self._ort_version},
                          path=str(self.path) if self.path is not None else None,
                          extra={"threads": self.threads, "inter_threads": self.inter_threads,
                                 "query_block": self.query_block, "video_block": self.video_block,
                                 "graphs": self.files, **self._extra})

    def close(self) -> None:
        """Drop the sessions."""
        self.sessions.clear()
