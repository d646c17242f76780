"""What a TensorRT engine holds on its GPU is released on its device, in order, also when loading or a run fails
(tests/fake_tensorrt: the API-surface fake of TensorRT, host memory standing in for CUDA buffers)."""

from __future__ import annotations

import pytest
from conftest import fake_tensorrt_env

from rap_deploy.errors import CheckFailedError, UsageError


@pytest.fixture(scope="module")
def fake_engine_dir(micro_fp16_export, tmp_path_factory):
    """An fp32 TensorRT 10 engine folder built through the fake (not validated: the fake runs the export's graphs)."""
    from rap_deploy.engines.build import build_engine

    dest = tmp_path_factory.mktemp("trt_resources") / "tensorrt-fp32"
    with fake_tensorrt_env(10):
        build_engine(micro_fp16_export, backend="tensorrt", out=dest, workspace=dest.parent / "ws", progress=False,
                     validate=False)
    return dest


class _CountingStream:
    """A stand-in CUDA stream that counts its synchronisations."""

    cuda_stream = 0

    def __init__(self) -> None:
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1


def test_close_waits_for_the_stream_then_releases_everything_once(fake_engine_dir):
    from rap_deploy.engines.loader import load_engine

    scopes: list[int] = []
    with fake_tensorrt_env(10, scopes):
        engine = load_engine(fake_engine_dir)
        stream = engine.stream = _CountingStream()
        before = len(scopes)
        engine.close()
        assert stream.synchronized == 1 and len(scopes) == before + 1
        assert not engine.contexts and not engine.engines and engine.runtime is None and engine.stream is None
        engine.close()  # a second close releases nothing twice
        assert stream.synchronized == 1
        from rap_deploy.engines.samples import sample_inputs

        x = sample_inputs(engine.config, videos=1)
        with pytest.raises(UsageError, match="is closed"):
            engine.encode_text(x.input_ids, x.eot)
        with pytest.raises(UsageError, match="is closed"):  # not the mean-pooled similarity of an engine without ASA
            engine.asa_similarity(x.input_ids[:, :1].astype("float32"), x.frames)


