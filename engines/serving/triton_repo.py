"""``rapdeploy triton-repo``: a Triton Inference Server model repository for the three graphs.

Layout (Triton's)::

    OUT/README.md                      how to start tritonserver on it, query it, and verify it
    OUT/<graph>/config.pbtxt           platform, max_batch_size, inputs/outputs, dynamic_batching, instance_group
    OUT/<graph>/1/model.onnx|model.plan

Platforms: ``tensorrt_plan`` for TensorRT engine folders (``model.plan``: the serialized engine, which only runs on the
TensorRT version and GPU its manifest names), ``onnxruntime_onnx`` for ONNX Runtime engine folders and export folders
(``model.onnx``; external weight files are copied beside it under their own names, which the graph refers to).
Tensor names, ``TYPE_*`` datatypes and dims come from the artifact's manifest
(:mod:`~rap_deploy.engines.serving.contract`); ``max_batch_size`` from the TensorRT profiles (defaults otherwise);
``asa_head`` has two independent dynamic axes (queries, videos), so it has ``max_batch_size 0`` and ``-1`` dims.
Every model carries the ``rapdeploy.*`` parameters the remote engine reads. The repository is written into a
temporary folder and renamed into place, so an interrupted run leaves nothing that looks like a repository.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rap_deploy.engines.serving.contract import (
    BODY_HEADER_RESERVE,
    TRITON_HTTP_INPUT_BYTES,
    EngineSource,
    ServedModel,
    batch_limits,
    graph_specs_of,
    read_source,
    served_models,
)
from rap_deploy.engines.serving.model_config import (
    config_to_pbtxt,
    model_parameters,
    parse_pbtxt,
    triton_model_config,
)
from rap_deploy.errors import CheckFailedError, UsageError

PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
KIND_CHOICES = ("auto", "cpu", "gpu")
DEFAULT_QUEUE_DELAY_US = 2000
MAX_INSTANCES = (1 << 31) - 1  # instance_group.count is an int32 in Triton's ModelConfig
MAX_QUEUE_DELAY_US = (1 << 64) - 1  # dynamic_batching.max_queue_delay_microseconds is a uint64
#: ONNX Runtime optimisation levels whose graphs keep standard operators only, which any execution provider runs
CPU_NEUTRAL_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC")
README_TITLE = b"# Triton model repository (rapdeploy)"  # the first line of a repository's README: ours to replace


def _validated_source(path: Path) -> tuple[EngineSource, tuple[int, int] | None]:
    """Read and hash-check an engine or export folder (no runtime check: Triton's machine runs it); returns it and
    the identity of the folder checked (:func:`~rap_deploy.folder_swap.folder_identity`)."""
    from rap_deploy.engines.manifest import validate_engine_dir
    from rap_deploy.export import read_export_manifest
    from rap_deploy.folder_swap import folder_identity

    identity = folder_identity(path)
    source = read_source(path)
    if source.kind == "checkpoint":
        raise UsageError(f"{path} is a checkpoint; Triton serves ONNX or TensorRT files: run `rapdeploy export "
                         f"{path}` (and `rapdeploy build-engine`) first, then triton-repo on that folder")
    if source.kind == "engine":
        validate_engine_dir(path, runtime=None, check_hashes=True)
        check_profiles_start_at_one(path, source.manifest or {})
    else:
        read_export_manifest(path, verify_hashes=True)
    return source, identity


def check_profiles_start_at_one(path: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse (:class:`UsageError`) the TensorRT engine in ``path`` whose optimisation profile starts an axis above 1
    (``build-engine --min-batch``): Triton runs a batchable model on any batch from 1 to ``max_batch_size`` (a lone
    request, or what its dynamic batcher gathered by the queue delay) and the TensorRT backend refuses a shape below
    the profile's minimum, so every small batch would fail; ``rapdeploy``'s own TensorRT engine pads such batches,
    Triton cannot."""
    for graph, axes in (manifest.get("profiles") or {}).items():
        for axis, bounds in (axes or {}).items():
            low = (bounds or {}).get("min")
            if isinstance(low, int) and low > 1:
                raise UsageError(f"engine {path}: {graph}'s TensorRT profile starts its {axis} axis at {low} "
                                 "(build-engine --min-batch); Triton runs batches from 1 up, which the plan refuses: "
                                 "rebuild the engine without --min-batch (or --min-batch 1) for Triton")


def _graph_files(source: EngineSource, graph: str, section: str) -> tuple[Path, list[Path]]:
    """The model file of ``graph`` and the files that must sit beside it (external weights), each inside the source
    folder. Only the entries the source's checks hashed are read: an engine's ``extra_files``, an export's
    ``external_data`` (an engine manifest edited to name one was copied from wherever it pointed, ``../`` or ``/``).

    Raises :class:`~rap_deploy.safe_paths.UnsafePathError` (exit 1) for a name that leaves the folder.
    """
    from rap_deploy.safe_paths import resolve_entry

    manifest = source.manifest or {}
    entry = (manifest.get(section) or {})[graph]
    where, what = source.path / "manifest.json", f"{section} graph '{graph}'"
    names = [e["file"] for e in entry.get("extra_files", [])]
    if source.kind == "export" and "external_data" in entry:
        names.append(entry["external_data"]["file"])
    return (resolve_entry(source.path, entry["file"], what, where),
            [resolve_entry(source.path, name, f"a file beside {what}", where) for name in names])


def _check_flat_names(main: Path, extra: list[Path], target: str, source: Path) -> None:
    """Raise :class:`CheckFailedError` when the files beside a graph would not land on names of their own in the
    version folder (copied by their base names beside ``target``): one would overwrite the model or another."""
    names = [f.name for f in extra]
    if target in names or len(set(names)) != len(names):
        raise CheckFailedError(f"{source / 'manifest.json'}: the files beside {main.name} ({', '.join(names)}) do "
                               f"not have distinct names other than {target}, which the Triton model folder needs; "
                               "the manifest was edited: rebuild the engine or re-export")


def _describe_source(source: EngineSource, precision: str) -> dict[str, Any]:
    m = source.manifest or {}
    out = {"backend": m.get("backend", "onnxruntime"), "precision": precision, "device": m.get("device", "cpu"),
           "provider": m.get("provider"), "source": str(source.path.resolve()), "kind": source.kind}
    if m.get("backend") == "tensorrt":
        out["tensorrt"] = (m.get("versions") or {}).get("tensorrt")
        out["gpu"] = m.get("gpu")
    return out


@dataclass(frozen=True)
class RepoPlan:
    """What the repository will hold: the source, its served models, platform, precision, instances, parameters."""

    source: EngineSource
    section: str
    models: dict[str, ServedModel]
    platform: str
    precision: str
    kind: str
    instances: int
    max_queue_delay_us: int
    parameters: dict[str, str]
    source_identity: tuple[int, int] | None = None  # the source folder validated (folder_swap.folder_identity)


def plan_repo(engine: str | os.PathLike[str] | None, workspace: str | os.PathLike[str] | None, kind: str,
              instances: int, max_queue_delay_us: int, fp16: bool) -> RepoPlan:
    """Resolve and check the engine (default: the workspace's latest) and decide everything that is written.

    Raises :class:`UsageError` for bad options, a checkpoint or a server URL, and the manifest checks' errors for a
    damaged artifact.
    """
    from rap_deploy.config import RAPConfig
    from rap_deploy.engines.engine_refs import resolve_engine
    from rap_deploy.engines.loader import is_remote

    if kind not in KIND_CHOICES:
        raise UsageError(f"--kind must be one of {', '.join(KIND_CHOICES)}, got {kind!r}")
    if not 1 <= instances <= MAX_INSTANCES or not 0 <= max_queue_delay_us <= MAX_QUEUE_DELAY_US:
        raise UsageError(f"need --instances in [1, {MAX_INSTANCES}] and --max-queue-delay-us in [0, "
                         f"{MAX_QUEUE_DELAY_US}] (what Triton's config holds), got {instances}, {max_queue_delay_us}")
    if engine is not None and is_remote(engine):
        raise UsageError(f"--engine {engine} is a server URL; triton-repo needs an engine or export folder")
    source, identity = _validated_source(resolve_engine(engine, workspace, checkpoints=False))
    if fp16 and source.kind != "export":
        raise UsageError("--fp16 picks an export folder's fp16 graphs; an engine folder already has its precision")
    manifest = source.manifest or {}
    section = "fp16_graphs" if fp16 else "graphs"
    precision = "fp16" if fp16 else manifest.get("precision", "fp32")
    limits = batch_limits(manifest if source.kind == "engine" else None)
    params = model_parameters(RAPConfig.from_dict(manifest["config"]), precision, source.checkpoint, limits,
                              _describe_source(source, precision))
    return RepoPlan(source, section, served_models(graph_specs_of(source, section=section), limits),
                    PLATFORMS[manifest.get("backend", "onnxruntime")], precision,
                    instance_kind(kind, manifest, precision, source.path), instances, max_queue_delay_us, params,
                    identity)


def gpu_only(manifest: Mapping[str, Any], precision: str) -> str | None:
    """Why the graphs of ``manifest`` (at ``precision``) run on the GPU only, or ``None`` when a CPU instance runs
    them."""
    if manifest.get("backend") == "tensorrt":
        return "TensorRT plans run on the GPU only (Triton's TensorRT backend refuses KIND_CPU instances)"
    if manifest.get("device") == "cuda":
        return ("this ONNX Runtime engine's graphs were optimised for the CUDA provider, and ONNX Runtime runs a graph "
                "optimised for one execution provider only there")
    if precision == "fp16":
        from rap_deploy.engines.ort_backend import FP16_ON_CPU

        return f"{FP16_ON_CPU} with every optimisation on, Triton's default"
    return None


def cpu_only(manifest: Mapping[str, Any]) -> str | None:
    """Why the graphs of the engine ``manifest`` run on the CPU only, or ``None`` when a GPU instance runs them: an
    ONNX Runtime engine optimised for the CPU provider above the basic level (``session.graph_optimization_level``;
    build-engine records ``ORT_ENABLE_ALL``, and an engine recording none was built so) saves CPU-only operators."""
    if manifest.get("backend", "onnxruntime") != "onnxruntime" or manifest.get("provider") != "CPUExecutionProvider":
        return None
    level = (manifest.get("session") or {}).get("graph_optimization_level") or "ORT_ENABLE_ALL"
    if level in CPU_NEUTRAL_LEVELS:
        return None
    return (f"its graphs were optimised for ONNX Runtime's CPU provider at {level}, which saves CPU-only operators in "
            "them (on x86, NCHWc-layout convolutions holding the building CPU's filter blocks), so a GPU instance "
            "would not run them on the GPU")


def instance_kind(kind: str, manifest: Mapping[str, Any], precision: str, folder: Path) -> str:
    """The instance kind for ``--kind`` (``auto``: ``gpu`` when :func:`gpu_only`, else ``cpu``); raises
    :class:`UsageError` for ``cpu`` with graphs that run on the GPU only, and for ``gpu`` with the graphs of the
    engine in ``folder`` that run on the CPU only (:func:`cpu_only`)."""
    why = gpu_only(manifest, precision)
    if kind == "auto":
        return "gpu" if why else "cpu"
    if kind == "cpu" and why:
        raise UsageError(f"--kind cpu: {why}; use --kind gpu (or auto)")
    why_cpu = cpu_only(manifest) if kind == "gpu" else None
    if why_cpu:
        from rap_deploy.engines.rebuild_commands import export_word, where_the_export_is

        export = export_word(manifest)
        raise UsageError(f"--kind gpu: engine {folder}: {why_cpu}; use --kind cpu (or auto), or for GPU instances "
                         f"generate the repository from its export folder (`rapdeploy triton-repo --engine {export} "
                         f"--kind gpu --out DIR`) or from an engine built for CUDA (`rapdeploy build-engine {export} "
                         f"--backend onnxruntime --device cuda`){where_the_export_is(manifest)}")
    return kind


def write_model(plan: RepoPlan, model: ServedModel, folder: Path) -> dict[str, Any]:
    """Write ``folder/<model>/config.pbtxt`` and ``folder/<model>/1/`` (the model file and the files beside it);
    returns the model's summary."""
    from rap_deploy.atomic import write_text_atomic

    cfg = triton_model_config(model, plan.platform, plan.parameters, plan.kind, plan.instances,
                              plan.max_queue_delay_us if model.max_batch_size > 0 else None)
    text = config_to_pbtxt(cfg)
    parse_pbtxt(text)  # what Triton reads must parse with its own schema
    version = folder / model.name / "1"
    version.mkdir(parents=True)
    main, extra = _graph_files(plan.source, model.name, plan.section)
    _check_flat_names(main, extra, MODEL_FILES[plan.platform], plan.source.path)
    shutil.copy2(main, version / MODEL_FILES[plan.platform])
    for f in extra:
        shutil.copy2(f, version / f.name)
    write_text_atomic(folder / model.name / "config.pbtxt", text)
    return {"max_batch_size": model.max_batch_size, "file": f"{model.name}/1/{MODEL_FILES[plan.platform]}",
            "source_file": str(main.resolve()), "inputs": list(model.input_names), "outputs": list(model.output_names)}


def _refuse_url_out(out: str | os.PathLike[str]) -> None:
    """Raise :class:`UsageError` (exit 2) for an ``--out`` typed as a URL (``http://triton:8000``): the repository is
    a folder tritonserver reads (``--model-repository``), and a :class:`Path` took the URL for the relative folder
    ``./http:/triton:8000``, where the repository was written without a word."""
    from rap_deploy.library.typed_urls import url_typed_as_path

    url = url_typed_as_path(out)
    if url is not None:
        raise UsageError(f"--out {url} is a URL, not a folder: triton-repo writes the model repository into a folder "
                         "(--out DIR) that tritonserver then serves with --model-repository=DIR; it uploads nothing")


def triton_repo(engine: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] | None = None,
                workspace: str | os.PathLike[str] | None = None, kind: str = "auto", instances: int = 1,
                max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, fp16: bool = False,
                force: bool = False) -> dict[str, Any]:
    """Write a Triton model repository for ``engine`` (default: the workspace's latest engine) into ``out``.

    ``kind`` ``auto`` puts instances on the GPU for TensorRT and CUDA engines and fp16 graphs, on the CPU otherwise
    (``cpu`` for those is refused: :func:`gpu_only`, and ``gpu`` for an ONNX Runtime engine optimised for the CPU:
    :func:`cpu_only`); ``fp16`` uses an export folder's fp16 graphs. Returns
    ``{"out", "platform", "precision", "kind", "models", "command"}``. Raises :class:`UsageError` for a checkpoint, a
    remote URL, bad options or an existing ``out`` without ``force``, and the manifest checks' errors for a damaged
    artifact.
    """
    from rap_deploy.folder_swap import recover_interrupted_swap
    from rap_deploy.locks import folder_lock, target_path

    if out is None:
        raise UsageError("--out DIR is required: the folder to write the model repository to")
    _refuse_url_out(out)
    plan = plan_repo(engine, workspace, kind, instances, max_queue_delay_us, fp16)
    dest = Path(out)
    check_replaceable(dest, force)  # before the lock too, which creates the parent folder
    repo = dest.resolve()
    with folder_lock(dest, "triton-repo", "model repository"):
        # a repository a killed two-rename swap left aside is put back before the folder is judged (as export and
        # build-engine do): judged missing, it was replaced without --force once staged_folder had restored it
        recover_interrupted_swap(target_path(dest))
        check_replaceable(dest, force)
        summary = _write_repo(plan, dest, repo)
    return {"out": str(repo), "platform": plan.platform, "precision": plan.precision, "kind": plan.kind,
            "models": summary, "command": tritonserver_command(repo)}


