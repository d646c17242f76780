"""What to export (optimum style): opset, exporter, I/O specs with dynamic axes, example shapes, tolerances, fp16.

:mod:`rap_deploy.export.onnx_export` holds the mechanics; everything that decides *what* the graphs look like is here.

Exporter choice (torch 2.14.1, onnx 1.23.2, onnxscript 0.7.2), measured on the rap-micro and ViT-B/32 models:

- ``dynamo=True`` (``torch.export``-based) gives tidy graphs (static output dims, few shape ops), but it only
  implements opset >= 18: asked for opset 17 it exports at 18 and its down-conversion fails (onnx's version
  converter asserts on the Reduce* ``axes`` inputs, and where it converts it leaves ``noop_with_empty_axes`` on
  ReduceL2/ReduceMean, which opset 17 does not know), so the file stays at opset 18 and the default of DESIGN.md §7 is
  unreachable. It is also ~10x slower (about 25 s for the three rap-micro graphs against about 2 s).
- ``dynamo=False`` (TorchScript tracing) exports opset 17-19 natively, no GridSample, a constant-k TopK, symbolic
  batch axes. Two things need care and are handled in the mechanics: ``nn.MultiheadAttention``'s inference fast
  path (``_native_multi_head_attention``) has no ONNX symbolic, so it is switched off while tracing; and traced
  shape arithmetic leaves ``Shape/Gather/Concat`` chains and auto-named output dims, so the graph goes through
  onnxscript's optimizer (constant folding) and the I/O shapes are rewritten to the contract's static/symbolic dims.

So the default is ``dynamo=False``; ``dynamo=True`` stays selectable (``ExportConfig(dynamo=True)``) for opset >= 18.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rap_deploy.errors import UsageError
from rap_deploy.graphs import (
    ASA_INPUTS,
    ASA_OUTPUTS,
    INDEX_DTYPES,
    TEXT_INPUTS,
    TEXT_OUTPUTS,
    VIDEO_INPUTS,
    graphs_for,
    video_outputs,
)

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = (17, 18, 19)
EXPORTER_REASON = (
    "torch.onnx.export(dynamo=False): the TorchScript exporter emits opset 17 natively; the dynamo exporter of "
    "torch 2.14.1 only implements opset >= 18 and cannot down-convert (onnx version converter fails on Reduce* axes), "
    "and is ~10x slower. Fast-path MHA is disabled while tracing; graphs are constant-folded with onnxscript's "
    "optimizer and their I/O dims rewritten to the contract."
)

# Symbolic axis names (DESIGN.md §4): the only dynamic dims of the three graphs. ``tokens`` (the text encoder's
# token axis, 1 … context_length) is this project's addition to §4: a query runs only its own tokens (see
# rap_deploy.model.text_tower); graphs exported before it have a static [B, L] and still load.
BATCH, QUERIES, VIDEOS, TOKENS = "batch", "queries", "videos", "tokens"

# Ops that must never appear (DESIGN.md §7): GridSample (TensorRT bugs), data-dependent shapes, control flow.
FORBIDDEN_OPS = ("GridSample", "NonZero", "Unique", "Compress", "If", "Loop", "Scan", "SequenceConstruct")
# ArgMax / ArgMin are forbidden on integer inputs (EOT is an int32 input instead of ArgMax over int64 ids).
INT_ARG_OPS = ("ArgMax", "ArgMin")
REQUIRED_OPS = {"asa_head": ("TopK",)}

# The op types every fp16 route keeps in fp32, unconditionally (rule 1 of the one precision plan,
# rap_deploy.export.precision_plan, which both the fp16 graph of TensorRT 11 and TensorRT 10's layer constraints
# follow; DESIGN.md §8): LayerNorm, Softmax, every reduction (L2 norms included), pow/sqrt/reciprocal/exp/log, TopK,
# and the rounding/clamping/range ops of index arithmetic. Divisions, the selection scores, index arithmetic and the
# sampling blend of the ASA warp are found by the plan's data-flow rules, wherever they sit.
FP16_BLOCKED_OPS = (
    "LayerNormalization", "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceL2", "ReduceL1", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare",
    "ReduceLogSum", "ReduceLogSumExp", "LpNormalization",
    "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Clip", "Floor", "Ceil", "Round", "TopK", "Range", "CumSum",
)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (ints and symbolic axis names) and numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class GraphSpec:
    """Inputs and outputs of one graph; ``dynamic_axes`` in ``torch.onnx.export``'s format."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in (*self.inputs, *self.outputs)}

    def concrete_shape(self, tensor: TensorSpec, sizes: dict[str, int]) -> tuple[int, ...]:
        """``tensor``'s shape with symbolic axes replaced from ``sizes`` (e.g. ``{"batch": 3}``)."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in tensor.shape)


@dataclass(frozen=True)
class ModelDims:
    """The static sizes of a RAP model: frames T, image size S, patch grid, patches P, joint width d, tokens L, and
    the width of one ``asa_tokens`` row (``3·d_a``; 0 without an ASA head)."""

    frames: int
    image_size: int
    grid: tuple[int, int]
    embed_dim: int
    context_length: int
    asa_token_width: int = 0

    @property
    def patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @classmethod
    def of(cls, model: Any) -> ModelDims:
        """Read the sizes of a :class:`~rap_deploy.model.RAPModel`."""
        cfg = model.config
        width = model.asa.token_width if model.asa is not None else 0
        return cls(frames=cfg.frames, image_size=cfg.preprocess.image_size, grid=tuple(model.grid),
                   embed_dim=model.embed_dim, context_length=cfg.context_length, asa_token_width=width)

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "image_size": self.image_size, "grid": list(self.grid),
                "patches": self.patches, "embed_dim": self.embed_dim, "context_length": self.context_length,
                "asa_token_width": self.asa_token_width}


def graph_specs(dims: ModelDims, has_asa: bool) -> dict[str, GraphSpec]:
    """The I/O contract (DESIGN.md §4 plus ``frame_mask`` and ``asa_tokens``) of each graph the model exports.

    ``asa_head`` takes ``patch_tokens`` and ``asa_tokens`` in the index's dtypes (``INDEX_DTYPES``); every other
    tensor is float32 (int32 token ids).
    """
    if has_asa and dims.asa_token_width < 1:
        raise ValueError("a model with an ASA head needs ModelDims.asa_token_width (3·d_a); use ModelDims.of(model)")
    t, s, p, d = dims.frames, dims.image_size, dims.patches, dims.embed_dim
    f32, i32 = "float32", "int32"
    video_shapes = {"video_emb": (BATCH, d), "frame_emb": (BATCH, t, d), "patch_tokens": (BATCH, t, p, d),
                    "asa_tokens": (BATCH, t, p, dims.asa_token_width)}
    rerank_shapes = {"frame_emb": (VIDEOS, t, d), "patch_tokens": (VIDEOS, t, p, d),
                     "asa_tokens": (VIDEOS, t, p, dims.asa_token_width)}
    specs = {
        "video_encoder": GraphSpec("video_encoder", (
            TensorSpec(VIDEO_INPUTS[0], (BATCH, t, 3, s, s), f32),
            TensorSpec(VIDEO_INPUTS[1], (BATCH, t), f32),
        ), tuple(TensorSpec(n, video_shapes[n], f32) for n in video_outputs(has_asa))),
        "text_encoder": GraphSpec("text_encoder", (
            TensorSpec(TEXT_INPUTS[0], (BATCH, TOKENS), i32),
            TensorSpec(TEXT_INPUTS[1], (BATCH,), i32),
        ), (TensorSpec(TEXT_OUTPUTS[0], (BATCH, d), f32),)),
        "asa_head": GraphSpec("asa_head", (
            TensorSpec(ASA_INPUTS[0], (QUERIES, d), f32),
            *(TensorSpec(n, rerank_shapes[n], INDEX_DTYPES[n]) for n in ASA_INPUTS[1:]),
        ), (TensorSpec(ASA_OUTPUTS[0], (QUERIES, VIDEOS), f32),)),
    }
    return {name: specs[name] for name in graphs_for(has_asa)}


@dataclass(frozen=True)
class ParityConfig:
    """Numeric parity settings (DESIGN.md §7): fp32 tolerances, batch sizes, ranking top-k and tie tolerance.

    ``batch_sizes`` are used for the encoders; ``asa_blocks`` are ``(Q, V)`` pairs (both vary, Q != V so a
    transposed result cannot pass). Top-k indices must be identical except where the reference scores of the swapped
    candidates differ by at most ``tie_eps`` (exact ties have no defined order).
    """

    max_abs: float = 1e-4
    min_cosine: float = 0.99999
    batch_sizes: tuple[int, ...] = (1, 2, 3)
    asa_blocks: tuple[tuple[int, int], ...] = ((1, 1), (2, 3), (3, 2))
    topk: int = 5
    tie_eps: float = 1e-6
    pool_videos: int = 6


@dataclass(frozen=True)
class ExportConfig:
    """Everything that decides what :func:`~rap_deploy.export.onnx_export.export_checkpoint` writes."""

    opset: int = DEFAULT_OPSET
    dynamo: bool = False
    fp16: bool = False
    example_batch: int = 2  # >= 2 so tracing keeps the batch axis symbolic
    optimize: bool = True  # onnxscript constant folding after export
    external_data_threshold: int = 1_800_000_000  # bytes; larger graphs store weights in <graph>.onnx.data
    fp16_blocked_ops: tuple[str, ...] = FP16_BLOCKED_OPS
    parity: ParityConfig = field(default_factory=ParityConfig)

    def __post_init__(self) -> None:
        if self.opset not in SUPPORTED_OPSETS:
            raise UsageError(f"opset {self.opset} is not supported; use one of "
                             f"{', '.join(map(str, SUPPORTED_OPSETS))} (17 is the default)")
        if self.dynamo and self.opset < 18:
            raise UsageError(f"the dynamo exporter of this torch cannot emit opset {self.opset}; use opset 18 or 19 "
                             "with dynamo, or the default TorchScript exporter")
        if self.example_batch < 2:
            raise UsageError("example_batch must be >= 2, or the exporter specialises the batch axis to 1")

    @property
    def exporter(self) -> str:
        return "dynamo" if self.dynamo else "torchscript"

    def exporter_record(self) -> dict[str, Any]:
        """How the graphs were exported, for the manifest and the metadata props."""
        reason = EXPORTER_REASON if not self.dynamo else "dynamo=True requested explicitly (opset >= 18)"
        return {"name": self.exporter, "dynamo": self.dynamo, "optimizer": "onnxscript" if self.optimize else None,
                "reason": reason}
