"""A URL typed where a file or folder path belongs (``index --videos``, a ``--list`` line, ``--out``, ``--library``).

A :class:`~pathlib.Path` folds ``http://host/x`` into the relative folders ``http:/host/x``, so such a value was looked
for, or written, under the current folder. :func:`url_typed_as_path` recognises it, for a refusal that names the URL
as typed. Light on purpose (no dataset or torch import): ``search`` and ``serve`` check ``--library`` with it.
"""

from __future__ import annotations

import os

# Schemes of URLs a user may write where a file path belongs (video hosts, buckets, streams, servers)
URL_SCHEMES = ("http", "https", "ftp", "ftps", "s3", "gs", "rtsp", "rtmp")
# Those of a server's URL (a running `rapdeploy serve` or Triton): where a library folder belongs, one of these gets
# the refusal that says to pass it as --engine (indexed_through.refuse_server_url)
SERVER_SCHEMES = ("http", "https")


def url_typed_as_path(value: str | os.PathLike[str]) -> str | None:
    """``value`` as the URL it was typed as (``http://host/v.mp4``, ``s3://bucket/clips``), when it starts with one of
    :data:`URL_SCHEMES` and ``:/`` (a :class:`~pathlib.Path` keeps one slash of two), else ``None``."""
    text = os.fspath(value)
    scheme, sep, rest = text.partition(":/")
    if not sep or scheme.lower() not in URL_SCHEMES:
        return None
    return f"{scheme}://{rest.lstrip('/')}"
