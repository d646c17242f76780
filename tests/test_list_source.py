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


def test_a_list_of_paths_relative_to_another_folder_says_where_they_were_looked_for(micro_ort_engines, tmp_path,
                                                                                   monkeypatch):
    """``ls clips/*.mp4 > lists/paths.txt`` then ``index --list lists/paths.txt``: relative paths are read from the
    list file's folder, so every video was 'cannot read: No such file or directory' under its id alone, and neither
    the message nor --help said where they were looked for. The refusal now names the rule, the folder and the first
    path looked at (exit 1 as before); --help states the rule."""
    from typer.testing import CliRunner

    from rap_deploy.cli import app

    (tmp_path / "clips").mkdir()
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "paths.txt").write_text("clips/a.mp4\nclips/b.mp4\n")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["index", "--list", "lists/paths.txt", "--engine", str(micro_ort_engines["fp32"]),
                              "--out", str(tmp_path / "lib"), "--quiet"])
    assert res.exit_code == 1, res.output
    message = " ".join(res.output.split())
    looked = (tmp_path / "lists" / "clips" / "a.mp4").resolve()
    assert f"read from its own folder ({(tmp_path / 'lists').resolve()})" in message, message
    assert f"clips/a was looked for at {looked}" in message, message
    helped = runner.invoke(app, ["index", "--help"], env={"COLUMNS": "200"})
    assert "relative paths are read from FILE's folder" in " ".join(helped.output.split()), helped.output


def test_a_video_url_is_refused_naming_it_and_its_line(tmp_path, never_read_whole):
    """A URL in a list file was taken for a relative path: 'skipped http:/example.com/v: cannot read: No such file or
    directory (LISTDIR/http:/example.com/v.mp4)', the rest indexed with exit 0; --videos of a URL said 'video folder
    http:/example.com/videos does not exist'. Both are refused now (exit 2), the URL as typed and its line named."""
    from rap_deploy.library.sources import folder_source

    listing = tmp_path / "paths.txt"
    listing.write_text("# clips\na.mp4\nhttps://example.com/clips/v.mp4\n")
    with pytest.raises(UsageError, match=rf"{listing} line 3 \(https://example.com/clips/v.mp4\) is a URL; .*"
                                         "download the video"):
        list_source(listing)
    with pytest.raises(UsageError, match=r"^--videos s3://bucket/clips is a URL; .*--videos DIR$"):
        folder_source(Path("s3://bucket/clips"))
    listing.write_text("a.mp4\nhttp:x.mp4\nC:/clips/b.mp4\n")  # no URL: a colon in a name, a drive letter
    assert [v.video_id for v in list_source(listing).videos] == ["a", "http:x", "C:/clips/b"]
