"""The served models: each graph's tensor names, datatypes and shapes, and how large a batch may be.

Nothing here lists tensors by hand. The I/O of each graph comes from one source of truth:

- an engine folder (``rapdeploy.engine``): the export manifest it recorded (``manifest["export"]["graphs"]``), which
  holds :func:`~rap_deploy.export.export_config.graph_specs` as written by the export;
- an export folder (``rapdeploy.export``): its manifest's ``graphs``;
- a checkpoint (the PyTorch engine): :func:`~rap_deploy.export.export_config.graph_specs` of the loaded model.

Batch limits come from the engine's TensorRT profiles or ONNX Runtime ASA blocks, else the project's profile defaults
(:func:`~rap_deploy.engines.trt_plan.profile_ranges`). A graph is *batchable* (Triton ``max_batch_size > 0``) when every
input and output starts with the same symbolic axis; ``asa_head`` has two independent axes (queries, videos), so it
is served with ``max_batch_size 0`` and explicit ``-1`` dimensions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.bounds import read_manifest_text
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.export.export_config import GraphSpec, ModelDims, TensorSpec, graph_specs
from rap_deploy.graphs import (
    GRAPH_NAMES,
    TEXT_INPUTS,
    VIDEO_INPUTS,
    graph_io,
    graphs_for,
    video_outputs,
)

VIDEO_GRAPH, TEXT_GRAPH, ASA_GRAPH = GRAPH_NAMES
#: Bytes a binary inference request's JSON header may take beside its tensors, generously: the room kept by the
#: server's body budget (``serve --max-body-mb``), the remote client's request sizes and triton-repo's note.
BODY_HEADER_RESERVE = 64 << 10
#: tritonserver's default ``--http-max-input-size`` (2.59 and later): the largest HTTP request it takes unless
#: started with a larger one.
TRITON_HTTP_INPUT_BYTES = 64 << 20

#: numpy dtype name -> Open Inference Protocol (KServe v2) datatype. Triton's config type is ``"TYPE_" + datatype``.
OIP_DATATYPES: dict[str, str] = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int8": "INT8",
                                 "int16": "INT16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
                                 "bool": "BOOL"}
NUMPY_DTYPES: dict[str, str] = {v: k for k, v in OIP_DATATYPES.items()}


def oip_datatype(dtype: Any) -> str:
    """The KServe v2 datatype (``FP32``, ``FP16``, ``INT32`` ...) of a numpy dtype; raises :class:`UsageError`."""
    name = np.dtype(dtype).name
    try:
        return OIP_DATATYPES[name]
    except KeyError:
        raise UsageError(f"dtype {name} has no Open Inference Protocol datatype") from None


def triton_type(dtype: Any) -> str:
    """Triton's model-configuration type (``TYPE_FP32`` ...) of a numpy dtype."""
    return "TYPE_" + oip_datatype(dtype)


def batch_axis(spec: GraphSpec) -> str | None:
    """The symbolic axis every input and output of ``spec`` starts with, or ``None`` when there is no such axis."""
    firsts = {t.shape[0] if t.shape else None for t in (*spec.inputs, *spec.outputs)}
    if len(firsts) == 1:
        (axis,) = firsts
        if isinstance(axis, str):
            return axis
    return None


@dataclass(frozen=True)
class ServedModel:
    """One graph as a server model: its :class:`GraphSpec` and Triton's ``max_batch_size`` (0 = no batch axis)."""

    spec: GraphSpec
    max_batch_size: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def batch_axis(self) -> str | None:
        return batch_axis(self.spec) if self.max_batch_size > 0 else None

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.spec.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.spec.outputs)

    def tensor(self, name: str) -> TensorSpec:
        """The input or output called ``name``; raises ``KeyError``."""
        for t in (*self.spec.inputs, *self.spec.outputs):
            if t.name == name:
                return t
        raise KeyError(name)

    def shape(self, tensor: TensorSpec) -> list[int]:
        """The full shape as KServe model metadata shows it: ``-1`` for every symbolic axis."""
        return [d if isinstance(d, int) else -1 for d in tensor.shape]

    def dims(self, tensor: TensorSpec) -> list[int]:
        """Triton's ``dims``: the shape without the batch axis when the model batches, ``-1`` where symbolic."""
        shape = self.shape(tensor)
        return shape[1:] if self.max_batch_size > 0 else shape


