"""d05dad0 told a UTF-16 annotation file by its byte order mark's first two bytes only: UTF-32 (FF FE 00 00, which
PowerShell's Out-File -Encoding utf32 writes) was called UTF-16 with an iconv -f UTF-16 that turns it into text with
NULs between its letters, and big-endian UTF-32 (00 00 FE FF) a byte at offset 2; UTF-16 without a mark decodes as
UTF-8 with a NUL after each ASCII letter, so a CSV was said to lack its columns, printing them with the NULs
('columns: v\\x00i\\x00d\\x00...'), and a file of NUL bytes (a copy cut off) printed its NULs as its header. The offset
of a bad byte after a UTF-8 byte order mark was counted from after the mark."""

from __future__ import annotations

import codecs
import json
import re

import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.data.annotation_files import annotation_text, read_csv, read_json, read_list
from rap_deploy.errors import CheckFailedError

HEADER = "video_id,sentence\nv1,un café\n"


def _refusal(path, data: bytes, read=read_csv) -> str:
    path.write_bytes(data)
    with pytest.raises(CheckFailedError) as raised:
        read(path, ("video_id", "sentence")) if read is read_csv else read(path)
    return str(raised.value)


def _re_save(encoding: str) -> str:
    return f"not UTF-8: re-save it as UTF-8 (iconv -f {encoding} -t UTF-8 FILE > NEW, or an editor's 'Save as UTF-8')"


@pytest.mark.parametrize(("encoding", "said"), [
    ("utf-32", "is UTF-32 text (its byte order mark FF FE 00 00), " + _re_save("UTF-32")),
    ("utf-32-be-bom", "is UTF-32 text (its byte order mark 00 00 FE FF), " + _re_save("UTF-32")),
    ("utf-16", "is UTF-16 text (its byte order mark FF FE), " + _re_save("UTF-16")),
    ("utf-16-le", "is UTF-16LE text without a byte order mark, " + _re_save("UTF-16LE")),
    ("utf-16-be", "is UTF-16BE text without a byte order mark, " + _re_save("UTF-16BE")),
    ("utf-32-le", "is UTF-32LE text without a byte order mark, " + _re_save("UTF-32LE")),
    ("utf-32-be", "is UTF-32BE text without a byte order mark, " + _re_save("UTF-32BE"))])
@pytest.mark.parametrize("read", [read_csv, read_json, read_list])
def test_utf16_and_utf32_are_named_with_and_without_a_byte_order_mark(tmp_path, encoding, said, read):
    text = HEADER if read is not read_json else json.dumps({"video_id": "v1", "caption": "un café"})
    data = codecs.BOM_UTF32_BE + text.encode("utf-32-be") if encoding == "utf-32-be-bom" else text.encode(encoding)
    assert _refusal(tmp_path / "a.txt", data, read) == f"{tmp_path / 'a.txt'} {said}"


def test_nul_bytes_are_named_by_their_offset_not_printed(tmp_path):
    path = tmp_path / "a.csv"
    said = _refusal(path, b"\0" * 5000)
    assert said == (f"{path} holds NUL bytes (the first at offset 0), which no text file does: it is damaged or not "
                    "text (a copy or download cut off can leave a file of NUL bytes); download or copy it again")
    assert "(the first at offset 21)" in _refusal(path, b"video_id,sentence\nv1,\0a cat\n")


def test_a_bad_byte_after_a_utf8_byte_order_mark_is_named_at_its_offset_in_the_file(tmp_path):
    data = codecs.BOM_UTF8 + "video_id,sentence\nv1,un café\n".encode("latin-1")
    said = _refusal(tmp_path / "a.csv", data)
    assert f"is not UTF-8 text (byte 0xe9 at offset {data.index(0xE9)}):" in said, said


def test_utf8_text_reads_as_before(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(codecs.BOM_UTF8 + b"video_id,sentence\r\nv1,a \"cat\"\rv2,un caf\xc3\xa9\n")
    assert annotation_text(path) == 'video_id,sentence\nv1,a "cat"\nv2,un café\n'
    assert read_csv(path, ("video_id", "sentence")) == [{"video_id": "v1", "sentence": 'a "cat"'},
                                                         {"video_id": "v2", "sentence": "un café"}]


def test_data_check_names_a_utf16_file_without_a_mark_in_one_line(tmp_path):
    root = tmp_path / "msrvtt"
    root.mkdir()
    (root / "MSRVTT_data.json").write_text(json.dumps({"sentences": [{"video_id": "video1", "caption": "a cat"}]}))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo1\n")
    csv = root / "MSRVTT_JSFUSION_test.csv"
    csv.write_bytes("key,vid_key,video_id,sentence\nret0,msr1,video1,a cat\n".encode("utf-16-le"))
    result = CliRunner().invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(root), "--no-cache",
                                      "--quiet"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {csv} is UTF-16LE text without a byte order mark, {_re_save('UTF-16LE')}"], lines
    assert not re.search("\0", result.stderr)
