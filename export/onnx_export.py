"""Export mechanics: trace each graph wrapper to ONNX, tidy it, stamp metadata, save atomically, check, compare.

:func:`export_checkpoint` is the library function behind ``rapdeploy export``. What is exported (opset, exporter,
I/O contract, tolerances, fp16 rules) is decided in :mod:`rap_deploy.export.export_config`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rap_deploy.atomic import atomic_path, file_identity, save_with, sha256_file, write_json_atomic
from rap_deploy.bounds import manifest_format
from rap_deploy.crashpoints import crash_point
from rap_deploy.data import DEFAULT_DATASET
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.export.export_config import ExportConfig, GraphSpec, ModelDims, graph_specs
from rap_deploy.export.export_report import (
    PARITY_FILE,
    export_manifest,
    export_problems,
    parity_report,
)
from rap_deploy.export.manifest import FORMAT as EXPORT_FORMAT
from rap_deploy.graphs import INDEX_DTYPES, rerank_tensors


# ---------------------------------------------------------------------------------------------------- tracing
@contextlib.contextmanager
def export_mode() -> Iterator[None]:
    """Switch off ``nn.MultiheadAttention``'s inference fast path (no ONNX symbolic) and exporter warnings."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript deprecation notice, TracerWarnings on shape arithmetic
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


