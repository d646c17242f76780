"""What the ASA head's attention costs without gradient: the fused kernel against the written-out one.

``python -m rap_deploy.model.asa_cost [--dim 128] [--grid 8] [--frames 12] [--attn-dim 128] [--heads 4] [--topk 8]
[--queries 200] [--videos 200] [--candidates 100] [--threads 2] [--repeats 5] [--json]`` times, in one process on
the same random head and inputs, the head's similarity (:meth:`AsynchronousSelfAttention.forward` under
``torch.inference_mode``) in blocks of 32 queries × 16 videos, as an evaluation and ``verify``'s PyTorch reference
run it, and one query against ``candidates`` videos in blocks of 16, as a search re-ranks; each with
``fused_attention`` on and off (:func:`~rap_deploy.model.asa.attend`), interleaved, after one untimed call of each.
The defaults are the demo model's sizes (rap-tiny: d = 128 on an 8 × 8 grid). Absolute times depend on the
machine and its load: read the ratios.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: The blocks the PyTorch reference scores on a CPU (``ModelEncoder`` via ``fit_asa_blocks``) and a search's.
EVAL_BLOCK = (32, 16)
SEARCH_BLOCK = (1, 16)


@dataclass(frozen=True)
class HeadShape:
    """The sizes of an ASA head and of the video tokens it scores."""

    dim: int = 128
    grid: int = 8
    frames: int = 12
    attn_dim: int = 128
    heads: int = 4
    topk: int = 8


_SHAPE_HELP = {"dim": "embedding width d", "grid": "patch grid side", "frames": "frames per video",
               "attn_dim": "ASA attention width d_a", "heads": "attention heads", "topk": "patches selected per frame"}


def _head_and_videos(shape: HeadShape, videos: int, seed: int) -> tuple[Any, tuple[torch.Tensor, ...]]:
    """A head with random non-zero weights and offsets, and ``videos`` random videos' re-rank tensors (fp16 patch
    tokens as an index stores them; the last video has 5 valid frames)."""
    from rap_deploy.model.asa import AsynchronousSelfAttention
    from rap_deploy.model.random_adapters import randomize_asa

    gen = torch.Generator().manual_seed(seed)
    head = AsynchronousSelfAttention(shape.dim, (shape.grid, shape.grid), shape.topk, shape.heads,
                                     shape.attn_dim).eval()
    randomize_asa(head, gen)
    mask = torch.ones(videos, shape.frames)
    mask[-1, 5:] = 0.0
    p = shape.grid * shape.grid
    patches = F.normalize(torch.randn(videos, shape.frames, p, shape.dim, generator=gen), dim=-1)
    patches = (patches * mask.view(videos, shape.frames, 1, 1)).to(torch.float16)
    frame_emb = F.normalize(torch.randn(videos, shape.frames, shape.dim, generator=gen), dim=-1) * mask[..., None]
    with torch.inference_mode():
        tokens = head.video_tokens(patches.float(), mask)
    return head, (frame_emb, patches, tokens)


def _similarity(head: Any, text: torch.Tensor, rerank: tuple[torch.Tensor, ...], block: tuple[int, int]
                ) -> torch.Tensor:
    """``head``'s similarity ``[Q, V]`` scored in blocks of ``block`` (queries, videos)."""
    qc, vc = block
    videos = rerank[0].shape[0]
    with torch.inference_mode():
        return torch.cat([torch.cat([head(text[q:q + qc], *(x[v:v + vc] for x in rerank))
                                     for v in range(0, videos, vc)], 1) for q in range(0, len(text), qc)], 0)


def compare(shape: HeadShape, queries: int, videos: int, block: tuple[int, int], repeats: int = 5,
            seed: int = 0) -> dict[str, Any]:
    """Median milliseconds of the head's similarity of ``queries`` random texts against ``videos`` videos with the
    fused attention (``fused_ms``) and written out (``written_out_ms``), their ratio, and the largest difference of
    the two similarities (``max_abs_diff``). Raises ValueError for sizes the head refuses."""
    head, rerank = _head_and_videos(shape, videos, seed)
    text = F.normalize(torch.randn(queries, shape.dim, generator=torch.Generator().manual_seed(seed + 1)), dim=-1)
    times: dict[bool, list[float]] = {True: [], False: []}
    sims: dict[bool, torch.Tensor] = {}
    for r in range(repeats + 1):
        for fused in ((True, False) if r % 2 else (False, True)):
            head.fused_attention = fused
            t0 = time.perf_counter()
            sims[fused] = _similarity(head, text, rerank, block)
            if r:  # the first round is the untimed warm-up
                times[fused].append(time.perf_counter() - t0)
    fused_ms, written_ms = (1000.0 * float(np.median(times[f])) for f in (True, False))
    return {"queries": queries, "videos": videos, "block": list(block), "fused_ms": round(fused_ms, 2),
            "written_out_ms": round(written_ms, 2), "ratio": round(fused_ms / written_ms, 3),
            "max_abs_diff": float((sims[True] - sims[False]).abs().max())}


def main(argv: list[str] | None = None) -> None:
    """Print :func:`compare` for an evaluation and for a search (or JSON with ``--json``)."""
    from rap_deploy.cost_cli import cost_parser, parse_cost_args, positive_int
    from rap_deploy.engines.report_env import cpu_model

    parser = cost_parser(__doc__, repeats=5)
    defaults = HeadShape()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=positive_int, default=value,
                            help=f"{_SHAPE_HELP[name]} (default {value}: the demo model's)")
    parser.add_argument("--queries", type=positive_int, default=200, help="texts of the evaluation case (default 200)")
    parser.add_argument("--videos", type=positive_int, default=200, help="videos of the evaluation case (default 200)")
    parser.add_argument("--candidates", type=positive_int, default=100, help="videos the search case's query re-ranks "
                        "(default 100)")
    args = parse_cost_args(parser, argv)

    shape = HeadShape(**{name: getattr(args, name) for name in asdict(defaults)})
    try:
        cases = {"evaluation": compare(shape, args.queries, args.videos, EVAL_BLOCK, args.repeats),
                 "search": compare(shape, 1, args.candidates, SEARCH_BLOCK, args.repeats)}
    except ValueError as exc:  # sizes the head refuses, e.g. --attn-dim not a multiple of --heads
        parser.error(str(exc))
    result = {"shape": asdict(shape), "threads": torch.get_num_threads(), "repeats": args.repeats,
              "cpu": cpu_model(), "cases": cases}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{shape}, {result['threads']} threads, {result['cpu']}")
    print("| case | queries × videos | block | fused ms | written out ms | ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for name, c in cases.items():
        print(f"| {name} | {c['queries']} × {c['videos']} | {c['block'][0]} × {c['block'][1]} | {c['fused_ms']:,.1f} | "
              f"{c['written_out_ms']:,.1f} | {c['ratio']:.3f} | {c['max_abs_diff']:.1e} |")


if __name__ == "__main__":
    main()
