"""File names that fit the file system: a name made from another one (a converted weights file beside the user's)
cut to the bytes a file name may have."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

# The bytes a file name may have on Linux, macOS and Windows file systems (NAME_MAX): a longer one fails to be
# created with "File name too long" (ENAMETOOLONG)
NAME_MAX = 255


def bounded_file_name(name: str, ending: str, limit: int = NAME_MAX) -> str:
    """``name + ending``, the name of a file made beside ``name``, at most ``limit`` bytes in the file system's
    encoding (:func:`os.fsencode`): unchanged when it fits, else with the end of ``name``'s stem cut, whole
    characters only, its extension and ``ending`` kept (``<stem cut>.bin.inner.pt``); when the extension itself
    leaves no room for a character of the stem, ``name`` as a whole is cut instead. ``ending`` (a few ASCII
    characters here) is always kept whole; raises ``ValueError`` when it alone is over ``limit``."""
    full = name + ending
    if len(os.fsencode(full)) <= limit:
        return full
    room = limit - len(os.fsencode(ending))
    if room < 1:
        raise ValueError(f"file name ending {ending!r} is over {limit} bytes")
    stem, suffix = (name[:-len(Path(name).suffix)], Path(name).suffix) if Path(name).suffix else (name, "")
    kept = _bytes_prefix(stem, room - len(os.fsencode(suffix)))
    return f"{kept}{suffix}{ending}" if kept else f"{_bytes_prefix(name, room)}{ending}"


def _bytes_prefix(text: str, most: int) -> str:
    """The longest start of ``text`` (whole characters) whose :func:`os.fsencode` is at most ``most`` bytes, never
    ending in a letter whose combining marks (an accent written as its own code point) were cut off after it."""
    used = 0
    for i, char in enumerate(text):
        used += len(os.fsencode(char))
        if used > most:
            while i > 0 and unicodedata.category(text[i]).startswith("M"):
                i -= 1  # the cut falls inside a letter's marks: drop the letter too
            return text[:i]
    return text
