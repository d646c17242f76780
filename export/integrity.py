"""Claims of a manifest checked against the ONNX graphs themselves: opset, precision, graph name, external data.

A manifest is text anyone can edit, and its sha256 entries only prove that the files are the ones it lists. So what
later stages rely on is read back from the graph: the default-domain ``opset_import`` for the opset, the
``rapdeploy.*`` metadata for graph name, precision and opset, float16 tensors for fp16 graphs, and every external-data
``location`` (which must be a file the manifest lists, inside the folder). The settings a model config defines once
(preprocessing, tokenizer, frame sampling) are stored as copies beside it for outside tools; every copy must equal
what the config derives (:func:`derived_settings`). A file that does not parse as ONNX is
reported as damaged, not passed to ONNX Runtime. :func:`graph_facts` is shared with the engine checks
(:mod:`rap_deploy.engines.integrity`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rap_deploy.errors import CheckFailedError
from rap_deploy.safe_paths import resolve_entry

FLOAT16 = 10  # onnx.TensorProto.FLOAT16
NCHWC_DOMAIN = "com.microsoft.nchwc"  # ONNX Runtime's blocked-layout CPU kernels (filter blocks of the saving CPU)
QUANTIZED_OPS = frozenset({"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "ConvInteger",
                           "QLinearMatMul", "QLinearConv", "QGemm", "QAttention", "DynamicQuantizeLinear",
                           "QuantizeLinear", "DequantizeLinear"})


def graph_facts(path: Path, what: str, source: Path | str) -> dict[str, Any]:
    """What the ONNX file at ``path`` really holds: ``opsets`` (domain → version), ``ops`` (op type counts),
    ``fp16_tensors``, ``quantized_ops``, ``nchwc_ops`` (nodes in ONNX Runtime's CPU-specific blocked layout, whose
    weights are laid out for the CPU that saved them), ``external`` (external-data locations), ``metadata`` and
    ``io`` (its inputs and outputs as :func:`rap_deploy.export.checks.io_record` lists them).

    The graph is parsed without its external data. Raises :class:`CheckFailedError` (exit 1) naming ``source`` and
    ``what`` when the file does not parse as an ONNX model or holds no graph.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, RuntimeWarning-as-error, ValueError: all mean "not ONNX"
        raise CheckFailedError(f"{source}: {what} {path} is not a valid ONNX graph ({type(exc).__name__}: "
                               f"{str(exc)[:120]}); the file is damaged or was replaced, rebuild it") from None
    graph = model.graph
    if not len(graph.node) or not len(model.opset_import):
        raise CheckFailedError(f"{source}: {what} {path} holds no ONNX graph (no nodes or no opset); the file is "
                               "damaged or was replaced, rebuild it")
    ops = Counter(n.op_type for n in graph.node)
    nchwc = sum(1 for n in graph.node if n.domain == NCHWC_DOMAIN)
    fp16 = sum(1 for t in graph.initializer if t.data_type == FLOAT16)
    fp16 += sum(1 for n in graph.node if n.op_type == "Constant"
                for a in n.attribute if a.name == "value" and a.t.data_type == FLOAT16)
    external = sorted({e.value for t in graph.initializer for e in t.external_data if e.key == "location"})
    from rap_deploy.export.checks import io_record

    return {"opsets": {(i.domain or "ai.onnx"): int(i.version) for i in model.opset_import}, "ops": ops,
            "fp16_tensors": fp16, "quantized_ops": sum(c for op, c in ops.items() if op in QUANTIZED_OPS),
            "nchwc_ops": nchwc,
            "external": external, "metadata": {p.key: p.value for p in model.metadata_props},
            "io": io_record(model)}


def check_recorded_size(path: Path, recorded: Any, source: Path | str, rebuild: str | Callable[[], str]) -> None:
    """A listed file must have the size its manifest records (``bytes``; not judged when absent), checked before its
    sha256 is computed. Raises :class:`CheckFailedError` (exit 1) naming the file, both sizes and ``rebuild`` (the
    command to run; a callable is called only then)."""
    if recorded is None:
        return
    command = rebuild if callable(rebuild) else lambda: rebuild
    if isinstance(recorded, bool) or not isinstance(recorded, int) or recorded < 0:
        raise CheckFailedError(f"{source}: the size it records for {path.name} ({recorded!r:.40}) is not a byte "
                               f"count; the manifest was edited, run `{command()}`")
    size = path.stat().st_size
    if size != recorded:
        raise CheckFailedError(f"{path} has {size:,} bytes, {Path(source).name} records {recorded:,}: it was "
                               f"truncated or replaced (or the manifest edited); run `{command()}`")


