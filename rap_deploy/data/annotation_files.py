"""Readers of the annotation files a dataset folder holds (CSV, JSON, plain lists, caption pickles), for
:mod:`rap_deploy.data.datasets`.

Every file is untrusted: a missing file is a :class:`UsageError` naming it (exit 2: wrong ``--data-root``), a damaged
one a :class:`CheckFailedError` naming the file and what is wrong (exit 1); a file is read only up to
:data:`MAX_ANNOTATION_BYTES`, pickles build plain containers only, video ids must be plain file names and captions
non-empty Unicode text.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import pickle
from pathlib import Path
from typing import Any

from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.name_lists import shortened, some_names
from rap_deploy.safe_paths import check_plain_name

# The largest annotation file read: the real ones are megabytes (MSR-VTT's MSRVTT_data.json, all 200,000 captions,
# is the largest), and a JSON or pickle file takes several times its size in memory once parsed.
MAX_ANNOTATION_BYTES = 256 << 20


def need_file(path: Path) -> None:
    """Return when ``path`` is a regular file of at most :data:`MAX_ANNOTATION_BYTES`; raises :class:`UsageError`
    when it is missing or not a regular file (the folder is not the dataset; a FIFO would block the read), and
    :class:`CheckFailedError` when it is larger (it is read whole)."""
    if not path.is_file():
        if path.exists():
            raise UsageError(f"annotation file {path} is not a regular file (a folder, FIFO or device); put the "
                             "dataset's file there or pass the right --data-root")
        raise UsageError(f"annotation file {path} is missing; is --data-root the right dataset folder?")
    size = path.stat().st_size
    if size > MAX_ANNOTATION_BYTES:
        raise damaged(path, f"is {size:,} bytes, over the {MAX_ANNOTATION_BYTES:,} an annotation file may be (the "
                            "real ones are megabytes)")


def damaged(path: Path, what: str) -> CheckFailedError:
    """The error for a damaged annotation file (exit 1): ``path`` and what is wrong with it."""
    return CheckFailedError(f"{path} {what}; the annotation file is damaged or not in the CLIP4Clip format, fix or "
                            "re-download it")


def plain_video_id(value: Any, path: Path) -> str:
    """A video id from an annotation file, checked to be one plain file name of Unicode text (CheckFailedError
    otherwise: a JSON escape such as ``\\ud800`` gives a lone surrogate, which no file name and no message holds)."""
    vid = check_plain_name(value.strip() if isinstance(value, str) else value, "video id", path)
    try:
        vid.encode("utf-8")
    except UnicodeEncodeError:
        raise damaged(path, f"has video id {vid!r}, which is not Unicode text (a lone surrogate)") from None
    return vid


def caption_text(value: str, path: Path, where: str) -> str:
    """``value`` stripped, checked to be a caption: not empty or blank (an empty query matches every video alike) and
    Unicode text (a JSON escape such as ``\\ud800`` or a pickle can give a lone surrogate, which no output file
    holds); raises :class:`CheckFailedError` naming ``path`` and ``where`` (the video and caption) otherwise."""
    text = value.strip()
    if not text:
        raise damaged(path, f"has an empty caption {value[:40]!r} ({where}); give it its text or remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise damaged(path, f"has a caption that is not Unicode text ({where}: {text[:40]!r} holds a lone surrogate "
                            f"at character {exc.start})") from None
    return text


def duration_seconds(value: Any, path: Path, where: str) -> float:
    """``value`` as a duration in seconds; raises :class:`CheckFailedError` naming ``path`` and ``where`` unless it
    is a number in [0, 1e7)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e7:
        raise damaged(path, f"has duration {value!r} in {where}, not a number of seconds in [0, 1e7)")
    return float(value)


