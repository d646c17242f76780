"""What a weights file is, told from its bytes without running it: for messages that say *why* a file was refused.

``torch.load(weights_only=True)`` raises the same ``UnpicklingError`` for random bytes, a plain pickle and a pickle
that would run code, and ``EOFError`` for both an empty and a truncated file. :func:`sniff` and
:func:`explain_load_error` tell them apart (reading opcodes with :mod:`pickletools`, which never executes them), so
the user learns whether the file is empty, truncated, not a checkpoint at all, or a pickle that needs
``weights_only=False``, and gets the matching exit code (:func:`explain_load_error` returns the error to raise).
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import struct
import zipfile
from pathlib import Path
from typing import Any

from rap_deploy.errors import CheckFailedError, RapDeployError, UsageError
from rap_deploy.name_lists import some_names

ZIP_MAGIC = b"PK\x03\x04"
# The names a checkpoint file goes by: verify, index, serve and build-engine tell a checkpoint from an engine or export
# folder by them, and rapdeploy writes a checkpoint under no other (checkpoint.check_checkpoint_name)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
PICKLE_PROTO = 0x80
SAFETENSORS_MAX_HEADER = 100_000_000
_GLOBAL_OPS = {"GLOBAL", "STACK_GLOBAL", "INST"}
_CALL_OPS = {"REDUCE", "BUILD", "OBJ", "NEWOBJ", "NEWOBJ_EX"}


def sniff(path: str | os.PathLike[str]) -> str:
    """``"empty"``, ``"zip"`` (PyTorch archive), ``"pickle"``, ``"safetensors"`` or ``"unknown"`` from the first bytes.

    The caller has checked that ``path`` is a regular file.
    """
    from rap_deploy.atomic import open_regular

    with open_regular(path) as fh:
        head = fh.read(9)
    if not head:
        return "empty"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head[0] == PICKLE_PROTO:
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < SAFETENSORS_MAX_HEADER:
        return "safetensors"
    return "unknown"


# A RAP checkpoint's format tag (checkpoint.FORMAT), and its bytes as the checkpoint's pickle (data.pkl) holds them:
# read, never unpickled
CHECKPOINT_FORMAT = "rapdeploy.checkpoint"
RAP_CHECKPOINT_TAG = CHECKPOINT_FORMAT.encode()
MAX_TAG_SCAN = 16 << 20  # a checkpoint's data.pkl holds only its structure: kilobytes


def is_rap_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether the regular file ``path`` is a RAP checkpoint (``rapdeploy init``/``train``) rather than a backbone's
    weights: a PyTorch archive whose pickle names the checkpoint format, or a safetensors file with rapdeploy
    metadata. Read from its bytes (nothing is unpickled); a file that cannot be read is not one."""
    kind = sniff(path)
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                pickles = [i for i in archive.infolist() if i.filename.endswith("data.pkl")]
                if len(pickles) != 1 or pickles[0].file_size > MAX_TAG_SCAN:
                    return False
                return RAP_CHECKPOINT_TAG in archive.read(pickles[0])
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                return "rapdeploy" in (fh.metadata() or {})
    except Exception:  # a damaged file is refused later, by the loader that names why
        return False
    return False


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """Whether the regular file ``path`` is a TorchScript archive (``torch.jit.save``: the format of OpenAI's own
    CLIP release, ``ViT-B-32.pt``) rather than a state dict: a PyTorch archive holding TorchScript code
    (``<name>/code/``) and ``constants.pkl``. Told from the archive's directory alone; a damaged file is not one."""
    if sniff(path) != "zip":
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    # NotImplementedError: a damaged directory entry may claim any zip version or compression method
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def pickle_globals(data: bytes, limit: int = 5) -> tuple[list[str], bool]:
    """The ``module.name`` globals a pickle stream would import (up to ``limit``) and whether it parses at all.

    Opcodes are only read, never executed. ``STACK_GLOBAL`` names come from the two strings pushed before it.
    """
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if isinstance(arg, str):
                strings.append(arg)
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
            if len(found) >= limit:
                break
    except Exception:  # pickletools raises ValueError and friends on anything that is not a pickle
        return found, False
    return found, True


# At most this much of a pickle is read to name the globals it imports (a checkpoint's come in its first bytes).
MAX_PICKLE_SCAN = 64 << 20


def _head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes of ``path`` (never more, whatever the file's size)."""
    with open(path, "rb") as fh:
        return fh.read(n)


def _zip_pickle(path: Path) -> bytes | None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            if not names or zf.getinfo(names[0]).file_size > MAX_PICKLE_SCAN:
                return None
            return zf.read(names[0])
    # NotImplementedError: a damaged directory entry may claim any zip version or compression method
    except (zipfile.BadZipFile, OSError, KeyError, EOFError, ValueError, NotImplementedError):
        return None


_TORCH_ALLOWED = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.bytearray",
                  "_codecs.encode", "numpy.core.multiarray._reconstruct")


