"""Serving without a server: the Open Inference Protocol codec (JSON and binary tensors, FP16, every refusal), the
served-model contract derived from the export's graph specs, Triton model configs, and the dynamic batcher."""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib

import numpy as np
import pytest
from conftest import micro_config
from tritonclient.grpc import model_config_pb2 as mc

from rap_deploy.atomic import sha256_file
from rap_deploy.engines.serving.batcher import DynamicBatcher, QueueFullError
from rap_deploy.engines.serving.contract import (
    ServedModel,
    batch_axis,
    batch_limits,
    check_input_values,
    served_models,
)
from rap_deploy.engines.serving.model_config import (
    config_to_json,
    config_to_pbtxt,
    kserve_metadata,
    parse_pbtxt,
    read_parameters,
    triton_model_config,
)
from rap_deploy.engines.serving.oip import (
    HEADER_LENGTH,
    MAX_GZIP_MEMBERS,
    InferRequest,
    RequestError,
    decode_body,
    encode_infer_response,
    parse_infer_request,
)
from rap_deploy.export.export_config import GraphSpec, ModelDims, TensorSpec, graph_specs
from rap_deploy.graphs import GRAPH_NAMES

DIMS = ModelDims(frames=4, image_size=32, grid=(4, 4), embed_dim=32, context_length=32, asa_token_width=3 * 16)


@pytest.fixture(scope="module")
def models():
    """Served models of the micro model's contract with the project's default batch limits."""
    return served_models(graph_specs(DIMS, True), batch_limits(None))


def _binary_request(inputs: dict[str, np.ndarray], datatypes: dict[str, str], outputs=None):
    """A request as tritonclient builds it: JSON header, then each input's raw bytes."""
    import tritonclient.http as hc

    items = []
    for name, arr in inputs.items():
        item = hc.InferInput(name, list(arr.shape), datatypes[name])
        item.set_data_from_numpy(arr, binary_data=True)
        items.append(item)
    body, header = hc.InferenceServerClient.generate_request_body(items, outputs=outputs)
    return body, str(header)


def _decode(body: bytes, headers: dict[str, str]):
    import tritonclient.http as hc

    return hc.InferenceServerClient.parse_response_body(body, header_length=headers.get(HEADER_LENGTH))


def test_served_models_follow_the_graph_specs(models):
    assert list(models) == list(GRAPH_NAMES)
    video, text, asa = (models[g] for g in GRAPH_NAMES)
    # batchable graphs get the profile defaults; the ASA head has two independent axes
    assert (video.max_batch_size, text.max_batch_size, asa.max_batch_size) == (32, 128, 0)
    assert batch_axis(video.spec) == "batch" and batch_axis(asa.spec) is None
    frames = video.tensor("frames")
    assert video.shape(frames) == [-1, 4, 3, 32, 32] and video.dims(frames) == [4, 3, 32, 32]
    assert asa.dims(asa.tensor("patch_tokens")) == [-1, 4, 16, 32]
    assert asa.shape(asa.tensor("similarity")) == [-1, -1]
    meta = kserve_metadata(text, "x")
    assert meta["inputs"] == [{"name": "input_ids", "datatype": "INT32", "shape": [-1, -1]},
                              {"name": "eot", "datatype": "INT32", "shape": [-1]}]
    limited = served_models(graph_specs(DIMS, True), batch_limits(None), text_max_batch=1)
    assert limited["text_encoder"].max_batch_size == 1


def test_batch_limits_read_tensorrt_profiles_and_ort_blocks():
    trt = {"profiles": {"video_encoder": {"batch": {"min": 1, "opt": 4, "max": 8}},
                        "text_encoder": {"batch": {"min": 1, "opt": 16, "max": 64}},
                        "asa_head": {"queries": {"max": 16}, "videos": {"max": 48}}}}
    got = batch_limits(trt)
    assert (got.video, got.text, got.asa_queries, got.asa_videos) == (8, 64, 16, 48)
    ort = batch_limits({"asa_blocks": {"queries": 8, "videos": 24}})
    assert (ort.video, ort.text, ort.asa_queries, ort.asa_videos) == (32, 128, 8, 24)


