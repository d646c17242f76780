"""A CSV error of the csv module named no line: a quote opened and never closed in an annotation CSV of more than
131,072 characters after it (the csv module's field size limit) was refused as 'is not a valid CSV file (field larger
than field limit (131072))', where a shorter file names the line the quote opens on and how to fix it. The error now
names the row's lines, and a value over the limit that runs over several lines is said to be that unclosed quote."""

from __future__ import annotations

import csv
import re

import pytest

from rap_deploy.data.annotation_files import read_csv
from rap_deploy.errors import CheckFailedError

COLUMNS = ("video_id", "sentence")


def test_an_unclosed_quote_past_the_field_limit_names_its_line(tmp_path):
    path = tmp_path / "a.csv"
    rows = 20_000
    path.write_text('video_id,sentence\nv1,a cat\n,\nv2,"a dog\n' + "v3,a car\n" * rows)
    limit = csv.field_size_limit()
    last = 4 + (limit - len("a dog\n")) // len("v3,a car\n") + 1  # the line that takes the value past the limit
    assert last < 4 + rows
    with pytest.raises(CheckFailedError, match=re.escape(
            f"{path} row 4 has a value running from line 4 past line {last}, over {limit:,} characters: a '\"' "
            "opened on line 4 is not closed there; close or remove it")):
        read_csv(path, COLUMNS)


def test_a_value_over_the_limit_on_one_line_is_named_by_its_line(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("video_id,sentence\nv1,a cat\n\nv2," + "x" * (csv.field_size_limit() + 1) + "\n")
    with pytest.raises(CheckFailedError, match=re.escape(
            f"{path} is not a valid CSV file at line 4 (field larger than field limit ({csv.field_size_limit()}))")):
        read_csv(path, COLUMNS)
