"""The environment a report records beside its measurements (engines/report_env.py)."""

from __future__ import annotations

from importlib import metadata


def test_library_versions_finds_tensorrt_installed_as_its_cuda_package(monkeypatch):
    """`tensorrt` is NVIDIA's meta package; `pip install tensorrt-cu12` alone gives no `tensorrt` distribution, and the
    bench and verify reports recorded no TensorRT version for such a machine. The CUDA-specific names are read too."""
    from engines import report_env

    installed = {"torch": "2.14.1", "tensorrt-cu12": "10.16.0", "tensorrt-cu12-bindings": "10.16.0"}

    def version(name: str) -> str:
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(report_env.metadata, "version", version)
    found = report_env.library_versions()
    assert found["tensorrt-cu12"] == found["tensorrt-cu12-bindings"] == "10.16.0"
    assert "tensorrt" not in found and found["torch"] == "2.14.1" and "python" in found


def test_verify_rows_sign_every_delta_engine_minus_reference_and_print_counts_whole():
    """verify's table printed the change of tied queries, a count, as '+2.00'; deltas are engine − reference with
    their sign (a lost R@1 is negative, a worse MdR positive), counts whole."""
    from engines.reports import verify_markdown, verify_rows

    def metrics(r1: float, mdr: float, ties: int) -> dict:
        return {"R1": r1, "R5": 80.0, "R10": 90.0, "MdR": mdr, "MnR": 3.0, "RSum": r1 + 170.0, "ties": ties,
                "queries": 200}

    ref, eng = metrics(45.0, 2.0, 1), metrics(44.5, 2.5, 3)
    section = {"reference": {"t2v": ref, "v2t": ref}, "engine": {"t2v": eng, "v2t": eng},
               "delta": {d: {k: eng[k] - ref[k] for k in ("R1", "R5", "R10", "MdR", "MnR", "RSum", "ties")}
                         for d in ("t2v", "v2t")}}
    result = {**section, "passed": True, "checks": [], "two_stage": section, "counts": {"videos": 200, "captions": 200,
                                                                                        "skipped": 0}}
    rows = {(r[0], r[1]): r for r in verify_rows(result)}
    assert rows[("full ASA", "R1")][2:5] == ["45.00", "44.50", "-0.50"]
    assert rows[("full ASA", "MdR")][4] == "+0.50"
    assert rows[("two-stage", "ties")][2:5] == ["1", "3", "+2"]
    assert "| full ASA | ties | 1 | 3 | +2 | 1 | 3 | +2 |" in verify_markdown(result)
