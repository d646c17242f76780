"""The pause before a timed call that follows another backend's (``bench_timing.settle``): it ends once this
process's other threads have parked, or at its cap; never early for a server's threads, which it cannot see. Fake
clocks make every case exact: no test here times anything."""

from __future__ import annotations

import json

import pytest

from rap_deploy.engines.bench_format import bench_markdown, pauses_line
from rap_deploy.engines.bench_timing import (
    QUIET_CORES,
    SETTLE_QUIET_WINDOWS,
    SETTLE_SECONDS,
    SETTLE_WINDOW_SECONDS,
    Pauses,
    settle,
)


class FakeProcess:
    """A wall clock that advances ``tick`` seconds per reading, and the process's CPU time: ``cores(t)`` cores busy
    at wall time ``t`` (the waiting thread's own core included)."""

    def __init__(self, cores, tick: float = 0.0005) -> None:
        self.t, self.cpu, self.tick, self.cores = 0.0, 0.0, tick, cores

    def clock(self) -> float:
        self.cpu += self.cores(self.t) * self.tick
        self.t += self.tick
        return self.t

    def cpu_clock(self) -> float:
        return self.cpu


def test_the_pause_ends_once_the_other_threads_have_parked():
    """Worker threads spin until 45 ms (two cores busy), then only the waiting thread runs: the pause ends after
    the quiet windows that follow, long before its cap."""
    proc = FakeProcess(lambda t: 2.0 if t < 0.045 else 1.0)
    waited = settle(clock=proc.clock, cpu_clock=proc.cpu_clock)
    quiet_needed = SETTLE_QUIET_WINDOWS * SETTLE_WINDOW_SECONDS
    assert 0.045 + quiet_needed - 0.001 <= waited <= 0.045 + quiet_needed + SETTLE_WINDOW_SECONDS + 0.001
    assert waited < SETTLE_SECONDS / 2


def test_one_quiet_window_between_busy_ones_does_not_end_the_pause():
    """A thread pool that parks for a window and spins again (a second runtime's workers) keeps the pause going:
    the quiet windows must be consecutive."""
    busy = [(0.0, 0.03), (0.04, 0.07)]  # a quiet 10 ms gap between two busy spells
    proc = FakeProcess(lambda t: 2.0 if any(a <= t < b for a, b in busy) else 1.0)
    waited = settle(clock=proc.clock, cpu_clock=proc.cpu_clock)
    assert waited >= 0.07 + SETTLE_QUIET_WINDOWS * SETTLE_WINDOW_SECONDS - 0.001


@pytest.mark.parametrize("cores", [2.0, QUIET_CORES[1] + 0.1, 0.0, QUIET_CORES[0] - 0.1],
                         ids=["a thread never parks", "a little above one core", "the CPU clock never moves",
                              "the waiting thread is not seen running"])
def test_a_process_that_never_looks_quiet_waits_the_whole_cap(cores):
    """Another thread that never parks, or a CPU clock too coarse to see even the waiting thread run: the pause
    cannot tell, so it lasts its cap (the fixed pause it was before)."""
    proc = FakeProcess(lambda t: cores)
    assert settle(clock=proc.clock, cpu_clock=proc.cpu_clock) == pytest.approx(SETTLE_SECONDS, abs=0.001)
    assert settle(0.05, clock=proc.clock, cpu_clock=proc.cpu_clock) == pytest.approx(0.05, abs=0.001)


def test_a_server_in_another_process_gets_the_whole_cap():
    """This process's CPU time does not count a server's threads: with ``watch_process=False`` a quiet process
    still waits the cap."""
    proc = FakeProcess(lambda t: 1.0)
    assert settle(watch_process=False, clock=proc.clock, cpu_clock=proc.cpu_clock) >= SETTLE_SECONDS
    assert settle(clock=proc.clock, cpu_clock=proc.cpu_clock) < SETTLE_SECONDS / 4  # watched: quiet at once


def test_pauses_summary_counts_the_capped_ones_and_bench_md_prints_it():
    pauses = Pauses(waited=[0.03, 0.06, SETTLE_SECONDS, 0.05])
    summary = pauses.summary()
    assert summary["count"] == 4 and summary["capped"] == 1
    assert summary["median_ms"] == pytest.approx(55.0) and summary["max_ms"] == pytest.approx(200.0)
    assert summary["total_seconds"] == pytest.approx(0.34)
    assert "parked" in summary["rule"] and "at most 200 ms" in summary["rule"]
    assert "not watched" in Pauses(watch_process=False).summary()["rule"]
    assert Pauses().summary()["count"] == 0 and Pauses().summary()["median_ms"] is None
    result = {"load": {"pauses": summary}}
    assert pauses_line(result) == (f"pauses: 4 before a call that follows another backend's ({summary['rule']}): "
                                   "median 55 ms, longest 200 ms, 1 at the cap")
    assert pauses_line({"load": {"clean": True}}) is None  # an older bench.json


def test_bench_json_and_md_record_the_runs_pauses(micro_ort_engines, tmp_path):
    """A real run through the CLI: every pause between the engine's calls and PyTorch's (and around each block's
    calibration GEMMs) is in bench.json, and bench.md says how they ended."""
    from typer.testing import CliRunner

    from rap_deploy.cli import app

    out = tmp_path / "bench"
    res = CliRunner().invoke(app, ["bench", "--engine", str(micro_ort_engines["fp32"]), "--batch-sizes", "1",
                                   "--repeats", "2", "--warmup", "1", "--graphs", "text", "--index-size", "4",
                                   "--no-compare-meanp", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "bench.json").read_text())
    pauses = report["load"]["pauses"]
    # one (graph, batch) block: a pause before each of its two calibration GEMMs, and before each timed call that
    # follows the other backend's: the warm-up ends with the engine's call, round 1 times torch then the engine
    # (two pauses), round 2 the engine then torch (one)
    assert pauses["count"] == 2 + 3
    assert 0 <= pauses["capped"] <= pauses["count"] and 0 < pauses["max_ms"] <= SETTLE_SECONDS * 1e3 + 50
    assert "parked" in pauses["rule"]
    assert pauses_line(report) in bench_markdown(report)