def check_external_data(folder: Path, facts: Mapping[str, Any], listed: set[str], what: str, source: Path | str
                        ) -> None:
    """Every external-data location of a graph must be a regular file inside ``folder`` that the manifest lists.

    Raises :class:`~rap_deploy.safe_paths.UnsafePathError` or :class:`CheckFailedError` (exit 1).
    """
    for location in facts["external"]:
        resolve_entry(folder, location, f"{what} external data", source)
        if location not in listed:
            raise CheckFailedError(f"{source}: {what} loads external data {location!r}, which the manifest does not "
                                   "list (its content is unchecked); refusing it, rebuild the folder")


def listed_graph_facts(folder: Path, file: str, listed: set[str], what: str, source: Path | str
                       ) -> tuple[Path, dict[str, Any]]:
    """A manifest's graph entry ``file``: its path inside ``folder`` (:func:`resolve_entry`) and its
    :func:`graph_facts`, its external data checked against the manifest's ``listed`` files
    (:func:`check_external_data`). Raises :class:`CheckFailedError` (exit 1)."""
    path = resolve_entry(folder, file, what, source)
    facts = graph_facts(path, what, source)
    check_external_data(folder, facts, listed, what, source)
    return path, facts


def metadata_mismatches(meta: Mapping[str, str], claims: Mapping[str, Any], against: str | None = None) -> list[str]:
    """The keys of ``claims`` (``config``, ``dims``) whose manifest value differs from the graph's own
    ``rapdeploy.<key>`` metadata (a JSON string), as messages; a graph without that metadata is not judged.
    ``against`` names where the claims come from in the message (default: the manifest's key)."""
    import json

    problems = []
    for key, claimed in claims.items():
        text = meta.get(f"rapdeploy.{key}")
        if text is None:
            continue
        try:
            actual = json.loads(text)
        except ValueError:
            problems.append(f"its metadata rapdeploy.{key} is not JSON")
            continue
        if actual != claimed:
            where = against or f"the manifest's '{key}'"
            problems.append(f"its metadata rapdeploy.{key} differs from {where}{_differing_keys(actual, claimed)}")
    return problems


def _differing_keys(have: Any, want: Any) -> str:
    """`` (in a, b)``: the keys whose values differ, when ``have`` and ``want`` are both objects and some do;
    else ``""``."""
    if not (isinstance(have, dict) and isinstance(want, dict)):
        return ""
    differ = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    return f" (in {', '.join(differ)})" if differ else ""


def derived_settings(config: Any, source: Path | str) -> dict[str, Any]:
    """The settings a model config defines once and every artifact stores a copy of: ``preprocess``, ``tokenizer``
    and ``sampling`` (manifests and graph metadata), ``variant`` and ``has_asa`` (manifests), as their JSON values
    (:class:`~rap_deploy.config.RAPConfig`'s fields and derived properties).

    Raises :class:`CheckFailedError` (exit 1) naming ``source`` when ``config`` is not a valid model config.
    """
    import json

    from rap_deploy.config import RAPConfig
    from rap_deploy.errors import UsageError

    try:
        if not isinstance(config, dict):
            raise UsageError(f"'config' is {type(config).__name__}, not an object")
        cfg = RAPConfig.from_dict(config)
    except (UsageError, TypeError, ValueError) as exc:
        raise CheckFailedError(f"{source} has an invalid model config ({exc}); the folder is damaged or was edited, "
                               "rebuild it") from None
    values = {"preprocess": cfg.preprocess.to_dict(), "tokenizer": cfg.tokenizer.to_dict(),
              "sampling": cfg.sampling.to_dict(), "variant": cfg.variant, "has_asa": cfg.has_asa}
    return json.loads(json.dumps(values))  # as a manifest or metadata prop holds them (lists, not tuples)


def derived_copy_mismatches(manifest: Mapping[str, Any], derived: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The manifest's own copies of the derived settings (top-level ``preprocess``, ``tokenizer``, ``sampling``,
    ``variant``, ``has_asa``) that differ from what its ``config`` derives, as messages (keys named ``prefix`` +
    key); a manifest without a copy is not judged."""
    problems = []
    for key, want in derived.items():
        have = manifest.get(key, want)
        if have != want or type(have) is not type(want):  # JSON's 1 is not true
            problems.append(f"its '{prefix}{key}' differs from what its 'config' derives{_differing_keys(have, want)}")
    return problems


def io_mismatches(record: Mapping[str, Any], facts: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The graph's inputs and outputs (``facts["io"]``) that differ from a manifest's ``record`` of them (its
    ``inputs`` / ``outputs``, named ``prefix`` + key in the message), as messages."""
    return [f"its {key} (names, dtypes, shapes) differ from the manifest's '{prefix}{key}'"
            for key in ("inputs", "outputs") if record.get(key) != facts["io"][key]]