@torch.no_grad()
def example_inputs(model, dims: ModelDims, batch: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """Example arguments per graph, batch ``batch`` (>= 2) so the batch axes stay symbolic when traced.

    The ASA head gets real encoder outputs for ``batch`` queries and ``batch + 1`` videos (distinct sizes, so the
    tracer cannot tie the two axes together), in the index's dtypes. One video of each batch is padded.
    """
    gen = torch.Generator().manual_seed(0)
    t, s, length = dims.frames, dims.image_size, dims.context_length
    frames = torch.randn(batch + 1, t, 3, s, s, generator=gen)
    mask = torch.ones(batch + 1, t)
    ids = torch.randint(1, 40000, (batch, length), generator=gen, dtype=torch.int32)
    eot = torch.randint(1, length, (batch,), generator=gen, dtype=torch.int32)
    mask[batch - 1, t // 2 + 1:] = 0.0  # one padded video in every example batch, as real libraries have
    args = {"video_encoder": (frames[:batch], mask[:batch]), "text_encoder": (ids, eot)}
    if model.asa is not None:
        rerank = model.encode_video(frames, mask)[1:]
        stored = tuple(x.to(getattr(torch, INDEX_DTYPES[n])) for n, x in zip(rerank_tensors(True), rerank,
                                                                               strict=True))
        args["asa_head"] = (model.encode_text(ids, eot), *stored)
    return args


def trace_graph(module: torch.nn.Module, spec: GraphSpec, args: tuple[torch.Tensor, ...], cfg: ExportConfig):
    """Export ``module`` with ``torch.onnx.export`` (``dynamo=cfg.dynamo``) and return the tidied ``ModelProto``.

    Tidying: onnxscript's optimizer (constant folding, dead code) for the TorchScript exporter, then the I/O shapes
    rewritten to the contract (``spec``) and the intermediate shapes re-inferred from them.
    """
    import onnx

    with tempfile.TemporaryDirectory(prefix="rapdeploy-export-") as tmp, export_mode():
        path = Path(tmp) / f"{spec.name}.onnx"
        names = {"input_names": [t.name for t in spec.inputs], "output_names": [t.name for t in spec.outputs]}
        if cfg.dynamo:
            dyn = {t.name: spec.dynamic_axes[t.name] for t in spec.inputs}
            torch.onnx.export(module, args, str(path), opset_version=cfg.opset, dynamo=True, dynamic_axes=dyn,
                              verbose=False, **names)
        else:
            torch.onnx.export(module, args, str(path), opset_version=cfg.opset, dynamo=False,
                              dynamic_axes=spec.dynamic_axes, do_constant_folding=True, **names)
        model = onnx.load(str(path))
    if cfg.optimize and not cfg.dynamo:  # the dynamo exporter runs the same optimizer itself
        import onnxscript.optimizer

        model = onnxscript.optimizer.optimize(model, num_iterations=1)  # a second pass changed nothing here
    set_io_shapes(model, spec)
    del model.graph.value_info[:]
    if model.ByteSize() < cfg.external_data_threshold:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, data_prop=True)
    return model


def set_io_shapes(model, spec: GraphSpec) -> None:
    """Overwrite the declared shapes of the graph inputs/outputs with the contract's (symbolic names, static ints).

    Traced graphs declare static dims as auto-named symbols (``Divvideo_emb_dim_1``); the contract fixes them.
    Names and dtypes are left alone (the checks compare them with the contract).
    """
    by_name = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    for vi in (*model.graph.input, *model.graph.output):
        t = by_name.get(vi.name)
        if t is None:
            continue
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for d in t.shape:
            dim = shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d


def save_onnx(model, path: Path, external_data_threshold: int) -> Path:
    """Write ``model`` to ``path`` atomically; graphs over the threshold keep their weights in ``<path>.data``.

    ``model`` is left as it was: onnx.save moves the weights of an external-data save out of the proto, so they are
    read back into it (the fp16 conversion works on the same proto afterwards).
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    if model.ByteSize() < external_data_threshold:
        return save_with(path, lambda tmp: onnx.save(model, str(tmp)))
    data_name = path.name + ".data"
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        onnx.save(model, str(scratch / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data_name, size_threshold=1024)
        load_external_data_for_model(model, str(scratch))
        with atomic_path(path.with_name(data_name)) as tmp_data:
            os.replace(scratch / data_name, tmp_data)
        with atomic_path(path) as tmp_graph:
            os.replace(scratch / path.name, tmp_graph)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


# ---------------------------------------------------------------------------------------------------- folder
EXPORT_FILE = re.compile(r"(manifest\.json|parity\.json|[\w.-]+\.onnx(\.data)?)$")


def prepare_out_dir(out_dir: Path, force: bool) -> bool:
    """Check that ``out_dir`` may receive an export; returns True when it holds one that ``--force`` replaces.

    Nothing is deleted here: the new export is written beside the old one and swapped in only after it passed
    (:func:`export_checkpoint`). Raises :class:`UsageError` for a file, a non-empty folder without ``force``, and,
    with ``force``, a folder that holds anything but export files (the swap replaces the whole folder).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; pass a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return False
    if not force:
        raise UsageError(f"output folder {out_dir} already exists and is not empty; pass --force to overwrite "
                         "it or choose another --out")
    foreign = sorted(p.name for p in out_dir.iterdir() if not p.is_file() or not EXPORT_FILE.match(p.name))
    if foreign:
        raise UsageError(f"--out {out_dir} is not an export folder (it also holds {', '.join(foreign[:3])}"
                         f"{' …' if len(foreign) > 3 else ''}); refusing to replace it, pass another --out")
    other = manifest_format(out_dir / "manifest.json")
    if other is not None and other != EXPORT_FORMAT:  # an engine folder has the same file names
        raise UsageError(f"--out {out_dir} holds a {other} folder, not an export; refusing to replace it, pass "
                         "another --out")
    return True


def _replaced_graph_files(previous: Path | None, written: set[str]) -> list[str]:
    """The graph files of the export ``previous`` (the folder ``--force`` replaces) that the new export does not
    write: the swap removes them with the old folder (an fp16 export replaced by an fp32-only one loses its fp16
    graphs), and the manifest says so."""
    if previous is None or not previous.is_dir():
        return []
    return sorted(p.name for p in previous.iterdir()
                  if p.is_file() and p.name.endswith((".onnx", ".onnx.data")) and p.name not in written)


class _Steps:
    """A rich progress bar over named steps (stderr), or nothing when disabled or not a TTY."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("export", total=total)

    def __enter__(self) -> _Steps:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar:
            self.bar.stop()

    def step(self, text: str) -> None:
        if self.bar:
            self.bar.update(self.task, description=text)

    def done(self) -> None:
        if self.bar:
            self.bar.advance(self.task)


# ---------------------------------------------------------------------------------------------------- main entry
def export_checkpoint(checkpoint: Path, out_dir: Path, opset: int = 17, fp16: bool = False, force: bool = False,
                      data_root: Path | None = None, progress: bool = True, *, dataset: str = DEFAULT_DATASET,
                      config: ExportConfig | None = None) -> dict[str, Any]:
    """Export a RAP checkpoint to ONNX graphs in ``out_dir``, check them, and return the manifest dict.

    Writes ``video_encoder.onnx``, ``text_encoder.onnx``, ``asa_head.onnx`` (not for models without an ASA head),
    with ``fp16`` also ``<graph>.fp16.onnx``, then ``parity.json`` and, when every check passed, ``manifest.json``
    (see :mod:`rap_deploy.export.manifest`). Parity runs on real inputs: the ``dataset`` test split under
    ``data_root``, else rendered synthetic videos. ``config`` overrides ``opset``/``fp16`` and every other setting.

    The export holds the lock of ``out_dir`` (a second writer is told who holds it) and is written into a hidden
    staging folder beside it, swapped into place only after every check passed, so ``--force`` never loses the
    previous export: a failed or killed export leaves it as it was. A failed export's report goes to ``out_dir``
    when that held no export, else to ``.<name>.failed/`` beside it (the error message names it).

    Raises :class:`UsageError` (missing, pickled or foreign checkpoint; unsupported opset; existing ``out_dir``
    without ``force``; a folder being written by another process) and :class:`CheckFailedError` when a structural
    check or fp32 parity fails (after writing ``parity.json``) or the ``data_root`` dataset holds fewer than 3 of its
    test videos (before writing anything).
    """
    from rap_deploy.folder_swap import recover_interrupted_swap, staged_folder
    from rap_deploy.locks import folder_lock, target_path

    cfg = config or ExportConfig(opset=opset, fp16=fp16)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    # The inputs are read before the export folder is locked, which makes its parents: a refused export leaves no
    # folder behind (a wrong --data-root or --dataset also fails now, not after minutes of tracing).
    if data_root is not None:
        from rap_deploy.data.datasets import load_split

        load_split(dataset, data_root, "test")
    loaded = _load_for_export(Path(checkpoint), out_dir, cfg)
    with folder_lock(out_dir, "export", "export folder"):
        # An export a killed two-rename swap left aside is put back before the folder is judged: judged missing, it
        # was replaced without --force (and by a failed export's report) once staged_folder had restored it.
        recover_interrupted_swap(target_path(out_dir))
        replacing = prepare_out_dir(out_dir, force)
        with staged_folder(out_dir) as stage:
            try:
                manifest = _export_into(replace(loaded, out_dir=stage.path), out_dir if replacing else None,
                                        data_root, progress, dataset, started)
            except CheckFailedError as exc:
                if not (stage.path / PARITY_FILE).is_file():
                    raise  # failed before any report: nothing worth keeping
                kept = stage.keep_failed() if replacing else None
                if kept is None:
                    stage.commit()  # nothing to lose: the failed export's report lands where the user looks
                where = kept or out_dir
                note = f"; the previous export in {out_dir} is unchanged" if kept else ""
                raise CheckFailedError(str(exc).replace(str(stage.path), str(where)) + note) from None
            crash_point("export.before-swap")
            stage.commit()
    return manifest


@dataclass
class ExportRun:
    """What the export steps share: the loaded model, its graph contract, and the files and reports written so far."""

    checkpoint: Path
    out_dir: Path
    cfg: ExportConfig
    ckpt_sha: str
    model: Any
    dims: ModelDims
    specs: dict[str, GraphSpec]
    modules: dict[str, torch.nn.Module]
    exporter: dict[str, Any]
    config_dict: dict[str, Any]
    seconds: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)
    fp16_files: dict[str, Path] = field(default_factory=dict)
    fp16_reports: dict[str, Any] = field(default_factory=dict)
    check_reports: dict[str, Any] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)

    def metadata(self, name: str, precision: str) -> dict[str, str]:
        """The ``metadata_props`` of graph ``name`` at ``precision`` (see :func:`manifest.graph_metadata`)."""
        from rap_deploy.export import manifest as mf

        spec = self.specs[name]
        return mf.graph_metadata(graph=name, precision=precision, config=self.config_dict, opset=self.cfg.opset,
                                 exporter=self.exporter, checkpoint_sha256=self.ckpt_sha, dims=self.dims.to_dict(),
                                 io={"inputs": [t.to_dict() for t in spec.inputs],
                                     "outputs": [t.to_dict() for t in spec.outputs]})

    def save(self, proto: Any, filename: str) -> Path:
        """Save ``proto`` as ``out_dir/filename`` (and its ``.data``), remembered as written; returns the path."""
        path = save_onnx(proto, self.out_dir / filename, self.cfg.external_data_threshold)
        self.written |= {path.name, path.name + ".data"}
        return path


@dataclass
class ParityRuns:
    """The parity inputs and the fp32 (and, with fp16, fp16) parity results of :func:`run_parity`."""

    inputs: Any
    fp32: dict[str, Any]
    fp16: dict[str, Any] | None


def _export_into(run: ExportRun, previous: Path | None, data_root: Path | None, progress: bool, dataset: str,
                 started: float) -> dict[str, Any]:
    """The export itself, of the loaded ``run`` into its (staging) folder ``run.out_dir``, replacing the export
    ``previous`` (None: none); ``started`` is when the export began. See :func:`export_checkpoint`."""
    from rap_deploy.export import manifest as mf

    cfg, out_dir = run.cfg, run.out_dir
    n_steps = 2 * len(run.specs) + 2 + (2 * len(run.specs) + 1 if cfg.fp16 else 0)
    with _Steps(progress, n_steps) as steps:
        fp32_models = _export_fp32_graphs(run, steps)
        crash_point("export.graphs-written")
        if cfg.fp16:
            _export_fp16_graphs(run, steps, fp32_models)
        del fp32_models
        parity_runs = _run_parity_steps(run, steps, data_root, dataset)

    stale = _replaced_graph_files(previous, run.written)
    problems = export_problems(run.check_reports, parity_runs.fp32)
    run.seconds["total"] = round(time.perf_counter() - started, 3)
    parity = parity_report(run, parity_runs, problems)
    write_json_atomic(out_dir / PARITY_FILE, parity)
    if problems:
        raise CheckFailedError(f"export checks failed: {'; '.join(problems[:4])}"
                               f"{' …' if len(problems) > 4 else ''}; see {out_dir / PARITY_FILE}")
    manifest = export_manifest(run, parity, parity_runs.fp32, stale)
    mf.write_manifest(out_dir, manifest)
    return manifest


def _load_for_export(checkpoint: Path, out_dir: Path, cfg: ExportConfig) -> ExportRun:
    """Load and build the checkpoint's model and its graph contract; returns the export's shared state, writing to
    ``out_dir`` (:func:`export_checkpoint` points it at the staging folder)."""
    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.export.wrappers import graph_modules

    before = file_identity(checkpoint)  # None when unreadable: load_checkpoint says why
    ckpt = load_checkpoint(checkpoint)  # UsageError for missing / pickled / foreign files
    ckpt_sha = sha256_file(checkpoint)
    if file_identity(checkpoint) != before:  # the hash would not be of the weights loaded
        raise UsageError(f"checkpoint {checkpoint} was replaced or rewritten while export read it (is training still "
                         "writing it?); export again once it is written")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model = ckpt.build_model()
    seconds["build_model"] = round(time.perf_counter() - t0, 3)
    dims = ModelDims.of(model)
    specs = graph_specs(dims, model.asa is not None)
    modules = graph_modules(model)
    return ExportRun(checkpoint=checkpoint, out_dir=out_dir, cfg=cfg, ckpt_sha=ckpt_sha, model=model, dims=dims,
                      specs=specs, modules=modules, exporter=cfg.exporter_record(),
                      config_dict=model.config.to_dict(), seconds=seconds)


def _export_fp32_graphs(run: ExportRun, steps: _Steps) -> dict[str, Any]:
    """Trace, stamp, save and check every fp32 graph; returns the traced protos by name (kept only for fp16)."""
    import onnx

    from rap_deploy.export import checks

    cfg = run.cfg
    args = example_inputs(run.model, run.dims, cfg.example_batch)
    fp32_models = {}
    for name, spec in run.specs.items():
        steps.step(f"exporting {name} ({cfg.exporter}, opset {cfg.opset})")
        t0 = time.perf_counter()
        proto = trace_graph(run.modules[name], spec, args[name], cfg)
        onnx.helper.set_model_props(proto, run.metadata(name, "fp32"))
        run.files[name] = run.save(proto, f"{name}.onnx")
        if cfg.fp16:
            fp32_models[name] = proto
        run.seconds[f"export_{name}"] = round(time.perf_counter() - t0, 3)
        steps.done()
        steps.step(f"checking {name}")
        t0 = time.perf_counter()
        run.check_reports[run.files[name].name] = checks.check_graph(run.files[name], spec, cfg.opset, "fp32")
        run.seconds[f"check_{name}"] = round(time.perf_counter() - t0, 3)
        steps.done()
    return fp32_models


def _export_fp16_graphs(run: ExportRun, steps: _Steps, fp32_models: dict[str, Any]) -> None:
    """Convert every fp32 graph to fp16, stamp, save and check it (files and reports land in ``run``)."""
    import onnx

    from rap_deploy.export import checks
    from rap_deploy.export.fp16 import convert_to_fp16

    cfg = run.cfg
    for name, spec in run.specs.items():
        steps.step(f"converting {name} to fp16")
        t0 = time.perf_counter()
        half, report = convert_to_fp16(fp32_models[name], cfg.fp16_blocked_ops)
        onnx.helper.set_model_props(half, run.metadata(name, "fp16"))
        run.fp16_files[name] = run.save(half, f"{name}.fp16.onnx")
        run.fp16_reports[name] = report
        run.seconds[f"fp16_{name}"] = round(time.perf_counter() - t0, 3)
        steps.done()
        steps.step(f"checking {name} fp16")
        run.check_reports[run.fp16_files[name].name] = checks.check_graph(run.fp16_files[name], spec, cfg.opset,
                                                                          "fp16")
        steps.done()


def _run_parity_steps(run: ExportRun, steps: _Steps, data_root: Path | None, dataset: str) -> ParityRuns:
    """Decode the parity inputs and compare the saved graphs with PyTorch; returns the inputs and both results."""
    from rap_deploy.export.inputs import parity_inputs
    from rap_deploy.export.parity import run_parity, torch_reference

    model, pcfg = run.model, run.cfg.parity
    steps.step("decoding parity inputs")
    t0 = time.perf_counter()
    inputs = parity_inputs(model.config, data_root, dataset, pcfg.pool_videos)
    run.seconds["parity_inputs"] = round(time.perf_counter() - t0, 3)
    steps.done()
    steps.step("parity: ONNX Runtime vs PyTorch")
    t0 = time.perf_counter()
    ref = torch_reference(model, inputs, pcfg)
    fp32 = run_parity(model, run.files, run.specs, inputs, pcfg, "fp32", ref)
    run.seconds["parity"] = round(time.perf_counter() - t0, 3)
    steps.done()
    fp16_parity = None
    if run.cfg.fp16:
        steps.step("parity: fp16 graphs vs PyTorch fp32")
        t0 = time.perf_counter()
        fp16_parity = run_parity(model, run.fp16_files, run.specs, inputs, pcfg, "fp16", ref)
        run.seconds["parity_fp16"] = round(time.perf_counter() - t0, 3)
        steps.done()
    return ParityRuns(inputs=inputs, fp32=fp32, fp16=fp16_parity)


