"""Lists of names in messages: the first few, whole, then how many were left out ("a, b, c and 2 more").

Kept free of heavy imports (torch, numpy) so every module that words an error can use it.
"""

from __future__ import annotations

from collections.abc import Sequence

#: How many names a list in a message shows before "and N more".
NAMES_SHOWN = 5


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