@dataclass(frozen=True)
class BatchLimits:
    """Largest batch per call: videos and texts per encoder call, queries x videos per ASA-head call."""

    video: int
    text: int
    asa_queries: int
    asa_videos: int

    def to_dict(self) -> dict[str, int]:
        return {"video": self.video, "text": self.text, "asa_queries": self.asa_queries,
                "asa_videos": self.asa_videos}


def batch_limits(manifest: Mapping[str, Any] | None) -> BatchLimits:
    """Batch limits of an engine from its manifest (TensorRT ``profiles``, ONNX Runtime ``asa_blocks``), the
    project's profile defaults where the manifest has none (export folders, checkpoints, ONNX Runtime encoders)."""
    from rap_deploy.engines.trt_plan import profile_ranges

    defaults = profile_ranges(None)
    profiles = dict((manifest or {}).get("profiles") or {})

    def top(graph: str, axis: str) -> int:
        value = ((profiles.get(graph) or {}).get(axis) or {}).get("max")
        return int(value) if value else defaults[graph][axis].max

    blocks = dict((manifest or {}).get("asa_blocks") or {})
    return BatchLimits(video=top(VIDEO_GRAPH, "batch"), text=top(TEXT_GRAPH, "batch"),
                       asa_queries=int(blocks.get("queries") or top(ASA_GRAPH, "queries")),
                       asa_videos=int(blocks.get("videos") or top(ASA_GRAPH, "videos")))


@dataclass(frozen=True)
class EngineSource:
    """What an engine path is: ``kind`` ``engine`` / ``export`` / ``checkpoint``, and its manifest (``None`` for a
    checkpoint). ``graph_manifest`` is the manifest whose ``graphs`` entries record each graph's I/O."""

    path: Path
    kind: str
    manifest: dict[str, Any] | None

    @property
    def graph_manifest(self) -> dict[str, Any] | None:
        if self.manifest is None:
            return None
        return self.manifest.get("export") if self.kind == "engine" else self.manifest

    @property
    def checkpoint(self) -> dict[str, Any]:
        """``{"path", "sha256"}`` of the checkpoint an engine or export folder records in its manifest (``None``
        values when it records none): what ``rapdeploy triton-repo`` publishes. Raises :class:`UsageError` for a
        checkpoint, whose sha256 is that of the bytes its engine loaded (``rapdeploy serve`` publishes the loaded
        engine's ``describe()``), not of the file hashed again."""
        if self.kind == "checkpoint":
            raise UsageError(f"{self.path} is a checkpoint: its sha256 is the one its loaded engine describes")
        rec = dict((self.manifest or {}).get("checkpoint") or {})
        return {"path": rec.get("path"), "sha256": rec.get("sha256")}


#: manifest ``format`` -> :attr:`EngineSource.kind`
SOURCE_KINDS = {"rapdeploy.engine": "engine", "rapdeploy.export": "export"}


def read_source(path: str | os.PathLike[str]) -> EngineSource:
    """Classify ``path`` (engine folder, export folder or checkpoint) and read its manifest.

    Raises :class:`UsageError` for a path that is none of these, as :func:`~rap_deploy.engines.loader.load_engine`
    would.
    """
    from rap_deploy.engines.loader import CHECKPOINT_SUFFIXES

    p = Path(path)
    if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES:
        return EngineSource(p, "checkpoint", None)
    manifest_path = p / "manifest.json"
    if not manifest_path.is_file():
        raise UsageError(f"{p} is not an engine folder, an export folder or a checkpoint (no manifest.json); build "
                         "one with `rapdeploy build-engine` or `rapdeploy export`")
    try:
        manifest = json.loads(read_manifest_text(manifest_path))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckFailedError(f"{manifest_path} is not valid JSON ({exc}); rebuild the artifact") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt not in SOURCE_KINDS:
        raise UsageError(f"{manifest_path} has format {fmt!r}; expected an engine or export manifest")
    return EngineSource(p, SOURCE_KINDS[fmt], manifest)