def test_triton_config_round_trips_through_tritons_schema(models):
    cfg = triton_model_config(models["video_encoder"], "onnxruntime_onnx", {"rapdeploy.precision": "fp32"}, "cpu", 2,
                              1500)
    parsed = parse_pbtxt(config_to_pbtxt(cfg))
    assert parsed == cfg
    assert parsed.max_batch_size == 32 and parsed.dynamic_batching.max_queue_delay_microseconds == 1500
    assert [i.name for i in parsed.input] == ["frames", "frame_mask"]
    assert list(parsed.input[0].dims) == [4, 3, 32, 32] and parsed.instance_group[0].count == 2
    as_json = config_to_json(cfg)
    assert as_json["input"][0]["dims"] == [4, 3, 32, 32] and as_json["input"][0]["data_type"] == "TYPE_FP32"
    assert read_parameters(as_json) == {"precision": "fp32"}
    asa = triton_model_config(models["asa_head"], "tensorrt_plan", {}, "gpu", 1, None)
    assert asa.max_batch_size == 0 and not asa.HasField("dynamic_batching")
    assert list(asa.output[0].dims) == [-1, -1]


def test_binary_and_json_requests_parse_exactly(models):
    rng = np.random.default_rng(0)
    model = models["video_encoder"]
    frames = rng.standard_normal((2, 4, 3, 32, 32)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32)
    body, header = _binary_request({"frames": frames, "frame_mask": mask}, {"frames": "FP32", "frame_mask": "FP32"})
    req = parse_infer_request(body, header, model)
    assert np.array_equal(req.inputs["frames"], frames) and np.array_equal(req.inputs["frame_mask"], mask)
    assert req.outputs == {n: True for n in model.output_names}  # tritonclient without outputs: all binary
    doc = {"id": "q1", "inputs": [
        {"name": "frame_mask", "datatype": "FP32", "shape": [2, 4], "data": mask.tolist()},
        {"name": "frames", "datatype": "FP32", "shape": [2, 4, 3, 32, 32], "data": frames.ravel().tolist()}],
        "outputs": [{"name": "video_emb"}]}
    req = parse_infer_request(json.dumps(doc).encode(), None, model)
    assert np.array_equal(req.inputs["frames"], frames) and req.outputs == {"video_emb": False}
    assert req.id == "q1"


def test_responses_decode_bit_exact_with_tritonclient(models):
    rng = np.random.default_rng(1)
    model = models["video_encoder"]
    outs = {"video_emb": rng.standard_normal((2, 32)).astype(np.float32),
            "frame_emb": rng.standard_normal((2, 4, 32)).astype(np.float32),
            "patch_tokens": rng.standard_normal((2, 4, 16, 32)).astype(np.float32),
            "asa_tokens": rng.standard_normal((2, 4, 16, 48)).astype(np.float32)}
    for binary in (True, False):
        req = InferRequest({}, {n: binary for n in model.output_names}, id="7")
        body, headers = encode_infer_response(model, req, outs)
        assert (HEADER_LENGTH in headers) == binary
        result = _decode(body, headers)
        for name, arr in outs.items():
            assert np.array_equal(result.as_numpy(name), arr), (name, binary)
        assert result.get_response()["id"] == "7"


def test_fp16_tensors_in_and_out():
    """An fp16 tensor (the index's storage dtype, e.g. a future ``asa_tokens``) is FP16 on the wire both ways."""
    spec = GraphSpec("asa_head", (TensorSpec("text_emb", ("queries", 8), "float32"),
                                  TensorSpec("tokens", ("videos", 4, 8), "float16")),
                     (TensorSpec("similarity", ("queries", "videos"), "float32"),
                      TensorSpec("echo", ("videos", 4, 8), "float16")))
    model = ServedModel(spec, 0)
    tokens = np.random.default_rng(2).standard_normal((3, 4, 8)).astype(np.float16)
    text = np.ones((2, 8), np.float32)
    body, header = _binary_request({"text_emb": text, "tokens": tokens}, {"text_emb": "FP32", "tokens": "FP16"})
    req = parse_infer_request(body, header, model, {"queries": 4, "videos": 4})
    assert req.inputs["tokens"].dtype == np.float16 and np.array_equal(req.inputs["tokens"], tokens)
    doc = {"inputs": [{"name": "text_emb", "datatype": "FP32", "shape": [2, 8], "data": text.ravel().tolist()},
                      {"name": "tokens", "datatype": "FP16", "shape": [3, 4, 8],
                       "data": tokens.astype(np.float32).ravel().tolist()}]}
    assert np.array_equal(parse_infer_request(json.dumps(doc).encode(), None, model).inputs["tokens"], tokens)
    body, headers = encode_infer_response(model, req, {"similarity": np.zeros((2, 3), np.float32), "echo": tokens})
    out = _decode(body, headers)
    assert out.as_numpy("echo").dtype == np.float16 and np.array_equal(out.as_numpy("echo"), tokens)
    assert out.get_output("echo")["datatype"] == "FP16"
    cfg = parse_pbtxt(config_to_pbtxt(triton_model_config(model, "onnxruntime_onnx", {}, "cpu")))
    assert [mc.DataType.Name(t.data_type) for t in (*cfg.input, *cfg.output)] == \
        ["TYPE_FP32", "TYPE_FP16", "TYPE_FP32", "TYPE_FP16"]
    assert kserve_metadata(model, "x")["inputs"][1] == {"name": "tokens", "datatype": "FP16", "shape": [-1, 4, 8]}


