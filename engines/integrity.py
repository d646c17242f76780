"""An engine manifest's precision claim checked against the engine graphs themselves.

The parity rule of ``verify`` depends on the precision (fp32 engines may change no rank, fp16/int8 engines get a
recall tolerance), so an fp32 engine relabelled ``int8`` in its manifest would pass under the looser rule. The claim is
therefore read back from the ONNX Runtime graphs (what :func:`rap_deploy.engines.ort_build.build_ort_graphs` writes):

- ``int8``: quantised operators (``DynamicQuantizeMatMul``, ``MatMulInteger``, ...) in every graph except
  ``asa_head`` (which stays fp32 by design), and no float16 tensors;
- ``fp16``: float16 tensors in every graph and no quantised operators;
- ``fp32``: neither.

The precision must also be one build-engine writes for the manifest's provider (fp16: CUDA, int8: CPU). Every graph
must also parse as ONNX and load external data only from files the manifest lists. TensorRT plans cannot
be inspected without TensorRT; their precision is checked by the TensorRT backend after a build (layer precisions).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rap_deploy.errors import CheckFailedError
from rap_deploy.export.integrity import check_external_data, derived_settings, graph_facts, metadata_mismatches
from rap_deploy.safe_paths import resolve_entry

INT8_EXEMPT = ("asa_head",)  # kept fp32 in int8 engines (see ort_build.int8_exclusions)
# The one provider build-engine writes each reduced precision for (ort_build.build_ort_graphs refuses the others).
PRECISION_PROVIDER = {"fp16": "CUDAExecutionProvider", "int8": "CPUExecutionProvider"}


def check_precision_claim(engine_dir: Path, manifest: Mapping[str, Any], source: Path) -> int:
    """Refuse an ONNX Runtime engine whose graphs contradict the manifest's ``precision``, ``config`` or graph names,
    or whose graphs' copies of the settings the config defines (``rapdeploy.preprocess``, ``.tokenizer``,
    ``.sampling``) differ from what it derives.

    Returns how many nodes of the graphs are in ONNX Runtime's CPU-specific blocked layout (``com.microsoft.nchwc``:
    their weights are laid out for the CPU that saved them; 0 for a TensorRT engine, whose plans are not parsed).
    Raises :class:`CheckFailedError` (exit 1) naming the manifest, the graph and what it holds.
    """
    if manifest.get("backend") != "onnxruntime":
        return 0
    nchwc = 0
    precision = manifest.get("precision")
    _check_provider(precision, manifest.get("provider"), source)
    derived = derived_settings(manifest.get("config"), source)
    graphs = manifest["graphs"]
    listed = {e["file"] for entry in graphs.values() for e in (entry, *entry.get("extra_files", []))}
    for name, entry in graphs.items():
        what = f"engine graph '{name}'"
        path = resolve_entry(engine_dir, entry["file"], what, source)
        facts = graph_facts(path, what, source)
        check_external_data(engine_dir, facts, listed, what, source)
        quantized, fp16 = facts["quantized_ops"], facts["fp16_tensors"]
        nchwc += facts["nchwc_ops"]
        claims = metadata_mismatches(facts["metadata"], {"config": manifest.get("config")})
        claims += metadata_mismatches(facts["metadata"], derived, "what the manifest's 'config' derives")
        graph_name = facts["metadata"].get("rapdeploy.graph")
        if graph_name is not None and graph_name != name:
            claims.append(f"its metadata rapdeploy.graph is {graph_name!r}, the manifest lists it as {name!r}")
        if claims:
            raise CheckFailedError(f"{source}: {what} ({path.name}) does not match its manifest: {'; '.join(claims)}; "
                                   "the manifest was edited or the graph replaced, rebuild the engine")
        problem = None
        if precision == "fp32" and (quantized or fp16):
            problem = f"it holds {quantized} quantised operators and {fp16} float16 tensors"
        elif precision == "int8" and (fp16 or (not quantized and name not in INT8_EXEMPT)):
            problem = f"it holds {quantized} quantised operators and {fp16} float16 tensors"
        elif precision == "fp16" and (quantized or not fp16):
            problem = f"it holds {fp16} float16 tensors and {quantized} quantised operators"
        if problem:
            raise CheckFailedError(f"{source} says precision {precision}, but {what} ({path.name}) does not: "
                                   f"{problem}; the manifest was edited or the graph replaced, rebuild the engine "
                                   "with `rapdeploy build-engine`")
    return nchwc


def _check_provider(precision: Any, provider: Any, source: Path) -> None:
    """Refuse a precision on a provider build-engine never builds it for (fp16: CUDA only, int8: CPU only): ONNX
    Runtime 1.32's CPU provider crashes the process (segfault) creating a session for an fp16 video encoder."""
    needed = PRECISION_PROVIDER.get(str(precision))
    if needed is not None and provider != needed:
        raise CheckFailedError(f"{source} says precision {precision} on {provider}, but build-engine writes "
                               f"{precision} ONNX Runtime engines for {needed} only; the manifest was edited, rebuild "
                               "the engine with `rapdeploy build-engine`")
