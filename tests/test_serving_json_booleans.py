"""JSON tensor data holding booleans is refused: numpy reads ``[true, false]`` as 1/0 (a bool array, cast to FP32 or
INT32 without a word) and ``[1.0, true]`` as floats, so ``rapdeploy serve`` ran ``"data": [true, false]`` as a
frame mask of 1.0/0.0 and an ``eot`` of 1/0, where Triton and KServe v2 refuse non-numbers for numeric datatypes.
Now a 400 ``{"error", "field"}`` names the input's data, as the other malformed tensors get; 0 and 1 stay numbers."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import numpy as np
import pytest

from rap_deploy.engines.serving.contract import batch_limits, served_models
from rap_deploy.engines.serving.oip import RequestError, parse_infer_request
from rap_deploy.export.export_config import ModelDims, graph_specs

DIMS = ModelDims(frames=4, image_size=32, grid=(4, 4), embed_dim=32, context_length=32, asa_token_width=3 * 16)


@pytest.fixture(scope="module")
def models():
    return served_models(graph_specs(DIMS, True), batch_limits(None))


def _text(ids, eot, ids_shape=(1, 3), eot_shape=(1,)):
    return json.dumps({"inputs": [
        {"name": "input_ids", "datatype": "INT32", "shape": list(ids_shape), "data": ids},
        {"name": "eot", "datatype": "INT32", "shape": list(eot_shape), "data": eot}]}).encode()


def _video(mask, mask_shape=(1, 4)):
    return json.dumps({"inputs": [
        {"name": "frames", "datatype": "FP32", "shape": [1, 4, 3, 32, 32], "data": [0.5] * (4 * 3 * 32 * 32)},
        {"name": "frame_mask", "datatype": "FP32", "shape": list(mask_shape), "data": mask}]}).encode()


@pytest.mark.parametrize("body, field", [
    (_text([49406, 320, 49407], [True]), "inputs[1].data"),  # INT32 eot: was 1
    (_text([49406, 320, 49407], [[False]], eot_shape=(1, 1)), "inputs[1].data"),  # Triton's [B, 1]: was 0
    (_text([49406, 320, 49407], True), "inputs[1].data"),  # a bare value
    (_text([49406, True, 49407], [2]), "inputs[0].data"),  # one among numbers: numpy made it 1
    (_text([[49406, 320], [False, 0]], [1, 1], ids_shape=(2, 2), eot_shape=(2,)), "inputs[0].data"),  # nested
    (_video([True, True, False, False]), "inputs[1].data"),  # FP32: was 1.0 1.0 0.0 0.0
    (_video([1.0, 1.0, 1.0, True]), "inputs[1].data"),  # among floats: numpy made it 1.0
    (_video([[1, 1], [1, False]], mask_shape=(1, 4)), "inputs[1].data"),  # nested otherwise than the shape
])
def test_json_booleans_in_numeric_data_are_refused_naming_the_input(models, body, field):
    model = models["video_encoder" if b"frames" in body else "text_encoder"]
    with pytest.raises(RequestError) as err:
        parse_infer_request(body, None, model, {"tokens": 32})
    assert (err.value.status, err.value.field) == (400, field), err.value.message
    assert "true or false" in err.value.message and "send 1 or 0" in err.value.message, err.value.message
    assert ("INT32" if "text" in model.name else "FP32") in err.value.message, err.value.message


def test_zeros_and_ones_as_numbers_are_still_taken(models):
    req = parse_infer_request(_text([[49406, 1], [0, 49407]], [1, 1], ids_shape=(2, 2), eot_shape=(2,)), None,
                              models["text_encoder"], {"tokens": 32})
    assert req.inputs["input_ids"].tolist() == [[49406, 1], [0, 49407]] and req.inputs["eot"].tolist() == [1, 1]
    req = parse_infer_request(_video([1, 1.0, 0, 0.0]), None, models["video_encoder"])
    assert req.inputs["frame_mask"].dtype == np.float32 and req.inputs["frame_mask"].tolist() == [[1, 1, 0, 0]]


def test_the_server_answers_a_boolean_tensor_with_a_400_naming_it(micro_ort_engines):
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.serving.app import create_app
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.server import ServerThread
    from rap_deploy.engines.serving.service import ServingService

    path = micro_ort_engines["fp32"]
    service = ServingService(SerialEngine(load_engine(path, threads=1)), read_source(path), None)
    try:
        with ServerThread(create_app(service)) as server:
            u = urllib.parse.urlsplit(server.url)
            answers = []
            for eot in ([True], [2]):
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
                try:
                    conn.request("POST", "/v2/models/text_encoder/infer", _text([49406, 320, 49407], eot),
                                 {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    answers.append((resp.status, resp.getheader("content-type"), json.loads(resp.read())))
                finally:
                    conn.close()
    finally:
        service.close()
    (status, kind, doc), (ok_status, _, ok_doc) = answers
    assert status == 400 and kind == "application/json" and doc["field"] == "inputs[1].data", answers[0]
    assert "eot data holds true or false" in doc["error"], doc
    assert ok_status == 200 and ok_doc["outputs"][0]["name"] == "text_emb", ok_doc