def _text_doc(**changes):
    doc = {"inputs": [{"name": "input_ids", "datatype": "INT32", "shape": [1, 32], "data": [1] * 32},
                      {"name": "eot", "datatype": "INT32", "shape": [1], "data": [3]}]}
    for key, value in changes.items():
        i, field = key.split("__")
        doc["inputs"][int(i)][field] = value
    return doc


@pytest.mark.parametrize("doc, header, field", [
    (b"{not json", None, "body"),
    (b"[1, 2]", None, "body"),
    ({"inputs": []}, None, "inputs"),
    (_text_doc(**{"0__name": "ids"}), None, "inputs[0].name"),
    (_text_doc(**{"1__name": "input_ids"}), None, "inputs[1].name"),
    (_text_doc(**{"0__datatype": "INT64"}), None, "inputs[0].datatype"),
    (_text_doc(**{"0__shape": [32]}), None, "inputs[0].shape"),
    (_text_doc(**{"0__shape": [1, 31]}), None, "inputs[0].data"),  # 31 tokens are fine, 32 values are not
    (_text_doc(**{"0__shape": [1, 33], "0__data": [1] * 33}), None, "inputs[0].shape"),  # beyond the context
    (_text_doc(**{"0__shape": [129, 32]}), None, "inputs[0].shape"),
    (_text_doc(**{"0__shape": [0, 32]}), None, "inputs[0].shape"),
    (_text_doc(**{"0__shape": [1, 32.0]}), None, "inputs[0].shape"),
    (_text_doc(**{"0__data": [1] * 31}), None, "inputs[0].data"),
    (_text_doc(**{"0__data": [1.5] * 32}), None, "inputs[0].data"),
    (_text_doc(**{"0__data": ["a"] * 32}), None, "inputs[0].data"),
    (_text_doc(**{"0__data": [2**40] * 32}), None, "inputs[0].data"),
    (_text_doc(**{"1__shape": [2], "1__data": [1, 2]}), None, "inputs"),
    ({"inputs": _text_doc()["inputs"][:1]}, None, "inputs"),
    ({**_text_doc(), "outputs": [{"name": "nope"}]}, None, "outputs[0].name"),
    ({**_text_doc(), "outputs": [{"name": "text_emb", "parameters": {"classification": 3}}]}, None,
     "outputs[0].parameters"),
    (_text_doc(**{"0__parameters": {"shared_memory_region": "r"}}), None,
     "inputs[0].parameters.shared_memory_region"),
    (_text_doc(), "abc", HEADER_LENGTH),
    (_text_doc(), "999999", HEADER_LENGTH),
    (b"[" * 5000, None, "body"),  # deeper than the JSON parser recurses
    (b'{"id": ' + b"9" * 5000 + b"}", None, "body"),  # more digits than Python converts to an int
    ({**_text_doc(), "id": 7}, None, "id"),  # the protocol's id is a string: it was echoed as str() of anything,
    ({**_text_doc(), "id": {"a": [1]}}, None, "id"),  # a Python repr ("{'a': [1]}") for an object
])
def test_malformed_requests_name_the_field(models, doc, header, field):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(RequestError) as err:
        parse_infer_request(body, header, models["text_encoder"], {"tokens": 32})  # the server's axis limits
    assert err.value.status == 400 and err.value.field == field, err.value.message


