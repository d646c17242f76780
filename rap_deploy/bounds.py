"""Limits on every number that sizes work or memory, checked before anything is allocated.

One number from an option or an untrusted file (a checkpoint's ``frames``, ``--batch-sizes``, ``--epochs``) must not
be able to make a command allocate until the kernel kills it, loop for ever, or train on NaN. The limits are far above
any real use (ViT-L/14 at 336 px, 64-frame paragraph datasets, 1k-video benchmarks) and each message says the limit
and the fix.

How to use it::

    from rap_deploy.bounds import check_int, check_float, MAX_FRAMES
    frames = check_int(frames, "--frames", 1, MAX_FRAMES)
    lr = check_float(lr, "--lr", low=0.0, low_open=True, high=10.0)

Both raise :class:`~rap_deploy.errors.UsageError` (exit 2). Code that reads the value from a file converts that to
:class:`~rap_deploy.errors.CheckFailedError` (exit 1, a damaged artifact) with the file's name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rap_deploy.errors import CheckFailedError, DamagedArtifactError, UsageError
from rap_deploy.name_lists import VALUE_CHARS, int_text, short_repr, shortened

MAX_MANIFEST_BYTES = 64 << 20  # a manifest, plan or record JSON file (the largest real ones are kilobytes)
MAX_JSON_DEPTH = 100           # nesting of such a file (real ones: under 10; json.loads recurses ~1000 levels deep)
MAX_FRAMES = 512            # frames per video (DiDeMo / ActivityNet use 64)
MAX_FPS = 1000              # frames sampled per second of video (rapdeploy samples at 1)
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 1024       # model input size in pixels (CLIP: 224 / 336)
MAX_CONTEXT_LENGTH = 1024   # text tokens (CLIP: 77; RAP uses 32 / 64)
MAX_LORM_RANK = 256
MAX_ASA_TOPK = 4096
MAX_ASA_HEADS = 256
MAX_ASA_DIM = 8192
MAX_BATCH_SIZE = 65536      # one call's batch (training batch, bench batch, engine profile)
MAX_EPOCHS = 100_000
MAX_STEPS = 10_000_000
MAX_REPEATS = 100_000
MAX_VIDEOS = 10_000_000     # videos in an index, a benchmark library or a dataset option
MAX_TOP_K = 100             # results per query: `search --top` and serve's /search top_k
MAX_TOP_M = 1000            # stage-1 candidates re-ranked per query: `search --top-m` and serve's /search top_m
MAX_THREADS = 4096
MAX_SEED = 2**63 - 1      # torch.manual_seed takes a signed 64-bit seed
MAX_LR = 10.0
MIN_BODY_MB = 0.125          # `serve --max-body-mb`'s floor: the JSON header reserve twice (a model may need more)
MAX_BODY_MB = 4096           # its ceiling: one inference request of 4 GiB


def _describe(name: str) -> str:
    return name if name.startswith("-") or " " in name else f"'{name}'"


def read_manifest_text(path: Any, what: str = "manifest") -> str:
    """The UTF-8 text of a small JSON file an artifact carries (``what`` names it), its size checked first.

    Raises :class:`~rap_deploy.errors.CheckFailedError` (exit 1) when it is larger than :data:`MAX_MANIFEST_BYTES`
    (padded or replaced: never read whole) or nested deeper than :data:`MAX_JSON_DEPTH` (``json.loads`` would raise
    ``RecursionError``, which no reader expects), ``OSError`` / ``UnicodeDecodeError`` as reading does.
    """
    size = Path(path).stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise CheckFailedError(f"{path}: the {what} is {size:,} bytes, over the {MAX_MANIFEST_BYTES:,} one can be; it "
                               "was padded or replaced, rebuild the folder")
    text = Path(path).read_text(encoding="utf-8")
    # counting the opening brackets is fast: a file with no more of them than the limit is not scanned
    depth = json_depth(text) if text.count("[") + text.count("{") > MAX_JSON_DEPTH else 0
    if depth > MAX_JSON_DEPTH:
        raise CheckFailedError(f"{path}: the {what} is nested {depth:,} levels deep, over the {MAX_JSON_DEPTH} one "
                               "can be; it is damaged or was replaced, rebuild the folder")
    return text


def json_depth(text: str) -> int:
    """How deep JSON ``text``'s arrays and objects nest (brackets inside strings do not count); 0 for a scalar."""
    import re

    import numpy as np

    bare = re.sub(r'"[^"\\]*(?:\\.[^"\\]*)*"', "", text)
    codes = np.frombuffer(bare.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    depth = deepest = 0
    for start in range(0, len(codes), 1 << 20):  # in blocks: a 64 MiB file needs no GiB of running sums
        block = codes[start:start + (1 << 20)]
        steps = np.isin(block, (ord("["), ord("{"))).astype(np.int64) - np.isin(block, (ord("]"), ord("}")))
        running = depth + np.cumsum(steps)
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
    return deepest


def manifest_format(path: Any) -> str | None:
    """The ``format`` tag of the JSON manifest at ``path`` (``rapdeploy.export``, ``rapdeploy.engine``, ...), or
    ``None`` when there is no readable manifest with one (absent, damaged, oversized, nested too deep to parse, not an
    object)."""
    try:
        doc = json.loads(read_manifest_text(path))
    except (OSError, ValueError, RecursionError, CheckFailedError):
        return None
    fmt = doc.get("format") if isinstance(doc, dict) else None
    return fmt if isinstance(fmt, str) else None


def check_format_version(manifest: dict[str, Any], path: Any, kind: str, newest: int, damaged: str,
                         recreate: str | Callable[[], str] = "", oldest: int = 0) -> int:
    """The ``format_version`` of the ``kind`` manifest at ``path``. With ``oldest`` 0 (engine and export manifests:
    the first ones recorded none) an absent one reads as 0; with ``oldest`` 1 (a library: every one records it) it is
    damage. Raises :class:`DamagedArtifactError` (``damaged`` says what that means and the fix) when it is no integer
    or below ``oldest``, which no rapdeploy writes; :class:`UsageError` when newer than ``newest``, naming the
    rapdeploy version the manifest says wrote it, this one's, and ``recreate`` (the command that writes it again with
    this version, in backticks, and what follows it; a callable is called only then) as the other fix."""
    version = manifest.get("format_version", 0 if oldest == 0 else None)
    if isinstance(version, bool) or not isinstance(version, int):
        raise DamagedArtifactError(f"{path}: format_version {short_repr(version)} is not an integer; {damaged}")
    if version < oldest:
        raise DamagedArtifactError(f"{path}: format_version {int_text(version)} is below {oldest}, which no "
                                   f"rapdeploy writes; {damaged}")
    if version > newest:
        from rap_deploy import __version__

        versions = manifest.get("versions")  # an engine manifest keeps it there, an export or library one at the top
        writer = versions.get("rapdeploy") if isinstance(versions, dict) else manifest.get("rapdeploy")
        by = f" (written by rapdeploy {_version_text(writer)})" if isinstance(writer, str) and writer else ""
        command = recreate() if callable(recreate) else recreate
        other = f", or re-create it with this one: {command}" if command else ""
        raise UsageError(f"{path} has {kind} format {int_text(version)}{by}, newer than the format {newest} this "
                         f"rapdeploy {__version__} reads; upgrade rapdeploy{other}")
    return version


def _version_text(version: str) -> str:
    """A version read from an untrusted manifest, for a message: whole when it is printable text of at most
    :data:`~rap_deploy.name_lists.VALUE_CHARS` characters, a longer one cut with "…", one holding control or other
    unprintable characters (a terminal escape) as its escaped repr, cut the same way."""
    head = version[:VALUE_CHARS + 1]  # a padded one costs no more than this
    return shortened(head) if head.isprintable() else short_repr(head)


def check_int(value: Any, name: str, low: int | None = 1, high: int | None = None, fix: str = "") -> int:
    """Return ``value`` as an int within ``[low, high]``; raise :class:`UsageError` naming ``name``, the limit and
    ``fix``. Booleans, floats with a fraction, NaN/inf and non-numbers are refused."""
    what = _describe(name)
    if isinstance(value, bool) or value is None:
        raise UsageError(f"{what} must be an integer, got {short_repr(value)}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise UsageError(f"{what} must be an integer, got {short_repr(value)}")
        value = int(value)
    if not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            raise UsageError(f"{what} must be an integer, got {short_repr(value)}") from None
    tail = f"; {fix}" if fix else ""
    if low is not None and value < low:
        raise UsageError(f"{what} must be >= {low}, got {int_text(value)}{tail}")
    if high is not None and value > high:
        raise UsageError(f"{what} must be <= {high:,}, got {int_text(value, ',')} (the limit guards memory and "
                         f"time){tail}")
    return value


def check_threads(value: Any, name: str = "--threads") -> int | None:
    """A thread-count option's ``value`` as an int in [1, :data:`MAX_THREADS`] (ONNX Runtime takes an int32; 0 or
    less is no thread count), or ``None`` (the libraries' default). Raises :class:`UsageError` naming ``name``."""
    return None if value is None else check_int(value, name, 1, MAX_THREADS)


def check_float(value: Any, name: str, low: float | None = None, high: float | None = None, low_open: bool = False,
                fix: str = "") -> float:
    """Return ``value`` as a finite float with ``low <= value`` (``low < value`` if ``low_open``) ``<= high``.

    Raises :class:`UsageError` naming ``name`` for NaN, infinities, non-numbers and values out of range.
    """
    what = _describe(name)
    if isinstance(value, bool) or value is None:
        raise UsageError(f"{what} must be a number, got {short_repr(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float's range
        raise UsageError(f"{what} must be a number, got {short_repr(value)}") from None
    tail = f"; {fix}" if fix else ""
    if not math.isfinite(number):
        raise UsageError(f"{what} must be a finite number, got {short_repr(value)}{tail}")
    if low is not None and (number <= low if low_open else number < low):
        raise UsageError(f"{what} must be {'>' if low_open else '>='} {low:g}, got {number:g}{tail}")
    if high is not None and number > high:
        raise UsageError(f"{what} must be <= {high:g}, got {number:g}{tail}")
    return number


def check_ints(values: list[Any], name: str, low: int = 1, high: int | None = None) -> list[int]:
    """:func:`check_int` on every element; refuses an empty list."""
    if not values:
        raise UsageError(f"{_describe(name)} needs at least one value")
    return [check_int(v, name, low, high) for v in values]


def check_memory(nbytes: int, what: str, fix: str, fraction: float = 0.8) -> None:
    """Refuse work whose buffers (``nbytes``) exceed ``fraction`` of the memory available now.

    ``what`` says what would be allocated, ``fix`` what to change. Raises :class:`UsageError`. Does nothing when the
    available memory cannot be read.
    """
    available = available_memory()
    if available is None:  # any failure to read the memory just skips the check
        return
    if nbytes > fraction * available:
        raise UsageError(f"{what} needs {nbytes / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of memory "
                         f"available; {fix}")


def available_memory() -> int | None:
    """The memory available to a new allocation now, in bytes (``psutil``), or ``None`` when it cannot be read."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing, or /proc unreadable in a sandbox
        return None


def clip_weight_bytes(cfg: dict[str, Any]) -> int:
    """Rough fp32 size of an open_clip CLIP from its architecture config (both towers' transformers, the patch and
    token embeddings); used to refuse a model that cannot fit before creating it. Unknown fields count as zero."""
    def tower(c: dict[str, Any]) -> int:
        width, layers = int(c.get("width") or 0), c.get("layers") or 0
        layers = sum(layers) if isinstance(layers, (list, tuple)) else int(layers)
        return 12 * width * width * layers

    vision, text = cfg.get("vision_cfg") or {}, cfg.get("text_cfg") or {}
    patch, width = int(vision.get("patch_size") or 0), int(vision.get("width") or 0)
    params = tower(vision) + tower(text) + 3 * patch * patch * width
    params += int(text.get("vocab_size") or 0) * int(text.get("width") or 0)
    return 4 * params
