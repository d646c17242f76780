"""Report folder names: which engine, which dataset and which split a report under ``<workspace>/verify/`` is of.

:func:`engine_label` names an engine's reports: the engine folder's or checkpoint's name, ``RUN-best`` and
``RUN-last`` for a training run's ``best.pt`` and ``last.pt``, ``remote-HOST-PORT`` for a server;
:func:`report_folder_name` adds a dataset other than :data:`~rap_deploy.data.DEFAULT_DATASET` after
:data:`DATASET_SEPARATOR` and a split other than the test split after :data:`SPLIT_SEPARATOR`.

The names cannot be confused, yet the common ones read as they are:

- a local name keeps its letters, digits, ``.``, ``_`` and ``-``; any other character is written ``%XX`` (its UTF-8
  bytes, as in a URL; ``%`` itself too), so two names never share a label (``my engine`` is ``my%20engine``);
- a server's label starts ``remote-``, and a local name that starts so is written ``remote%2D…``;
- an ``https://`` server's label goes on ``remote-https_``, which no ``http://`` server's holds (those keep only
  letters, digits, ``.`` and ``-``), so the two schemes on one host and port never share a folder;
- no label holds ``@``, so ``X@train`` (engine ``X``, split ``train``) is never engine ``X-train``'s test report;
- no label holds ``+``, so ``X+msvd`` (engine ``X``, MSVD's test split) is never another engine's or split's report;
- an IPv6 host is written as its eight groups (``http://[::1]:8000`` is ``remote-ipv6-0-0-0-0-0-0-0-1-8000``).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from pathlib import Path

from rap_deploy.data import DEFAULT_DATASET
from rap_deploy.workspace import RUN_BEST, RUN_LAST

SPLIT_SEPARATOR = "@"  # before a split: never in a label, a dataset's name or an escaped split
DATASET_SEPARATOR = "+"  # between an engine's label and a dataset: never in a label or an escaped split
REMOTE_PREFIX = "remote-"
HTTPS_MARK = "https_"  # after REMOTE_PREFIX in an https:// server's label
# The checkpoints train writes into every run folder: named after the file alone, the reports of two runs' best.pt
# would share one folder, the later overwriting the earlier.
RUN_CHECKPOINT_NAMES = (RUN_BEST, RUN_LAST)
_IPV6_HOST = re.compile(r"\[([^\]]*)\]")


def engine_label(engine_path: Path | str) -> str:
    """A folder name for an engine's reports: the engine folder's or checkpoint's name (``RUN-best``/``RUN-last``
    for a training run's ``best.pt``/``last.pt``: the run folder's name first) written by :func:`escape_name`, or
    :func:`remote_label` for a server URL."""
    from rap_deploy.engines.loader import is_remote

    if is_remote(engine_path):
        return remote_label(str(engine_path))
    path = Path(engine_path)
    if not path.is_file():
        return _local_label(path.resolve().name)
    run = path.absolute().parent.name
    return _local_label(f"{run}-{path.stem}" if path.name in RUN_CHECKPOINT_NAMES and run else path.stem)


def report_folder_name(label: str, split: str | None, dataset: str) -> str:
    """The report folder of the engine ``label`` for ``split`` (``None``: the test split) of ``dataset``: ``LABEL``,
    then ``+DATASET`` (:data:`DATASET_SEPARATOR`) for a dataset other than :data:`~rap_deploy.data.DEFAULT_DATASET`,
    then ``@SPLIT`` (:data:`SPLIT_SEPARATOR`) for a split other than the test split; dataset and split written by
    :func:`escape_name`. The default dataset's folders are the ones reports had before datasets were told apart
    (``X``, ``X@train``); another's are ``X+msvd``, ``X+msvd@val``.

    No two (engine, dataset, split) share a folder, whatever the split is named: :func:`escape_name` writes ``+``
    and ``@`` as ``%2B`` and ``%40``, so neither a label nor an escaped dataset or split holds them; a folder name
    therefore has at most one ``+`` and at most one ``@``, the ``+`` before the ``@``, and reads back as one
    label, one dataset (none after ``+``: the default) and one split (none after ``@``: the test split). A split
    named like a dataset (``X@msvd``) is not MSVD's test report (``X+msvd``). ``+`` is an ordinary character in a
    file name on Linux, macOS and Windows."""
    name = label if dataset == DEFAULT_DATASET else f"{label}{DATASET_SEPARATOR}{escape_name(dataset)}"
    return name if split is None else f"{name}{SPLIT_SEPARATOR}{escape_name(split)}"


def remote_label(url: str) -> str:
    """``remote-HOST-PORT`` for the server ``url`` (``http://HOST:PORT[/path]``), ``remote-https_HOST-PORT`` for an
    ``https://`` one: its trailing slashes dropped, as the remote engine drops them (one server, one folder), a
    bracketed IPv6 host written as ``ipv6-`` and its eight groups, and every character but letters, digits, ``.`` and
    ``-`` written ``-``."""
    scheme, target = url.split("://", 1)
    target = _IPV6_HOST.sub(lambda m: _ipv6_words(m.group(1)) or m.group(0), target.rstrip("/"))
    words = "".join(c if c.isalnum() or c in ".-" else "-" for c in target)
    # '_' is outside the alphabet of the words, so no http:// label can read as an https:// one
    return REMOTE_PREFIX + (HTTPS_MARK if scheme.lower() == "https" else "") + words


def escape_name(name: str) -> str:
    """``name`` with every character but letters, digits, ``.``, ``_`` and ``-`` written ``%XX`` (its UTF-8 bytes):
    a folder name that differs from every other name's and holds no :data:`SPLIT_SEPARATOR`,
    :data:`DATASET_SEPARATOR` or path separator. A name of dots only (``.``, ``..``: the stem of ``..pt``) has its
    dots written ``%2E`` too, so it names a folder of its own, not the current or the parent one."""
    if name and not name.strip("."):
        return name.replace(".", "%2E")
    return "".join(c if c.isalnum() or c in "._-" else urllib.parse.quote(c, safe="") for c in name)


def _local_label(name: str) -> str:
    """:func:`escape_name` of a local engine's ``name``, with the ``-`` of a leading ``remote-`` written ``%2D``
    too, so that no engine folder takes a server's reports."""
    label = escape_name(name)
    if label.startswith(REMOTE_PREFIX):
        return "remote%2D" + label[len(REMOTE_PREFIX):]
    return label


def _ipv6_words(host: str) -> str | None:
    """``ipv6-G1-…-G8[-ZONE]`` for the IPv6 address ``host`` (a URL's bracketed host, its zone ``%25``-quoted), each
    group in hex without leading zeros (``::1``: ``ipv6-0-0-0-0-0-0-0-1``); ``None`` when it is no IPv6 address."""
    address, _, zone = urllib.parse.unquote(host).partition("%")
    try:
        groups = ipaddress.IPv6Address(address).exploded.split(":")
    except ValueError:
        return None
    return "-".join(["ipv6", *(format(int(g, 16), "x") for g in groups), *([zone] if zone else [])])
