"""The queries of ``rapdeploy search``: ``TEXT`` or the lines of ``--queries FILE``, each named and checked before
anything loads."""

from __future__ import annotations

from pathlib import Path

from rap_deploy.errors import UsageError
from rap_deploy.safe_paths import absent


def read_queries(text: str | None, queries_file: Path | None) -> tuple[list[str], list[str] | None]:
    """The queries of the command line, ``TEXT`` or the lines of ``--queries FILE`` (blank lines skipped), and how
    messages name each: ``None`` for ``TEXT`` (``query 1``), ``FILE line N`` for a file's, each line checked here
    (:func:`~rap_deploy.library.queries.check_query`) so a bad one is refused by its line before anything loads."""
    if text is not None and queries_file is not None:
        raise UsageError("give a query TEXT or --queries FILE, not both")
    if queries_file is None:
        if text is None:
            raise UsageError('no query: rapdeploy search "a red circle moves to the left" (or --queries FILE)')
        return [text], None
    if not queries_file.is_file():
        what = "is not a regular file (a folder, FIFO or device)" if queries_file.exists() else absent(queries_file)
        raise UsageError(f"query file {queries_file} {what}; pass a text file with one query per line")
    _check_queries_file_size(queries_file)
    data = queries_file.read_bytes()
    try:
        content = data.decode("utf-8-sig")  # a byte-order mark (Notepad's) is no part of the first query
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UsageError(f"query file {queries_file} line {line} is not UTF-8 text; write one query per line") \
            from None
    from rap_deploy.library.queries import check_query

    numbered = _query_lines(queries_file, content)
    if not numbered:
        raise UsageError(f"query file {queries_file} holds no query; write one query per line")
    names = [f"query file {queries_file} line {n}" for n, _ in numbered]
    for name, (_, line) in zip(names, numbered, strict=True):
        check_query(line, name=name)
    return [line for _, line in numbered], names


def _query_lines(queries_file: Path, content: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of each non-blank line of the queries file; raises :class:`UsageError` (exit 2) as soon
    as there are more than a search takes (:data:`~rap_deploy.library.queries.MAX_QUERIES`), before a line is named
    or checked: a file within the size limit can hold millions of short lines."""
    from rap_deploy.library.queries import MAX_QUERIES

    numbered: list[tuple[int, str]] = []
    for n, line in enumerate(content.splitlines(), 1):
        if line.strip():
            if len(numbered) == MAX_QUERIES:
                raise UsageError(f"query file {queries_file} holds more than {MAX_QUERIES:,} queries (query "
                                 f"{MAX_QUERIES + 1:,} is on line {n}); one search takes at most {MAX_QUERIES:,}: "
                                 "split the file")
            numbered.append((n, line))
    return numbered


def _check_queries_file_size(queries_file: Path) -> None:
    """Refuse (exit 2) a queries file larger than the most queries one search takes, before reading it."""
    from rap_deploy.library.queries import MAX_QUERIES, MAX_QUERIES_FILE_BYTES, MAX_QUERY_CHARS

    size = queries_file.stat().st_size
    if size > MAX_QUERIES_FILE_BYTES:
        raise UsageError(f"query file {queries_file} is {size:,} bytes, more than {MAX_QUERIES:,} queries of "
                         f"{MAX_QUERY_CHARS:,} characters take ({MAX_QUERIES_FILE_BYTES:,}); pass a text file with "
                         "one query per line (split a longer list)")
