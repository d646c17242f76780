"""The newer-format refusal names the rapdeploy version the (untrusted) manifest says wrote it: it was cut at 20
characters with no mark of the cut and printed control characters (a terminal escape) as they were."""

from __future__ import annotations

import pytest

from rap_deploy.bounds import check_format_version
from rap_deploy.errors import UsageError


def _refusal(writer: str) -> str:
    manifest = {"format_version": 2, "versions": {"rapdeploy": writer}}
    with pytest.raises(UsageError) as err:
        check_format_version(manifest, "/w/engine/manifest.json", "engine", 1, "rebuild it")
    return str(err.value)


def test_a_real_version_is_named_whole() -> None:
    assert "(written by rapdeploy 0.1.0.dev12+g1234567.d20261202)," in _refusal("0.1.0.dev12+g1234567.d20261202")


def test_a_padded_version_is_shown_cut_with_a_mark() -> None:
    said = _refusal("9.0.0" + "x" * 100_000)
    assert "(written by rapdeploy 9.0.0xxx" in said and "…)" in said, said
    assert len(said) < 400, len(said)


def test_a_version_with_a_terminal_escape_is_shown_escaped() -> None:
    said = _refusal("9.0.0\x1b[2J\x1b[31m")
    assert "\x1b" not in said, said
    assert "(written by rapdeploy '9.0.0\\x1b[2J\\x1b[31m')" in said, said
