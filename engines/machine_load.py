"""Was the machine quiet while ``rapdeploy bench`` ran? Load measurement and the ``clean`` verdict of bench.json.

Why not interleaving alone: on a shared 2-core EPYC another job slowed PyTorch's OpenMP pool 4.7× and ONNX Runtime's
pool 1.5×, so interleaved calls did not make load hit every backend alike and the printed ratios were twice too high.
A benchmark must therefore know when its numbers are unfit to print.

What is measured around every timed block (one ``(graph, batch)`` group of interleaved calls) and over the whole run:

- **CPU used by other processes** on the CPUs this process may run on: the busy time of those CPUs (``/proc/stat``
  through psutil: user, nice, system, irq, softirq) minus this process's own CPU time, per second of wall time, in
  cores. A server on this machine that bench drives (``--engine http://127.0.0.1:PORT``: the process listening on
  that loopback port) does the benchmark's own work, so its CPU time counts as the bench's, not as load. This is
  the direct measure of contention: it counts every other process, whatever its kind, while the block runs, and it
  does not lag.
- **Steal time** of those CPUs (a virtual machine's hypervisor giving the core to another guest), in cores.
- **A calibration GEMM** (fp32 matmul on the bench's own PyTorch threads) before and after every block, in GFLOP/s:
  if the machine's available compute drifts during the run (another job, thermal or frequency throttling), the
  spread of these figures shows it even when nothing else is visible.
- **The load average** (1 minute) at the start and the end, against the usable cores. It is recorded, but it does not
  decide ``clean`` on its own: it counts the bench's own threads, and it decays over about a minute, so right after a
  previous job it reports load on a machine that is quiet again.

The run is ``clean`` when, over the whole run and over every block long enough to measure (``min_block_s``), other
processes used at most ``max_other_cores`` cores on average, steal stayed at most ``max_steal_cores``, and fewer than
``max(2, ⌈10 %⌉)`` of the calibration GEMMs ran below ``min_gemm_ratio`` of their median speed (two slow ones of
up to 20 calibrations, three of 21 to 30, and so on). One slow
calibration alone is a transient of the virtual machine (measured on a quiet 2-core EPYC VM: one 100 ms window in
18 at 60 % of the median, at a random place in the run), not load that lasted through a block. Otherwise bench
marks every ratio as unreliable and says why.
"""

from __future__ import annotations

import ipaddress
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil


@dataclass(frozen=True)
class LoadThresholds:
    """Limits of a clean run (see the module docstring)."""

    max_other_cores: float = 0.25
    max_steal_cores: float = 0.10
    min_gemm_ratio: float = 0.85
    min_block_s: float = 0.5


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU counters at one instant: busy and steal seconds of our CPUs, this process's CPU seconds."""

    wall: float
    busy: float
    steal: float
    own: float


