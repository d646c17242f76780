"""How ``rapdeploy bench`` times and counts: interleaved timing, latency statistics, the FLOP counter, and the
adapters' cost (RAP vs the same frozen CLIP with meanP pooling)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

# After a call, ONNX Runtime's and OpenMP's worker threads keep spinning for some milliseconds; a call of another
# runtime started in that window shares the cores with them (measured: a 2-thread PyTorch GEMM right after an ONNX
# Runtime call ran at 2 GFLOP/s instead of 130 for 10 ms, at full speed after 50 ms). Each timed call of another
# function than the previous one therefore starts once they have parked (:func:`settle`), and at the latest after
# SETTLE_SECONDS.
SETTLE_SECONDS = 0.2
SETTLE_WINDOW_SECONDS = 0.01
SETTLE_QUIET_WINDOWS = 2
# A window is quiet when the process used between these many cores: the waiting thread is one, so more means another
# thread still ran; less means the waiting thread itself was not seen running (descheduled, or a CPU clock too coarse
# to tell), so the window says nothing.
QUIET_CORES = (0.5, 1.25)


def settle(seconds: float = SETTLE_SECONDS, watch_process: bool = True,
           clock: Callable[[], float] = time.perf_counter, cpu_clock: Callable[[], float] = time.process_time
           ) -> float:
    """Wait until the thread pools of the previous call have parked; returns the seconds waited.

    The wait is busy, so the timed thread's own core stays awake (a sleeping thread lets the virtual CPU go idle and
    the next call would pay its wake-up), and it watches this process's CPU time: it ends after
    :data:`SETTLE_QUIET_WINDOWS` consecutive windows of :data:`SETTLE_WINDOW_SECONDS` in which the process used
    :data:`QUIET_CORES` (only the waiting thread ran), or after ``seconds``, whichever comes first. Measured on a
    2-core EPYC (the demo's engines, 5 ms windows): ONNX Runtime's workers spin 40 to 50 ms after a call, PyTorch's 5
    to 10 ms, then the process uses one core until the next call. ``watch_process=False`` waits the full ``seconds``:
    for a server in another process, whose threads this process's CPU time does not count."""
    start = last = clock()
    end = start + seconds
    cpu_last = cpu_clock()
    quiet = 0
    while True:
        now = clock()
        if now >= end:
            return max(now - start, seconds)
        if watch_process and now - last >= SETTLE_WINDOW_SECONDS:
            cpu_now = cpu_clock()
            cores = (cpu_now - cpu_last) / (now - last)
            quiet = quiet + 1 if QUIET_CORES[0] <= cores <= QUIET_CORES[1] else 0
            if quiet >= SETTLE_QUIET_WINDOWS:
                return now - start
            last, cpu_last = now, cpu_now


@dataclass
class Pauses:
    """The pauses of one bench run before a timed call that follows another function's (:func:`settle`), and the
    seconds each lasted. ``watch_process=False`` (a benchmarked server in another process) waits ``max_seconds``
    every time."""

    watch_process: bool = True
    max_seconds: float = SETTLE_SECONDS
    waited: list[float] = field(default_factory=list)

    def __call__(self) -> None:
        self.waited.append(settle(self.max_seconds, self.watch_process))

    def summary(self) -> dict[str, Any]:
        """``count``, ``median_ms``, ``max_ms``, ``capped`` (how many lasted ``max_seconds``: the process never went
        quiet), ``total_seconds`` and the ``rule``."""
        waited = np.asarray(self.waited, dtype=np.float64)
        rule = (f"busy wait until {SETTLE_QUIET_WINDOWS} consecutive {SETTLE_WINDOW_SECONDS * 1e3:g} ms windows in "
                f"which this process used {QUIET_CORES[0]:g} to {QUIET_CORES[1]:g} cores (its other threads parked), "
                f"at most {self.max_seconds * 1e3:g} ms" if self.watch_process else
                f"{self.max_seconds * 1e3:g} ms each (a server in another process: its threads are not watched)")
        return {"count": int(waited.size), "rule": rule,
                "median_ms": round(float(np.median(waited)) * 1e3, 1) if waited.size else None,
                "max_ms": round(float(waited.max()) * 1e3, 1) if waited.size else None,
                "capped": int((waited >= self.max_seconds).sum()), "total_seconds": round(float(waited.sum()), 2)}


def time_interleaved(fns: Sequence[Callable[[], Any]], repeats: int, warmup: int,
                     tick: Callable[[int], None] | None = None,
                     pause: Callable[[], Any] | None = None) -> list[list[float]]:
    """Time several implementations of the same work fairly: after ``warmup`` untimed calls of each, every round
    times one call of each, in an order rotated per round, so load from elsewhere on a shared machine hits all
    alike; a call that follows another function's starts after ``pause`` (default :func:`settle`), so no runtime is
    timed beside the previous one's spinning threads. Returns the latencies (seconds) per function."""
    for fn in fns:
        for _ in range(warmup):
            fn()
            if tick:
                tick(1)
    out: list[list[float]] = [[] for _ in fns]
    previous = len(fns) - 1 if warmup > 0 and fns else None  # the warm-up ended with the last function's calls
    for r in range(repeats):
        for k in range(len(fns)):
            i = (k + r) % len(fns)
            if previous is not None and previous != i:
                (pause or settle)()
            previous = i
            t0 = time.perf_counter()
            fns[i]()
            out[i].append(time.perf_counter() - t0)
            if tick:
                tick(1)
    return out


PERCENTILES = (50, 90, 99)
PERCENTILE_METHOD = ("linear interpolation between the sorted timed calls (numpy.percentile's default): the q-th "
                     "percentile of n calls sits at position (n - 1)·q/100 of them; calls_needed: the fewest calls for "
                     "which it lies at or below the second-slowest call (with fewer, the slowest call alone moves it)")


def calls_for_percentile(q: int) -> int:
    """The fewest timed calls for which the ``q``-th percentile (:data:`PERCENTILE_METHOD`) lies at or below the
    second-slowest call: with fewer, it is interpolated between the two slowest calls, so the slowest call alone moves
    it (3 for p50, 11 for p90, 101 for p99).

    From ``(n - 1)·q/100 <= n - 2``, in exact fractions (floats make 1.1/0.1 come out 11.000000000000002)."""
    return math.ceil(Fraction(200 - q, 100 - q))


def percentile_notes(calls: int, percentiles: Sequence[int] = PERCENTILES, setting: str = "--repeats") -> list[str]:
    """One note when some of the reported ``percentiles`` rest on too few timed calls to be more than the slowest two
    (:func:`calls_for_percentile`), naming the ``setting`` that sets the count of calls; none when the slowest call
    alone moves none of them."""
    short = [q for q in percentiles if calls < calls_for_percentile(q)]
    if not short:
        return []
    names = ", ".join(f"p{q}" for q in short[:-1]) + (" and " if len(short) > 1 else "") + f"p{short[-1]}"
    one = len(short) == 1
    if calls == 1:  # every percentile is short of calls then
        return [f"{names} of 1 timed call {'is' if one else 'are'} that call, not percentiles; run {setting} "
                f"{calls_for_percentile(short[-1])} or more for a p{short[-1]} that the slowest call alone does not "
                "move"]
    what = "an interpolated maximum, not a percentile estimate" if one else \
        "interpolated maxima, not percentile estimates"
    need = ", ".join(f"p{q} >= {calls_for_percentile(q)}" for q in short)
    return [f"{names} of {calls} timed calls {'is' if one else 'are'} interpolated between the two slowest calls "
            f"({what}); a percentile that the slowest call alone does not move needs {need} calls ({setting})"]


def latency_stats(latencies: Sequence[float], items: int) -> dict[str, float]:
    """``{throughput (items/s over the mean latency), mean_ms, p50_ms, p90_ms, p99_ms, min_ms}``; the percentiles by
    :data:`PERCENTILE_METHOD` (few calls: :func:`percentile_notes`). Raises ``ValueError`` for no latencies."""
    lat = np.asarray(latencies, dtype=np.float64)
    if lat.size == 0:
        raise ValueError("no timed calls")
    p50, p90, p99 = np.percentile(lat, PERCENTILES) * 1e3
    mean = float(lat.mean())
    return {"throughput": items / mean if mean > 0 else float("inf"), "mean_ms": mean * 1e3, "p50_ms": float(p50),
            "p90_ms": float(p90), "p99_ms": float(p99), "min_ms": float(lat.min() * 1e3)}


# ---------------------------------------------------------------------------------------------------- FLOPs
@contextlib.contextmanager
def _flop_counter() -> Iterator[Any]:
    """A ``FlopCounterMode`` that also sees attention: PyTorch's fused MHA fast path hides the in-projection from
    the counter, so it is switched off while counting, and the CPU flash-attention kernel gets the SDPA formula."""
    import torch
    from torch.utils import flop_counter

    def cpu_flash(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = cpu_flash
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = flop_counter.FlopCounterMode(display=False, custom_mapping=mapping)
        with counter, torch.no_grad():
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (multiply-add = 2) of the PyTorch work ``fn`` does, by ``torch.utils.flop_counter``."""
    with _flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


def adapter_cost(model: Any, frames: np.ndarray, mask: np.ndarray, repeats: int, warmup: int,
                 pause: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Video-encoder latency at batch 1 of RAP vs the same frozen CLIP with meanP and no adapters (PyTorch eager).

    The meanP model is ``RAPConfig(variant="rap_light", use_lorm=False)`` on the very same backbone modules; calls
    alternate between the two (:func:`time_interleaved`, with ``pause`` between them) so machine noise hits both alike.
    """
    import torch

    from rap_deploy.model.rap import RAPModel

    meanp = RAPModel(model.clip, model.config.replace(variant="rap_light", use_lorm=False)).eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(frames[:1]).to(device)
    m = torch.as_tensor(mask[:1]).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call(net: Any) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                net.encode_video(x, m)
            sync()
        return run

    rap_lat, meanp_lat = time_interleaved([call(model), call(meanp)], max(1, repeats), max(1, warmup), pause=pause)
    times = {"rap": rap_lat, "meanp": meanp_lat}
    rap = latency_stats(times["rap"], 1)
    base = latency_stats(times["meanp"], 1)
    return {"backend": "torch", "device": str(device), "batch_size": 1, "frames": int(frames.shape[1]),
            "repeats": max(1, repeats),
            "rap_p50_ms": rap["p50_ms"], "meanp_p50_ms": base["p50_ms"], "rap_mean_ms": rap["mean_ms"],
            "meanp_mean_ms": base["mean_ms"], "ratio": rap["p50_ms"] / base["p50_ms"],
            "ratio_mean": rap["mean_ms"] / base["mean_ms"], "rap_min_ms": rap["min_ms"],
            "meanp_min_ms": base["min_ms"], "ratio_min": rap["min_ms"] / base["min_ms"],
            "meanp_model": "same frozen CLIP, meanP pooling, no LoRM and no ASA (variant rap_light, use_lorm=False)"}
