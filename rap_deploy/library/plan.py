"""The build plan: which videos go to which shard, written before encoding so a killed build can resume.

``LIB/build-plan.json`` lists the shards a build will write (name, first global row, videos). It depends only on the
library's state before the build and on the request (videos, sampling, model, shard size), never on the number of
processes: shard ``i`` of a plan holds the same videos whether one process or ``torchrun`` ranks encode it (rank ``r``
takes shards ``i ≡ r (mod world size)``). A re-run of the same request finds the plan and skips committed shards,
also when files were added to or deleted from the folder since (the plan's videos are encoded, new ones wait for the
next ``--add``); another request while a plan is pending (another model, sampling or shard size, none of the planned
videos) is refused. The plan is deleted after the manifest is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rap_deploy.atomic import write_json_atomic
from rap_deploy.bounds import read_manifest_text
from rap_deploy.config import FrameSamplingConfig
from rap_deploy.data.datasets import VideoEntry
from rap_deploy.errors import DamagedArtifactError, UsageError
from rap_deploy.library.manifest import digest
from rap_deploy.library.shards import shard_name, shard_number

PLAN = "build-plan.json"
PLAN_FORMAT = "rapdeploy.library-plan"


def make_plan(videos: list[VideoEntry], sampling: FrameSamplingConfig, model: dict[str, Any], shard_size: int,
              first_shard: int, first_row: int, replaces: dict[str, int] | None = None) -> dict[str, Any]:
    """Split ``videos`` into shards of ``shard_size`` numbered from ``first_shard``; shard ``i`` owns global rows
    ``first_row + i·shard_size`` onwards (rows of skipped videos stay unused). ``replaces`` maps the ids of videos
    re-encoded because their file changed to their old rows (part of the request: a resumed build replaces the
    same rows)."""
    if shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1, got {shard_size}")
    shards = []
    for i, start in enumerate(range(0, len(videos), shard_size)):
        chunk = videos[start:start + shard_size]
        shards.append({"name": shard_name(first_shard + i), "row_offset": first_row + i * shard_size,
                       "videos": [[v.video_id, str(v.path), v.start, v.end] for v in chunk]})
    request = {"sampling": sampling.to_dict(), "shard_size": shard_size,
               "model": {k: model[k] for k in ("config_sha256", "preprocess_sha256", "tokenizer_sha256",
                                               "checkpoint_sha256", "tensors")},
               "shards": shards, **({"replaces": replaces} if replaces else {})}
    return {"format": PLAN_FORMAT, "request_sha256": digest(request), **request,
            "next_shard": first_shard + len(shards), "next_row": first_row + len(shards) * shard_size}


def shard_digest(shard: dict[str, Any]) -> str:
    """The digest of one plan shard (name, first row, videos) that its committed shard records."""
    return digest({k: shard[k] for k in ("name", "row_offset", "videos")})


def plan_videos(shard: dict[str, Any]) -> list[VideoEntry]:
    """The :class:`VideoEntry` list of one plan shard."""
    return [VideoEntry(str(v[0]), Path(v[1]), v[2], v[3]) for v in shard["videos"]]


def read_plan(root: Path) -> dict[str, Any] | None:
    """The pending plan of library ``root``, or ``None``; raises :class:`DamagedArtifactError` when unreadable."""
    path = Path(root) / PLAN
    if not path.is_file():
        return None
    try:
        plan = json.loads(read_manifest_text(path, "build plan"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedArtifactError(f"{path} is not valid JSON ({exc}); delete it to discard the interrupted build "
                                   "(or pass --force)") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT or not isinstance(plan.get("shards"), list):
        raise DamagedArtifactError(f"{path} is not a library build plan; delete it (or pass --force)")
    _check_plan(plan, path)
    return plan


_REQUEST_KEYS = ("sampling", "shard_size", "model", "shards")


def _check_plan(plan: dict[str, Any], path: Path) -> None:
    """The plan's shards are well-formed (name, first row, ``[id, path, start, end]`` videos) and the request is the
    one its ``request_sha256`` was computed from: a plan damaged on disk is refused before a shard is written."""
    def well_formed(shard: Any) -> bool:
        return (isinstance(shard, dict) and isinstance(shard.get("name"), str)
                and shard_number(shard["name"]) is not None and type(shard.get("row_offset")) is int
                and shard["row_offset"] >= 0 and isinstance(shard.get("videos"), list)
                and all(isinstance(v, list) and len(v) == 4 and isinstance(v[0], str) and isinstance(v[1], str)
                        for v in shard["videos"]))

    request = {k: plan.get(k) for k in _REQUEST_KEYS} | ({"replaces": plan["replaces"]} if "replaces" in plan else {})
    if not all(well_formed(s) for s in plan["shards"]) or not isinstance(plan.get("sampling"), dict) \
            or digest(request) != plan.get("request_sha256") or not _counters_follow(plan):
        raise DamagedArtifactError(f"{path} is damaged (its shards or counters do not match the request it records); "
                                   "delete it, or pass --force to rebuild the library")


def _counters_follow(plan: dict[str, Any]) -> bool:
    """Whether the plan's ``next_shard``/``next_row`` (which its ``request_sha256`` does not cover, and the manifest
    takes over) are those :func:`make_plan` gives: just past its last shard, or counts for a plan of no shard."""
    nxt, row, shards = plan.get("next_shard"), plan.get("next_row"), plan["shards"]
    if type(nxt) is not int or type(row) is not int or nxt < 0 or row < 0:
        return False
    if not shards:
        return True
    last, size = shards[-1], plan.get("shard_size")
    return type(size) is int and nxt == shard_number(last["name"]) + 1 and row == last["row_offset"] + size


def plan_finished(plan: dict[str, Any], known_shards: set[str], next_shard: int) -> bool:
    """Whether ``plan`` was committed by a build killed after writing its manifest: its shards are all in the
    manifest (``known_shards``), or the manifest's ``next_shard`` is past them (a shard whose videos were all skipped
    is in no manifest; a plan starts at the manifest's ``next_shard``, which moves past it only when it is done)."""
    names = [s["name"] for s in plan["shards"]]
    return set(names) <= known_shards or all(shard_number(n) < next_shard for n in names)


