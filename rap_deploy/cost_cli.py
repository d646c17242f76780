"""The options every cost script (``python -m rap_deploy.train.backbone_cost``, ``python -m
rap_deploy.model.asa_cost``) shares: the threads to time with, the timed repeats and JSON output."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """``text`` as an integer of at least 1; raises ``argparse.ArgumentTypeError`` (argparse's exit 2) otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def cost_parser(doc: str, repeats: int) -> argparse.ArgumentParser:
    """An argument parser described by ``doc``'s first paragraph, with ``--threads`` (default: torch's own count),
    ``--repeats`` (default ``repeats``) and ``--json``; the script adds its own options."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads to time with (default: torch's)")
    parser.add_argument("--repeats", type=positive_int, default=repeats,
                        help=f"timed calls per variant (default {repeats})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    return parser


def parse_cost_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` (exits 2 on bad usage, as argparse does) and set torch's thread count when ``--threads`` is
    given."""
    import torch

    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
