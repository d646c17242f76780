"""A library folder given as --engine is refused naming the engine its (untrusted) manifest says built it, as
`--engine PATH`. A padded path was cut inside that command ('--engine /engines/eee…'), and one holding a newline or a
terminal escape went into it raw: neither is a command to run. Those now name the <engine folder> placeholder and the
recorded path beside the command, shortened and escaped; a real path is still named whole, shell-quoted."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from rap_deploy.engines.engine_refs import resolve_engine
from rap_deploy.errors import UsageError


def _refusal(tmp_path: Path, built: str) -> str:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "manifest.json").write_text(json.dumps({"format": "rapdeploy.library", "format_version": 1,
                                                   "engine": {"path": built}}), encoding="utf-8")
    with pytest.raises(UsageError) as err:
        resolve_engine(lib)
    return str(err.value)


def test_a_padded_recorded_engine_is_a_placeholder_in_the_command(tmp_path: Path) -> None:
    said = _refusal(tmp_path, "/engines/" + "e" * 100_000)
    assert "pass the engine that built it, --engine <engine folder> (<engine folder> is the folder `rapdeploy " \
           "build-engine` wrote; the library records '/engines/eee" in said, said[:400]
    assert "…, which is too long to show whole)" in said and len(said) < 1500, said[-200:]


def test_a_recorded_engine_with_a_terminal_escape_is_named_escaped_outside_the_command(tmp_path: Path) -> None:
    said = _refusal(tmp_path, "/engines/a\x1b[2J\nb")
    assert "\x1b" not in said and "\n" not in said, said
    assert "--engine <engine folder> (" in said and \
           "the library records '/engines/a\\x1b[2J\\nb', which holds unprintable characters)" in said, said


def test_a_real_recorded_engine_is_named_whole_and_quoted(tmp_path: Path) -> None:
    built = "/engines/my engine " + "e" * 900
    assert f"pass the engine that built it, --engine {shlex.quote(built)} (search" in _refusal(tmp_path, built)
