"""An annotation file saved as UTF-16 (Windows PowerShell 5's ``>`` and ``Out-File``, Excel's 'Unicode Text') was
refused as 'is not UTF-8 text (byte 0xff at offset 0); the annotation file is damaged or not in the CLIP4Clip
format, fix or re-download it': nothing is damaged, the text is all there in another encoding. The refusal (exit 1,
one line) now says it is UTF-16 and how to re-save it as UTF-8; another encoding is told to re-save as UTF-8."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app


def _msrvtt(root, encoding: str):
    root.mkdir()
    (root / "MSRVTT_data.json").write_text(json.dumps({"sentences": [{"video_id": "video1", "caption": "a cat"}]}))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo1\n")
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr1,video1,un café\n",
                                                  encoding=encoding)
    return root / "MSRVTT_JSFUSION_test.csv"


@pytest.mark.parametrize(("encoding", "said"), [
    ("utf-16", "is UTF-16 text (its byte order mark FF FE), not UTF-8: re-save it as UTF-8 (iconv -f UTF-16 -t UTF-8 "
               "FILE > NEW, or an editor's 'Save as UTF-8')"),
    ("latin-1", "is not UTF-8 text (byte 0xe9 at offset {offset}): re-save it as UTF-8 (iconv -f ENCODING -t UTF-8 "
                "FILE > NEW, or an editor's 'Save as UTF-8'), or download it again if it is damaged")])
def test_an_annotation_file_in_another_encoding_is_named_with_the_re_save(tmp_path, encoding, said):
    csv = _msrvtt(tmp_path / "msrvtt", encoding)
    said = said.format(offset=csv.read_bytes().index(b"\xe9"))
    result = CliRunner().invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(csv.parent),
                                      "--no-cache", "--quiet"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {csv} {said}"], result.stderr
