"""The structural checks of a library manifest (``LIB/manifest.json``), run by
:func:`rap_deploy.library.manifest.read_manifest` on every manifest that reaches a command: the manifest is untrusted,
so every key a reader uses is checked for its type and range before any file it names is opened or any size it
claims is allocated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rap_deploy.errors import DamagedArtifactError
from rap_deploy.graphs import INDEX_DTYPES
from rap_deploy.library.manifest import FILE_STAT_FIELDS, MAX_ROW_DIMS, MAX_STAGE1_EFFORT, SHARDS_DIR, digest
from rap_deploy.name_lists import int_text, short_repr, shortened


def check_structure(manifest: dict[str, Any], path: Path) -> None:
    """Check a parsed library manifest's structure (every key a reader uses, each with its type and range, the
    model sections against their sha256, the shards' rows and names, the counters, the stage-1 entry).

    Raises :class:`DamagedArtifactError` naming ``path`` and the first malformed key.
    """
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise DamagedArtifactError(f"{path}: {what}; the library manifest is damaged: re-index the library")

    model = manifest.get("model")
    need(isinstance(model, dict), "'model' is missing")
    for key in ("config", "preprocess", "sampling", "tokenizer"):
        need(isinstance(model.get(key), dict) and isinstance(model.get(f"{key}_sha256"), str),
             f"'model.{key}' is missing")
        need(digest(model[key]) == model[f"{key}_sha256"], f"'model.{key}' does not match its sha256")
    tensors = model.get("tensors")
    need(isinstance(tensors, list) and len(tensors) <= len(INDEX_DTYPES) and tensors[:1] == ["video_emb"]
         and all(isinstance(t, str) and t in INDEX_DTYPES for t in tensors) and len(set(tensors)) == len(tensors),
         f"'model.tensors' is malformed (distinct names of {', '.join(INDEX_DTYPES)}, video_emb first)")
    shapes = manifest.get("tensor_shapes")
    need(isinstance(shapes, dict) and all(isinstance(shapes.get(t), list) for t in tensors),
         "'tensor_shapes' is missing")
    for name in tensors:
        need(len(shapes[name]) <= MAX_ROW_DIMS and all(isinstance(n, int) and n > 0 for n in shapes[name]),
             f"'tensor_shapes.{name}' is malformed")
    shards = manifest.get("shards")
    need(isinstance(shards, list), "'shards' is missing")
    for i, shard in enumerate(shards):
        need(isinstance(shard, dict) and isinstance(shard.get("name"), str) and _is_count(shard.get("row_offset"))
             and _is_count(shard.get("rows")) and isinstance(shard.get("files"), dict),
             f"shard entry {i} is malformed")
        for name in (*model["tensors"], "videos"):
            f = shard["files"].get(name)
            need(isinstance(f, dict) and isinstance(f.get("file"), str) and _is_count(f.get("bytes"))
                 and isinstance(f.get("sha256"), str),
                 f"shard {shortened(shard['name'])} lacks its '{name}' file entry")
    offsets = [s["row_offset"] for s in shards]
    need(offsets == sorted(offsets) and all(a["row_offset"] + a["rows"] <= b["row_offset"]
                                            for a, b in zip(shards, shards[1:], strict=False)), "shard rows overlap")
    _check_shard_names(shards, need)
    _check_counters(manifest, shards, need)
    _check_sampling(model["sampling"], need)
    _check_tensor_shapes(model, shapes, need)  # after the sampling's frame count is checked
    need(manifest.get("engine") is None or isinstance(manifest["engine"], dict), "'engine' is malformed")
    need(isinstance(manifest.get("sources", []), list)
         and all(isinstance(x, dict) for x in manifest.get("sources", [])), "'sources' is malformed")
    need(isinstance(manifest.get("builds", []), list), "'builds' is malformed")  # numbers the stage-1 files
    _check_stage1(manifest.get("stage1"), need)
    _check_moved(manifest.get("moved", {}), need)


def _check_tensor_shapes(model: dict[str, Any], shapes: dict[str, list[int]], need: Any) -> None:
    """Each stored tensor's row shape is the model's (``model.config`` and ``model.sampling`` are sha256-checked):
    ``video_emb [d]``, ``frame_emb [T, d]``, ``patch_tokens [T, P, d]``, ``asa_tokens [T, P, 3·asa_dim]`` with T the
    sampled frames. A library edited to other widths would reach the engine's re-rank and fail there (blamed on the
    search) or, for ``asa_tokens``, be read as other rows and rank silently wrong."""
    frames, asa_dim = model["sampling"].get("max_frames"), model["config"].get("asa_dim")
    d = (shapes["video_emb"] or [None])[-1]
    p = ([*(shapes.get("patch_tokens") or []), None, None])[1]
    want = {"video_emb": [d], "frame_emb": [frames, d], "patch_tokens": [frames, p, d],
            "asa_tokens": [frames, p, 3 * asa_dim if isinstance(asa_dim, int) else None]}
    got = {name: shapes[name] for name in model["tensors"]}
    need(all(got[name] == want.get(name) for name in got),
         f"'tensor_shapes' {short_repr(got, 200)} are not the model's "
         f"({', '.join(f'{n} {short_repr(want.get(n))}' for n in got)}; "
         f"{frames} frames, ASA width {asa_dim}, one embedding width d and patch count P)")


def _check_shard_names(shards: list[dict[str, Any]], need: Any) -> None:
    """Shard names are ``shard-NNNNNN``, each once, and every file entry lies in its own shard's folder."""
    from rap_deploy.library.shards import shard_number

    names = [s["name"] for s in shards]
    need(all(shard_number(n) is not None for n in names) and len(set(names)) == len(names),
         "shard names are malformed or repeated")
    for shard in shards:
        folder = f"{SHARDS_DIR}/{shard['name']}/"
        need(all(f["file"].startswith(folder) for f in shard["files"].values()),
             f"shard {shard['name']} names files outside {folder}")


