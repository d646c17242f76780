"""The steps of the one-shot GPU check (:mod:`rap_deploy.engines.gpu_check`, which runs them, reports and is the
command line): how much it does (:class:`CheckSizes`) and what each step runs, the environment probe, the synthetic
data, the demo and large checkpoints, ``verify`` (:func:`parity`), ``bench`` (:func:`speed`), the re-rank blocks and
the TensorRT engine. Each imports the stage it calls lazily, inside the step.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rap_deploy.cli.demo_recipe import DemoSizes

GRAPHS = ("video", "text", "asa", "search")
# the latency percentiles the bench and re-rank rows keep, each over ``CheckSizes.bench_repeats`` timed calls
PERCENTILES = (50, 99)
REPEATS_SETTING = "CheckSizes.bench_repeats"  # what sets that count (the check has no option for it)


@dataclass(frozen=True)
class CheckSizes:
    """How much the check does. ``gpu()`` is the H200 run; ``dry_run()`` the same steps on a CPU, for CI.

    The first five fields are the demo model's shape, taken from ``rapdeploy demo``'s own sizes (:func:`demo_model`);
    the data, the backbone's pre-training and the training recipe are the check's own, smaller than the demo's."""

    backbone_clip: str
    size: int  # frame side, pixels
    frames: int
    preset: str  # adapter sizes (LoRM rank, ASA width d_a)
    asa: tuple[int, int]  # top-k and heads
    device: str = "cuda"
    videos: int = 440
    test_videos: int = 200
    backbone_train: int = 2000
    backbone_epochs: int = 2
    epochs: int = 4
    train_batch: int = 32
    large_clip: str = "ViT-B-32"
    large_image_size: int = 224
    large_asa: tuple[int, int, int] = (8, 4, 128)
    batch_sizes: tuple[int, ...] = (1, 8, 64)
    bench_repeats: int = 10
    index_size: int = 1000
    video_blocks: tuple[int, ...] = (16, 64, 128)  # ASA videos per call of the PyTorch re-rank (see rerank_blocks)
    top_m: int = 100
    fp16: str = "fp16"  # the reduced precision checked (the dry run has no CPU fp16 and checks fp32 instead)

    @classmethod
    def gpu(cls) -> CheckSizes:
        """The H200 run, on the model ``rapdeploy demo`` trains."""
        from rap_deploy.cli.demo_recipe import DemoSizes

        return cls(**demo_model(DemoSizes()))

    @classmethod
    def dry_run(cls) -> CheckSizes:
        """The CPU run, on the model ``rapdeploy demo --tiny`` trains (the micro backbone)."""
        from rap_deploy.cli.demo_recipe import DemoSizes

        return cls(**demo_model(DemoSizes.tiny()), device="cpu", videos=12, test_videos=6, backbone_train=64,
                   backbone_epochs=1, epochs=1, train_batch=8, large_clip="rap-micro", large_image_size=32,
                   large_asa=(4, 2, 16), batch_sizes=(1, 2), bench_repeats=1, index_size=16, top_m=4, fp16="fp32",
                   video_blocks=(2, 4))


def demo_model(demo: DemoSizes) -> dict[str, Any]:
    """The :class:`CheckSizes` fields of the model a demo of sizes ``demo`` trains: backbone, frame side, frames,
    preset, ASA top-k and heads. Its ``asa_dim`` is not carried: the check sizes the ASA width by the preset alone.
    (``DemoSizes`` is imported only when a check runs: importing a ``rap_deploy.cli`` module builds the whole
    command line.)"""
    return {"backbone_clip": demo.backbone_clip, "size": demo.size, "frames": demo.frames, "preset": demo.preset,
            "asa": (demo.asa_topk, demo.asa_heads)}


def environment(device: str) -> dict[str, Any]:
    """torch / CUDA / GPU, ONNX Runtime providers and TensorRT availability of this machine.

    A probe that fails (a broken install: ``onnxruntime`` or ``tensorrt`` left without its members after one of two
    wheels sharing the module was uninstalled) is recorded as ``<key>_error`` with the key ``None``, so the rest of
    the environment is still reported."""
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "device": device}
    if torch.cuda.is_available():
        _probe(env, "gpu", lambda: _gpu_properties(env))
    _probe(env, "onnxruntime", _onnxruntime_status)
    _probe(env, "tensorrt", tensorrt_status)
    return env


