"""``rapdeploy`` asks PyTorch for huge-page CPU allocations unless told otherwise (rap_deploy.cpu_memory)."""

from __future__ import annotations

import os
import subprocess
import sys

from rap_deploy.cpu_memory import HUGE_PAGES_ENV, prefer_huge_pages

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
