"""Lists of names in messages: the first few, whole, then how many were left out ("a, b, c and 2 more"); and values
from untrusted files shown at a bounded length (:func:`short_repr`).

Kept free of heavy imports (torch, numpy) so every module that words an error can use it.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence

#: How many names a list in a message shows before "and N more".
NAMES_SHOWN = 5
#: How many characters of one value a message shows before it is cut with "…".
VALUE_CHARS = 40
#: How many characters of a path read from an untrusted file (a manifest's engine) a message shows: a real path
#: whole, a padded one cut with "…".
PATH_CHARS = 1000

_REPR = reprlib.Repr()  # summarizes long strings, numbers and containers while the repr is made
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = VALUE_CHARS


def some_names(names: Sequence[str], shown: int = NAMES_SHOWN, sep: str = ", ") -> str:
    """``names`` joined by ``sep``, whole names only: the first ``shown``, then "and N more" for the rest.

    After a ``sep`` other than a comma (``"; "`` between items that hold commas themselves) the count is a list
    item of its own ("a: x; b: y; and 2 more"), so it is not read as part of the last item.
    """
    head = sep.join(names[:shown])
    left = len(names) - shown
    if left <= 0:
        return head
    return f"{head} and {left} more" if sep.strip() == "," else f"{head}{sep}and {left} more"


def shortened(text: str, width: int = VALUE_CHARS) -> str:
    """``text`` whole when it has at most ``width`` characters, else its first ``width - 1`` and "…"."""
    return text if len(text) <= width else text[:width - 1] + "…"


def short_repr(value: object, width: int = VALUE_CHARS) -> str:
    """``repr(value)`` in at most ``width`` characters (cut with "…"), for a value read from an untrusted file.

    The repr is made by :mod:`reprlib`, so a huge string or list costs no huge string, and an int with too many
    digits for Python to print (``repr`` raises ``ValueError`` past 4300) is named by its type instead.
    """
    try:
        text = _REPR.repr(value)
    except ValueError:
        text = f"<{type(value).__name__} too large to show>"
    return shortened(text, width)


def text_repr(value: object, width: int = PATH_CHARS) -> str:
    """A value read from an untrusted file that is most likely a path (a run folder, a backbone file): a text as its
    repr, whole up to ``width`` characters (a real path is named whole), a longer one cut with "…"; anything else
    through :func:`short_repr`."""
    if isinstance(value, str):
        return shortened(repr(value[:width + 1]), width + 2)  # + the quotes
    return short_repr(value)


def int_text(value: int, spec: str = "") -> str:
    """An int from an untrusted file, formatted with ``spec`` (``","``) when it is of a size a limit compares (up to
    39 digits), else through :func:`short_repr`: Python refuses to print one of more than 4300 digits (``ValueError``)
    and a line of thousands of digits says nothing more."""
    return format(value, spec) if abs(value) < 10 ** 39 else short_repr(value)
