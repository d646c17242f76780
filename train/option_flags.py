"""How a training option is typed on the ``rapdeploy train`` command line, for messages that name it.

:class:`~rap_deploy.train.loop.TrainOptions` and the model config name some options after their field (``lorm_rank``,
``use_asa``, ``num_workers``), which is not the option a user types (``--rank``, ``--no-asa``, ``--workers``); a
refusal that printed ``--lorm-rank 3`` named an option that does not exist.
"""

from __future__ import annotations

from typing import Any

# Fields whose option is not ``--<field with dashes>``
FLAG_NAMES = {"lorm_rank": "--rank", "asa_topk": "--topk", "asa_heads": "--heads", "asa_selection": "--selection",
              "num_workers": "--workers"}
# Boolean fields: (the option that sets True, the one that sets False)
SWITCHES = {"use_lorm": ("--lorm", "--no-lorm"), "use_asa": ("--asa", "--no-asa"),
            "freeze_offsets": ("--freeze-offsets", "--learn-offsets"),
            "eval_initial": ("--eval-initial", "--no-eval-initial"),
            "embed_backbone": ("--embed-backbone", "--reference-backbone")}


def option_text(field: str, value: Any) -> str:
    """The command-line text that sets training option ``field`` to ``value``: ``--rank 3`` for ``lorm_rank``,
    ``--no-asa`` for ``use_asa`` False, ``--frames 8`` for ``frames``."""
    if field in SWITCHES:
        on, off = SWITCHES[field]
        return on if value else off
    return f"{FLAG_NAMES.get(field, '--' + field.replace('_', '-'))} {value}"
