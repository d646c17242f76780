"""An annotation CSV without a needed column was refused naming every column of its first line whole: the file is
untrusted (up to 256 MB), and a first line of 200,000 columns made a 600,139-character error line, one field of
131,000 characters a 131,139-character one. The columns are now the first few, each shortened. A file whose columns
are split by tabs or semicolons (Excel's 'Unicode Text', or its CSV where the decimal mark is a comma) is told so,
not that it lacks the column it holds."""

from __future__ import annotations

import pytest

from rap_deploy.data.annotation_files import read_csv
from rap_deploy.errors import CheckFailedError
from rap_deploy.name_lists import NAMES_SHOWN, VALUE_CHARS

COLUMNS = ("video_id", "sentence")


def _refusal(path, text: str) -> str:
    path.write_text(text)
    with pytest.raises(CheckFailedError) as raised:
        read_csv(path, COLUMNS)
    return str(raised.value)


@pytest.mark.parametrize("header", ["a," * 200_000, "x" * 131_000, ",".join(f"c{i}" for i in range(12))])
def test_a_missing_column_names_a_bounded_few_columns(tmp_path, header):
    said = _refusal(tmp_path / "a.csv", header + "\nv1,x\n")
    assert said.startswith(f"{tmp_path / 'a.csv'} has no column 'video_id' (columns: "), said[:300]
    assert len(said) < len(str(tmp_path)) + 500, said[:300]
    columns = said.split("(columns: ", 1)[1].split(");", 1)[0]
    names = header.split(",")
    assert columns.startswith(", ".join(name[:VALUE_CHARS - 1] for name in names[:min(3, len(names))])), columns
    if len(names) > NAMES_SHOWN:
        assert columns.endswith(f" and {len(names) - NAMES_SHOWN} more"), columns


def test_the_real_columns_are_named_whole(tmp_path):
    said = _refusal(tmp_path / "a.csv", "key,vid_key,video,sentence\nret0,m,video1,a cat\n")
    assert "has no column 'video_id' (columns: key, vid_key, video, sentence)" in said, said


@pytest.mark.parametrize(("separator", "name"), [("\t", "tabs"), (";", "semicolons")])
def test_columns_split_by_another_separator_are_told_so(tmp_path, separator, name):
    path = tmp_path / "a.csv"
    said = _refusal(path, separator.join(("key", "vid_key", "video_id", "sentence")) + "\n"
                    + separator.join(("ret0", "m", "video1", "a cat")) + "\n")
    assert said == (f"{path} separates its columns with {name}, not commas: save it as CSV, comma-separated (Excel: "
                    "'CSV UTF-8 (Comma delimited)')")