def loaded_source(path: str | os.PathLike[str], engine: Any) -> EngineSource:
    """The :class:`EngineSource` of ``engine`` as :func:`~rap_deploy.engines.loader.load_engine` loaded it from
    ``path``: a folder's manifest is the one the engine's files were opened from (``engine.source_manifest``), not
    ``path``'s manifest read again, which a ``build-engine --force`` / ``export --force`` after the load replaces.

    Raises :class:`UsageError` for a folder engine that does not say its manifest (one not made by the loader).
    """
    from rap_deploy.engines.loader import CHECKPOINT_SUFFIXES

    p = Path(path)
    manifest = getattr(engine, "source_manifest", None)
    if manifest is None and p.suffix in CHECKPOINT_SUFFIXES:
        return EngineSource(p, "checkpoint", None)
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt not in SOURCE_KINDS:
        raise UsageError(f"the engine loaded from {p} does not say which engine or export manifest it was loaded "
                         "from; load it with rapdeploy.engines.loader.load_engine")
    return EngineSource(p, SOURCE_KINDS[fmt], manifest)


def _spec_from_record(name: str, record: Mapping[str, Any], where: str) -> GraphSpec:
    """A :class:`GraphSpec` from a manifest's ``{"inputs": [...], "outputs": [...]}`` graph entry."""
    try:
        def tensors(key: str) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in record[key])

        return GraphSpec(name, tensors("inputs"), tensors("outputs"))
    except (KeyError, TypeError) as exc:
        raise CheckFailedError(f"{where}: graph '{name}' does not record its inputs and outputs ({exc}); re-export "
                               "with this rapdeploy") from None


def graph_specs_of(source: EngineSource, engine: Any = None, section: str = "graphs") -> dict[str, GraphSpec]:
    """Every graph's I/O specs, in :data:`~rap_deploy.graphs.GRAPH_NAMES` order (see the module docstring).

    ``engine`` is needed for a checkpoint (its model gives the dimensions); ``section`` ``fp16_graphs`` reads an
    export's fp16 graphs. Raises :class:`CheckFailedError` when a manifest lacks a graph the model needs or records
    outputs other than the contract's.
    """
    if source.kind == "checkpoint":
        if engine is None or not hasattr(engine, "model"):
            raise UsageError(f"{source.path}: a checkpoint's graph shapes need its loaded model")
        specs = graph_specs(ModelDims.of(engine.model), engine.config.has_asa)
        has_asa = engine.config.has_asa
    else:
        from rap_deploy.config import RAPConfig

        gm = source.graph_manifest or {}
        has_asa = RAPConfig.from_dict(source.manifest["config"]).has_asa
        records = gm.get(section) or {}
        missing = [g for g in graphs_for(has_asa) if g not in records]
        if missing and section == "fp16_graphs":
            raise UsageError(f"{source.path} has no fp16 graphs for {missing}; re-export with `rapdeploy export CKPT "
                             "--fp16`")
        if missing:
            raise CheckFailedError(f"{source.path / 'manifest.json'} lacks graphs {missing}; rebuild the artifact")
        specs = {g: _spec_from_record(g, records[g], str(source.path / "manifest.json")) for g in graphs_for(has_asa)}
    outputs = tuple(t.name for t in specs[VIDEO_GRAPH].outputs)
    if outputs != video_outputs(has_asa):
        raise CheckFailedError(f"{source.path}: video_encoder outputs {list(outputs)} differ from this rapdeploy's "
                               f"contract {list(video_outputs(has_asa))}; re-export with this version")
    return specs


