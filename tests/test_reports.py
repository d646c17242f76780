"""The environment a report records beside its measurements (engines/report_env.py, re-exported by reports.py)."""

from __future__ import annotations

from importlib import metadata


def test_library_versions_finds_tensorrt_installed_as_its_cuda_package(monkeypatch):
    """`tensorrt` is NVIDIA's meta package; `pip install tensorrt-cu12` alone gives no `tensorrt` distribution, and the
    bench and verify reports recorded no TensorRT version for such a machine. The CUDA-specific names are read too."""
    from engines import report_env, reports

    installed = {"torch": "2.14.1", "tensorrt-cu12": "10.16.0", "tensorrt-cu12-bindings": "10.16.0"}

    def version(name: str) -> str:
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(report_env.metadata, "version", version)
    found = reports.library_versions()
    assert found["tensorrt-cu12"] == found["tensorrt-cu12-bindings"] == "10.16.0"
    assert "tensorrt" not in found and found["torch"] == "2.14.1" and "python" in found
