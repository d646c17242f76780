"""``rapdeploy`` asks PyTorch for huge-page CPU allocations unless told otherwise (rap_deploy.cpu_memory)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rap_deploy.cpu_memory import GLIBC_MALLOC_ENV, HUGE_PAGES_ENV, KEEP_FREED_ENV, is_glibc, prefer_huge_pages

PROBE = ("import os, sys; from rap_deploy.cpu_memory import prefer_huge_pages; asked = prefer_huge_pages(); "
         "import torch; torch.zeros(1 << 20); print(asked, os.environ.get('THP_MEM_ALLOC_ENABLE'))")


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    proc = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    return proc.stdout.strip()


def test_huge_pages_are_asked_for_before_torch_and_an_explicit_setting_wins():
    assert _probe() == "True 1"
    assert _probe(THP_MEM_ALLOC_ENABLE="0") == "False 0"


def test_too_late_once_torch_is_imported(monkeypatch):
    import torch  # noqa: F401  (this test process has imported it long ago)

    monkeypatch.delenv(HUGE_PAGES_ENV, raising=False)
    assert prefer_huge_pages() is False and HUGE_PAGES_ENV not in os.environ


def test_the_console_entry_point_asks_before_torch_loads():
    """``rapdeploy``'s ``main()`` (not only the helper) sets it, before anything imports torch."""
    probe = ("import atexit, os, sys; sys.argv = ['rapdeploy', 'info', '--clip', 'rap-micro', '--json']; "
             "atexit.register(lambda: print('THP', os.environ.get('THP_MEM_ALLOC_ENABLE'), file=sys.stderr)); "
             "from rap_deploy.cli import main; assert 'torch' not in sys.modules; main()")
    clean = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_ENV}
    proc = subprocess.run([sys.executable, "-c", probe], env=clean, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "THP 1" in proc.stderr, proc.stderr[-2000:]


# A 64 MiB block allocated, written, freed and allocated again: the second block's minor page faults. glibc maps a
# block this large with its own mmap and unmaps it on free, so every page faults again (16,384 of 4 KiB); kept in the
# heap, it is found again without one.
REUSE_PROBE = ("import resource, sys; from rap_deploy.cpu_memory import reuse_freed_memory; "
               "applied = reuse_freed_memory(); block = bytearray(64 << 20); del block; "
               "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; block = bytearray(64 << 20); "
               "print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")
MALLOC_ENV = (*GLIBC_MALLOC_ENV, "GLIBC_TUNABLES", KEEP_FREED_ENV)


def _reuse_probe(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    proc = subprocess.run([sys.executable, "-c", REUSE_PROBE], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    applied, faults = proc.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not is_glibc(), reason="the malloc settings are glibc's; this C library is another one")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    applied, faults = _reuse_probe()
    assert applied and faults < 1000, faults  # 16,384 pages: none of them faulted in again
    default_applied, default_faults = _reuse_probe(RAPDEPLOY_KEEP_FREED_MEMORY="0")  # glibc's default behaviour
    assert not default_applied and default_faults >= 16000, default_faults


@pytest.mark.skipif(not is_glibc(), reason="the malloc settings are glibc's; this C library is another one")
def test_the_users_own_malloc_settings_win():
    for env in ({"MALLOC_TRIM_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"},
                {"MALLOC_MMAP_THRESHOLD_": "131072"}):
        assert _reuse_probe(**env)[0] is False, env


def test_the_console_entry_point_keeps_freed_memory():
    """``rapdeploy``'s ``main()`` applies the setting (the command after it allocates from the kept heap)."""
    probe = ("import atexit, sys; sys.argv = ['rapdeploy', 'info', '--clip', 'rap-micro', '--json']; "
             "import rap_deploy.cpu_memory as m; calls = []; real = m.reuse_freed_memory; "
             "m.reuse_freed_memory = lambda: calls.append(real()) or calls[-1]; "
             "atexit.register(lambda: print('REUSE', calls, file=sys.stderr)); "
             "from rap_deploy.cli import main; main()")
    clean = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    proc = subprocess.run([sys.executable, "-c", probe], env=clean, capture_output=True, text=True, timeout=300)
    expected = "REUSE [True]" if is_glibc() else "REUSE [False]"
    assert proc.returncode == 0 and expected in proc.stderr, proc.stderr[-2000:]


# 256 MiB written, a small block allocated after it (so the freed one is inside the heap, not only at its top), the big
# one freed: with freed memory kept, the process still holds it until give_back_freed_memory() returns it.
GIVE_BACK_PROBE = ("import sys; from rap_deploy.cpu_memory import give_back_freed_memory, reuse_freed_memory; "
                   "rss = lambda: int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) // 1024; "
                   "assert reuse_freed_memory(); big = bytearray(b'x') * (256 << 20); after = bytearray(b'y') * 4096; "
                   "held = rss(); del big; kept = rss(); given = give_back_freed_memory(); "
                   "print(held, kept, given, rss())")


@pytest.mark.skipif(not is_glibc() or not os.path.exists("/proc/self/status"),
                    reason="malloc_trim is glibc's and the probe reads RSS from Linux's /proc")
def test_freed_memory_is_given_back_between_stages():
    clean = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    proc = subprocess.run([sys.executable, "-c", GIVE_BACK_PROBE], env=clean, capture_output=True, text=True,
                          timeout=120, check=True)
    held, kept, given, after = proc.stdout.split()
    assert int(held) - int(kept) < 16, (held, kept)  # kept: freeing the block returned nothing to the kernel
    assert given == "True" and int(kept) - int(after) > 200, (kept, after)  # MiB: the 256 MiB block went back


def test_the_demo_gives_back_freed_memory_after_each_step(tmp_path, monkeypatch):
    """:class:`Steps` returns the heap's free memory after every step it runs (not after one it skips)."""
    import rap_deploy.cli.demo_steps as demo_steps

    calls: list[str] = []
    monkeypatch.setattr(demo_steps, "give_back_freed_memory", lambda: calls.append("given") or True)
    steps = demo_steps.Steps(lambda line: None, tmp_path)
    marker = tmp_path / "a.txt"
    assert steps.run("a", [marker], lambda: marker.write_text("a")) is True
    assert steps.run("a", [marker], lambda: marker.write_text("a")) is False  # complete: skipped
    assert calls == ["given"]