def adopt_plan(root: Path, new: dict[str, Any], known_shards: set[str],
               next_shard: int = 0) -> tuple[dict[str, Any], bool]:
    """Write ``new`` as the pending plan, or resume the pending one when it is the same request.

    Returns ``(plan, resumed)``. A pending plan that is finished (:func:`plan_finished` with the manifest's
    ``known_shards`` and ``next_shard``: a build killed after writing its manifest) is replaced; an unfinished one is
    resumed when ``new`` differs from it in its videos only (:func:`_not_resumable`). Raises :class:`UsageError`
    when another request's build is pending.
    """
    old = read_plan(root)
    if old is not None and old["shards"] and old.get("request_sha256") == new["request_sha256"]:
        return old, True
    if old is not None and not plan_finished(old, known_shards, next_shard):
        refusal = _not_resumable(old, new, next_shard)
        if refusal is None:  # the same request over a folder changed since: finish what the plan holds
            return old, True
        raise UsageError(f"{root} has an interrupted build ({PLAN}, {len(old['shards'])} shards) {refusal}: re-run "
                         "the command that started it to finish it (finished shards are kept), or pass --force to "
                         "rebuild the library from the given videos")
    if new["shards"]:
        write_json_atomic(Path(root) / PLAN, new)
    else:
        drop_plan(root)
    return new, False


def plan_video_ids(plan: dict[str, Any]) -> list[str]:
    """The ids of every video ``plan`` encodes, in plan order."""
    return [str(v[0]) for shard in plan["shards"] for v in shard["videos"]]


def _not_resumable(old: dict[str, Any], new: dict[str, Any], next_shard: int) -> str | None:
    """Why the pending plan ``old`` cannot finish the request ``new``, or ``None`` when it can.

    It can when only the videos differ (files added to or deleted from the folder since the build was killed) and
    some video it planned is still requested, or nothing new is: the resume encodes what the plan holds (a planned
    file now missing is skipped as undecodable) and the rest waits for the next ``--add``. Frame sampling, shard size
    or model differing, or a plan of none of the requested videos, is another request.
    """
    for key, what in (("model", "of another model"), ("sampling", "that samples frames otherwise"),
                      ("shard_size", f"of shards of {old.get('shard_size')} videos")):
        if old.get(key) != new.get(key):
            return what
    if shard_number(old["shards"][0]["name"]) != next_shard:
        return "numbered from another state of the library"
    planned, given = set(plan_video_ids(old)), set(plan_video_ids(new))
    if given and not planned & given:
        return f"of {len(planned)} other videos, none of them among those given"
    return None


def drop_plan(root: Path) -> None:
    """Delete the pending plan (after the manifest that includes its shards was written)."""
    (Path(root) / PLAN).unlink(missing_ok=True)