def annotation_text(path: Path) -> str:
    """The UTF-8 text of an annotation file, without a leading byte order mark (as Windows editors save it) and with
    its line breaks as ``\\n`` (``\\r\\n`` and ``\\r`` too, as :meth:`Path.read_text` reads them); CheckFailedError
    naming the file when it is not UTF-8 text: UTF-16 or UTF-32 (with or without a byte order mark), the byte and
    offset of another encoding, or NUL bytes, which no text file holds (a copy cut off can leave a file of them)."""
    need_file(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckFailedError(f"{path} {_not_utf8(data, exc)}") from None
    if "\0" in text:
        raise CheckFailedError(f"{path} {_holds_nul(data)}")
    text = text.removeprefix("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


# UTF-16 and UTF-32 by their byte order mark (UTF-32's first: FF FE 00 00 begins with UTF-16's FF FE)
_BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
                     (codecs.BOM_UTF16_BE, "UTF-16"))
# Without a mark, by which of the first 4 bytes are NUL: a file's first character (a CSV header's, a JSON '{' or '[',
# a list's video id) is ASCII, which UTF-16 and UTF-32 pad with NUL bytes
_NUL_PATTERNS = {(False, True, True, True): "UTF-32LE", (True, True, True, False): "UTF-32BE",
                 (False, True, False, True): "UTF-16LE", (True, False, True, False): "UTF-16BE"}


def _other_unicode(data: bytes) -> str | None:
    """What to say of ``data`` when it is UTF-16 or UTF-32 text (``"UTF-16 text (its byte order mark FF FE)"``,
    ``"UTF-16LE text without a byte order mark"``), with how to re-save it as UTF-8; None otherwise."""
    for bom, encoding in _BYTE_ORDER_MARKS:
        if data.startswith(bom):
            return _re_save(f"{encoding} text (its byte order mark {bom.hex(' ').upper()})", encoding)
    encoding = _NUL_PATTERNS.get(tuple(byte == 0 for byte in data[:4]))
    return None if encoding is None else _re_save(f"{encoding} text without a byte order mark", encoding)


def _re_save(what: str, encoding: str) -> str:
    """``"is WHAT, not UTF-8: re-save it as UTF-8 (iconv -f ENCODING ...)"``."""
    return (f"is {what}, not UTF-8: re-save it as UTF-8 (iconv -f {encoding} -t UTF-8 FILE > NEW, or an editor's "
            "'Save as UTF-8')")


def _not_utf8(data: bytes, exc: UnicodeDecodeError) -> str:
    """What to say of an annotation file ``data`` that ``exc`` found is not UTF-8: UTF-16 or UTF-32 (as Windows
    PowerShell 5's ``>`` and Excel's 'Unicode Text' save UTF-16, :func:`_other_unicode`) or the byte and offset, and
    how to re-save it."""
    return _other_unicode(data) or (
        f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): re-save it as UTF-8 (iconv -f "
        "ENCODING -t UTF-8 FILE > NEW, or an editor's 'Save as UTF-8'), or download it again if it is damaged")


def _holds_nul(data: bytes) -> str:
    """What to say of an annotation file ``data`` that decodes as UTF-8 but holds a NUL byte: UTF-16 or UTF-32 of
    ASCII text without a byte order mark (:func:`_other_unicode`), else where the first NUL is."""
    return _other_unicode(data) or (
        f"holds NUL bytes (the first at offset {data.index(0)}), which no text file does: it is damaged or not text "
        "(a copy or download cut off can leave a file of NUL bytes); download or copy it again")


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The non-blank rows of the CSV file ``path`` (header names stripped); what :func:`numbered_csv_rows` raises."""
    return [row for _, row in numbered_csv_rows(path, columns)]


def numbered_csv_rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """The non-blank rows of the CSV file ``path`` (header names stripped), each with the line of the file it starts
    on (blank and comma-only lines count, as an editor shows them); raises :class:`CheckFailedError` naming the file
    and line when a column of ``columns`` is missing, a row lacks one of their values or the file is not CSV text."""
    reader = csv.reader(io.StringIO(annotation_text(path), newline=""))
    start = 1
    try:
        header = [h.strip() for h in next(reader, [])]
        _check_columns(path, header, columns)
        rows = []
        start = reader.line_num + 1
        for values in reader:
            row = _row_dict(header, values)
            _check_one_line(path, row, columns, start, reader.line_num)
            if any((v or "").strip() for v in row.values() if isinstance(v, str)):
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _csv_error(path, exc, start, reader.line_num) from None
    for line, row in rows:
        if any(not isinstance(row.get(c), str) for c in columns):
            raise damaged(path, f"row {line} lacks a value for {', '.join(columns)}")
    return rows


def _csv_error(path: Path, exc: csv.Error, first: int, last: int) -> CheckFailedError:
    """The error for the CSV file ``path`` whose row on lines ``first`` to ``last`` (read so far) the csv module
    refused with ``exc``: a value over :func:`csv.field_size_limit` that runs over several lines is a quote opened and
    never closed (no annotation value is that long, and only a quoted one holds a line break)."""
    if "field larger than field limit" in str(exc) and last > first:
        return damaged(path, f"row {first} has a value running from line {first} past line {last}, over "
                             f"{csv.field_size_limit():,} characters: a '\"' opened on line {first} is not closed "
                             "there; close or remove it")
    return damaged(path, f"is not a valid CSV file at line {first if last <= first else f'{first}-{last}'} ({exc})")


def _check_columns(path: Path, header: list[str], columns: tuple[str, ...]) -> None:
    """Raise :class:`CheckFailedError` when the CSV ``header`` of ``path`` lacks one of ``columns``, naming the first
    few columns it has (each shortened: the header is untrusted, one line of 256 MB could be a million columns), or,
    when it is one column that holds them all split by a tab or ';', that separator (Excel's 'Unicode Text' and
    'Text' save tabs, its CSV in a locale with a decimal comma saves ';')."""
    missing = [c for c in columns if c not in header]
    if not missing:
        return
    for separator, name in (("\t", "tabs"), (";", "semicolons")):
        if len(header) == 1 and set(columns) <= {h.strip() for h in header[0].split(separator)}:
            raise CheckFailedError(f"{path} separates its columns with {name}, not commas: save it as CSV, "
                                   "comma-separated (Excel: 'CSV UTF-8 (Comma delimited)')")
    names = some_names([shortened(h) for h in header]) if header else "none"
    raise damaged(path, f"has no column '{missing[0]}' (columns: {names})")


def _row_dict(header: list[str], values: list[str]) -> dict[Any, Any]:
    """``values`` keyed by ``header`` as :class:`csv.DictReader` keys them: a missing value is None, extra values
    are a list under the key None."""
    row: dict[Any, Any] = dict(zip(header, values, strict=False))
    if len(values) > len(header):
        row[None] = values[len(header):]
    for key in header[len(values):]:
        row[key] = None
    return row


def _check_one_line(path: Path, row: dict[Any, Any], columns: tuple[str, ...], first: int, last: int) -> None:
    """Raise :class:`CheckFailedError` when a value of ``columns`` in the CSV row ``row`` (lines ``first`` to
    ``last`` of ``path``) holds a line break: no annotation value does, but a quote opened and never closed
    (``ret1,msr17,video17,"a dog``) makes one value of every line up to the next quote, so the videos and captions of
    those lines would silently vanish from the split."""
    broken = [c for c in columns if isinstance(row.get(c), str) and _line_breaks(row[c])]
    if not broken:
        return
    value = row[broken[0]]
    raise damaged(path, f"row {first} has a '{broken[0]}' value running over lines {first}-{last} "
                        f"({value.splitlines()[0][:40]!r}...): a '\"' opened on line {first} is not closed there; "
                        "close or remove it")


def _line_breaks(text: str) -> int:
    """How many line breaks ``text`` holds (``\\r\\n``, ``\\n`` or ``\\r`` each one)."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def read_json(path: Path) -> Any:
    """The parsed JSON file ``path``; raises :class:`CheckFailedError` when it is not JSON text."""
    text = annotation_text(path)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer of more digits than Python converts
        raise damaged(path, f"is not valid JSON: {str(exc)[:120]}") from None


def read_list(path: Path) -> list[str]:
    """The distinct non-blank lines of the text file ``path``, in order (what :func:`annotation_text` raises)."""
    lines = [line.strip() for line in annotation_text(path).splitlines()]
    return list(dict.fromkeys(line for line in lines if line))


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler that only builds plain containers and strings: a caption file must not run code. A dict saved as a
    ``collections.OrderedDict`` or a ``defaultdict(list)`` loads too (those two classes and ``list`` as the default
    factory are all it may name; none of them runs code)."""

    ALLOWED = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "list")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a caption file")


def read_pickle(path: Path) -> Any:
    """The plain containers and strings pickled in ``path``; raises :class:`CheckFailedError` for anything else (a
    pickle that would build another object is refused before it runs)."""
    need_file(path)
    try:
        with open(path, "rb") as fh:
            return _PlainUnpickler(fh).load()
    except Exception as exc:  # any failure of the restricted unpickler means "not a plain pickle of captions"
        raise damaged(path, f"is not a plain pickle of captions: {str(exc)[:160] or type(exc).__name__}") from None


def require_key(obj: Any, key: str, path: Path, where: str = "", kind: type | tuple[type, ...] | None = None) -> Any:
    """``obj[key]``, checked to be of ``kind`` (bools never count as numbers); raises :class:`CheckFailedError`
    naming ``path``, ``where`` and the key when ``obj`` is not a dict holding it or the value has another type."""
    at = f" in {where}" if where else ""
    if not isinstance(obj, dict) or key not in obj:
        raise damaged(path, f"has no key '{key}'{at}")
    value = obj[key]
    if kind is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise damaged(path, f"has '{key}'{at} of type {type(value).__name__} ({str(value)[:40]!r}), expected {names}")
    return value