def served_models(specs: Mapping[str, GraphSpec], limits: BatchLimits, text_max_batch: int | None = None
                  ) -> dict[str, ServedModel]:
    """The served models of ``specs``: batchable graphs get ``max_batch_size`` from ``limits`` (the text encoder at
    most ``text_max_batch`` when given), the others 0."""
    per_graph = {VIDEO_GRAPH: limits.video, TEXT_GRAPH: limits.text}
    if text_max_batch is not None:
        if text_max_batch < 1:
            raise UsageError(f"--max-batch must be >= 1, got {text_max_batch}")
        per_graph[TEXT_GRAPH] = min(int(text_max_batch), limits.text) if limits.text else int(text_max_batch)
    out = {}
    for name, spec in specs.items():
        size = per_graph.get(name, 0) if batch_axis(spec) is not None else 0
        out[name] = ServedModel(spec, int(size))
    return out


# ------------------------------------------------------------------------------------------------------- running
def contract_io(has_asa: bool) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """``graph -> (input names, output names)`` in the order the :class:`~rap_deploy.engines.base.Engine` methods
    take and return them, from the contract helpers of :mod:`rap_deploy.graphs`."""
    return {g: graph_io(g, has_asa) for g in graphs_for(has_asa)}


def run_graph(engine: Any, model: ServedModel, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one graph of ``engine`` through the :class:`~rap_deploy.engines.base.Engine` method that implements it
    (arguments and results in the order of :func:`contract_io`); returns the outputs by name."""
    if model.name not in GRAPH_NAMES:
        raise UsageError(f"model '{model.name}' is not one of {', '.join(GRAPH_NAMES)}")
    names, outputs = contract_io(engine.has_asa)[model.name]
    args = [inputs[n] for n in names]
    if model.name == VIDEO_GRAPH:
        outs = tuple(engine.encode_video(*args))
    elif model.name == TEXT_GRAPH:
        outs = (engine.encode_text(*args),)
    else:
        outs = (engine.asa_similarity(*args),)
    if len(outs) != len(outputs) or set(outputs) != set(model.output_names):
        raise CheckFailedError(f"{model.name}: the engine returned {len(outs)} outputs {list(outputs)}, the model "
                               f"declares {list(model.output_names)}")
    return dict(zip(outputs, outs, strict=True))


def check_input_values(model: ServedModel, arrays: Mapping[str, np.ndarray], config: Any) -> None:
    """Reject values no tokenizer or preprocessing produces (they would index out of bounds or divide by zero).

    Float inputs must be finite; ``input_ids`` within the tokenizer's vocabulary and ``eot`` within the context;
    ``frame_mask`` 0/1 with at least one real frame per video. Raises ``ValueError(input name, message)``.
    """
    from rap_deploy.tokenizer import vocab_size

    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(name, f"{name} holds NaN or infinite values")
    if model.name == TEXT_GRAPH:
        ids, eot = arrays[TEXT_INPUTS[0]], arrays[TEXT_INPUTS[1]]
        vocab = vocab_size(config.tokenizer)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError(TEXT_INPUTS[0], f"{TEXT_INPUTS[0]} must be token ids in [0, {vocab}) (tokenize with "
                             "the model's tokenizer)")
        if eot.size and (eot.min() < 0 or eot.max() >= ids.shape[1]):
            raise ValueError(TEXT_INPUTS[1], f"{TEXT_INPUTS[1]} must be positions in [0, {ids.shape[1]}) (inside "
                             f"the {ids.shape[1]} tokens of {TEXT_INPUTS[0]})")
    if model.name == VIDEO_GRAPH:
        mask = arrays[VIDEO_INPUTS[1]]
        if not np.isin(mask, (0.0, 1.0)).all():
            raise ValueError(VIDEO_INPUTS[1], f"{VIDEO_INPUTS[1]} must hold 0 (padding) or 1 (real frame)")
        if mask.size and (mask.sum(axis=1) < 1).any():
            raise ValueError(VIDEO_INPUTS[1], f"every video needs at least one real frame in {VIDEO_INPUTS[1]}")
        if mask.size and (np.diff(mask, axis=1) > 0).any():  # a 1 after a 0: the ASA warp clamps to a valid prefix
            raise ValueError(VIDEO_INPUTS[1], f"{VIDEO_INPUTS[1]} must mark the real frames as a prefix (1…1 0…0), "
                             "as the decoder pads short videos")