def test_binary_sections_must_add_up(models):
    ids = np.ones((1, 32), np.int32)
    eot = np.zeros(1, np.int32)
    body, header = _binary_request({"input_ids": ids, "eot": eot}, {"input_ids": "INT32", "eot": "INT32"})
    for bad_body in (body[:-1], body + b"\0\0\0\0"):
        with pytest.raises(RequestError) as err:
            parse_infer_request(bad_body, header, models["text_encoder"])
        assert err.value.status == 400
    head = json.loads(body[:int(header)])
    head["inputs"][0]["parameters"]["binary_data_size"] = 64
    h = json.dumps(head).encode()
    with pytest.raises(RequestError) as err:
        parse_infer_request(h + body[int(header):], str(len(h)), models["text_encoder"])
    assert err.value.field == "inputs[0].parameters.binary_data_size"


def test_input_values_the_model_cannot_take_are_refused(models):
    cfg = micro_config()
    ok = {"input_ids": np.ones((1, 32), np.int32), "eot": np.array([3], np.int32)}
    check_input_values(models["text_encoder"], ok, cfg)
    for name, bad in (("input_ids", np.full((1, 32), 49408, np.int32)), ("input_ids", -np.ones((1, 32), np.int32)),
                      ("eot", np.array([32], np.int32))):
        with pytest.raises(ValueError) as err:
            check_input_values(models["text_encoder"], {**ok, name: bad}, cfg)
        assert err.value.args[0] == name
    short = {"input_ids": np.ones((1, 8), np.int32), "eot": np.array([7], np.int32)}
    check_input_values(models["text_encoder"], short, cfg)  # a query of 8 tokens
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        check_input_values(models["text_encoder"], {**short, "eot": np.array([8], np.int32)}, cfg)
    frames = np.zeros((1, 4, 3, 32, 32), np.float32)
    for mask in (np.zeros((1, 4), np.float32), np.full((1, 4), 0.5, np.float32)):
        with pytest.raises(ValueError):
            check_input_values(models["video_encoder"], {"frames": frames, "frame_mask": mask}, cfg)
    with pytest.raises(ValueError, match="prefix"):  # a real frame after padding: the warp clamps to a prefix
        check_input_values(models["video_encoder"], {"frames": frames, "frame_mask": np.array([[1, 0, 1, 0]],
                                                                                              np.float32)}, cfg)
    frames[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        check_input_values(models["video_encoder"], {"frames": frames, "frame_mask": np.ones((1, 4), np.float32)},
                           cfg)


def test_json_bodies_are_bounded_before_parsing_and_non_finite_outputs_are_not_a_500(models):
    body = json.dumps(_text_doc()).encode()
    with pytest.raises(RequestError) as err:
        parse_infer_request(body, None, models["text_encoder"], {"tokens": 32}, max_json=len(body) - 1)
    assert err.value.status == 413 and "binary" in err.value.message
    assert parse_infer_request(body, None, models["text_encoder"], {"tokens": 32}, max_json=len(body)).inputs
    request = parse_infer_request(body, None, models["text_encoder"], {"tokens": 32})
    with pytest.raises(RequestError) as err:  # JSON has no inf: the client is told to ask for binary data
        encode_infer_response(models["text_encoder"], request, {"text_emb": np.full((1, 16), np.inf, np.float32)})
    assert err.value.status == 422 and err.value.field == "outputs.text_emb"


@pytest.mark.parametrize("changes, option", [({"max_queue_delay_ms": float("inf")}, "--max-queue-delay-ms"),
                                             ({"max_queue_delay_ms": float("nan")}, "--max-queue-delay-ms"),
                                             ({"max_batch": 0}, "--max-batch"),
                                             ({"max_infer_body": 0}, "--max-body-mb"),
                                             ({"max_connections": 0}, "--max-connections"),
                                             ({"header_timeout_s": float("nan")}, "--header-timeout")])
def test_serve_options_out_of_range_are_usage_errors(changes, option):
    from rap_deploy.engines.serving.service import ServeOptions
    from rap_deploy.errors import UsageError

    with pytest.raises(UsageError, match=option):
        ServeOptions(**changes)
    with pytest.raises(ValueError):  # an infinite delay would kill the batcher's thread in Condition.wait
        DynamicBatcher(lambda x: x, max_batch=1, max_delay_s=float("inf"))



def test_a_body_limit_that_holds_no_request_is_a_usage_error():
    """A --max-body-mb too small for one video (0.001, or 1 for the paper's 12 frames of 224 px: 7.2 MB) was taken:
    the server published a video batch of 1 and answered every video_encoder request 413. Now it is a usage error
    naming the --max-body-mb that holds one, and below 0.125 MiB (twice the JSON header reserve) for any model."""
    from rap_deploy.engines.serving.service import BODY_HEADER_RESERVE, MiB, ServeOptions, fit_to_body, row_bytes
    from rap_deploy.errors import UsageError

    with pytest.raises(UsageError, match=r"--max-body-mb must be in \[0.125, 4096\] MiB, got 0.0625"):
        ServeOptions(max_infer_body=64 * 1024)
    paper = ModelDims(frames=12, image_size=224, grid=(7, 7), embed_dim=512, context_length=77, asa_token_width=147)
    models = served_models(graph_specs(paper, True), batch_limits(None))
    with pytest.raises(UsageError, match=r"--max-body-mb 1 cannot hold one video_encoder request .* 6.96 or more"):
        fit_to_body(models, batch_limits(None), ServeOptions(max_infer_body=MiB))
    video, asa = models["video_encoder"], models["asa_head"]
    rows = row_bytes(video.spec.inputs, "batch"), row_bytes(asa.spec.inputs, "queries"), \
        row_bytes(asa.spec.inputs, "videos")
    for body in (int(6.96 * MiB), 8 * MiB, 256 * MiB):  # what the server publishes fits the body
        out, published = fit_to_body(models, batch_limits(None), ServeOptions(max_infer_body=body))
        budget = body - BODY_HEADER_RESERVE
        assert out["video_encoder"].max_batch_size * rows[0] <= budget
        assert published.asa_queries * rows[1] + published.asa_videos * rows[2] <= budget

def test_compressed_bodies_are_bounded():
    raw = json.dumps(_text_doc()).encode()
    assert decode_body(gzip.compress(raw), "gzip", 10_000) == raw
    assert decode_body(zlib.compress(raw), "deflate", 10_000) == raw
    bomb = gzip.compress(b"0" * 5_000_000)
    with pytest.raises(RequestError) as err:
        decode_body(bomb, "gzip", 100_000)
    assert err.value.status == 413
    with pytest.raises(RequestError) as err:
        decode_body(raw, "br", 10_000)
    assert err.value.status == 415
    with pytest.raises(RequestError) as err:
        decode_body(b"garbage", "gzip", 10_000)
    assert err.value.status == 400


def test_a_gzip_body_of_several_members_is_inflated_whole_and_bounded():
    """RFC 1952 lets a gzip body hold members one after the other (zero bytes between them are padding); only the
    first was inflated, the rest silently dropped. Every member counts against the limit, and a truncated or
    trailing-garbage body is a 400."""
    first, second = b"a" * 3000, b"b" * 5000
    body = gzip.compress(first) + b"\0" * 7 + gzip.compress(second) + b"\0"
    assert decode_body(body, "gzip", 8000) == first + second
    for data, enc, limit, status in ((body, "gzip", 7999, 413), (gzip.compress(first)[:-4], "gzip", 8000, 400),
                                     (gzip.compress(first) + b"junk", "gzip", 8000, 400),
                                     (zlib.compress(first) + b"junk", "deflate", 8000, 400),
                                     (gzip.compress(b"") * (MAX_GZIP_MEMBERS + 1), "gzip", 8000, 400)):
        with pytest.raises(RequestError) as err:
            decode_body(data, enc, limit)
        assert err.value.status == status, (err.value.message, limit)


# ---------------------------------------------------------------------------------------------------- batcher
def test_batcher_joins_waiting_requests_up_to_max_batch():
    gate = threading.Event()
    seen: list[int] = []

    def fn(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append(len(x))
        if len(seen) == 1:
            gate.wait(10)  # hold the first batch so the others queue up behind it
        return x * 2, y + 1

    batcher = DynamicBatcher(fn, max_batch=4, max_delay_s=0.0)
    try:
        first = batcher.submit(np.array([[0]]), np.array([0]))
        while not seen:
            threading.Event().wait(0.01)
        futures = [batcher.submit(np.array([[i]] * rows), np.array([i] * rows)) for i, rows in
                   enumerate([1, 2, 1, 3, 1], start=1)]
        gate.set()
        results = [f.result(10) for f in futures]
        first.result(10)
    finally:
        batcher.close()
    # queued: 1+2+1 rows fill a batch of 4; 3 would overflow it and waits for the next batch with the last 1
    assert seen == [1, 4, 4]
    for i, (rows, (a, b)) in enumerate(zip([1, 2, 1, 3, 1], results, strict=True), start=1):
        assert a.shape == (rows, 1) and (a == 2 * i).all() and (b == i + 1).all()
    stats = batcher.stats.to_dict()
    assert stats["batches"] == 3 and stats["rows"] == 9 and stats["largest_batch"] == 4


def test_batcher_waits_for_the_queue_delay_and_one_at_a_time_never_joins():
    calls: list[int] = []

    def fn(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x

    batcher = DynamicBatcher(fn, max_batch=8, max_delay_s=5.0)
    try:
        futures = [batcher.submit(np.array([i])) for i in range(8)]  # a full batch runs without waiting 5 s
        assert [int(f.result(4)[0]) for f in futures] == list(range(8))
    finally:
        batcher.close()
    assert calls == [8]
    single = DynamicBatcher(fn, max_batch=1, max_delay_s=1.0)
    try:
        assert [int(single.submit(np.array([i])).result(5)[0]) for i in range(3)] == [0, 1, 2]
    finally:
        single.close()
    assert single.stats.to_dict()["largest_batch"] == 1


def test_batcher_bounds_its_queue_and_propagates_failures():
    gate = threading.Event()

    def fn(x: np.ndarray) -> np.ndarray:
        gate.wait(10)
        if (x < 0).any():
            raise ValueError("negative")
        return x

    batcher = DynamicBatcher(fn, max_batch=1, max_delay_s=0.0, max_queue=2)
    try:
        running = batcher.submit(np.array([1]))
        while batcher.queued():
            threading.Event().wait(0.01)
        queued = [batcher.submit(np.array([-1])), batcher.submit(np.array([2]))]
        with pytest.raises(QueueFullError):
            batcher.submit(np.array([3]))
        with pytest.raises(ValueError):
            batcher.submit(np.zeros(2))  # more rows than max_batch
        gate.set()
        assert running.result(10)[0] == 1
        with pytest.raises(ValueError, match="negative"):
            queued[0].result(10)
        assert queued[1].result(10)[0] == 2
        assert batcher.stats.rejected == 1 and batcher.stats.failed_batches == 1
    finally:
        gate.set()
        batcher.close()
    assert not batcher.alive
    with pytest.raises(RuntimeError):
        batcher.submit(np.array([1]))


def test_every_engine_source_gives_the_same_served_models(micro_checkpoint, micro_ort_engines):
    """Checkpoint (graph_specs of the loaded model), export manifest and engine manifest agree on every tensor."""
    from rap_deploy.engines.serving.contract import graph_specs_of, read_source
    from rap_deploy.engines.torch_backend import TorchEngine

    from_ckpt = graph_specs_of(read_source(micro_checkpoint), TorchEngine(micro_checkpoint))
    from_export = graph_specs_of(read_source(micro_ort_engines["export"]))
    from_engine = graph_specs_of(read_source(micro_ort_engines["fp32"]))

    def plain(specs):
        return {g: [(t.name, [d if isinstance(d, int) else -1 for d in t.shape], t.dtype)
                    for t in (*s.inputs, *s.outputs)] for g, s in specs.items()}

    assert plain(from_ckpt) == plain(from_export) == plain(from_engine)
    assert plain(from_ckpt)["text_encoder"] == plain(graph_specs(DIMS, True))["text_encoder"]
    assert read_source(micro_ort_engines["fp32"]).checkpoint["sha256"] == sha256_file(micro_checkpoint)


def test_a_checkpoint_source_hashes_no_file(micro_checkpoint):
    """EngineSource.checkpoint hashed a checkpoint file itself, a second read beside the engine's load that serve
    no longer publishes (it publishes the loaded engine's describe()) and triton-repo refuses checkpoints before;
    a checkpoint source now says its sha256 is its loaded engine's."""
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.errors import UsageError

    with pytest.raises(UsageError, match="its sha256 is the one its loaded engine describes"):
        _ = read_source(micro_checkpoint).checkpoint


def test_the_load_test_refuses_bad_options_and_an_unreachable_server_in_one_line(capsys):
    import socket

    from rap_deploy.engines.serving.loadtest import main

    with socket.socket() as s:  # a free port nobody listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["--url", f"http://127.0.0.1:{port}", "--seconds", "1"]) == 2
    assert "cannot reach" in capsys.readouterr().err
    assert main(["--url", f"http://127.0.0.1:{port}", "--seconds", "1", "--top-k", "-5"]) == 2
    assert "--top-k" in capsys.readouterr().err


def test_the_load_test_refuses_a_bad_port_a_missing_queries_file_and_an_unmeasurable_ratio(capsys, tmp_path):
    """Bad usage is exit 2 with one line, never a traceback: a port out of range or not a number, a --queries file
    that cannot be read, and --require-ratio without a one-at-a-time server to compare with (it would pass
    without measuring anything)."""
    from rap_deploy.engines.serving.loadtest import main

    for url in ("http://127.0.0.1:99999", "http://127.0.0.1:abc"):
        assert main(["--url", url, "--seconds", "1"]) == 2
        assert "port" in capsys.readouterr().err
    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes(b"caf\xe9\n")
    for queries in (tmp_path / "missing.txt", tmp_path, bad_utf8):
        assert main(["--url", "http://127.0.0.1:1", "--seconds", "1", "--queries", str(queries)]) == 2
        assert "--queries" in capsys.readouterr().err
    assert main(["--url", "http://127.0.0.1:1", "--seconds", "1", "--require-ratio", "2"]) == 2
    assert "--require-ratio" in capsys.readouterr().err


def test_json_outputs_are_bounded_like_json_inputs(models):
    """Binary inputs asking for JSON outputs: each output value becomes a Python float and ~20 characters of text, so
    a batch of video tokens would take gigabytes; outputs whose JSON would pass the JSON budget are refused (422,
    naming the fix) before the engine runs, binary outputs of the same request are not."""
    model = models["video_encoder"]
    arrays = {"frames": np.zeros((2, 4, 3, 32, 32), np.float32), "frame_mask": np.ones((2, 4), np.float32)}
    types = {"frames": "FP32", "frame_mask": "FP32"}
    json_out = [{"name": n, "parameters": {"binary_data": False}} for n in model.output_names]
    body = json.dumps({"inputs": [{"name": n, "datatype": "FP32", "shape": list(a.shape),
                                   "parameters": {"binary_data_size": a.nbytes}} for n, a in arrays.items()],
                       "outputs": json_out}).encode()
    header = len(body)
    body += b"".join(a.tobytes() for a in arrays.values())
    values = 2 * (32 + 4 * 32 + 4 * 16 * 32 + 4 * 16 * 48)  # every output of two videos
    with pytest.raises(RequestError) as err:
        parse_infer_request(body, str(header), model, max_json_outputs=values * 8)
    assert err.value.status == 422 and "binary" in err.value.message and err.value.field.startswith("outputs")
    assert parse_infer_request(body, str(header), model, max_json_outputs=values * 32).outputs  # within the budget
    binary, bheader = _binary_request(arrays, types)  # tritonclient's default: binary outputs
    assert all(parse_infer_request(binary, bheader, model, max_json_outputs=values * 8).outputs.values())


def test_a_batch_only_input_takes_tritons_shape_too(models):
    """The model config this server answers (as Triton's for the repository triton-repo writes) gives eot dims [1]
    reshaped to none, so a client written for Triton sends it as [B, 1]: accepted as [B], in JSON or binary; any
    other extra axis is still refused."""
    model = models["text_encoder"]
    cfg = config_to_json(triton_model_config(model, "x", {}))
    assert cfg["input"][1]["dims"] == [1] and "reshape" in cfg["input"][1]
    ids = np.array([[1, 5, 7, 2], [1, 9, 2, 0]], np.int32)
    eot = np.array([3, 2], np.int32)
    body = json.dumps(_text_doc(**{"0__shape": [2, 4], "0__data": ids.tolist(), "1__shape": [2, 1],
                                   "1__data": [[3], [2]]})).encode()
    got = parse_infer_request(body, None, model, {"tokens": 32}).inputs["eot"]
    assert got.shape == (2,) and np.array_equal(got, eot)
    body, header = _binary_request({"input_ids": ids, "eot": eot.reshape(2, 1)}, {"input_ids": "INT32", "eot": "INT32"})
    assert np.array_equal(parse_infer_request(body, header, model, {"tokens": 32}).inputs["eot"], eot)
    for shape in ([2, 2], [2, 1, 1]):
        doc = _text_doc(**{"0__shape": [2, 4], "0__data": ids.tolist(), "1__shape": shape,
                           "1__data": [0] * int(np.prod(shape))})
        with pytest.raises(RequestError) as err:
            parse_infer_request(json.dumps(doc).encode(), None, model, {"tokens": 32})
        assert err.value.status == 400 and err.value.field == "inputs[1].shape"


def test_the_page_check_names_a_chromium_it_cannot_start_in_one_line(capsys, tmp_path):
    from rap_deploy.engines.serving.page_check import main

    not_executable = tmp_path / "chromium"
    not_executable.write_text("")
    for binary in (tmp_path / "missing", not_executable):
        assert main(["--url", "http://127.0.0.1:1", "--chromium", str(binary), "--out", str(tmp_path / "p.png")]) == 2
        err = capsys.readouterr().err
        assert str(binary) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_model_config_json_always_has_max_batch_size(models):
    """Triton's config JSON always holds max_batch_size (0 included), and clients index it; protobuf's JSON printer
    leaves a zero out, so the ASA head's config had none."""
    cfg = config_to_json(triton_model_config(models["asa_head"], "x", {}))
    assert cfg["max_batch_size"] == 0
    assert config_to_json(triton_model_config(models["text_encoder"], "x", {}))["max_batch_size"] == 128


def test_load_test_percentiles_are_of_answered_requests_only():
    """A server that refuses every other search at once (503) and answers the rest after 0.2 s: the percentiles are
    the answered requests' (at least 200 ms), the refusals are counted as errors (quick 503s lowered p50 before)."""
    import http.server

    from rap_deploy.engines.serving.loadtest import run_load

    stats = json.dumps({"text_batcher": {"rows": 0, "batches": 0, "engine_seconds": 0.0, "max_batch": 1}}).encode()
    served = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._answer(200, stats)

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            served[0] += 1
            if served[0] % 2:
                time.sleep(0.2)
                self._answer(200, b"{}")
            else:
                self._answer(503, b"{}")

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        report = run_load(f"http://127.0.0.1:{httpd.server_port}", "search", clients=1, seconds=30,
                          queries=["a red circle"], max_requests=6, warmup_seconds=0)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert report["requests"] == 6 and report["ok"] == 3 and report["errors"] == {"503": 3}
    assert report["p50_ms"] >= 200 and report["p99_ms"] >= 200


@pytest.mark.parametrize("answer", [b"<html>a web page</html>", b"[]", b'{"text_batcher": {"rows": "x"}}',
                                    b'{"parameters": {"rapdeploy.config": {"string_value": "not json"}}}',
                                    b'{"parameters": {"rapdeploy.config": {"string_value": "[1]"}}}'])
def test_the_load_test_against_another_kind_of_server_is_a_one_line_error(answer, capsys):
    """--url of a loopback HTTP server that is not a `rapdeploy serve` (it answers GET with a web page, or JSON
    without the counters) died with a JSONDecodeError / KeyError / TypeError traceback after the first run."""
    import http.server

    from rap_deploy.engines.serving.loadtest import main

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_POST = do_GET

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        for target in ("search", "text"):
            code = main(["--url", f"http://127.0.0.1:{httpd.server_port}", "--target", target, "--clients", "1",
                         "--seconds", "0.1", "--max-requests", "1", "--warmup-seconds", "0"])
            err = capsys.readouterr().err
            assert code == 2 and "rapdeploy serve" in err and len(err.strip().splitlines()) == 1, err
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_the_load_test_table_shows_no_latency_for_a_run_with_no_answered_request():
    """A run whose every request was refused (a server answering 503) has no latency to report: its table row read
    'p50 0.0 | p99 0.0' (faster than any answer), and a ratio over a baseline that encoded nothing '0.00x'."""
    from rap_deploy.engines.serving.loadtest import markdown

    server = {"max_batch": 1, "text_rows": 0, "text_batches": 0, "mean_batch": 0.0, "text_rows_per_s": 0.0,
              "engine_seconds": 0.0, "text_rows_per_engine_second": 0.0}
    run = {"target": "text", "label": "one-at-a-time", "clients": 2, "requests": 9, "ok": 0, "errors": {"503": 9},
           "throughput_rps": 0.0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "server": server}
    table = markdown({"runs": [run], "ratios": {"text": {"throughput_ratio": None, "text_rows_per_s_ratio": None}}})
    row = table.splitlines()[2].split("|")
    assert [c.strip() for c in row[7:9]] == ["-", "-"], table
    assert "0.00x" not in table and "- requests/s" in table, table
