"""bounds' checkers word the refusal of values read from untrusted files (a checkpoint's options, a manifest's
numbers): the value is shown at a bounded length, and a huge int is refused as out of bounds (UsageError), not with
Python's ValueError/OverflowError about printing or converting it."""

from __future__ import annotations

import pytest

from rap_deploy import bounds
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.train.loop import TrainOptions

HUGE = 100_000
BIG_INT = 10 ** 5000  # more digits than Python prints (4300)


@pytest.mark.parametrize("value,said", [
    ("x" * HUGE, "--epochs must be an integer, got 'xxx"),
    ([0] * HUGE, "--epochs must be an integer, got [0, 0, 0, 0, 0, 0, ...]"),
    ({"k": "x" * HUGE}, "--epochs must be an integer, got {'k': 'xxx"),
    (BIG_INT, "--epochs must be <= 100, got <int too large to show>"),
    (-BIG_INT, "--epochs must be >= 1, got <int too large to show>"),
    (10 ** 4000, "--epochs must be <= 100, got 1000"),  # printable, but 5,334 characters with its commas
], ids=["padded-text", "long-list", "dict", "huge-int", "huge-negative-int", "4001-digit-int"])
def test_check_int_names_a_huge_value_short(value, said: str) -> None:
    with pytest.raises(UsageError) as err:
        bounds.check_int(value, "--epochs", 1, 100)
    message = str(err.value)
    assert message.startswith(said) and len(message) < 200, (len(message), message[:300])


@pytest.mark.parametrize("value,said", [
    ("x" * HUGE, "--lr must be a number, got 'xxx"),
    ([1.0] * HUGE, "--lr must be a number, got [1.0, 1.0,"),
    (BIG_INT, "--lr must be a number, got <int too large to show>"),
    ("1" * 5000, "--lr must be a finite number, got '111"),
], ids=["padded-text", "long-list", "huge-int", "digits-to-inf"])
def test_check_float_names_a_huge_value_short(value, said: str) -> None:
    with pytest.raises(UsageError) as err:
        bounds.check_float(value, "--lr", 0.0, 10.0)
    message = str(err.value)
    assert message.startswith(said) and len(message) < 200, (len(message), message[:300])


def test_check_format_version_names_a_padded_version_short() -> None:
    with pytest.raises(CheckFailedError) as err:
        bounds.check_format_version({"format_version": "x" * HUGE}, "m.json", "engine", 1, "the engine is damaged")
    message = str(err.value)
    assert message.startswith("m.json: format_version 'xxx") and message.endswith("; the engine is damaged")
    assert len(message) < 200, len(message)


@pytest.mark.parametrize("digits", [4000, 4300])
def test_check_format_version_names_a_huge_newer_version_short(digits: int) -> None:
    """A newer version was printed whole: a 4,000-digit one (json reads up to 4,300) made a 4,396-character line."""
    version = int("9" * digits)
    with pytest.raises(UsageError) as err:
        bounds.check_format_version({"format_version": version}, "m.json", "engine", 1, "the engine is damaged")
    message = str(err.value)
    assert message.startswith("m.json has engine format 9999") and ", newer than the format 1 this rapdeploy" in message
    assert message.endswith("reads; upgrade rapdeploy") and len(message) < 200, (len(message), message[:300])


def test_train_options_validate_names_a_padded_value_short() -> None:
    options = TrainOptions(dataset="msrvtt", data_root="/d", out="/o", batch_size="b" * HUGE)
    with pytest.raises(UsageError) as err:
        options.validate()
    assert str(err.value).startswith("--batch-size must be an integer, got 'bbb") and len(str(err.value)) < 200


def test_real_values_are_still_named_whole() -> None:
    for check, value, said in ((bounds.check_int, "twelve", "must be an integer, got 'twelve'"),
                               (bounds.check_int, 2.5, "must be an integer, got 2.5"),
                               (bounds.check_int, 70_000,
                                r"must be <= 100, got 70,000 \(the limit guards memory and time\)"),
                               (bounds.check_int, -1_000, "must be >= 1, got -1000"),
                               (bounds.check_float, "nan", "must be a finite number, got 'nan'"),
                               (bounds.check_float, "fast", "must be a number, got 'fast'")):
        with pytest.raises(UsageError, match=f"^--x {said}$"):
            check(value, "--x", 1, 100)
