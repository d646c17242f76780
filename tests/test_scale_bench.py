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
    assert f"error: {args[-2]} " in err and "Traceback" not in err  # the option that is out of range is named


def test_vectors_that_cannot_fit_in_memory_are_refused_before_they_are_generated(capsys, monkeypatch):
    import psutil

    class Tiny:
        available = 1 << 20

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    monkeypatch.setattr(scale_bench, "bench_stage1", lambda *a, **k: pytest.fail("the benchmark started"))
    with pytest.raises(SystemExit) as stop:
        scale_bench.main(["stage1", "--size", "100000", "--dim", "512"])
    assert stop.value.code == 2 and "--size" in capsys.readouterr().err


def test_memory_without_proc_still_gives_resident_and_peak_in_mib(monkeypatch):
    """Without /proc/self/status (macOS) memory() gave only the peak, so the stage-1 run ended in KeyError 'rss' after
    building its first index, and that peak was ru_maxrss / 1024: KiB labelled MiB where ru_maxrss is in bytes."""
    import resource
    from types import SimpleNamespace

    import psutil

    monkeypatch.setattr(scale_bench, "_STATUS", scale_bench.Path("/nonexistent/status"))
    monkeypatch.setattr(scale_bench.sys, "platform", "darwin")
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=512 * 2**20))  # bytes there
    monkeypatch.setattr(psutil.Process, "memory_info", lambda self: SimpleNamespace(rss=300 * 2**20))
    assert scale_bench.memory() == {"rss": 300.0, "peak": 512.0}
    monkeypatch.setattr(scale_bench.sys, "platform", "linux")  # ru_maxrss in KiB
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=512 * 1024))
    assert scale_bench.memory() == {"rss": 300.0, "peak": 512.0}
