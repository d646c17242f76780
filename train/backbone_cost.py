"""What one backbone pre-training step costs with and without the savings of :mod:`rap_deploy.train.backbone_tokens`.

``python -m rap_deploy.train.backbone_cost [--clip rap-tiny] [--batch 128] [--threads 2] [--repeats 6] [--json]``
times, side by side in one process on the same stills, a full training step (both towers forward and backward, the
contrastive and localisation losses, gradient clipping and AdamW) for: every patch token and the full caption
context; captions trimmed to the batch's longest; half and a quarter of the patch tokens (object patches first);
and the optimizer step over the whole token-embedding table against the training captions' rows only. Medians of
``repeats`` steps after one warm-up step. Absolute times depend on the machine: read the ratios.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch


def _median_ms(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000.0 * float(np.median(times)), 1)


def step_costs(clip: str = "rap-tiny", batch: int = 128, repeats: int = 6, seed: int = 0) -> dict[str, Any]:
    """Median milliseconds of one pre-training step per variant (``steps``) and of the optimizer step alone
    (``optimizer``), with ``clip``'s still size and ``batch`` stills. Raises :class:`UsageError` for an unknown clip."""
    from dataclasses import replace

    from rap_deploy.train import backbone as bb
    from rap_deploy.train.backbone_loop import Recipe, adamw, batch_loss, optimizer_step
    from rap_deploy.train.backbone_tokens import compact_token_embedding

    model = bb.new_backbone_model(clip, seed, position_init="sincos", patch_keep=1.0)
    cfg, tok = bb.model_inputs(model)
    stills = bb.prepare_stills(model, batch, seed, cfg.image_size, data_root=None, twins=False, cfg=cfg, tok=tok)
    idx = torch.arange(batch)
    recipe = Recipe(seed=seed, epochs=1, lr=1e-4, patch_weight=1.0, text_weight=0.0, text_batch=0,
                    position_twins=False)
    rng = np.random.default_rng(seed)
    model.train()
    steps: dict[str, float] = {}
    with compact_token_embedding(model, stills.ids) as compact:
        opt = adamw(model, 1e-4, 0.1)
        renumbered = replace(stills, ids=compact)

        def step(data: Any, keep: float, full_context: bool) -> None:
            gen = torch.Generator().manual_seed(seed)
            loss = batch_loss(model, data, idx, recipe, cfg, tok, rng, keep, gen, trim_captions=not full_context)
            optimizer_step(model, opt, loss)

        steps["every token, full caption context"] = _median_ms(lambda: step(renumbered, 1.0, True), repeats)
        steps["every token, captions trimmed"] = _median_ms(lambda: step(renumbered, 1.0, False), repeats)
        steps["half the tokens, captions trimmed"] = _median_ms(lambda: step(renumbered, 0.5, False), repeats)
        steps["a quarter of the tokens, captions trimmed"] = _median_ms(lambda: step(renumbered, 0.25, False), repeats)
        optimizer = {"caption rows only": _optimizer_ms(model, opt, repeats)}
    optimizer["whole embedding table"] = _optimizer_ms(model, adamw(model, 1e-4, 0.1), repeats)
    return {"clip": clip, "batch": batch, "threads": torch.get_num_threads(), "repeats": repeats, "steps": steps,
            "optimizer": optimizer}


def _optimizer_ms(model: torch.nn.Module, opt: torch.optim.Optimizer, repeats: int) -> float:
    """Gradient clipping plus one AdamW step over random gradients of every trainable parameter."""
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3

    def run() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    ms = _median_ms(run, repeats)
    for p in model.parameters():
        p.grad = None
    return ms


def main(argv: list[str] | None = None) -> None:
    """Print :func:`step_costs` as a table (or JSON with ``--json``)."""
    from rap_deploy.cost_cli import cost_parser, parse_cost_args
    from rap_deploy.engines.report_env import cpu_model

    parser = cost_parser(__doc__, repeats=6)
    parser.add_argument("--clip", default="rap-tiny")
    parser.add_argument("--batch", type=int, default=128)
    args = parse_cost_args(parser, argv)

    result = {**step_costs(args.clip, args.batch, args.repeats), "cpu": cpu_model()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    base = next(iter(result["steps"].values()))
    print(f"{result['clip']}, batch {result['batch']}, {result['threads']} threads, {result['cpu']}")
    print("| step | ms | vs every token, full context |\n|---|---|---|")
    for name, ms in result["steps"].items():
        print(f"| {name} | {ms:,.0f} | {base / ms:.2f}x |")
    print("optimizer step (clip + AdamW): " + ", ".join(f"{k} {v:.0f} ms" for k, v in result["optimizer"].items()))


if __name__ == "__main__":
    main()
