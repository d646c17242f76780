"""Export metadata: the ``metadata_props`` every ONNX file carries, and the folder's ``manifest.json``.

``manifest.json`` (format ``rapdeploy.export``, version 1) is written last and only when every check passed, so its
presence marks a complete, checked export; :func:`read_export_manifest` is how later stages open an export folder.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rap_deploy.atomic import sha256_file, write_json_atomic
from rap_deploy.bounds import check_format_version, read_manifest_text
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.safe_paths import absent

MANIFEST = "manifest.json"
PARITY = "parity.json"
FORMAT = "rapdeploy.export"
FORMAT_VERSION = 1
META_PREFIX = "rapdeploy."
# metadata_props keys whose values are JSON (the rest are plain strings).
JSON_KEYS = ("config", "preprocess", "tokenizer", "sampling", "exporter", "dims", "io")


def graph_metadata(*, graph: str, precision: str, config: dict[str, Any], opset: int, exporter: dict[str, Any],
                   checkpoint_sha256: str, dims: dict[str, Any], io: dict[str, Any]) -> dict[str, str]:
    """The ``metadata_props`` of one graph: model config, preprocessing, tokenizer, sampling, opset, exporter, ...

    Keys are ``rapdeploy.<name>``; structured values are JSON strings (see :func:`read_metadata`).
    """
    import torch

    from rap_deploy import __version__
    from rap_deploy.config import RAPConfig

    cfg = RAPConfig.from_dict(config)
    values: dict[str, Any] = {
        "graph": graph,
        "precision": precision,
        "config": cfg.to_dict(),
        "preprocess": cfg.preprocess.to_dict(),
        "tokenizer": cfg.tokenizer.to_dict(),
        "sampling": cfg.sampling.to_dict(),
        "opset": str(opset),
        "exporter": exporter,
        "torch_version": torch.__version__,
        "checkpoint_sha256": checkpoint_sha256,
        "rapdeploy_version": __version__,
        "dims": dims,
        "io": io,
    }
    return {META_PREFIX + k: (json.dumps(v, sort_keys=True) if k in JSON_KEYS else str(v)) for k, v in values.items()}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read the ``rapdeploy.*`` metadata props of an ONNX file (JSON values decoded, prefix stripped).

    Raises :class:`UsageError` when the file does not exist or carries no rapdeploy metadata, and
    :class:`CheckFailedError` when it is not an ONNX graph or its metadata is damaged (a JSON value or the opset).
    """
    from rap_deploy.export.integrity import graph_facts

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"ONNX file {path} {absent(path) if not path.exists() else 'is not a regular file'}")
    props = graph_facts(path, "graph", path)["metadata"]  # CheckFailedError for a file that is not ONNX
    out: dict[str, Any] = {}
    try:
        for key, value in props.items():
            if key.startswith(META_PREFIX):
                name = key[len(META_PREFIX):]
                out[name] = json.loads(value) if name in JSON_KEYS else value
        if "opset" in out:
            out["opset"] = int(out["opset"])
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise CheckFailedError(f"{path}: its rapdeploy metadata is damaged ({type(exc).__name__}: "
                               f"{str(exc)[:120]}); re-export it") from None
    if not out:
        raise UsageError(f"{path} has no rapdeploy metadata; it was not written by `rapdeploy export`")
    return out


