"""Build ONNX Runtime engine graphs: optimise (and quantise) the exported graphs and save them in the engine folder.

- **fp32 / fp16**: the export's graph (fp16: its ``*.fp16.onnx``) is loaded in a session with every graph
  optimisation on (``ORT_ENABLE_ALL``) for the target provider, and the optimised graph is saved through
  ``SessionOptions.optimized_model_filepath``; loading the engine later skips that work.
- **int8** (CPU): dynamic quantisation (``onnxruntime.quantization.quantize_dynamic``) of the ``MatMul``/``Gemm``
  weights — int8 weights, activations quantised per batch at run time — then the same optimisation. What stays fp32
  (see :func:`int8_exclusions`):

  * the **final projections** (the visual ``proj`` after ``ln_post`` and the ``text_projection``): they write the
    joint embedding space every similarity is computed in, and they are two small matrices. On ViT-B/32 quantising
    them too lowered the video-embedding cosine to PyTorch from 0.99993 to 0.99981;
  * the whole **ASA head**: its q/k/v projections (now in the video encoder, writing ``asa_tokens``) and its output
    projection (in ``asa_head``): they feed attention over a handful of selected tokens, and are a small share of
    the compute. On the test model with non-zero adapters, int8 q/k/v projections moved the ASA similarity by 4e-4
    (fp32: 3e-8);
  * the **patch-embedding convolution** (``Conv``) and every activation × activation product (attention ``QKᵀ`` and
    ``softmax·V``): only ``MatMul``/``Gemm`` with a constant weight are quantised (``MatMulConstBOnly``).

  Weights are quantised per output channel with a 7-bit range (``reduce_range``): on CPUs without VNNI
  (AVX2 ``vpmaddubsw``) the uint8 × int8 products of full-range weights saturate int16. Measured on ViT-B/32 (AVX2
  host): video-embedding cosine 0.983 with full-range weights, 0.99993 with the reduced range (text 0.9985 / 0.9982).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rap_deploy.engines.manifest import graph_entry
from rap_deploy.engines.ort_backend import create_session, provider_for
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.graphs import VIDEO_OUTPUTS

QUANT_OPS = ("MatMul", "Gemm")
# Graphs above this size keep their weights in an external ``<file>.data`` (protobuf's 2 GiB limit).
EXTERNAL_DATA_BYTES = 1_800_000_000

FINAL_PROJECTION = "final-projection"
ASA_HEAD = "asa-head"
# Video-encoder outputs written by ASA's projections (kept fp32 with the rest of ASA).
ASA_OUTPUT_NAMES = (VIDEO_OUTPUTS[3],)


def int8_exclusions(model: Any, graph: str, keep_asa_fp32: bool = True,
                    keep_final_projection: bool = True) -> dict[str, str]:
    """``{node name: reason}`` of the ``MatMul``/``Gemm`` nodes of ``model`` that stay fp32 in an int8 engine.

    Found structurally: walking back from a graph output through every op that is not a ``MatMul``/``Gemm``/
    ``LayerNormalization`` (nor ``Shape``: sizes carry no values), the first ``MatMul``/``Gemm`` reached with a
    constant weight is the projection that writes it. From ``asa_tokens`` (the video encoder's ASA output) that is
    ASA's q/k/v projection (reason ``asa-head``, with ``keep_asa_fp32``); from the other outputs the projection into
    the joint space (``final-projection``, with ``keep_final_projection``). In ``asa_head`` every ``MatMul``/``Gemm``
    stays fp32 (with ``keep_asa_fp32``).
    """
    g = model.graph
    if graph == "asa_head":
        return {n.name: ASA_HEAD for n in g.node if n.op_type in QUANT_OPS} if keep_asa_fp32 else {}
    const = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in g.node for o in n.output if o}
    out: dict[str, str] = {}
    seen: set[str] = set()
    asa_outputs = [o.name for o in g.output if o.name in ASA_OUTPUT_NAMES]
    walks = [(asa_outputs, ASA_HEAD, keep_asa_fp32),
             ([o.name for o in g.output if o.name not in ASA_OUTPUT_NAMES], FINAL_PROJECTION, keep_final_projection)]
    for outputs, reason, keep in walks:  # ASA first: its walk stops at the q/k/v projection, before the joint space
        stack = list(outputs)
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in QUANT_OPS and any(i in const for i in node.input[1:2]):
                if keep:
                    out[node.name] = reason
                continue
            if node.op_type in ("LayerNormalization", "Shape", "Size"):  # a shape does not carry values
                continue
            stack.extend(i for i in node.input if i and i not in const)
    return out


def _model_bytes(path: Path) -> int:
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def quantize_graph(src: Path, dst: Path, graph: str, per_channel: bool = True,
                   reduce_range: bool = True, keep_asa_fp32: bool = True) -> dict[str, Any]:
    """Dynamically quantise ``src`` into ``dst`` (int8 ``MatMul``/``Gemm`` weights); returns the quantisation report.

    Raises :class:`CheckFailedError` if nothing was quantised (the graph would silently stay fp32).
    """
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    excluded = int8_exclusions(model, graph, keep_asa_fp32)
    candidates = [n.name for n in model.graph.node if n.op_type in QUANT_OPS]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs a generic "consider pre-processing" warning per call
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(QUANT_OPS), per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=list(excluded),
                         use_external_data_format=_model_bytes(src) > EXTERNAL_DATA_BYTES,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    qmodel = onnx.load(str(dst), load_external_data=False)
    quantized = sum(1 for n in qmodel.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul",
                                                                  "MatMulIntegerToFloat", "ConvInteger"))
    if quantized == 0 and len(candidates) > len(excluded):
        raise CheckFailedError(f"{graph}: dynamic quantisation produced no int8 MatMul; the engine would be fp32")
    return {"candidates": len(candidates), "quantized": quantized, "excluded": dict(sorted(excluded.items())),
            "per_channel": per_channel, "reduce_range": reduce_range, "weight_type": "QInt8",
            "op_types": list(QUANT_OPS), "matmul_const_b_only": True}


def optimize_graph(src: Path, dst: Path, provider: str, threads: int | None, inter_threads: int | None,
                   device_id: int = 0) -> None:
    """Run ONNX Runtime's ``ORT_ENABLE_ALL`` optimisations for ``provider`` on ``src`` and save the result as ``dst``.

    Graphs over :data:`EXTERNAL_DATA_BYTES` keep their weights in ``<dst>.data`` next to it.
    """
    entries = None
    if _model_bytes(src) > EXTERNAL_DATA_BYTES:
        entries = {"session.optimized_model_external_initializers_file_name": dst.name + ".data"}
    create_session(src, provider, threads, inter_threads, "all", optimized_model_path=dst, device_id=device_id,
                   config_entries=entries)


def build_ort_graphs(export_dir: Path, export_manifest: Mapping[str, Any], out_dir: Path, precision: str,
                     device: str, threads: int | None = None, inter_threads: int | None = None,
                     per_channel: bool = True, reduce_range: bool = True, device_id: int = 0,
                     advance: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the engine graphs of an ONNX Runtime engine into ``out_dir``; returns (manifest graphs, extra keys).

    Raises :class:`UsageError` for an impossible precision / device combination or an export without the needed
    graphs, :class:`~rap_deploy.errors.BackendUnavailableError` when the provider is not available.
    """
    provider = provider_for(device)
    if precision == "int8" and device != "cpu":
        raise UsageError("int8 ONNX Runtime engines run on the CPU (dynamic quantisation); use --device cpu")
    if precision == "fp16" and device != "cuda":
        raise UsageError("fp16 ONNX Runtime engines need CUDA (--device cuda); on the CPU use fp32 or --int8")
    graphs: dict[str, Any] = {}
    quant: dict[str, Any] = {}
    fp16_graphs = export_manifest.get("fp16_graphs") or {}
    for name, entry in export_manifest["graphs"].items():
        src = export_dir / entry["file"]
        src_sha = entry.get("sha256")
        if precision == "fp16":
            f16 = fp16_graphs.get(name)
            if not f16:
                raise UsageError(f"export {export_dir} has no fp16 graph for {name}; re-export with "
                                 "`rapdeploy export CKPT --fp16`")
            src = export_dir / (f16["file"] if isinstance(f16, Mapping) else str(f16))
            src_sha = f16.get("sha256") if isinstance(f16, Mapping) else None
        dst = out_dir / f"{name}.onnx"
        if precision == "int8":
            qpath = out_dir / f".{name}.quant.onnx"
            try:
                quant[name] = quantize_graph(src, qpath, name, per_channel, reduce_range)
                optimize_graph(qpath, dst, provider, threads, inter_threads, device_id)
            finally:
                for leftover in (qpath, qpath.with_name(qpath.name + ".data")):
                    if leftover.exists():
                        os.unlink(leftover)
        else:
            optimize_graph(src, dst, provider, threads, inter_threads, device_id)
        graphs[name] = graph_entry(out_dir, dst.name, src, src_sha)
        data = dst.with_name(dst.name + ".data")
        if data.is_file():
            graphs[name]["extra_files"] = [graph_entry(out_dir, data.name, None, None)]
        if advance is not None:
            advance(name)
    extra: dict[str, Any] = {"session": {"graph_optimization_level": "ORT_ENABLE_ALL", "threads": threads,
                                         "inter_threads": inter_threads}}
    if quant:
        extra["quantization"] = quant
    return graphs, extra
