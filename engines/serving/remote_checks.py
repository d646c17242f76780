"""What a KServe v2 / Triton server publishes about its models, checked against this rapdeploy's contract.

:class:`~rap_deploy.engines.serving.remote.RemoteEngine` fetches the answers (model configuration and metadata);
these functions read them: the ``rapdeploy.*`` parameters (RAP config, ASA block sizes, source checkpoint), the
sizes a server publishes, and each model's tensors (names, datatypes, ranks, output shapes). Each raises
:class:`UsageError` naming the server's URL when an answer is not what the protocol and the contract say.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rap_deploy.atomic import is_sha256
from rap_deploy.config import RAPConfig
from rap_deploy.engines.serving.contract import NUMPY_DTYPES, TEXT_GRAPH
from rap_deploy.engines.serving.remote_transport import NOT_OIP
from rap_deploy.errors import UsageError


@dataclass(frozen=True)
class ModelTensors:
    """One model's tensors as its server's metadata gives them, checked against the contract.

    ``datatypes``: each input's datatype; ``ranks``: each input's rank (Triton shows a batch-only input as
    ``[-1, 1]``); ``answers``: each wanted output's shape (``-1``: dynamic) and item size, which bound its answers.
    """

    datatypes: dict[str, str]
    ranks: dict[str, int]
    answers: dict[str, tuple[tuple[int, ...], int]]


def json_object(value: Any, url: str, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else :class:`UsageError` naming ``what`` the server at ``url`` answered."""
    if not isinstance(value, dict):
        raise UsageError(f"{url} {what}: the answer is a JSON {type(value).__name__}, not an object; {NOT_OIP}")
    return value


def published_size(value: Any, url: str, what: str, default: int, low: int = 1) -> int:
    """A size the server at ``url`` publishes (``default`` when it gives none); :class:`UsageError` for what is no
    integer in ``[low, 2**31)`` (it failed later, as a ValueError or an IndexError of an empty batch)."""
    if value is None:
        return default
    try:
        size = int(value) if isinstance(value, int | str) and not isinstance(value, bool) else None
    except ValueError:
        size = None
    if size is None or not low <= size < 1 << 31:
        raise UsageError(f"{url}: {what} is {str(value)[:40]!r}, not an integer in [{low}, 2**31)")
    return size


def rap_config(parameters: Mapping[str, str], url: str) -> RAPConfig:
    """The RAP config of the ``rapdeploy.config`` parameter of :data:`TEXT_GRAPH`; :class:`UsageError` when the
    server at ``url`` gives none or something else."""
    if "config" not in parameters:
        raise UsageError(f"{url}: model {TEXT_GRAPH} carries no rapdeploy.config parameter; serve it with "
                         "`rapdeploy serve` or a repository from `rapdeploy triton-repo`")
    try:
        return RAPConfig.from_dict(json.loads(parameters["config"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"{url}: model {TEXT_GRAPH}'s rapdeploy.config parameter is not a RAP config "
                         f"({type(exc).__name__}: {str(exc)[:100]})") from None


def asa_blocks(parameters: Mapping[str, str], url: str) -> tuple[int, int]:
    """``(queries, videos)``: the ASA block sizes of the ``rapdeploy.asa_blocks`` parameter (32 and 64 when it
    gives none); :class:`UsageError` when it is not a JSON object of sizes."""
    try:
        blocks = json.loads(parameters.get("asa_blocks") or "{}")
    except ValueError:
        blocks = None
    if not isinstance(blocks, dict):
        raise UsageError(f"{url}: model {TEXT_GRAPH}'s rapdeploy.asa_blocks parameter is not a JSON object "
                         f"({str(parameters.get('asa_blocks'))[:60]!r})")
    return (published_size(blocks.get("queries"), url, "rapdeploy.asa_blocks queries", 32),
            published_size(blocks.get("videos"), url, "rapdeploy.asa_blocks videos", 64))


def checkpoint_sha256(parameters: Mapping[str, str]) -> str | None:
    """The source checkpoint's sha256 in a model's ``rapdeploy.checkpoint`` parameter (``{"path", "sha256"}``, the
    export record the served engine was built from); ``None`` when the server publishes none or no sha256 there (a
    repository of another tool, an engine whose export recorded no checkpoint)."""
    try:
        record = json.loads(parameters.get("checkpoint") or "{}")
    except ValueError:
        return None
    sha = record.get("sha256") if isinstance(record, dict) else None
    return sha if is_sha256(sha) else None


def tensor_shape(shape: Any) -> tuple[int, ...]:
    """A tensor shape of model metadata (integers, ``-1`` for a dynamic axis); ``ValueError`` for anything else."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1
                                              for d in shape):
        raise ValueError(f"not a tensor shape: {str(shape)[:40]}")
    return tuple(shape)


def model_tensors(meta: Mapping[str, Any], url: str, graph: str,
                  want: tuple[Sequence[str], Sequence[str]]) -> ModelTensors:
    """Model ``graph``'s tensors in its metadata ``meta``; :class:`UsageError` when they are not lists of tensors,
    their inputs are not the contract's ``want[0]``, an output of ``want[1]`` is missing, or an input's datatype is
    not one rapdeploy sends."""
    what = f"model {graph} metadata"
    try:
        inputs = {t["name"]: t["datatype"] for t in meta.get("inputs", [])}
        ranks = {t["name"]: len(t.get("shape") or []) for t in meta.get("inputs", [])}
        answers = {t["name"]: (tensor_shape(t["shape"]),
                               np.dtype(NUMPY_DTYPES.get(t["datatype"], "float64")).itemsize)
                   for t in meta.get("outputs", [])}
        outputs = set(answers)
    except (TypeError, KeyError, AttributeError, ValueError):
        raise UsageError(f"{url} {what}: its inputs and outputs are not lists of tensors (name, datatype, "
                         f"shape); {NOT_OIP}") from None
    want_in, want_out = want
    if set(inputs) != set(want_in) or not set(want_out) <= outputs:
        raise UsageError(f"{url}: model {graph} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
                         f"this rapdeploy needs inputs {list(want_in)} and outputs {list(want_out)}")
    unknown = {n: d for n, d in inputs.items() if not isinstance(d, str) or d not in NUMPY_DTYPES}
    if unknown:
        raise UsageError(f"{url}: model {graph} has inputs of unsupported datatypes {str(unknown)[:200]}")
    return ModelTensors(datatypes=inputs, ranks=ranks, answers={n: answers[n] for n in want_out})
