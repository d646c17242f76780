"""verify's printed verdict line says what the verdict rests on when parity held but test videos were left out."""

from __future__ import annotations

from rich.console import Console

from rap_deploy.engines.reports import METRIC_ROWS, print_verify

RULE = "fp32 engine: no ground-truth rank may change beyond ties"


def _printed(passed: bool, parity_passed: bool, skipped: int) -> str:
    metrics = {d: {m: 0.0 for m in METRIC_ROWS} for d in ("t2v", "v2t")}
    result = {"passed": passed, "parity_passed": parity_passed, "rule": RULE, "out": "/tmp/v",
              "counts": {"videos": 7, "captions": 7, "skipped": skipped}, "reference": metrics, "engine": metrics,
              "delta": metrics}
    console = Console(record=True, width=400)
    print_verify(result, console=console)
    return console.export_text().splitlines()[-1]


def test_a_verify_failed_only_for_left_out_videos_does_not_read_as_a_broken_rule():
    """Before: 'verify FAILED (fp32 engine: no ground-truth rank may change beyond ties ...)', the rule as the
    reason, when every rank held and verify failed because 1 of 8 test videos was missing (ae689c1)."""
    assert _printed(False, True, 1) == (
        f"verify FAILED (parity held ({RULE}) over the 7 test videos that decode, but 1 asked for were missing or "
        "undecodable; --allow-skipped accepts that); reports in /tmp/v")


def test_a_parity_verdict_still_names_the_rule():
    assert _printed(False, False, 1) == f"verify FAILED ({RULE}); reports in /tmp/v"
    assert _printed(True, True, 1) == f"verify PASSED ({RULE}); reports in /tmp/v"
    assert _printed(True, True, 0) == f"verify PASSED ({RULE}); reports in /tmp/v"
