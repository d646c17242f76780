"""Which training options mean something for a model: an option that names a part the model lacks (``--topk`` on a
model without ASA, ``--lorm-lr-mult`` with ``--no-lorm``) was accepted and did nothing, so a run labelled with it
was not the experiment it claimed to be."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rap_deploy.config import RAPConfig
from rap_deploy.errors import UsageError
from rap_deploy.train.option_flags import option_text

# Options that only act on the ASA head (its sizes, its patch selection, its offsets γ/δ, its selection loss, its
# re-rank in the two-stage evaluation).
ASA_OPTIONS = ("asa_topk", "asa_heads", "asa_dim", "asa_selection", "freeze_offsets", "offset_lr_mult",
               "selection_loss_weight", "top_m")
# Options that only act on LoRM.
LORM_OPTIONS = ("lorm_rank", "lorm_lr_mult")


def _unused_fields(config: RAPConfig, given: Mapping[str, Any]) -> list[str]:
    """The training-option fields in ``given`` that change nothing for a model of ``config``."""
    unused = []
    if not config.has_asa:
        unused += [name for name in ASA_OPTIONS if given.get(name) is not None]
        if config.variant == "rap_light" and given.get("use_asa") is True:
            unused.append("use_asa")
    if not config.use_lorm:
        unused += [name for name in LORM_OPTIONS if given.get(name) is not None]
    return unused


def unused_options(config: RAPConfig, given: Mapping[str, Any]) -> list[str]:
    """The options in ``given`` (training-option field → value the user passed; unset ones absent or None) that
    change nothing for a model of ``config``, as typed on the command line (``--topk 4``, ``--freeze-offsets``)."""
    return _as_typed(_unused_fields(config, given), given)


def _as_typed(fields: list[str], given: Mapping[str, Any]) -> list[str]:
    """``fields`` of ``given`` as typed on the command line."""
    return [option_text(name, given[name]) for name in fields]


def check_options_apply(config: RAPConfig, given: Mapping[str, Any] | None) -> None:
    """Raise :class:`UsageError` naming every option in ``given`` (None: no options given) that changes nothing for
    a model of ``config`` (:func:`unused_options`), the part it acts on that the model lacks, and the fix."""
    given = given or {}
    unused = _unused_fields(config, given)
    if not unused:
        return
    lacks = " and ".join(part for part, options in (("an ASA head", ASA_OPTIONS + ("use_asa",)), ("LoRM", LORM_OPTIONS))
                         if set(options) & set(unused))
    one = len(unused) == 1
    typed = ", ".join(_as_typed(unused, given))
    raise UsageError(f"{typed} {'acts' if one else 'act'} on a part this model lacks ({lacks}; its "
                     f"adapters: {config.adapters}): drop {'it' if one else 'them'}, or train a model with that part")