def test_a_failed_run_waits_for_the_stream_before_its_buffers_go(fake_engine_dir, monkeypatch):
    """execute_async_v3 may have enqueued work on the bound buffers before it reports failure; they are released
    only after the stream is synchronised (TensorRT: releasing them earlier is undefined behaviour)."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.samples import sample_inputs

    with fake_tensorrt_env(10):
        engine = load_engine(fake_engine_dir)
        stream = engine.stream = _CountingStream()
        context = type(engine.contexts["text_encoder"])
        monkeypatch.setattr(context, "execute_async_v3", lambda self, stream_handle: False)
        x = sample_inputs(engine.config, videos=1)
        with pytest.raises(CheckFailedError, match="execute_async_v3 failed for text_encoder"):
            engine.encode_text(x.input_ids, x.eot)
        assert stream.synchronized == 1
        engine.close()


def test_a_load_refused_half_way_releases_what_it_created_on_its_device(fake_engine_dir, tmp_path, monkeypatch):
    """The text encoder's engine does not deserialize: the video encoder's engine and context, created before it,
    are released at once with the device current (close), not left to the garbage collector."""
    from rap_deploy.engines import tensorrt_backend as tb
    from rap_deploy.engines.loader import manifest_config
    from rap_deploy.engines.manifest import read_manifest

    manifest = read_manifest(fake_engine_dir)
    config = manifest_config(manifest, fake_engine_dir / "manifest.json")
    files = {name: fake_engine_dir / entry["file"] for name, entry in manifest["graphs"].items()}
    files = {"video_encoder": files["video_encoder"], "text_encoder": tmp_path / "damaged.engine",
             **{k: v for k, v in files.items() if k not in ("video_encoder", "text_encoder")}}
    files["text_encoder"].write_bytes(b"not an engine")
    closed: list[tuple[dict, dict, list]] = []
    original_close = tb.TrtEngine.close

    def close(self):
        original_close(self)
        closed.append((dict(self.engines), dict(self.contexts), list(scopes)))

    monkeypatch.setattr(tb.TrtEngine, "close", close)
    scopes: list[int] = []
    with fake_tensorrt_env(10, scopes), pytest.raises(CheckFailedError, match="cannot deserialize .*damaged.engine"):
        tb.TrtEngine(files, config, manifest.get("profiles") or {}, device_id=1)
    assert len(closed) == 1
    engines, contexts, scopes_at_close = closed[0]
    assert engines == {} and contexts == {} and scopes_at_close == [1, 1]  # opened, then closed, on GPU 1


def test_build_validation_closes_the_new_engine_when_the_reference_does_not_load(tmp_path, monkeypatch):
    """validate_engine loaded the new engine, then the reference; a reference that failed to load (a damaged export
    graph) left the new engine open, its device memory held until the garbage collector found it."""
    from rap_deploy.engines import build as build_mod
    from rap_deploy.engines import loader

    closed: list[str] = []

    class NewEngine:
        def close(self) -> None:
            closed.append("new engine")

    def no_reference(export_manifest, export_dir):
        raise CheckFailedError("the runtime cannot load the graphs of the export")

    monkeypatch.setattr(loader, "load_engine", lambda *args, **kwargs: NewEngine())
    monkeypatch.setattr(build_mod, "reference_engine", no_reference)
    with pytest.raises(CheckFailedError, match="cannot load the graphs of the export"):
        build_mod.validate_engine(tmp_path, {}, tmp_path, "fp16", name="tensorrt-fp16")
    assert closed == ["new engine"]


@pytest.mark.parametrize("fails", [False, True])
def test_the_builders_objects_are_destroyed_on_the_build_device(micro_fp16_export, tmp_path, fails):
    """build_graph made device_id current for the build, but its builder, network and config outlived that scope:
    destroyed on return with the caller's device current, or, when the build failed, whenever the error was dropped
    (a traceback holds its frames). Now they go before the scope ends, in both cases."""
    import contextlib

    from rap_deploy.engines import tensorrt_backend as tb
    from rap_deploy.engines.trt_build import build_graph
    from rap_deploy.engines.trt_plan import profile_ranges, profile_shapes
    from rap_deploy.export import read_export_manifest

    export = read_export_manifest(micro_fp16_export)
    entry = export["graphs"]["text_encoder"]
    ranges = profile_ranges(None, ["text_encoder"], context_length=export["dims"]["context_length"])
    shapes = profile_shapes("text_encoder", entry["inputs"], ranges["text_encoder"])
    source = micro_fp16_export / entry["file"]
    if fails:
        source = tmp_path / "damaged.onnx"
        source.write_bytes(b"not a graph")
    events: list[str] = []

    @contextlib.contextmanager
    def scope(device_id):
        events.append(f"enter {device_id}")
        try:
            yield
        finally:
            events.append(f"exit {device_id}")

    with fake_tensorrt_env(10) as trt, pytest.MonkeyPatch.context() as mp:
        mp.setattr(tb.CUDA, "scope", scope)
        for cls in ("Builder", "BuilderConfig", "Network"):
            mp.setattr(trt.Builder._classes[cls], "__del__", lambda self, c=cls: events.append(f"{c} destroyed"),
                       raising=False)
        try:
            build_graph(source, tmp_path / "text_encoder.engine", shapes, False, None, tmp_path / "cache",
                        graph="text_encoder", device_id=1)
        except CheckFailedError as exc:
            assert fails and "cannot parse" in str(exc)
        else:
            assert not fails
    destroyed = {"Builder destroyed", "Network destroyed"} | (set() if fails else {"BuilderConfig destroyed"})
    assert events[0] == "enter 1" and events[-1] == "exit 1" and set(events[1:-1]) == destroyed, events


def test_an_engine_refused_for_its_export_record_is_closed(fake_engine_dir, tmp_path, monkeypatch):
    """A TensorRT engine's export record is checked after the engine opened; a refused record left the opened
    engine to the garbage collector (contexts and device memory held, released on whatever device was current)."""
    import shutil

    from rap_deploy.engines import tensorrt_backend as tb
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.manifest import read_manifest, write_manifest

    copy = tmp_path / "engine"
    shutil.copytree(fake_engine_dir, copy)
    manifest = read_manifest(copy)
    manifest["export"]["config"] = {**manifest["export"]["config"], "asa_topk": 2}
    write_manifest(copy, manifest)
    closed: list[dict] = []
    original_close = tb.TrtEngine.close

    def close(self):
        original_close(self)
        closed.append(dict(self.engines))

    monkeypatch.setattr(tb.TrtEngine, "close", close)
    with fake_tensorrt_env(10), pytest.raises(CheckFailedError, match="'export.config' differs"):
        load_engine(copy)
    assert closed == [{}]
