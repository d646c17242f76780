"""An engine folder's manifest.json is untrusted (up to 64 MB): the values its refusals echo (format, precision,
backend, provider, graph names, numbers, profiles) and the lists it iterates (a graph's ``extra_files``) are bounded
before use, and the recorded names and versions later refusals print are refused when padded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rap_deploy.engines.manifest import MAX_EXTRA_FILES, MAX_TEXT_CHARS, read_manifest
from rap_deploy.engines.rebuild_commands import ort_rebuild_command
from rap_deploy.errors import CheckFailedError, UsageError

HUGE = "x" * 100_000
GOOD: dict[str, Any] = {
    "format": "rapdeploy.engine", "format_version": 1, "backend": "onnxruntime", "precision": "fp32",
    "provider": "CPUExecutionProvider", "versions": {"onnxruntime": "1.20.1"},
    "graphs": {"video_encoder": {"file": "video_encoder.onnx", "sha256": "0" * 64,
                                 "extra_files": [{"file": "video_encoder.onnx.data", "sha256": "1" * 64}]}},
}
ENTRY = GOOD["graphs"]["video_encoder"]


def _engine(tmp_path: Path, **changes: Any) -> Path:
    (tmp_path / "manifest.json").write_text(json.dumps({**GOOD, **changes}), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(("changes", "named"), [
    ({"format": HUGE}, "format 'xxx"),
    ({"precision": HUGE}, "precision 'xxx"),
    ({"backend": [HUGE]}, "backend ['xxx"),
    ({"provider": [HUGE]}, "provider ['xxx"),
    ({"graphs": {HUGE: ENTRY}}, "it lists graph 'xxx"),
    ({"session": {"threads": HUGE}}, "session threads 'xxx"),
    ({"profiles": {HUGE: 1}}, "profiles 'xxx"),
    ({"profiles": {"video_encoder": {"batch": {"min": 1, "opt": 2, "max": 1, "pad": HUGE}}}}, "profiles video_enc"),
    ({"provider": "CPUExecutionProvider" + HUGE}, "provider 'CPUExecutionProvi"),
    ({"versions": {"onnxruntime": "1." + HUGE}}, "versions 'onnxruntime' '1.xxx"),
    ({"gpu": {"name": "H200" + HUGE}}, "gpu name 'H200xxx"),
    ({"gpu": {"compute_capability": [9] * 100_000}}, "gpu compute_capability [9, 9"),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else None)
def test_padded_values_are_named_short(tmp_path: Path, changes: dict[str, Any], named: str) -> None:
    engine = _engine(tmp_path, **changes)
    with pytest.raises(UsageError if "format" in changes else CheckFailedError) as err:
        read_manifest(engine)
    message = str(err.value)
    assert str(engine / "manifest.json") in message and named in message, message[:300]
    assert len(message) < 400 + len(str(engine)), len(message)


def test_extra_files_are_counted_before_they_are_read(tmp_path: Path) -> None:
    extra = [{"file": "a", "sha256": "b"}] * 200_000
    engine = _engine(tmp_path, graphs={"video_encoder": {**ENTRY, "extra_files": extra}})
    with pytest.raises(CheckFailedError) as err:
        read_manifest(engine)
    assert f"graph 'video_encoder' lists 200,000 extra files; a build writes at most {MAX_EXTRA_FILES}" \
        in str(err.value)


def test_real_sized_values_still_read(tmp_path: Path) -> None:
    gpu = {"name": "N" * MAX_TEXT_CHARS, "compute_capability": "9.0"}
    manifest = read_manifest(_engine(tmp_path, backend="tensorrt", provider=None, gpu=gpu, export_dir="/w/ex"))
    assert manifest["gpu"] == gpu


def test_a_padded_export_folder_is_not_put_in_a_rebuild_command(tmp_path: Path) -> None:
    command = ort_rebuild_command({**GOOD, "export_dir": "/w/" + HUGE}, tmp_path / "engine")
    assert command.startswith("rapdeploy build-engine '<export folder>' ") or \
        command.startswith("rapdeploy build-engine <export folder> "), command[:200]
    assert len(command) < 300, len(command)
    assert ort_rebuild_command({**GOOD, "export_dir": "/w/my exports"}).startswith(
        "rapdeploy build-engine '/w/my exports' --backend onnxruntime")


def test_a_padded_backend_is_refused_when_read_and_an_unknown_one_still_named(tmp_path: Path) -> None:
    """The backend was only type-checked: a padded one passed read_manifest and check_runtime's 'engine backend ...
    is unknown' printed it whole (a 1,000,072-character line through load_engine). It is text of at most
    MAX_TEXT_CHARS like the other recorded names (damage, exit 1); a short unknown one (a newer rapdeploy's backend)
    still reaches that refusal (exit 2), named whole."""
    from rap_deploy.engines.manifest import check_runtime

    engine = _engine(tmp_path, backend="onnxruntime" + "x" * 1_000_000)
    with pytest.raises(CheckFailedError) as err:
        read_manifest(engine)
    message = str(err.value)
    assert message.startswith(f"{engine / 'manifest.json'}: backend 'onnxruntimexxx"), message[:300]
    assert f"is not text of at most {MAX_TEXT_CHARS} characters; the engine folder is damaged" in message
    assert len(message) < 400 + len(str(engine)), len(message)
    manifest = read_manifest(_engine(tmp_path, backend="openvino", provider=None))
    with pytest.raises(UsageError) as err:
        check_runtime(manifest, {})
    assert not isinstance(err.value, CheckFailedError)
    assert str(err.value) == "engine backend 'openvino' is unknown; this rapdeploy knows onnxruntime, tensorrt"


def test_a_padded_host_machine_is_refused_when_read(tmp_path: Path) -> None:
    """A CPU engine's host.machine was printed whole by the CPU-layout refusal ('engine was built on a MACHINE CPU
    without AVX-512, this machine has ...'): a padded one made a 1,000,000-character line through check_runtime. It is
    bounded as the other recorded names; a real one ('x86_64') still reaches that refusal (exit 2)."""
    from rap_deploy.engines.manifest import EngineMismatchError, check_runtime

    host = {"machine": "x86_64" + "x" * 1_000_000, "isa": ["avx2"]}
    engine = _engine(tmp_path, host=host)
    with pytest.raises(CheckFailedError) as err:
        read_manifest(engine)
    message = str(err.value)
    assert message.startswith(f"{engine / 'manifest.json'}: host machine 'x86_64xxx"), message[:300]
    assert len(message) < 400 + len(str(engine)), len(message)
    manifest = read_manifest(_engine(tmp_path, host={"machine": "aarch64", "isa": ["asimd"]}))
    here = {"onnxruntime": "1.20.1", "providers": ["CPUExecutionProvider"], "host": {"machine": "x86_64", "isa": []}}
    with pytest.raises(EngineMismatchError, match="^engine was built on a aarch64 CPU without AVX-512, this machine "
                                                  "has a x86_64 CPU without AVX-512"):
        check_runtime(manifest, here)