def file_record(path: Path, io: dict[str, Any], precision: str, extra: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """The manifest entry of one graph file: name, sha256, size, precision, inputs, outputs (+ external data)."""
    rec: dict[str, Any] = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                           "precision": precision, "inputs": io["inputs"], "outputs": io["outputs"]}
    data = path.with_name(path.name + ".data")
    if data.is_file():
        rec["external_data"] = {"file": data.name, "sha256": sha256_file(data), "bytes": data.stat().st_size}
    rec.update(extra or {})
    return rec


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically into ``out_dir``; returns its path."""
    return write_json_atomic(out_dir / MANIFEST, manifest)


def read_export_manifest(export_dir: str | Path, verify_hashes: bool = True) -> dict[str, Any]:
    """Read and validate ``<export_dir>/manifest.json``; returns the manifest dict.

    Validates the format tag and version and the shape of the graph sections; every file entry must stay inside the
    folder (:func:`rap_deploy.safe_paths.resolve_entry`: relative, no ``..``, no symlink, a regular file). With
    ``verify_hashes``, every listed graph file (fp32 and fp16, with external data) must exist with the recorded
    sha256, and the opset / precision / I/O claims must match the graphs themselves
    (:func:`rap_deploy.export.integrity.check_export_claims`). Adds ``"dir"`` (the folder, absolute).

    Raises :class:`UsageError` (exit 2) when the folder is not an export (no or foreign manifest) and
    :class:`CheckFailedError` (exit 1) when it is damaged or tampered with (bad JSON, a value of the wrong type or
    length, an escaping entry, a missing or changed graph, a false claim), naming the folder or file and the fix
    (re-run ``rapdeploy export --force``).
    """
    export_dir = Path(export_dir)
    path = _manifest_path(export_dir)
    manifest = _load_manifest(path)
    _check_sections(export_dir, path, manifest)
    _check_types(export_dir, path, manifest)
    _check_listed_files(export_dir, path, manifest, verify_hashes)
    if verify_hashes:
        from rap_deploy.export.integrity import check_export_claims

        check_export_claims(export_dir, manifest, path)
    manifest["dir"] = str(export_dir.resolve())
    return manifest


def reexport_command(export_dir: Path, manifest: Any = None) -> str:
    """The command that writes ``export_dir`` again: ``rapdeploy export CKPT --force --out DIR``, where CKPT is the
    source checkpoint ``manifest`` records when that file is here with its recorded sha256
    (:func:`~rap_deploy.checkpoint.recorded_checkpoint`: the manifest is untrusted), else the placeholder ``CKPT``
    (``export`` takes the checkpoint as a required argument: without one the command would fail)."""
    return export_command(shlex.quote(str(export_dir)), manifest)


def export_command(out_word: str, manifest: Any = None) -> str:
    """:func:`reexport_command` into ``out_word``, a folder already shell-quoted or a placeholder that a message
    explains (:data:`rap_deploy.engines.rebuild_commands.EXPORT_PLACEHOLDER`)."""
    from rap_deploy.checkpoint import recorded_checkpoint

    record = manifest.get("checkpoint") if isinstance(manifest, dict) else None
    source = recorded_checkpoint(record.get("path"), record.get("sha256") or None) \
        if isinstance(record, dict) else None
    checkpoint = shlex.quote(str(source)) if source else "CKPT"
    return f"rapdeploy export {checkpoint} --force --out {out_word}"


def _manifest_path(export_dir: Path) -> Path:
    """``<export_dir>/manifest.json``, a regular file inside the folder; raises :class:`UsageError` for a file
    passed as the folder or a folder without a manifest, :class:`CheckFailedError` for a symlinked or special one."""
    from rap_deploy.safe_paths import resolve_entry

    path = export_dir / MANIFEST
    if export_dir.exists() and not export_dir.is_dir():
        raise UsageError(f"{export_dir} is a file, not an export folder; pass the folder `rapdeploy export` wrote")
    if not export_dir.exists():
        raise UsageError(f"export folder {export_dir} {absent(export_dir)}; pass the folder `rapdeploy export` "
                         f"wrote, or write it with `rapdeploy export CKPT --out {export_dir}`")
    if not path.is_file() and not path.is_symlink():
        if _holds_other_files(export_dir):  # export would refuse to write into it: its --out is no fix
            raise UsageError(f"{export_dir} is not an export folder (no {MANIFEST}, no .onnx graph); pass the folder "
                             "`rapdeploy export` wrote (the workspace's onnx/ unless given --out), or omit it for "
                             "the workspace's latest export")
        hint = " (the export did not complete or its checks failed; see parity.json)" \
            if (export_dir / PARITY).is_file() else ""
        raise UsageError(f"{export_dir} has no {MANIFEST}{hint}; run `rapdeploy export CKPT --out {export_dir}`")
    resolve_entry(export_dir, MANIFEST, "export manifest", export_dir)  # no symlinked or special manifest (exit 1)
    return path


def _holds_other_files(folder: Path) -> bool:
    """Whether ``folder`` holds entries but neither an ONNX graph nor ``parity.json`` (a dataset or any other folder
    rather than an export that did not complete); only its first 1,000 entries are looked at."""
    import itertools

    entries = list(itertools.islice(folder.iterdir(), 1000))
    return bool(entries) and not any(e.suffix == ".onnx" or e.name == PARITY for e in entries)


def _load_manifest(path: Path) -> dict[str, Any]:
    """The JSON at ``path`` when it is an export manifest of a format this version reads; raises
    :class:`CheckFailedError` for unreadable JSON or a non-integer version, :class:`UsageError` for a foreign file or
    a newer format."""
    try:
        manifest = json.loads(read_manifest_text(path, "export manifest"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckFailedError(f"cannot read {path}: {exc}; the export is damaged, re-run "
                               f"`{reexport_command(path.parent)}`") from None
    if isinstance(manifest, dict) and manifest.get("format") == "rapdeploy.engine":  # the likely mix-up
        source = manifest.get("export_dir")
        named = f": {source}" if isinstance(source, str) and (Path(source) / MANIFEST).is_file() else ""
        raise UsageError(f"{path.parent} is an engine folder (`rapdeploy build-engine` wrote it), not an export "
                         f"folder; pass the export folder it was built from{named}")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f"{path} is not a rapdeploy export manifest (no '{FORMAT}' format tag)")
    check_format_version(manifest, path, "export", FORMAT_VERSION, "the manifest was edited",
                         lambda: f"`{reexport_command(path.parent, manifest)}`")
    return manifest


def _check_listed_files(export_dir: Path, path: Path, manifest: dict[str, Any], verify_hashes: bool) -> None:
    """Every graph file the manifest lists (and its external data) stays inside ``export_dir``; with
    ``verify_hashes`` it also exists with the recorded size and sha256. Raises :class:`CheckFailedError` naming the
    file."""
    from rap_deploy.export.integrity import check_recorded_size
    from rap_deploy.safe_paths import resolve_entry

    def rerun() -> str:  # only on failure: it hashes the source checkpoint
        return reexport_command(export_dir, manifest)

    for section, name, rec in _records(manifest):
        entries = [(rec, graph_label(section, name))]
        if "external_data" in rec:
            entries.append((rec["external_data"], f"the external data of {graph_label(section, name)}"))
        for entry, label in entries:
            fname, digest = entry["file"], entry["sha256"]
            fpath = resolve_entry(export_dir, fname, label, path)
            if not verify_hashes:
                continue
            if not fpath.is_file():
                raise CheckFailedError(f"export file {fpath} is missing: {path} lists it as {label}; write the "
                                       f"export again with `{rerun()}`")
            check_recorded_size(fpath, entry.get("bytes"), path, rerun)
            if sha256_file(fpath) != digest:
                raise CheckFailedError(f"{fpath} changed since export (sha256 differs from {path.name}); re-run "
                                       f"`{rerun()}`")


def graph_label(section: str, name: str) -> str:
    """How messages name the graph ``name`` of the export manifest's ``section`` (``graphs`` or ``fp16_graphs``):
    "the 'asa_head' graph", "the 'asa_head' fp16 graph"."""
    return f"the '{name}' fp16 graph" if section == "fp16_graphs" else f"the '{name}' graph"


def _records(manifest: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(section, name, rec) for section in ("graphs", "fp16_graphs")
            for name, rec in (manifest.get(section) or {}).items()]


def _check_types(export_dir: Path, path: Path, manifest: dict[str, Any]) -> None:
    """The keys later stages read as numbers and objects are numbers and objects: ``config`` and ``checkpoint``
    objects (the latter's ``path`` and ``sha256`` text, as
    :func:`rap_deploy.engines.manifest.checkpoint_record_problem` checks an engine's), ``dims`` positive integers
    (``grid`` two of them; ``asa_token_width`` 0 without an ASA head). Raises :class:`CheckFailedError` naming the
    key."""
    from rap_deploy.bounds import MAX_VIDEOS
    from rap_deploy.engines.manifest import checkpoint_record_problem  # here: rap_deploy.engines imports numpy

    def damaged(what: str) -> CheckFailedError:
        return CheckFailedError(f"{path}: {what}; the manifest was edited, re-run "
                                f"`{reexport_command(export_dir, manifest)}`")

    if not isinstance(manifest.get("config"), dict):
        raise damaged("'config' is not an object")
    if manifest.get("checkpoint") is not None and not isinstance(manifest["checkpoint"], dict):
        raise damaged("'checkpoint' is not an object")
    problem = checkpoint_record_problem(manifest.get("checkpoint") or {})
    if problem:  # triton-repo publishes the record, verify compares its sha256: both take them for text
        raise damaged(problem)
    dims = manifest.get("dims")
    if not isinstance(dims, dict):
        raise damaged("'dims' is not an object")
    for key, value in dims.items():
        values = value if key == "grid" and isinstance(value, list) and len(value) == 2 else [value]
        low = 0 if key == "asa_token_width" else 1  # 0: no ASA head (rap_light, --no-asa)
        if not all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= MAX_VIDEOS for v in values):
            raise damaged(f"dims.{key} {value!r} is not a {'non-negative' if low == 0 else 'positive'} integer")


def _check_sections(export_dir: Path, path: Path, manifest: dict[str, Any]) -> None:
    """The graph sections must map names to ``{file, sha256[, external_data]}``; CheckFailedError otherwise."""
    if not isinstance(manifest.get("graphs"), dict) or not manifest["graphs"]:
        raise CheckFailedError(f"{path} lists no graphs; the export is damaged, re-run "
                               f"`{reexport_command(export_dir, manifest)}`")
    if manifest.get("fp16_graphs") is not None and not isinstance(manifest["fp16_graphs"], dict):
        raise CheckFailedError(f"{path}: 'fp16_graphs' is not an object; the manifest was edited, re-export")
    from rap_deploy.graphs import GRAPH_NAMES

    for section in ("graphs", "fp16_graphs"):
        for name, rec in (manifest.get(section) or {}).items():
            if name not in GRAPH_NAMES:  # names become file names when engines are built
                raise CheckFailedError(f"{path}: {section} lists graph {name!r}; rapdeploy exports only "
                                       f"{', '.join(GRAPH_NAMES)}: the manifest was edited, re-export")
            recs = [rec] + ([rec["external_data"]] if isinstance(rec, dict) and "external_data" in rec else [])
            for r in recs:
                if not isinstance(r, dict) or not isinstance(r.get("file"), str) or not isinstance(r.get("sha256"),
                                                                                                    str):
                    raise CheckFailedError(f"{path}: {section} '{name}' needs a 'file' and a 'sha256' string; the "
                                           f"manifest was edited, re-run `{reexport_command(export_dir, manifest)}`")
