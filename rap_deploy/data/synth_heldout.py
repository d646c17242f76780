"""A held-out test split for a synthetic world: more test videos, drawn with another seed, none of the world's scenes.

A world's own test split (200 videos in the demo) both picks each run's ``best.pt`` (the selection rule of
:mod:`rap_deploy.train.selection`) and scores it, and at 200 queries one query is half a point: most of the spread
of R@1 across training seeds is which of those few queries a run happens to get right. The held-out split is drawn
from the same generator settings as the world (frame size, frame rate, length, distractor rate, object sizes) with
seed ``world seed + HELDOUT_SEED_OFFSET``, and no test scene of it means what a scene of the world means (training
or test), nor its time reverse. Scoring ``best.pt`` there measures a run on videos it neither trained on nor was
chosen on.

Layout: ``<folder>/data`` (MSR-VTT layout; only the test split is read), ``<folder>/cache`` (decoded frames) and
``<folder>/heldout.json``, written last, with a sha256 of the dataset folder's files: a folder without it, whose
record does not match, or whose files changed since (an edited caption, a replaced video) is written again. The
record, digest included, is stored with each run's cached score, so a score of other split content is not read back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rap_deploy.errors import UsageError

HELDOUT_SEED_OFFSET = 1000
RECORD = "heldout.json"
CONTENT = "content_sha256"  # the record's digest of the split's files (split_digest)
MAX_HELDOUT_VIDEOS = 5000
# Generator settings a held-out split copies from its world's ``info`` block.
_COPIED = ("size", "fps", "seconds", "distractors", "object_radius")


@dataclass(frozen=True)
class HeldoutSplit:
    """A prepared held-out split: its dataset folder, its decoded-frame cache and its record."""

    data: Path
    cache: Path
    record: dict[str, Any]

    @property
    def tag(self) -> str:
        """``heldout<videos>-s<seed>``: names the split in reports and cached results."""
        return f"heldout{self.record['videos']}-s{self.record['seed']}"


def heldout_folder(world: Path, videos: int) -> Path:
    """Where the held-out split of ``videos`` test videos of world folder ``world`` lives."""
    return world / f"heldout-{videos}"


def _world_record(world_data: Path, videos: int) -> tuple[dict[str, Any], frozenset]:
    """The record a held-out split of ``world_data`` must carry, and the scene keys it must avoid (each world
    scene's key; the generator also refuses their reverses). Raises :class:`UsageError` for a folder that is not a
    synthetic dataset of this version."""
    from rap_deploy.data.synth import scene_key
    from rap_deploy.data.synth_dataset import load_scenes

    scenes, info = load_scenes(world_data)
    missing = [k for k in _COPIED if k not in info]
    if missing or not isinstance(info.get("seed"), int):
        raise UsageError(f"{world_data / 'MSRVTT_data.json'} records no {missing or ['seed']} in its info block; "
                         "write the world again with `rapdeploy synth --out NEW_FOLDER`")
    exclude = frozenset(scene_key(s) for s in scenes.values())
    record = {"videos": videos, "seed": info["seed"] + HELDOUT_SEED_OFFSET, "world_seed": info["seed"],
              "world_scenes": len(exclude), **{k: info[k] for k in _COPIED}}
    return record, exclude


def prepare_heldout(world_data: str | Path, folder: str | Path, videos: int, progress: bool = True) -> HeldoutSplit:
    """Write (or reuse, when its record matches and its files are those it recorded, :func:`split_digest`) the
    held-out split of ``videos`` test videos for the synthetic world at ``world_data`` into ``folder``; returns it,
    its record holding the digest.

    Raises :class:`UsageError` for a video count outside 2..:data:`MAX_HELDOUT_VIDEOS` or a world folder that is not
    a synthetic dataset of this version.
    """
    from rap_deploy.atomic import write_json_atomic
    from rap_deploy.data.synth_dataset import generate_synthetic_dataset

    if not 2 <= videos <= MAX_HELDOUT_VIDEOS:
        raise UsageError(f"a held-out split needs 2 to {MAX_HELDOUT_VIDEOS} videos, got {videos}")
    world_data, folder = Path(world_data), Path(folder)
    wanted, exclude = _world_record(world_data, videos)
    found = read_record(folder / RECORD)
    if found is not None and {k: v for k, v in found.items() if k != CONTENT} == wanted \
            and found.get(CONTENT) == split_digest(folder / "data"):
        return HeldoutSplit(folder / "data", folder / "cache", found)
    # One training video is the generator's minimum; only the test split is ever read.
    generate_synthetic_dataset(folder / "data", videos=videos + 1, test_videos=videos, seed=wanted["seed"],
                               size=wanted["size"], fps=wanted["fps"], seconds=wanted["seconds"],
                               distractors=wanted["distractors"], progress=progress, exclude=exclude)
    record = {**wanted, CONTENT: split_digest(folder / "data")}
    write_json_atomic(folder / RECORD, record)
    return HeldoutSplit(folder / "data", folder / "cache", record)


def split_digest(data: Path) -> str:
    """A sha256 of the content of every file of the split's dataset folder ``data`` (its annotation files and videos,
    each by its path in the folder; hidden names, locks and temporary files, left out; a file that cannot be read
    counts as ``missing``). Each file is hashed once per process (:func:`~rap_deploy.data.cache.file_digest`)."""
    import hashlib

    from rap_deploy.data.cache import file_digest, visible_files

    digest = hashlib.sha256()
    for path in visible_files(data) if data.is_dir() else ():
        try:
            content = file_digest(path)
        except OSError:
            content = "missing"
        digest.update(json.dumps([path.relative_to(data).as_posix(), content]).encode())
    return digest.hexdigest()


def read_record(path: Path, max_bytes: int = 1 << 20) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is missing, not a regular file (a FIFO would block the read
    forever, a device never end: :func:`~rap_deploy.atomic.open_regular` refuses it without blocking), larger than
    ``max_bytes``, unreadable or not an object: a record or cached result that is then written again."""
    from rap_deploy.atomic import open_regular

    try:
        with open_regular(path) as fh:
            data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            return None
        record = json.loads(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None
