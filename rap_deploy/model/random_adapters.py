"""Non-zero random adapters, for exactness checks and benchmarks (identity adapters hide bugs).

A freshly initialised RAP is exactly frozen CLIP with meanP pooling: LoRM's ``V`` factors and ASA's output projection
start at zero, so a check on such a model cannot see whether the adapters are computed correctly. This module gives
every adapter a random value of a scale at which it visibly changes the result:

- LoRM ``V_s``, ``V_c`` ~ N(0, 0.02²) (``U`` keeps its unit-scale init): per-frame scale and shift of a few percent;
- ASA ``q_proj``/``k_proj``/``v_proj`` weights ~ N(0, 1): on unit-norm tokens the attention logits are ~N(0, 1), so the
  attention is far from uniform (at the default init it is nearly uniform and keys barely matter);
  ``out_proj`` weight ~ N(0, (0.1/√d_a)²): the ASA term moves the video embedding by a sizeable fraction of its norm;
  every ASA bias ~ N(0, 0.02²);
- offsets γ (patch units) and δ (frames) ~ U(-1.6, 1.6), moved off the integers (fractional interpolation weights).

Run as a module to write such a checkpoint from any checkpoint (the backbone reference is kept)::

    python -m rap_deploy.model.random_adapters b32.pt --out b32-random.pt [--seed 0] [--force]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn

from rap_deploy.model.asa import off_integers

LORM_V_STD = 0.02
QKV_STD = 1.0
OUT_GAIN = 0.1
BIAS_STD = 0.02
OFFSET_RANGE = 1.6


@torch.no_grad()
def randomize_asa(asa: nn.Module, generator: torch.Generator) -> None:
    """Give an :class:`~rap_deploy.model.asa.AsynchronousSelfAttention` random non-zero weights and offsets
    (scales in the module docstring), in place."""
    for proj in (asa.q_proj, asa.k_proj, asa.v_proj):
        proj.weight.copy_(torch.randn(proj.weight.shape, generator=generator) * QKV_STD)
    asa.out_proj.weight.copy_(torch.randn(asa.out_proj.weight.shape, generator=generator)
                              * (OUT_GAIN / math.sqrt(asa.attn_dim)))
    for proj in (asa.q_proj, asa.k_proj, asa.v_proj, asa.out_proj):
        proj.bias.copy_(torch.randn(proj.bias.shape, generator=generator) * BIAS_STD)
    for offset in (asa.patch_offset, asa.time_offset):
        offset.copy_(off_integers((torch.rand(offset.shape, generator=generator) * 2 - 1) * OFFSET_RANGE))


@torch.no_grad()
def randomize_adapters(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every adapter of a :class:`~rap_deploy.model.rap.RAPModel` a random non-zero value (see the module
    docstring), deterministically from ``seed``; the frozen backbone is untouched. Returns ``model``."""
    gen = torch.Generator().manual_seed(seed)
    for sites in (model.lorm_attn, model.lorm_mlp):
        for site in sites or ():
            site.v_scale.copy_(torch.randn(site.v_scale.shape, generator=gen) * LORM_V_STD)
            site.v_shift.copy_(torch.randn(site.v_shift.shape, generator=gen) * LORM_V_STD)
    if model.asa is not None:
        randomize_asa(model.asa, gen)
    return model


def randomize_checkpoint(src: str | Path, out: str | Path, seed: int = 0, force: bool = False) -> Path:
    """Write ``out``: the checkpoint ``src`` with :func:`randomize_adapters` applied (backbone reference kept).

    Raises :class:`~rap_deploy.errors.UsageError` for a missing or foreign checkpoint, a seed outside
    ``[0, 2**63 - 1]``, or an existing ``out`` without ``force`` (it may be a trained checkpoint, even ``src``).
    """
    from rap_deploy import bounds
    from rap_deploy.checkpoint import checkpoint_from_model, load_checkpoint, save_checkpoint
    from rap_deploy.errors import UsageError

    bounds.check_int(seed, "--seed", 0, bounds.MAX_SEED)
    if Path(out).exists() and not force:
        raise UsageError(f"{out} exists (it may be a trained checkpoint); pass --force to replace it")
    ckpt = load_checkpoint(src)
    model = randomize_adapters(ckpt.build_model(), seed)
    return save_checkpoint(checkpoint_from_model(model, ckpt, extra={"random_adapters_seed": seed}), out)


def main(argv: list[str] | None = None) -> int:
    """``python -m rap_deploy.model.random_adapters SRC --out OUT [--seed S] [--force]``; exit 2 with one line on bad
    usage."""
    from rap_deploy.errors import UsageError

    parser = argparse.ArgumentParser(prog="python -m rap_deploy.model.random_adapters",
                                     description="Write a copy of a RAP checkpoint with non-zero random adapters.")
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    try:
        path = randomize_checkpoint(args.checkpoint, args.out, args.seed, args.force)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