def usable_cpus() -> list[int]:
    """The CPU numbers this process may run on (its affinity), or every CPU where affinity is unknown."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(psutil.cpu_count() or 1))


def loopback_server_pids(urls: Iterable[str]) -> list[int]:
    """The processes listening on the loopback ports of ``urls``: a server on this machine whose work bench times.
    Those psutil cannot see (another user's, or no permission to list sockets) are left out."""
    ports = {port for url in urls if (port := _loopback_port(url)) is not None}
    if not ports:
        return []
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return []
    return sorted({c.pid for c in conns if c.pid and c.status == psutil.CONN_LISTEN and c.laddr
                   and c.laddr.port in ports})


def _loopback_port(url: str) -> int | None:
    """The port of an ``http(s)://`` URL whose host is loopback (``localhost``, ``127.0.0.1``, ``::1``), else None."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # an unbalanced IPv6 bracket, a port out of range
        return None
    host = parts.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return None
    return port if parts.scheme in ("http", "https") and local else None


def _cpu_affinity(pid: int) -> list[int] | None:
    """The CPUs process ``pid`` may run on, or None (gone, not ours to see, or no affinity on this platform)."""
    try:
        return psutil.Process(pid).cpu_affinity()
    except (psutil.Error, AttributeError, OSError):
        return None


def _cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) of this process and of ``pids`` (one that is gone counts nothing)."""
    total = 0.0
    for pid in {os.getpid(), *pids}:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


_PROC_STAT = Path("/proc/stat")


def cpu_times_by_number() -> dict[int, Any]:
    """psutil's times of each online CPU, keyed by CPU number. psutil lists them in order without their numbers, so
    where a CPU is offline (SMT switched off) a position is not a number: the numbers come from ``/proc/stat``'s
    ``cpuN`` lines, in the same order (positions where it cannot be read or its count differs)."""
    per_cpu = psutil.cpu_times(percpu=True)
    try:
        numbers = [int(line.split()[0][3:]) for line in _PROC_STAT.read_text().splitlines()
                   if line.startswith("cpu") and line[3:4].isdigit()]
    except (OSError, ValueError):
        numbers = []
    if len(numbers) != len(per_cpu):  # not Linux, or a CPU went on- or offline between the two reads
        numbers = list(range(len(per_cpu)))
    return dict(zip(numbers, per_cpu, strict=True))


def cpu_sample(cpus: list[int], servers: Iterable[int] = ()) -> CpuSample:
    """Read the busy / steal time of ``cpus`` and the CPU time of this process and of ``servers`` (local servers the
    bench drives: their work is its own) now."""
    per_cpu = cpu_times_by_number()
    busy = steal = 0.0
    for i in cpus:
        t = per_cpu.get(i)
        if t is None:
            continue
        busy += t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        steal += getattr(t, "steal", 0.0)
    return CpuSample(time.perf_counter(), busy, steal, _cpu_seconds(servers))


def contention(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Average cores used by other processes and stolen by the hypervisor between two samples."""
    wall = max(after.wall - before.wall, 1e-9)
    other = (after.busy - before.busy) - (after.own - before.own)
    return {"seconds": round(wall, 4), "other_cores": round(max(other, 0.0) / wall, 4),
            "steal_cores": round(max(after.steal - before.steal, 0.0) / wall, 4)}


def calibration_gemm(size: int = 256, min_seconds: float = 0.03) -> float:
    """GFLOP/s of the fastest of repeated ``size × size`` fp32 matmuls run for about ``min_seconds`` (PyTorch, on the
    current intra-op threads)."""
    import torch

    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    b = torch.randn(size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.mm(a, b)  # warm the kernel and the pool
        best = float("inf")
        start = time.perf_counter()
        while best == float("inf") or time.perf_counter() - start < min_seconds:  # at least one timed GEMM
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / max(best, 1e-9) / 1e9


@dataclass
class LoadMonitor:
    """Collects the load of each timed block and judges the run (use :meth:`block` around each block)."""

    thresholds: LoadThresholds = field(default_factory=LoadThresholds)
    gemm_seconds: float = 0.1
    cpus: list[int] = field(default_factory=usable_cpus)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    gemm_gflops: list[float] = field(default_factory=list)
    servers: list[int] = field(default_factory=list)
    pause: Callable[[], Any] | None = None  # before each calibration GEMM; default: bench_timing.settle

    def __post_init__(self) -> None:
        # A server that may run outside our CPUs spends time their busy time does not hold: counting it as ours would
        # hide that much load, so only one held to our CPUs counts (else its work shows as load: never a false clean)
        self.servers = [pid for pid in self.servers if set(_cpu_affinity(pid) or [-1]) <= set(self.cpus)]
        self._loadavg_start = _loadavg()
        self._start = cpu_sample(self.cpus, self.servers)

    @contextmanager
    def block(self, label: str) -> Iterator[None]:
        """Measure the block's contention, with a calibration GEMM just before and just after it (each after a
        pause: a GEMM beside this process's own still-spinning thread pools measures them, not the machine)."""
        from rap_deploy.engines.bench_timing import settle

        pause = self.pause or settle
        pause()
        before_gemm = calibration_gemm(min_seconds=self.gemm_seconds)
        before = cpu_sample(self.cpus, self.servers)
        yield
        after = cpu_sample(self.cpus, self.servers)
        pause()
        after_gemm = calibration_gemm(min_seconds=self.gemm_seconds)
        self.gemm_gflops += [before_gemm, after_gemm]
        self.blocks.append({"label": label, **contention(before, after),
                            "gemm_gflops_before": round(before_gemm, 2), "gemm_gflops_after": round(after_gemm, 2)})

    def summary(self) -> dict[str, Any]:
        """The ``load`` section of bench.json: measurements, thresholds, ``clean`` and the reasons when not."""
        whole = contention(self._start, cpu_sample(self.cpus, self.servers))
        reasons = judge(whole, self.blocks, self.gemm_gflops, self.thresholds)
        cores = len(self.cpus)
        start, end = self._loadavg_start, _loadavg()
        return {"clean": not reasons, "reasons": reasons, "usable_cores": cores, "cpus": self.cpus,
                "loadavg_1min_start": start, "loadavg_1min_end": end,
                "loadavg_per_core_start": None if start is None else round(start / cores, 3),
                "run": whole, "blocks": self.blocks,
                "gemm_gflops": {"min": round(min(self.gemm_gflops), 2) if self.gemm_gflops else None,
                                "max": round(max(self.gemm_gflops), 2) if self.gemm_gflops else None},
                "thresholds": asdict(self.thresholds), "server_pids": self.servers,
                "method": "other processes' CPU on our CPUs (psutil per-CPU busy time minus the CPU time of this "
                          "process and of the local servers it benchmarks), "
                          "steal time, and a calibration GEMM before and after each timed block; load average "
                          "recorded, not judged (it counts the bench itself and lags by a minute)"}


def judge(whole: dict[str, float], blocks: list[dict[str, Any]], gemm_gflops: list[float],
          limits: LoadThresholds) -> list[str]:
    """Reasons the run was not clean (empty list: clean). See the module docstring for the rules."""
    reasons = []
    measured = [("the whole run", whole)] + [(b["label"], b) for b in blocks if b["seconds"] >= limits.min_block_s]
    for label, m in measured:
        if m["other_cores"] > limits.max_other_cores:
            reasons.append(f"other processes used {m['other_cores']:.2f} cores during {label} "
                           f"(limit {limits.max_other_cores})")
        if m["steal_cores"] > limits.max_steal_cores:
            reasons.append(f"the hypervisor stole {m['steal_cores']:.2f} cores during {label} "
                           f"(limit {limits.max_steal_cores})")
    if gemm_gflops:
        median = float(np.median(gemm_gflops))
        slow = [g for g in gemm_gflops if g < limits.min_gemm_ratio * median]
        if len(slow) >= max(2, math.ceil(0.1 * len(gemm_gflops))):
            reasons.append(f"{len(slow)} of {len(gemm_gflops)} calibration GEMMs ran below "
                           f"{limits.min_gemm_ratio:.0%} of the median {median:.1f} GFLOP/s (slowest "
                           f"{min(gemm_gflops):.1f})")
    return reasons


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 3)
    except (AttributeError, OSError):
        return None