def graph_copy_problems(facts: Mapping[str, Any], checkpoint: Any) -> list[str]:
    """What a graph's metadata copies say against the graph itself and its manifest: ``rapdeploy.io`` against the
    graph's declared inputs and outputs, ``rapdeploy.checkpoint_sha256`` against the manifest's ``checkpoint``
    (``{"sha256": ...}``; not judged when the manifest records none); as messages."""
    meta = facts["metadata"]
    problems = metadata_mismatches(meta, {"io": facts["io"]}, "the graph's own inputs and outputs")
    want = checkpoint.get("sha256") if isinstance(checkpoint, Mapping) else None
    have = meta.get("rapdeploy.checkpoint_sha256")
    if isinstance(want, str) and have is not None and have != want:
        problems.append(f"its metadata rapdeploy.checkpoint_sha256 is {have[:16]!r}…, the manifest's 'checkpoint' "
                        f"records {want[:16]!r}…")
    return problems


def contract_problem(name: str, io: Any, has_asa: bool) -> str | None:
    """How graph ``name``'s inputs and outputs (``io``: ``{"inputs": [{name, ...}], "outputs": [...]}``, as
    :func:`~rap_deploy.export.checks.io_record` lists them) differ by name or order from those this rapdeploy feeds
    and reads (:func:`rap_deploy.graphs.graph_io`), as a message; ``None`` when they are the same (or ``io`` is not
    such a record: other checks judge that)."""
    from rap_deploy.graphs import GRAPH_IO, graph_io

    if not isinstance(io, Mapping) or name not in GRAPH_IO:
        return None
    have = []
    for key in ("inputs", "outputs"):
        tensors = io.get(key)
        if not isinstance(tensors, list) or not all(isinstance(t, Mapping) for t in tensors):
            return None
        have.append(tuple(str(t.get("name"))[:40] for t in tensors))
    want_in, want_out = graph_io(name, has_asa)
    problems = []
    if have[0] != want_in:
        problems.append(f"takes {', '.join(have[0]) or 'nothing'} where this rapdeploy feeds {', '.join(want_in)}")
    if have[1] != want_out:
        problems.append(f"gives {', '.join(have[1]) or 'nothing'} where this rapdeploy reads {', '.join(want_out)}")
    return " and ".join(problems) or None


def check_export_claims(export_dir: Path, manifest: Mapping[str, Any], source: Path) -> None:
    """Check the export manifest's opset, precision and I/O claims (each graph's ``inputs`` / ``outputs``: the
    TensorRT profile is made from them) against every graph file it lists, and every copy of the settings its
    ``config`` defines (``preprocess``, ``tokenizer``, ``sampling``: the manifest's and each graph's metadata) against
    what that config derives (:func:`derived_settings`).

    Raises :class:`CheckFailedError` (exit 1) naming the manifest, the graph and the claim that does not hold.
    """
    from rap_deploy.export.export_config import SUPPORTED_OPSETS

    check_parity_passed(export_dir, manifest, source)
    opset = manifest.get("opset")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise CheckFailedError(f"{source} claims opset {opset!r}, which rapdeploy never exports (supported: "
                               f"{', '.join(map(str, SUPPORTED_OPSETS))}); the manifest was edited, re-export it")
    derived = derived_settings(manifest.get("config"), source)
    copies = derived_copy_mismatches(manifest, derived) + _graph_set_problems(manifest, derived["has_asa"])
    if copies:
        raise CheckFailedError(f"{source}: {'; '.join(copies)}; the manifest was edited, re-export it")
    listed = {rec["file"] for section in ("graphs", "fp16_graphs") for rec in (manifest.get(section) or {}).values()}
    listed |= {rec["external_data"]["file"] for section in ("graphs", "fp16_graphs")
               for rec in (manifest.get(section) or {}).values() if "external_data" in rec}
    for section, precision in (("graphs", "fp32"), ("fp16_graphs", "fp16")):
        for name, rec in (manifest.get(section) or {}).items():
            what = f"{section} '{name}'"
            path, facts = listed_graph_facts(export_dir, rec["file"], listed, what, source)
            problems = _graph_claim_problems(manifest, name, rec, precision, facts)
            problems += metadata_mismatches(facts["metadata"], derived, "what the manifest's 'config' derives")
            if problems:
                raise CheckFailedError(f"{source}: {what} ({path.name}) does not match its manifest: "
                                       + "; ".join(problems) + "; the manifest or the graph was edited, re-export it")
            # after: a graph that disagrees with its own manifest was edited (exit 1), not written by another version
            _check_contract(export_dir, manifest, source, name, path, facts, derived["has_asa"])


