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

from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.export.integrity import (
    contract_problem,
    derived_copy_mismatches,
    derived_settings,
    graph_copy_problems,
    io_mismatches,
    listed_graph_facts,
    metadata_mismatches,
)

INT8_EXEMPT = ("asa_head",)  # kept fp32 in int8 engines (see ort_build.int8_exclusions)
# The one provider build-engine writes each reduced precision for (ort_build.build_ort_graphs refuses the others).
PRECISION_PROVIDER = {"fp16": "CUDAExecutionProvider", "int8": "CPUExecutionProvider"}


def check_precision_claim(engine_dir: Path, manifest: Mapping[str, Any], source: Path) -> int:
    """Refuse an ONNX Runtime engine whose graphs contradict the manifest's ``precision``, ``config`` or graph names,
    whose graphs' copies of the settings the config defines (``rapdeploy.preprocess``, ``.tokenizer``,
    ``.sampling``) differ from what it derives, or whose inputs and outputs differ from the export record the
    manifest keeps (``export.graphs``: ``rapdeploy serve`` and ``triton-repo`` describe the graphs from it).

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
        path, facts = listed_graph_facts(engine_dir, entry["file"], listed, what, source)
        nchwc += facts["nchwc_ops"]
        claims = _claim_problems(name, facts, manifest, derived)
        if claims:
            raise CheckFailedError(f"{source}: {what} ({path.name}) does not match its manifest: {'; '.join(claims)}; "
                                   "the manifest was edited or the graph replaced, rebuild the engine")
        problem = _precision_problem(precision, name, facts["quantized_ops"], facts["fp16_tensors"])
        if problem:
            raise CheckFailedError(f"{source} says precision {precision}, but {what} ({path.name}) does not: "
                                   f"{problem}; the manifest was edited or the graph replaced, rebuild the engine "
                                   "with `rapdeploy build-engine`")
    return nchwc


def _claim_problems(name: str, facts: Mapping[str, Any], manifest: Mapping[str, Any], derived: Mapping[str, Any]
                    ) -> list[str]:
    """What engine graph ``name`` (``facts``) says against the manifest: config, derived settings, graph name, and
    inputs / outputs against the export record (when the manifest keeps one); as messages."""
    meta = facts["metadata"]
    claims = metadata_mismatches(meta, {"config": manifest.get("config")})
    claims += metadata_mismatches(meta, derived, "what the manifest's 'config' derives")
    claims += graph_copy_problems(facts, manifest.get("checkpoint"))
    graph_name = meta.get("rapdeploy.graph")
    if graph_name is not None and graph_name != name:
        claims.append(f"its metadata rapdeploy.graph is {graph_name!r}, the manifest lists it as {name!r}")
    export = manifest.get("export")
    record = (export.get("graphs") or {}).get(name) if isinstance(export, Mapping) else None
    if isinstance(record, Mapping):
        claims += io_mismatches(record, facts, f"export.graphs.{name}.")
    return claims


def _precision_problem(precision: Any, name: str, quantized: int, fp16: int) -> str | None:
    """Why a graph holding ``quantized`` quantised operators and ``fp16`` float16 tensors is not ``precision``."""
    if precision == "fp32" and (quantized or fp16):
        return f"it holds {quantized} quantised operators and {fp16} float16 tensors"
    if precision == "int8" and (fp16 or (not quantized and name not in INT8_EXEMPT)):
        return f"it holds {quantized} quantised operators and {fp16} float16 tensors"
    if precision == "fp16" and (quantized or not fp16):
        return f"it holds {fp16} float16 tensors and {quantized} quantised operators"
    return None


def check_export_record(manifest: Mapping[str, Any], source: Path) -> None:
    """The export manifest an engine manifest keeps (``export``: what ``serve`` and ``triton-repo`` describe the
    graphs from) must hold the engine's own ``config``, ``checkpoint`` sha256 and the settings the config derives
    (``preprocess``, ``tokenizer``, ``sampling``, ...). A manifest without an export record is not judged.

    Raises :class:`CheckFailedError` (exit 1) naming the manifest and the key.
    """
    export = manifest.get("export")
    if export is None:
        return
    problems = []
    if not isinstance(export, Mapping) or not isinstance(export.get("graphs", {}), Mapping):
        problems.append("its 'export' is not an export manifest's record")
    elif export.get("config") != manifest.get("config"):
        problems.append("its 'export.config' differs from its 'config'")
    elif _sha(export.get("checkpoint")) != _sha(manifest.get("checkpoint")):
        problems.append("its 'export.checkpoint' differs from its 'checkpoint' (the weights' source)")
    else:
        problems += derived_copy_mismatches(export, derived_settings(manifest.get("config"), source), "export.")
    if problems:
        raise CheckFailedError(f"{source}: {'; '.join(problems)}; the manifest was edited, rebuild the engine")


def check_graph_set(engine_dir: Path, manifest: Mapping[str, Any], source: Path) -> None:
    """Refuse an engine whose manifest lists other graphs than its config's model runs
    (:func:`rap_deploy.graphs.graphs_for`: a rap model needs ``asa_head`` too). ``build-engine`` writes every one, so
    a missing or extra graph means the manifest was edited.

    Raises :class:`CheckFailedError` (exit 1) naming the manifest, the graphs and the rebuild command.
    """
    from rap_deploy.graphs import graphs_for

    want = set(graphs_for(derived_settings(manifest.get("config"), source)["has_asa"]))
    have = set(manifest["graphs"])
    if have != want:
        raise CheckFailedError(f"{source} lists graphs {sorted(have)}, but its config's model runs {sorted(want)}; "
                               "the manifest was edited, rebuild the engine: "
                               f"{rebuild_engine_advice(engine_dir, manifest)}")


def check_graph_contract(engine_dir: Path, manifest: Mapping[str, Any], source: Path) -> None:
    """Refuse (:class:`UsageError`, exit 2) an engine whose graphs, as its export record lists them
    (``export.graphs``: ONNX Runtime graphs are tied to it by :func:`check_precision_claim`, TensorRT plans by the
    build), have other inputs or outputs than this rapdeploy runs: built by another version of it (before
    ``asa_tokens``, say), it would fail mid-command. An engine without an export record is not judged."""
    export = manifest.get("export")
    graphs = export.get("graphs") if isinstance(export, Mapping) else None
    if not isinstance(graphs, Mapping):
        return
    has_asa = derived_settings(manifest.get("config"), source)["has_asa"]
    for name, record in graphs.items():
        problem = contract_problem(str(name), record, has_asa)
        if problem:
            raise UsageError(f"{source}: engine graph '{name}' {problem}: the engine was built by another version of "
                             f"rapdeploy; rebuild it with this one from a fresh export: "
                             f"{_rebuild_commands(engine_dir, manifest)}")


def _rebuild_commands(engine_dir: Path, manifest: Mapping[str, Any]) -> str:
    """```rapdeploy export CKPT --force --out EXPORT` then `rapdeploy build-engine EXPORT ... --force --out ENGINE```
    for the export folder and the precision the engine's manifest records: where it records no export folder,
    :data:`~rap_deploy.engines.rebuild_commands.EXPORT_PLACEHOLDER` in both, explained after them."""
    from rap_deploy.engines.rebuild_commands import export_word
    from rap_deploy.export.manifest import export_command

    export = export_command(export_word(manifest), dict(manifest))
    return f"`{export}` then {rebuild_engine_advice(engine_dir, manifest)}"


def rebuild_engine_advice(engine_dir: Path, manifest: Mapping[str, Any]) -> str:
    """:func:`rebuild_engine_command` in backticks, then what its placeholder stands for when the manifest records
    no export folder (:func:`~rap_deploy.engines.rebuild_commands.where_the_export_is`)."""
    from rap_deploy.engines.rebuild_commands import where_the_export_is

    return f"`{rebuild_engine_command(engine_dir, manifest)}`{where_the_export_is(manifest)}"


def rebuild_engine_command(engine_dir: Path, manifest: Mapping[str, Any]) -> str:
    """``rapdeploy build-engine EXPORT [options] --force --out ENGINE``, shell-quoted: the build of ``engine_dir``
    again from the export folder its manifest records
    (:data:`~rap_deploy.engines.rebuild_commands.EXPORT_PLACEHOLDER` when none), as the backend, precision and device it
    records (:func:`~rap_deploy.engines.rebuild_commands.build_engine_flags`)."""
    import shlex

    from rap_deploy.engines.rebuild_commands import build_engine_flags, export_word

    options = shlex.join([*build_engine_flags(manifest), "--force", "--out", str(engine_dir)])
    return f"rapdeploy build-engine {export_word(manifest)} {options}"


def _check_provider(precision: Any, provider: Any, source: Path) -> None:
    """Refuse a precision on a provider build-engine never builds it for (fp16: CUDA only, int8: CPU only): ONNX
    Runtime 1.32's CPU provider crashes the process (segfault) creating a session for an fp16 video encoder."""
    needed = PRECISION_PROVIDER.get(str(precision))
    if needed is not None and provider != needed:
        raise CheckFailedError(f"{source} says precision {precision} on {provider}, but build-engine writes "
                               f"{precision} ONNX Runtime engines for {needed} only; the manifest was edited, rebuild "
                               "the engine with `rapdeploy build-engine`")


def _sha(record: Any) -> Any:
    """The ``sha256`` of a ``checkpoint`` record (``None`` when there is none)."""
    return record.get("sha256") if isinstance(record, Mapping) else None