def tritonserver_command(repo: Path) -> str:
    """The shell command that starts Triton on the repository folder ``repo``:
    ``tritonserver --model-repository=REPO``, quoted for the shell."""
    return "tritonserver " + shlex.quote(f"--model-repository={repo}")


def largest_request(plan: RepoPlan) -> int:
    """Bytes of tensors in the largest request the repository's models take: a full batch (``max_batch_size``) of a
    batchable model, the published ASA blocks (``rapdeploy.asa_blocks``) of ``asa_head``; tokens at the context
    length."""
    import json
    import math

    import numpy as np

    blocks = json.loads(plan.parameters["rapdeploy.asa_blocks"])
    config = json.loads(plan.parameters["rapdeploy.config"])
    sizes = {"queries": int(blocks["queries"]), "videos": int(blocks["videos"]),
             "tokens": int(config.get("context_length", 1))}
    largest = 0
    for model in plan.models.values():
        axes = {**sizes, **({model.batch_axis: model.max_batch_size} if model.batch_axis else {})}
        largest = max(largest, sum(np.dtype(t.dtype).itemsize * math.prod(
            d if isinstance(d, int) else axes.get(d, 1) for d in t.shape) for t in model.spec.inputs))
    return largest


def http_input_note(plan: RepoPlan) -> str:
    """The README's note on ``--http-max-input-size`` when the largest request (:func:`largest_request`, with room
    for its header) passes the 64 MiB that tritonserver 2.59 and later take over HTTP by default; else nothing. Not
    in the command itself: older releases, which the engine's TensorRT may need, have no such option and refuse it."""
    need = largest_request(plan) + BODY_HEADER_RESERVE
    if need <= TRITON_HTTP_INPUT_BYTES:
        return ""
    mib = -(-need // (1 << 20))
    default = TRITON_HTTP_INPUT_BYTES >> 20
    return (f"\nA full batch is up to {mib} MiB of tensors here, over the {default} MiB per HTTP request that "
            f"tritonserver 2.59 and later take by default: for clients that send full batches start those with "
            f"`--http-max-input-size={mib << 20}` (older releases have neither the limit nor the option). "
            f"`load_engine(\"http://…\")` keeps each request within {default} MiB either way.\n")


def _write_repo(plan: RepoPlan, dest: Path, repo: Path) -> dict[str, Any]:
    """Write the repository into a staging folder and swap it into ``dest`` (``repo``: its resolved path, which the
    README's commands name); returns the models' summaries."""
    from rap_deploy.atomic import write_text_atomic
    from rap_deploy.folder_swap import staged_folder

    with staged_folder(dest) as stage:
        stage.before_commit = lambda: _check_source_unchanged(plan)
        summary = {name: write_model(plan, model, stage.path) for name, model in plan.models.items()}
        write_text_atomic(stage.path / "README.md", repo_readme(plan.source, plan.platform, plan.precision, plan.kind,
                                                                repo, summary, http_input_note(plan)))
        stage.commit()
    return summary


def _check_source_unchanged(plan: RepoPlan) -> None:
    """Refuse (:class:`CheckFailedError`) to commit a repository copied from a source folder that was replaced since
    it was checked (a ``build-engine --force`` or ``export --force`` swapping a new one in): its files may be the
    new folder's, never hash-checked."""
    from rap_deploy.folder_swap import check_not_replaced

    check_not_replaced(plan.source.path, plan.source_identity, "while the model repository was copied from it",
                       "nothing was written: run triton-repo again")


def check_replaceable(dest: Path, force: bool) -> None:
    """Refuse to write the repository over ``dest`` unless it is absent, empty, or (with ``force``) a repository
    this command wrote (:func:`rap_deploy.folder_swap.check_replaceable`; UsageError, exit 2): an engine folder or a
    home folder passed as ``--out`` must never be replaced."""
    from rap_deploy.folder_swap import check_replaceable as check_folder

    check_folder(dest, force, "the model repository", lambda d: None if is_model_repo(d) else
                 "exists and is not a model repository written by `rapdeploy triton-repo` (--force replaces only "
                 "such a folder)")


def is_model_repo(path: Path) -> bool:
    """Whether ``path`` holds what :func:`triton_repo` writes and nothing else: its README and model folders."""
    readme = path / "README.md"
    if not readme.is_file():
        return False
    try:
        with open(readme, "rb") as fh:
            if fh.read(len(README_TITLE)) != README_TITLE:
                return False
    except OSError:
        return False
    return all(p.name == "README.md" or (p.is_dir() and not p.is_symlink() and (p / "config.pbtxt").is_file())
               for p in path.iterdir())


def _cpu_layout_note(manifest: Mapping[str, Any]) -> str:
    """For an ONNX Runtime CPU engine: the CPU its graphs were laid out for (NCHWc filter blocks, which another CPU
    reads as other weights, silently; :func:`rap_deploy.engines.manifest.cpu_layout`), else nothing."""
    from rap_deploy.engines.manifest import cpu_layout

    if manifest.get("provider") != "CPUExecutionProvider":
        return ""
    machine, avx512 = cpu_layout(manifest.get("host") or {})
    return (f", laid out for the CPU that built them ({machine or 'unknown'}, {'with' if avx512 else 'without'} "
            "AVX-512): their convolutions hold its NCHWc filter blocks, which a CPU of another kind reads as other "
            "weights without any error, so run Triton on such a CPU, or on another one serve the export folder's "
            "graphs")


def export_repo_command(manifest: Mapping[str, Any], precision: str, kind: str, repo: Path) -> str:
    """The ``rapdeploy triton-repo`` command that writes the repository folder ``repo`` again, from the export folder
    the ONNX Runtime engine ``manifest`` records (:func:`~rap_deploy.engines.rebuild_commands.export_word`: a
    placeholder when it records none), with the same instance ``kind`` and, for an fp16 engine, the export's fp16
    graphs."""
    from rap_deploy.engines.rebuild_commands import export_word

    options = ["--out", str(repo), "--force", "--kind", kind, *(["--fp16"] if precision == "fp16" else [])]
    return f"rapdeploy triton-repo --engine {export_word(manifest)} {shlex.join(options)}"


def repo_readme(source: EngineSource, platform: str, precision: str, kind: str, repo: Path,
                models: dict[str, Any], start_note: str = "") -> str:
    """The README of the repository folder ``repo``: what it holds, how to start Triton on it (``start_note`` after
    the commands), how to query and verify it."""
    from rap_deploy.engines.rebuild_commands import where_the_export_is

    m = source.manifest or {}
    rows = "\n".join(f"| `{n}` | {v['max_batch_size']} | {', '.join(v['inputs'])} | {', '.join(v['outputs'])} |"
                     for n, v in models.items())
    trt = ""
    if platform == "tensorrt_plan":
        gpu = (m.get("gpu") or {}).get("name", "?")
        trt = (f"\nThe `model.plan` files are TensorRT {(m.get('versions') or {}).get('tensorrt', '?')} engines built "
               f"for {gpu}: use the Triton release whose TensorRT is exactly that version, on that GPU model, or "
               "rebuild the engine there (`rapdeploy build-engine --fp16`) and regenerate this repository.\n")
    elif source.kind == "engine":
        trt = (f"\nThe `model.onnx` files are ONNX Runtime {(m.get('versions') or {}).get('onnxruntime', '?')} "
               f"optimised graphs{_cpu_layout_note(m)}. If Triton's ONNX Runtime backend is another release and "
               "refuses them, generate the repository from the export folder instead "
               f"(`{export_repo_command(m, precision, kind, repo)}`){where_the_export_is(m)}.\n")
    return f"""{README_TITLE.decode()}

Generated by `rapdeploy triton-repo` from `{source.path.resolve()}` ({source.kind}, {precision}); platform
`{platform}`, instances on the {kind.upper()}.

| model | max_batch_size | inputs | outputs |
|---|---|---|---|
{rows}
{trt}
## Start Triton

```bash
{tritonserver_command(repo)}
# or with the NGC container (pick the release matching the engine's TensorRT / ONNX Runtime):
docker run --rm {'--gpus all ' if kind == 'gpu' else ''}-p 8000:8000 -p 8001:8001 -p 8002:8002 \\
  -v {shlex.quote(f'{repo}:/models')} nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
  tritonserver --model-repository=/models
```
{start_note}
## Query it

```python
import tritonclient.http as httpclient
from rap_deploy.engines import load_engine

engine = load_engine("http://localhost:8000")   # the three graphs over the Open Inference Protocol
client = httpclient.InferenceServerClient("localhost:8000")
print(client.get_model_metadata("text_encoder"))
```

## Verify it

```bash
rapdeploy verify --engine http://localhost:8000 --dataset msrvtt --data-root DATA
rapdeploy bench --engine http://localhost:8000 --graphs text,search
```

Every model's `parameters` carry the RAP config (`rapdeploy.config`), the precision, the source checkpoint (verify's
reference) and the ASA block sizes, which the remote engine reads.
"""
