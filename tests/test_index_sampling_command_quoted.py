"""index into a library of another frame-sampling rate suggests a rebuild command; its --out folder was printed
unquoted, so a folder with spaces gave a command that indexed into another folder when pasted."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest

from rap_deploy.errors import UsageError
from rap_deploy.library.prepare import _check_sampling_rate


@pytest.mark.parametrize("folder", ["my libraries/msr vtt", "it's here", "plain"])
def test_the_rebuild_command_names_the_library_as_one_word(tmp_path: Path, folder: str) -> None:
    root = tmp_path / folder
    source = SimpleNamespace(kind="videos", sampling=SimpleNamespace(fps=2.0))
    with pytest.raises(UsageError) as err:
        _check_sampling_rate({"fps": 1.0}, source, root)
    message = str(err.value)
    assert "records frame sampling at fps 1.0" in message and "sampled at fps 2.0" in message
    commands = re.findall(r"`(rapdeploy index [^`]*)`", message)
    assert len(commands) == 1, message
    assert shlex.split(commands[0]) == ["rapdeploy", "index", "...", "--out", str(root), "--force"]


def test_it_is_the_one_rebuild_command_of_the_library_messages(tmp_path: Path) -> None:
    """The frame-rate refusal, the damaged and the newer format_version refusals name one command, built in one place
    (library.manifest.reindex_command)."""
    from rap_deploy.library import prepare
    from rap_deploy.library.manifest import reindex_command

    root = tmp_path / "my libraries" / "msr vtt"
    source = SimpleNamespace(kind="videos", sampling=SimpleNamespace(fps=2.0))
    with pytest.raises(UsageError) as err:
        _check_sampling_rate({"fps": 1.0}, source, root)
    assert f"with --force ({reindex_command(root)}), or index them into another library" in str(err.value)
    assert prepare.reindex_command is reindex_command
