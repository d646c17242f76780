"""``python -m rap_deploy.library.scale_bench``: options are checked before a run that can last an hour."""

from __future__ import annotations

import pytest

from rap_deploy.library import scale_bench


@pytest.mark.parametrize("args", [
    ["stage1", "--queries", "0"],          # no timed query: IndexError in the percentiles after every index was built
    ["stage1", "--exact-queries", "0"],
    ["stage1", "--size", "-3"],            # ValueError: negative dimensions, a traceback
    ["stage1", "--k", "0"],
    ["stage1", "--size", "10", "--k", "20"],
    ["stage1", "--target-recall", "nan"],
    ["stage1", "--threads", "0"],
    ["library", "--engine", "e", "--folder", "f", "--queries", "0"],  # after writing the library
    ["library", "--engine", "e", "--folder", "f", "--shard-size", "0"],
    ["library", "--engine", "e", "--folder", "f", "--top-m", "-1"],
])
def test_a_count_out_of_range_is_one_line_before_any_work(args, capsys, monkeypatch):
    def no_run(*a, **k):
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(scale_bench, "bench_stage1", no_run)
    monkeypatch.setattr(scale_bench, "_run_library", no_run)
    with pytest.raises(SystemExit) as stop:
        scale_bench.main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_vectors_that_cannot_fit_in_memory_are_refused_before_they_are_generated(capsys, monkeypatch):
    import psutil

    class Tiny:
        available = 1 << 20

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    monkeypatch.setattr(scale_bench, "bench_stage1", lambda *a, **k: pytest.fail("the benchmark started"))
    with pytest.raises(SystemExit) as stop:
        scale_bench.main(["stage1", "--size", "100000", "--dim", "512"])
    assert stop.value.code == 2 and "--size" in capsys.readouterr().err