MAX_ROW_ID = 2 ** 62  # a library's row numbers are FAISS ids (int64); each build and --force moves them on


def _check_counters(manifest: dict[str, Any], shards: list[dict[str, Any]], need: Any) -> None:
    """``next_shard``/``next_row`` lie past every shard (a build never reuses a committed shard's name or rows) and
    within int64 (:data:`MAX_ROW_ID`); ``removed`` rows lie below ``next_row``; ``videos`` is a count."""
    from rap_deploy.library.shards import shard_number

    next_shard, next_row = manifest.get("next_shard"), manifest.get("next_row")
    need(_is_count(next_shard) and all(shard_number(s["name"]) < next_shard for s in shards),
         f"'next_shard' {short_repr(next_shard)} is not past every shard")
    need(_is_count(next_row) and all(s["row_offset"] + s["rows"] <= next_row for s in shards),
         f"'next_row' {short_repr(next_row)} is not past every shard's rows")
    need(next_row <= MAX_ROW_ID and next_shard <= MAX_ROW_ID,  # rows are FAISS's int64 ids
         f"'next_row' {int_text(next_row)} or 'next_shard' {int_text(next_shard)} is past {MAX_ROW_ID}")
    removed = manifest.get("removed")
    need(isinstance(removed, list) and all(_is_count(r) and r < next_row for r in removed), "'removed' is malformed")
    need(_is_count(manifest.get("videos")), "'videos' is malformed")
    live = sum(s["rows"] for s in shards) - _removed_in_shards(removed, shards)
    need(manifest["videos"] == live, f"'videos' {int_text(manifest['videos'])} is not the number of its shards' rows "
         f"less those removed ({int_text(live)})")


def _removed_in_shards(removed: list[int], shards: list[dict[str, Any]]) -> int:
    """How many distinct ``removed`` rows lie in a shard's rows (shards are sorted and do not overlap, checked
    before); a removed row of a shard dropped since (a tombstone of stage 1) is in none."""
    import bisect

    starts = [s["row_offset"] for s in shards]
    count = 0
    for row in set(removed):
        i = bisect.bisect_right(starts, row) - 1
        count += i >= 0 and row < starts[i] + shards[i]["rows"]
    return count


def _check_sampling(sampling: dict[str, Any], need: Any) -> None:
    from rap_deploy.bounds import MAX_FPS, MAX_FRAMES

    frames, fps = sampling.get("max_frames"), sampling.get("fps")
    need(_is_count(frames) and 1 <= frames <= MAX_FRAMES,
         f"'model.sampling.max_frames' {short_repr(frames)} is malformed")
    need(isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps <= MAX_FPS,
         f"'model.sampling.fps' {short_repr(fps)} is malformed")


def _check_moved(moved: Any, need: Any) -> None:
    """``moved`` (rows whose files moved, written by ``index --add``) maps global rows, as decimal strings, to a
    non-empty path of at most 4096 characters and the file's stat numbers."""
    need(isinstance(moved, dict), "'moved' is malformed")
    for row, record in moved.items():
        need(isinstance(row, str) and row.isascii() and row.isdigit() and isinstance(record, dict)
             and isinstance(record.get("path"), str) and 0 < len(record["path"]) <= 4096
             and all(_is_count(record.get(k)) for k in FILE_STAT_FIELDS),
             f"'moved' entry {short_repr(row)} is malformed")


def _check_stage1(stage1: Any, need: Any) -> None:
    """The stage-1 entry names its index file, and its numbers are numbers in range (effort, top_m, ntotal, the
    measured recall@M and build time every index report reads)."""
    need(isinstance(stage1, dict) and isinstance(stage1.get("file"), str) and isinstance(stage1.get("sha256"), str)
         and isinstance(stage1.get("type"), str), "'stage1' is missing")
    from rap_deploy.library.stage1 import ANN_TYPES

    need(stage1["type"] in ANN_TYPES,
         f"'stage1.type' {short_repr(stage1['type'])} is not one of {', '.join(ANN_TYPES)}")
    effort = stage1.get("effort")
    need(effort is None or (_is_count(effort) and 1 <= effort <= MAX_STAGE1_EFFORT),
         f"'stage1.effort' {short_repr(effort)} is malformed")
    for key in ("top_m", "ntotal", "dim"):
        need(stage1.get(key) is None or _is_count(stage1[key]),
             f"'stage1.{key}' {short_repr(stage1.get(key))} is malformed")
    recall = stage1.get("recall_at_m")
    need(isinstance(recall, dict), "'stage1.recall_at_m' is missing")
    need(_is_number(recall.get("recall")) and 0 <= recall["recall"] <= 1 and _is_count(recall.get("m"))
         and _is_count(recall.get("queries")), "'stage1.recall_at_m' is malformed")
    seconds = stage1.get("build_seconds")
    need(_is_number(seconds) and seconds >= 0, f"'stage1.build_seconds' {short_repr(seconds)} is malformed")
    queries = stage1.get("queries")
    need(queries is None or (isinstance(queries, dict) and isinstance(queries.get("file"), str)
                             and _is_count(queries.get("bytes")) and isinstance(queries.get("sha256"), str)),
         "'stage1.queries' is malformed")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN != NaN


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
