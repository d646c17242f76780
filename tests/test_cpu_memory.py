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