def _probe(env: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """``env[key] = fn()``; a failure is ``env[key] = None`` and ``env[key + "_error"]``, its first line."""
    try:
        env[key] = fn()
    except Exception as exc:  # noqa: BLE001 - the environment is data: a broken library is reported, not raised
        env[key] = None
        env[f"{key}_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _gpu_properties(env: dict[str, Any]) -> str:
    """GPU 0's compute capability and memory into ``env``; returns its name."""
    import torch

    env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return torch.cuda.get_device_name(0)


def _onnxruntime_status() -> dict[str, Any] | str:
    """ONNX Runtime's version and providers, or why it does not import."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"not importable: {exc}"
    return {"version": ort.__version__, "providers": ort.get_available_providers()}


def tensorrt_status() -> str | None:
    """TensorRT's version when it imports and a CUDA GPU is visible, else ``None``."""
    from rap_deploy.engines.tensorrt_backend import runtime_info

    info = runtime_info()
    return info["tensorrt"] if info["tensorrt"] and info["gpu"] else None


def data_tag(s: CheckSizes) -> str:
    """The name part that keeps the data of other sizes apart in one work folder (a dry run and a GPU run, or another
    --test-videos, never reuse each other's dataset)."""
    return f"v{s.videos}-t{s.test_videos}-px{s.size}"


def model_tag(s: CheckSizes) -> str:
    """The name part of the demo model's folder: its data, backbone and training recipe."""
    return (f"{data_tag(s)}-{s.backbone_clip}-n{s.backbone_train}-e{s.backbone_epochs}-f{s.frames}-r{s.epochs}"
            f"-b{s.train_batch}-{s.preset}-k{s.asa[0]}h{s.asa[1]}-{s.device}")


def make_data(root: Path, s: CheckSizes) -> Path:
    """The synthetic dataset under ``root`` (kept when complete; ``root`` is named by :func:`data_tag`)."""
    from rap_deploy.data.synth_dataset import generate_synthetic_dataset

    if not (root / "MSRVTT_data.json").is_file():
        generate_synthetic_dataset(root, videos=s.videos, test_videos=s.test_videos, seed=0, size=s.size,
                                   progress=False)
    return root


def demo_checkpoint(work: Path, data: Path, s: CheckSizes) -> Path:
    """Train the tiny demo model the way ``rapdeploy demo`` does (backbone, init, RAP), or finish or reuse the one an
    earlier run trained in ``work``; returns ``best.pt``."""
    from rap_deploy.cli.model_cmds import build_config
    from rap_deploy.model_summary import init_checkpoint
    from rap_deploy.train.backbone import pretrain_backbone
    from rap_deploy.train.loop import TrainOptions, train_rap
    from rap_deploy.workspace import RUN_BEST, RUN_LAST

    backbone = work / "backbone.safetensors"
    if not backbone.is_file():
        pretrain_backbone(backbone, size=s.size, n_train=s.backbone_train, epochs=s.backbone_epochs, seed=0,
                          clip=s.backbone_clip, progress=False)
    init = work / "init.pt"
    config = build_config(s.backbone_clip, "rap", s.frames, 32, True, True, None, *s.asa, None, "text", s.preset)
    init_checkpoint(init, clip=None, pretrained="none", backbone_file=backbone, config=config, embed_backbone=True,
                    seed=0)
    run = work / "train"
    # a rerun in the same --work (its folder is this recipe's, model_tag) resumes the run: a finished one trains
    # nothing (a new run into a folder holding last.pt is refused, which failed this step on every rerun)
    resume = run if (run / RUN_LAST).is_file() else None
    options = TrainOptions(dataset="msrvtt", data_root=str(data), out=str(run), checkpoint=str(init),
                           epochs=s.epochs, batch_size=s.train_batch, lr=1e-3, seed=0, top_m=s.top_m,
                           cache_dir=str(work / "frames"), device=s.device)
    train_rap(None if resume else options, progress=False, resume=resume)
    return run / RUN_BEST


def random_adapter_checkpoint(path: Path, clip: str, s: CheckSizes, seed: int = 1) -> Path:
    """``clip`` with random backbone weights (``--pretrained none``) and random non-zero adapters
    (:func:`rap_deploy.model.random_adapters.randomize_adapters`: identity adapters would hide precision problems in
    LoRM and ASA)."""
    from rap_deploy.checkpoint import checkpoint_from_model, new_checkpoint, save_checkpoint
    from rap_deploy.cli.model_cmds import build_config
    from rap_deploy.model.clip_loader import BackboneSpec
    from rap_deploy.model.random_adapters import randomize_adapters

    config = build_config(clip, "rap", s.frames, 32, True, True, 4, *s.large_asa, "text")
    config = replace(config, preprocess=replace(config.preprocess, image_size=s.large_image_size))
    ckpt, model = new_checkpoint(config, BackboneSpec.parse(clip, "none"), seed=0)
    save_checkpoint(checkpoint_from_model(randomize_adapters(model, seed), ckpt), path)
    return path


def parity(checkpoint: Path, data: Path, work: Path, s: CheckSizes, precision: str, engine: Path | None = None
           ) -> dict[str, Any]:
    """``verify`` of ``engine`` (default: the checkpoint as the PyTorch engine on ``s.device`` in ``precision``)
    against the fp32 reference on the same device; the summary of ``verify.json``."""
    from rap_deploy.engines.verify import verify

    tolerance = None if precision == "fp32" else round(max(0.5, 100.0 / s.test_videos) + 1e-6, 4)
    name = engine.name if engine is not None else f"torch-{s.device}-{precision}"
    result = verify("msrvtt", data, engine or checkpoint, checkpoint=checkpoint, tolerance=tolerance, top_m=s.top_m,
                    out=work / "verify" / name, cache=work / "frames", progress=False, reference_device=s.device,
                    raise_on_fail=False, engine_device=None if engine else s.device,
                    engine_precision=None if engine else precision)
    return {"engine": name, "precision": result["precision"], "passed": result["passed"],
            "tolerance": result["tolerance"], "queries": result["counts"]["captions"], "delta": result["delta"],
            "two_stage_delta": result["two_stage"]["delta"], "rank_changes": result["rank_changes"],
            "ties": {side: {d: result[side][d]["ties"] for d in ("t2v", "v2t")} for side in ("reference", "engine")},
            "failures": result["failures"], "worst_graph": result["worst_graph"]}


def speed(checkpoint: Path, work: Path, s: CheckSizes, precision: str, engines: Sequence[Path] = ()) -> list[dict]:
    """``bench`` of PyTorch eager (``precision`` on ``s.device``) and ``engines``; the result rows."""
    from rap_deploy.engines.bench import bench

    result = bench(list(engines), checkpoint=checkpoint, batch_sizes=s.batch_sizes, repeats=s.bench_repeats,
                   warmup=2 if s.device == "cuda" else 1, index_size=s.index_size, graphs=GRAPHS,
                   out=work / "bench" / f"{precision}-{len(engines)}", progress=False, top_m=s.top_m,
                   torch_device=s.device, torch_precision=precision, compare_meanp=False)
    keep = ("engine", "backend", "precision", "graph", "batch_size", "throughput", "unit",
            *(f"p{q}_ms" for q in PERCENTILES))
    return [{k: row.get(k) for k in keep} for row in result["results"]]


def rerank_blocks(checkpoint: Path, s: CheckSizes, precision: str) -> list[dict[str, Any]]:
    """One query's re-rank of ``s.top_m`` candidates of a random index (what a search call spends in ASA), timed
    with the PyTorch engine at each of ``s.video_blocks`` videos per ASA call; one row per block size.

    The engine's default block (``TORCH_VIDEO_BLOCK``) was tuned on a 2-core CPU, where a large block's logits leave
    the cache; a GPU pays per kernel launch instead, so it may want a larger one."""
    import numpy as np

    from rap_deploy.engines.bench_index import random_index
    from rap_deploy.engines.bench_inputs import template_captions
    from rap_deploy.engines.bench_timing import latency_stats, time_interleaved
    from rap_deploy.engines.torch_backend import TorchEngine
    from rap_deploy.tokenizer import tokenize

    engine = TorchEngine(checkpoint, device=s.device, precision=precision)
    model = engine.model
    index = random_index(max(s.index_size, s.top_m), model.config.frames, model.num_patches, model.embed_dim,
                         asa=model.asa)
    stores = index.rerank()
    rows = np.sort(np.random.default_rng(0).choice(len(index), s.top_m, replace=False))
    ids, eot = tokenize(template_captions(1), model.config.tokenizer)
    text = engine.encode_text(ids, eot)

    def rerank(block: int) -> np.ndarray:
        engine.video_block = block
        return engine.asa_similarity_rows(text, stores, rows)

    first = rerank(s.video_blocks[0])
    times = time_interleaved([lambda b=b: rerank(b) for b in s.video_blocks], repeats=s.bench_repeats,
                             warmup=2 if s.device == "cuda" else 1)
    out = []
    for block, lat in zip(s.video_blocks, times, strict=True):
        stats = latency_stats(lat, s.top_m)
        out.append({"precision": precision, "video_block": block, "candidates": s.top_m,
                    **{f"p{q}_ms": stats[f"p{q}_ms"] for q in PERCENTILES},
                    "max_abs_vs_first": float(np.abs(rerank(block) - first).max())})
    return out


def tensorrt_engine(checkpoint: Path, data: Path, work: Path) -> Path:
    """Export with fp16 graphs and build the TensorRT fp16 engine (validated by build-engine itself)."""
    from rap_deploy.engines.build import build_engine
    from rap_deploy.export import export_checkpoint

    export = work / "onnx"
    export_checkpoint(checkpoint, export, fp16=True, force=True, data_root=data, progress=False)
    out = work / "tensorrt-fp16"
    build_engine(export, backend="tensorrt", fp16=True, out=out, force=True, workspace=work / "ws", progress=False)
    return out