def check_parity_passed(export_dir: Path, manifest: Mapping[str, Any], source: Path) -> None:
    """Require the export's parity record to say its checks passed: the manifest's ``parity`` entry and the
    ``parity.json`` beside it (``rapdeploy export`` writes the manifest only after every check passed, so a manifest
    that says otherwise, or lacks the report, was edited or assembled by hand).

    Raises :class:`CheckFailedError` (exit 1) naming the file and what it lacks, with the re-export fix.
    """
    import json

    from rap_deploy.bounds import read_manifest_text
    from rap_deploy.export.manifest import PARITY, reexport_command

    def refused(what: str) -> CheckFailedError:
        return CheckFailedError(f"{what}; an export whose parity check did not pass cannot be built or verified: "
                                f"re-export it with `{reexport_command(export_dir, dict(manifest))}`")

    record = manifest.get("parity")
    if not isinstance(record, Mapping) or record.get("passed") is not True or record.get("file") != PARITY:
        raise refused(f"{source}: its 'parity' entry is {str(record)[:200]!r}, not a passed record of {PARITY}")
    path = resolve_entry(export_dir, PARITY, "export parity report", source)
    if not path.is_file():
        raise refused(f"{path} is missing")
    try:
        report = json.loads(read_manifest_text(path, "export parity report"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise refused(f"cannot read {path} ({str(exc)[:200]})") from None
    if not isinstance(report, dict) or report.get("passed") is not True:
        raise refused(f"{path} does not say the export's checks passed")


def _check_contract(export_dir: Path, manifest: Mapping[str, Any], source: Path, name: str, path: Path,
                    facts: Mapping[str, Any], has_asa: bool) -> None:
    """Refuse (:class:`UsageError`, exit 2) an export whose graph ``name`` has other inputs or outputs than this
    rapdeploy runs: written by another version of it (before ``asa_tokens``, say), it would fail mid-command."""
    problem = contract_problem(name, facts["io"], has_asa)
    if problem:
        from rap_deploy.errors import UsageError
        from rap_deploy.export.manifest import reexport_command

        raise UsageError(f"{source}: graph '{name}' ({path.name}) {problem}: the export was written by another "
                         f"version of rapdeploy; re-export it with this one: "
                         f"`{reexport_command(export_dir, dict(manifest))}`")


def _graph_set_problems(manifest: Mapping[str, Any], has_asa: bool) -> list[str]:
    """The graphs ``graphs`` (and a non-empty ``fp16_graphs``) must list: exactly those the model exports
    (:func:`rap_deploy.graphs.graphs_for`); as messages."""
    from rap_deploy.graphs import graphs_for

    want = set(graphs_for(has_asa))
    problems = []
    for section in ("graphs", "fp16_graphs"):
        have = set(manifest.get(section) or {})
        if (have or section == "graphs") and have != want:
            problems.append(f"its '{section}' lists {sorted(have)}, its config's model exports {sorted(want)}")
    return problems


def _graph_claim_problems(manifest: Mapping[str, Any], name: str, rec: Mapping[str, Any], precision: str,
                          facts: Mapping[str, Any]) -> list[str]:
    """What graph ``name``'s file (``facts``) says against the manifest: opset, graph name, precision, config, dims,
    inputs and outputs; as messages."""
    opset = manifest["opset"]
    actual = facts["opsets"].get("ai.onnx")
    problems = []
    if actual != opset:
        problems.append(f"its opset_import says opset {actual}, the manifest claims {opset}")
    meta = facts["metadata"]
    for key, want in (("rapdeploy.graph", name), ("rapdeploy.precision", precision),
                      ("rapdeploy.opset", str(opset))):
        if key in meta and meta[key] != want:
            problems.append(f"its metadata {key} is {meta[key]!r}, the manifest implies {want!r}")
    problems += metadata_mismatches(meta, {"config": manifest.get("config"), "dims": manifest.get("dims")})
    problems += graph_copy_problems(facts, manifest.get("checkpoint"))
    problems += io_mismatches(rec, facts)
    if precision == "fp32" and facts["fp16_tensors"]:
        problems.append(f"it holds {facts['fp16_tensors']} float16 tensors but is listed as fp32")
    if precision == "fp16" and not facts["fp16_tensors"]:
        problems.append("it holds no float16 tensor but is listed as fp16")
    return problems
