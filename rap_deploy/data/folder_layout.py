"""Tell a ``--data-root`` that is near the dataset's folder but not it: another dataset's folder (a wrong
``--dataset``), the folder above the dataset's, or a folder inside it (its videos), from one annotation file each
dataset's folder holds and no other's."""

from __future__ import annotations

from pathlib import Path

from rap_deploy.errors import UsageError
from rap_deploy.name_lists import some_names

# Annotation files of each dataset that no other dataset's folder holds: its folder holds at least one, the file of
# each split it is used for (a folder may hold only those: MSR-VTT's test split reads MSRVTT_JSFUSION_test.csv alone).
# The first is the one a refusal names and the folders around are searched for.
DATASET_MARKERS = {"msrvtt": ("MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv", "MSRVTT_train.9k.csv"),
                   "msvd": ("raw-captions.pkl",),
                   "didemo": ("test_data.json", "train_data.json", "val_data.json"),
                   "activitynet": ("val_ids.json", "train_ids.json")}
# At most this many entries of a --data-root are looked at for a dataset folder inside it (a folder of videos has
# many); not video_files.MAX_ENTRIES_SEARCHED_FOR_VIDEO, which bounds the look for one video file in a folder
MAX_ENTRIES_SEARCHED_FOR_DATASET = 200


def check_dataset_layout(root: Path, dataset: str) -> None:
    """Return when ``root`` holds one of ``dataset``'s marker files (:data:`DATASET_MARKERS`), or when no better
    folder or dataset can be told (the readers then name the missing file). Raises :class:`UsageError` (exit 2)
    naming the marker file and the fix: ``--dataset`` of the dataset whose file ``root`` holds, or the ``--data-root``
    (its parent or a sub-folder) that holds this dataset's."""
    markers = DATASET_MARKERS[dataset]
    if any((root / marker).exists() for marker in markers):
        return
    fix = _other_dataset_fix(root, dataset) or _nearby_folder_fix(root, markers[0])
    if fix:
        raise UsageError(f"--data-root {root} holds no {markers[0]} ({dataset}'s annotation file): {fix}")


def _other_dataset_fix(root: Path, dataset: str) -> str | None:
    """``"it holds FILE, NAME's: pass --dataset NAME for it, or --data-root with DATASET's folder"`` for the first
    other dataset whose marker ``root`` holds (``train --resume`` of a ``dataset`` run needs the second)."""
    for other, markers in DATASET_MARKERS.items():
        held = [marker for marker in markers if (root / marker).is_file()] if other != dataset else []
        if held:
            return f"it holds {held[0]}, {other}'s: pass --dataset {other} for it, or --data-root with {dataset}'s " \
                   "folder"
    return None


def _nearby_folder_fix(root: Path, marker: str) -> str | None:
    """``"pass --data-root FOLDER"`` for the folder above ``root``, else the folders inside it, that hold ``marker``
    (a few named, when several do)."""
    if (root.parent / marker).is_file():
        return f"the folder above it holds it (--data-root names a folder inside the dataset's): pass --data-root " \
               f"{root.parent}"
    try:
        entries = sorted(_first_entries(root))
    except OSError:
        return None
    holding = [entry for entry in entries if (entry / marker).is_file()]
    if len(holding) == 1:
        return f"{holding[0]} holds it: pass --data-root {holding[0]}"
    if holding:
        return f"{some_names([str(entry) for entry in holding], 3)} hold it: pass --data-root with one of them"
    return None


def _first_entries(folder: Path) -> list[Path]:
    """Up to :data:`MAX_ENTRIES_SEARCHED_FOR_DATASET` entries of ``folder`` (in the order the file system lists
    them)."""
    entries = []
    for entry in folder.iterdir():
        entries.append(entry)
        if len(entries) >= MAX_ENTRIES_SEARCHED_FOR_DATASET:
            break
    return entries
