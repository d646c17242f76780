"""A served model's Triton configuration (``ModelConfig``, Triton's own protobuf schema) and KServe v2 metadata.

One function builds the ``ModelConfig`` of a graph; ``rapdeploy triton-repo`` writes it as ``config.pbtxt`` and
``rapdeploy serve`` answers it as JSON at ``GET /v2/models/{name}/config`` (Triton's model-configuration extension),
so a client reads the same fields from either server. The ``parameters`` carry what a client needs to run the graphs
as an engine: the RAP model config, the precision, the source checkpoint and the ASA block sizes
(:data:`PARAMETER_KEYS`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rap_deploy.engines.serving.contract import BatchLimits, ServedModel, oip_datatype, triton_type

PARAM_PREFIX = "rapdeploy."
#: The ``parameters`` every served model carries (values are strings; JSON for structured ones).
PARAMETER_KEYS = ("config", "precision", "checkpoint", "asa_blocks", "engine")
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def model_parameters(config: Any, precision: str, checkpoint: Mapping[str, Any], limits: BatchLimits,
                     engine: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The ``rapdeploy.*`` parameters of a served model (see :data:`PARAMETER_KEYS`)."""
    values = {"config": json.dumps(config.to_dict(), sort_keys=True), "precision": str(precision),
              "checkpoint": json.dumps(dict(checkpoint), sort_keys=True),
              "asa_blocks": json.dumps({"queries": limits.asa_queries, "videos": limits.asa_videos}),
              "engine": json.dumps(dict(engine or {}), sort_keys=True, default=str)}
    return {PARAM_PREFIX + k: v for k, v in values.items()}


def engine_checkpoint(info: Mapping[str, Any]) -> dict[str, Any]:
    """``{"path", "sha256"}`` of the checkpoint a loaded engine's weights come from, as its ``describe()`` ``info``
    says (the manifest it was loaded from, or the file a PyTorch engine loaded and the sha256 of the bytes it read),
    ``None`` for what it does not say: what ``rapdeploy serve`` publishes, so a rebuild after the load cannot change
    it. A relative path of a file here (a PyTorch engine's, as given to it) is made absolute: the server's clients
    do not know its working folder."""
    path = info.get("checkpoint")
    if isinstance(path, str) and path and not Path(path).is_absolute() and Path(path).is_file():
        path = str(Path(path).resolve())
    return {"path": path if isinstance(path, str) else None, "sha256": info.get("checkpoint_sha256")}


def triton_model_config(model: ServedModel, platform: str, parameters: Mapping[str, str], kind: str = "cpu",
                        instances: int = 1, max_queue_delay_us: int | None = None,
                        default_model_filename: str | None = None) -> Any:
    """The ``model_config_pb2.ModelConfig`` of ``model``.

    Inputs and outputs with their exact names, ``TYPE_*`` datatypes and dims (``-1`` where dynamic, without the
    batch axis when ``max_batch_size > 0``; a tensor that is the batch axis alone gets ``dims: [1]`` with an empty
    ``reshape``, as Triton's model configuration guide prescribes, since every tensor needs non-empty dims);
    ``dynamic_batching`` with ``max_queue_delay_us`` for batchable models when given; ``instances`` instances of
    ``kind`` (``cpu`` / ``gpu``). Raises ``KeyError`` for an unknown kind.
    """
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = mc.ModelConfig(name=model.name, platform=platform, max_batch_size=int(model.max_batch_size))
    for section, tensors in ((cfg.input, model.spec.inputs), (cfg.output, model.spec.outputs)):
        for t in tensors:
            dims = model.dims(t)
            entry = section.add(name=t.name, data_type=mc.DataType.Value(triton_type(t.dtype)), dims=dims or [1])
            if not dims:  # a batch-only tensor (eot [batch]): Triton needs non-empty dims, reshaped to none
                entry.reshape.shape[:] = []
                entry.reshape.SetInParent()
    if model.max_batch_size > 0 and max_queue_delay_us is not None:
        cfg.dynamic_batching.max_queue_delay_microseconds = int(max_queue_delay_us)
    cfg.instance_group.add(count=int(instances), kind=mc.ModelInstanceGroup.Kind.Value(KINDS[kind]))
    if default_model_filename:
        cfg.default_model_filename = default_model_filename
    for key, value in parameters.items():
        cfg.parameters[key].string_value = value
    return cfg


def config_to_json(cfg: Any) -> dict[str, Any]:
    """``cfg`` as Triton answers ``GET /v2/models/{name}/config``: protobuf JSON with field names kept, int64
    values as numbers and ``max_batch_size`` even when 0."""
    from google.protobuf import json_format

    out = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    out["max_batch_size"] = int(cfg.max_batch_size)  # Triton always answers it; protobuf's printer drops a 0
    for section in ("input", "output"):
        for t in out.get(section, []):
            t["dims"] = [int(d) for d in t.get("dims", [])]
    batching = out.get("dynamic_batching")
    if batching and "max_queue_delay_microseconds" in batching:
        batching["max_queue_delay_microseconds"] = int(batching["max_queue_delay_microseconds"])
    return out


def config_to_pbtxt(cfg: Any) -> str:
    """``cfg`` in protobuf text format (``config.pbtxt``)."""
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)


def parse_pbtxt(text: str) -> Any:
    """Parse a ``config.pbtxt`` with Triton's schema; raises ``google.protobuf.text_format.ParseError``."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(text, mc.ModelConfig())


def kserve_metadata(model: ServedModel, platform: str) -> dict[str, Any]:
    """The KServe v2 model metadata (``GET /v2/models/{name}``): name, versions, platform, inputs and outputs with
    datatype and full shape (``-1`` where dynamic, batch axis included)."""

    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": oip_datatype(t.dtype), "shape": model.shape(t)} for t in specs]

    return {"name": model.name, "versions": ["1"], "platform": platform, "inputs": tensors(model.spec.inputs),
            "outputs": tensors(model.spec.outputs)}


def read_parameters(config_json: Mapping[str, Any]) -> dict[str, str]:
    """The ``rapdeploy.*`` parameters of a model-config JSON, prefix stripped (missing keys absent)."""
    params = config_json.get("parameters") or {}
    if not isinstance(params, Mapping):  # a server of another kind: as if it carried none
        return {}
    out = {}
    for key, value in params.items():
        if key.startswith(PARAM_PREFIX) and isinstance(value, Mapping):
            out[key[len(PARAM_PREFIX):]] = str(value.get("string_value", ""))
    return out
