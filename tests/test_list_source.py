"""``index --list FILE``: the list file is read line by line with a bound per line, never whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from rap_deploy.errors import UsageError
from rap_deploy.library.sources import MAX_LIST_LINE, list_source


@pytest.fixture
def never_read_whole(monkeypatch):
    """A huge binary file passed by mistake was read whole (``read_text``): a MemoryError before any check."""
    def whole(*args, **kwargs):
        raise AssertionError("the list file was read whole")

    monkeypatch.setattr(Path, "read_text", whole)
    monkeypatch.setattr(Path, "read_bytes", whole)


def test_a_binary_file_is_refused_at_its_first_long_line(tmp_path, never_read_whole):
    listing = tmp_path / "model.bin"
    listing.write_bytes(b"a.mp4\n" + b"\x7f" * (4 * MAX_LIST_LINE))
    with pytest.raises(UsageError, match=rf"{listing} line 2 is longer than {MAX_LIST_LINE} bytes.*binary"):
        list_source(listing)


def test_a_nul_line_is_named_with_its_number(tmp_path, never_read_whole):
    listing = tmp_path / "paths.txt"
    listing.write_bytes(b"# clips\na.mp4\nb\x00.mp4\n")
    with pytest.raises(UsageError, match=rf"{listing} line 3 holds a NUL byte.*binary"):
        list_source(listing)


def test_a_non_utf8_line_is_named_with_its_number(tmp_path, never_read_whole):
    listing = tmp_path / "paths.txt"
    listing.write_bytes(b"a.mp4\n\xff.mp4\n")
    with pytest.raises(UsageError, match=rf"{listing} line 2 is not UTF-8 text"):
        list_source(listing)


def test_line_endings_and_the_longest_line_still_read(tmp_path, never_read_whole):
    longest = "d" * (MAX_LIST_LINE - 4) + ".mp4"
    listing = tmp_path / "paths.txt"
    listing.write_bytes(f"a.mp4\r\nb.mp4\rc.mp4\n\n# note\n{longest}\r\ne.mp4".encode())
    ids = [v.video_id for v in list_source(listing).videos]
    assert ids == ["a", "b", "c", longest[:-4], "e"]


def test_line_numbers_count_as_before(tmp_path, never_read_whole):
    """``\\r`` alone ends a line as ``str.splitlines`` does, so later lines keep their numbers."""
    listing = tmp_path / "paths.txt"
    listing.write_bytes(b"a.mp4\rb.mp4\r\n" + b"d" * (MAX_LIST_LINE - 4) + b".mp4\r\n/\n")
    with pytest.raises(UsageError, match="line 4 .'/'. names no file"):
        list_source(listing)