def explain_load_error(path: str | os.PathLike[str], exc: BaseException, what: str = "checkpoint",
                       fix: str = "re-create it with `rapdeploy init` or `rapdeploy train`") -> RapDeployError:
    """The error to raise for ``torch.load(path, weights_only=True)`` failing with ``exc``.

    - a pickle that imports other globals: :class:`UsageError` "holds pickled Python objects (…) that need
      ``weights_only=False``" (exit 2: the file is not something rapdeploy loads);
    - empty, truncated or damaged PyTorch archives and pickles: :class:`CheckFailedError` (exit 1);
    - random bytes, text or another format: :class:`UsageError` "is not a PyTorch file" (exit 2).
    """
    path = Path(path)
    kind = sniff(path)
    if kind == "empty":
        return CheckFailedError(f"{what} {path} is empty (0 bytes), not a {what}: an interrupted write or copy; {fix}")
    if kind == "zip":
        data = _zip_pickle(path)
        if data is None:
            return CheckFailedError(f"{what} {path} is a damaged or truncated PyTorch archive ({_first_line(exc)}); "
                                    f"copy it again or {fix}")
    elif kind == "pickle":
        data = _head(path, MAX_PICKLE_SCAN)  # its globals come first; the rest is not read whole into memory
    else:
        noun = what if what.endswith("file") else f"{what} file"
        return UsageError(f"{path} is not a {what}: it is neither a PyTorch file (zip archive or pickle) nor "
                          f"safetensors (it starts with {_head(path, 8)!r}); pass a {noun}")
    names, parsed = pickle_globals(data)
    foreign = [n for n in names if not n.startswith(_TORCH_ALLOWED)]
    if foreign:
        return UsageError(f"refusing {path}: it holds pickled Python objects ({some_names(foreign, 3)}) that need "
                          f"weights_only=False, which could run code; re-save it with tensors and plain data only")
    if not parsed or isinstance(exc, EOFError):
        return CheckFailedError(f"{what} {path} is truncated or damaged (its pickle stream ends early or is invalid: "
                                f"{_first_line(exc) or type(exc).__name__}); copy it again or {fix}")
    return UsageError(f"refusing {path}: torch.load(weights_only=True) cannot read it ({_first_line(exc)}); it is not "
                      f"a {what} written by rapdeploy")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:  # torch's weights-only message buries the reason after a long preamble
        if line.startswith(("Unsupported", "WeightsUnpickler")) or "GLOBAL" in line:
            return line[:200]
    first = lines[0] if lines else ""
    # torch's zip reader appends an advice paragraph ("This is an internal miniz error. If you are seeing this ...")
    # that a 200-character cut left mid-sentence; its first sentence is the reason
    return (first.split(". ")[0] if len(first) > 120 else first)[:200]


def check_archive_expansion(path: str | os.PathLike[str], what: str,
                            fix: str = "re-save it with torch.save or use a machine with more memory") -> None:
    """Raise :class:`UsageError` (exit 2) when the PyTorch archive ``path`` holds compressed entries that would expand
    past the memory available; ``what`` names the file in the message, ``fix`` says what to do.

    ``torch.save`` stores entries uncompressed (what is read is then bounded by the file's size), but ``torch.load``
    also inflates deflated ones, into buffers of the sizes the archive declares: a small file could claim and fill
    any amount of memory. Only the archive's directory is read here; anything that is not a readable zip is left to
    ``torch.load`` and its error messages.
    """
    from rap_deploy.bounds import check_memory

    try:
        with zipfile.ZipFile(path) as zf:
            expanded = sum(i.file_size for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):  # damaged: torch.load says how
        return
    if expanded:
        check_memory(expanded, f"{what} (a compressed archive; torch.save writes none)", fix)


def metadata_object(text: str, where: str, fix: str) -> dict[str, Any]:
    """The JSON object that a safetensors file keeps as the metadata string ``text`` (checkpoints' ``rapdeploy``,
    backbone files' ``rapdeploy_backbone``). Raises :class:`CheckFailedError` (exit 1), "``where`` is not valid JSON
    (why); ``fix``" or "``where`` is a list, not an object; ``fix``": ``where`` names the file and its metadata key."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also an integer too long to convert, or nesting too deep
        raise CheckFailedError(f"{where} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(value, dict):
        raise CheckFailedError(f"{where} is a {type(value).__name__}, not an object; {fix}")
    return value
