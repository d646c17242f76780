"""Progress off a terminal (nohup, sbatch, a pipe): plain, rate-limited lines on stderr, nothing on stdout.

The clock is patched; no test waits.
"""

from __future__ import annotations

import io
import itertools
import shutil

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.data import progress


def _ticking_clock(monkeypatch, step: float) -> None:
    ticks = itertools.count(0.0, step)
    monkeypatch.setattr(progress, "_clock", lambda: next(ticks))


def _run(total: int, enabled: bool = True) -> None:
    with progress.progress_bar(total, "decoding videos", enabled, unit="videos") as advance:
        for _ in range(total):
            advance()


def test_off_a_terminal_a_line_every_interval_and_a_last_one(monkeypatch, capsys):
    _ticking_clock(monkeypatch, 20.0)  # each step takes 20 s: a line every 3 steps (60 s)
    _run(9)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "decoding videos: 3/9 (33 %), 0.05 videos/s, ETA 2 min 00 s", lines
    assert len(lines) == 4 and lines[-1] == "decoding videos: 9/9 (100 %), 0.045 videos/s, done in 3 min 20 s", lines


def test_a_short_run_or_a_quiet_one_prints_nothing(monkeypatch, capsys):
    _ticking_clock(monkeypatch, 2.0)  # 40 s in all: under one interval
    _run(20)
    _ticking_clock(monkeypatch, 100.0)
    _run(20, enabled=False)
    assert capsys.readouterr() == ("", "")


def test_line_format_hours_rate_and_unknown_eta(monkeypatch):
    _ticking_clock(monkeypatch, 0.0)
    lines = progress.PlainProgress(9000, "decoding videos", "videos")
    lines.done = 1200
    assert lines.line(1200 / 2.1) == "decoding videos: 1200/9000 (13 %), 2.1 videos/s, ETA 1 h 01 min"
    lines.done = 0
    assert lines.line(40.0) == "decoding videos: 0/9000 (0 %), 0 videos/s, ETA unknown"
    assert progress.PlainProgress(0, "ASA similarity").line(5.0) == "ASA similarity: 0/0, 0 steps/s, ETA unknown"


def test_a_closed_stderr_does_not_fail_the_run(monkeypatch):
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr("sys.stderr", closed)
    _ticking_clock(monkeypatch, 100.0)
    _run(3)  # no ValueError from the closed stream


@pytest.mark.parametrize("quiet", [False, True])
def test_index_off_a_terminal_logs_progress_to_stderr_only(synth_root, micro_checkpoint, tmp_path, monkeypatch,
                                                           quiet):
    """``index`` gave progress only to a terminal (its own isatty check): under nohup it printed nothing."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for i, src in enumerate(sorted((synth_root / "videos").glob("*.mp4"))[:2]):
        shutil.copy(src, folder / f"v{i}.mp4")
    _ticking_clock(monkeypatch, 100.0)
    res = CliRunner().invoke(app, ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out",
                                   str(tmp_path / "lib"), "--cache-dir", str(tmp_path / "frames"), "--batch-size",
                                   "1", *(["--quiet"] if quiet else [])])
    assert res.exit_code == 0, res.output
    assert "encoding videos:" not in res.stdout
    if quiet:
        assert "encoding videos" not in res.stderr
    else:
        assert "encoding videos: 1/2 (50 %)" in res.stderr and "encoding videos: 2/2 (100 %)" in res.stderr, res.stderr
