"""TrainOptions.validate refused an unknown epoch unit or --amp by echoing the value whole; both are read back from a
run's untrusted last.pt on --resume, so a padded or escape-laden value made an error line of any length. They are now
named through name_lists.short_repr: escaped, at most VALUE_CHARS characters (reprlib marks the cut with '...')."""

from __future__ import annotations

import pytest

from rap_deploy.errors import UsageError
from rap_deploy.name_lists import VALUE_CHARS
from rap_deploy.train.loop import TrainOptions


def _refusal(**bad: object) -> str:
    with pytest.raises(UsageError) as err:
        TrainOptions(dataset="msrvtt", data_root="/d", out="/o", **bad).validate()
    return str(err.value)


@pytest.mark.parametrize("field, start, tail", [
    ("epoch_unit", "epoch unit 'vvv", "vvv' is unknown; use auto, "),
    ("amp", "--amp 'vvv", "vvv' is unknown; use auto, bf16, fp16 or off"),
])
def test_a_padded_value_is_named_short(field: str, start: str, tail: str) -> None:
    said = _refusal(**{field: "v" * 100_000})
    assert said.startswith(start) and "..." in said and tail in said, said[:200]
    assert len(said) < VALUE_CHARS + 100, len(said)


def test_a_value_with_a_terminal_escape_is_named_escaped() -> None:
    said = _refusal(amp="fp8\x1b[2J")
    assert said == "--amp 'fp8\\x1b[2J' is unknown; use auto, bf16, fp16 or off", said


def test_a_short_unknown_value_reads_as_before() -> None:
    assert _refusal(epoch_unit="clip").startswith("epoch unit 'clip' is unknown; use auto, ")
