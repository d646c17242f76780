"""Errors about an annotation CSV name the file and the line the row is on, counting the blank and comma-only lines
before it (they are skipped, not numbered away: an error named row 3 for the row on line 4 after one such line)."""

from __future__ import annotations

import re

import pytest

from rap_deploy.data.annotation_files import numbered_csv_rows, read_csv
from rap_deploy.data.datasets import load_split
from rap_deploy.errors import CheckFailedError

COLUMNS = ("video_id", "sentence")


@pytest.mark.parametrize("skipped", [",\n", "\n", " , \n", ",\n\n,,\n"])
def test_a_row_lacking_a_value_is_named_by_its_line_after_skipped_lines(tmp_path, skipped):
    path = tmp_path / "a.csv"
    path.write_text("video_id,sentence\nv1,a cat\n" + skipped + "v2\n")
    line = 3 + skipped.count("\n")
    with pytest.raises(CheckFailedError, match=re.escape(f"{path} row {line} lacks a value for video_id, sentence")):
        read_csv(path, COLUMNS)


def test_an_unclosed_quote_running_to_the_end_names_the_line_it_opens_on(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('video_id,sentence\nv1,a cat\n,\n\nv2,"a dog\nv3,a car\n')
    with pytest.raises(CheckFailedError, match=re.escape(
            f"{path} row 5 has a 'sentence' value running over lines 5-6 ('a dog'...): a '\"' opened on line 5")):
        read_csv(path, COLUMNS)


def test_rows_keep_their_values_and_lines(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('video_id , sentence,note\r\nv1,a cat,"two\r\nlines"\r\n,\r\n\r\nv2\r\n')
    with pytest.raises(CheckFailedError, match=re.escape(f"{path} row 6 lacks a value")):
        read_csv(path, COLUMNS)
    path.write_text('video_id , sentence\r\nv1,"a cat"\r\n,\r\n\r\nv2,a dog,extra\r\n')
    assert numbered_csv_rows(path, COLUMNS) == [(2, {"video_id": "v1", "sentence": "a cat"}),
                                                (5, {"video_id": "v2", "sentence": "a dog", None: ["extra"]})]


def test_an_empty_msrvtt_caption_names_its_line_after_a_comma_only_line(tmp_path):
    root = tmp_path / "msrvtt"
    root.mkdir()
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,m,video7010,a cat\n,,,\n"
                                                   "ret1,m,video7011,   \n")
    with pytest.raises(CheckFailedError, match=r"MSRVTT_JSFUSION_test\.csv has an empty caption '   ' \(row 4, "
                                               r"video 'video7011'\)"):
        load_split("msrvtt", root, "test")
