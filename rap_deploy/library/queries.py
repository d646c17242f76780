"""Checking search queries before they reach the tokenizer.

Rules (the README's "Search a video library" section repeats them):

- a query must be a ``str``; after stripping surrounding whitespace it must not be empty;
- it must not hold control characters other than tab / newline (``\\x00``, ``\\x1b``...: not text) nor a lone UTF-16
  surrogate (``\\ud800``: not valid text), and must hold at least one letter, digit or symbol (a string of
  punctuation or invisible format characters is not a query);
- it may be at most :data:`MAX_QUERY_CHARS` characters (a bound on tokenizer work per request);
- it must give at least one token (a string of characters the tokenizer drops is refused);
- a query longer than the model's text context (``context_length`` − 2 tokens) is **truncated** to the context, as
  CLIP does, and the result says so (``warnings``); it is not refused, because the first tokens still carry the
  meaning of most long sentences.

Every refusal is a :class:`~rap_deploy.errors.UsageError` naming the query (by number, or by the name its caller
gives: a queries file's line) and the fix.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

from rap_deploy.config import TokenizerConfig
from rap_deploy.errors import UsageError

MAX_QUERY_CHARS = 1000
MAX_QUERIES = 10000
# A queries file (one query a line): room for MAX_QUERIES of MAX_QUERY_CHARS in UTF-8 with blank lines and indents;
# a larger file is something else (a video passed by mistake) and is refused from its size, unread.
MAX_QUERIES_FILE_BYTES = 64 << 20


def check_queries(queries: Any, tokenizer: TokenizerConfig, names: Sequence[str] | None = None
                  ) -> tuple[list[str], list[list[str]]]:
    """Return the stripped queries and, per query, its warnings (truncation); raise :class:`UsageError` for a
    query that is not searchable text (see the module docstring). ``names``: how the messages name each query
    (``queries.txt line 4``), one per query; default ``query 1``, ``query 2``..."""
    if isinstance(queries, str) or not isinstance(queries, (list, tuple)):
        raise UsageError(f"queries must be a list of strings, got {type(queries).__name__}")
    if not queries:
        raise UsageError("no query given; pass a text to search for")
    if len(queries) > MAX_QUERIES:
        raise UsageError(f"{len(queries)} queries in one call; at most {MAX_QUERIES} (split the file)")
    if names is not None and len(names) != len(queries):
        raise ValueError(f"{len(names)} names for {len(queries)} queries")
    from rap_deploy.tokenizer import token_count

    texts, warnings = [], []
    limit = tokenizer.context_length - 2
    for i, q in enumerate(queries, 1):
        name = names[i - 1] if names is not None else f"query {i}"
        text = check_query(q, name=name)
        n = token_count(text, tokenizer)
        if n == 0:
            raise UsageError(f"{name} ({text[:40]!r}) has no word the tokenizer can read; write it in text")
        warn = []
        if n > limit:
            warn.append(f"{name} is {n} tokens long; the model reads {limit} (its text context is "
                        f"{tokenizer.context_length} with start and end tokens), the rest is ignored")
        texts.append(text)
        warnings.append(warn)
    return texts, warnings


def check_query(query: Any, number: int = 1, name: str | None = None) -> str:
    """One query's text, stripped; raises :class:`UsageError`, naming the query as ``name`` (default ``query
    NUMBER``), when it is not a non-empty, printable ``str`` of at most :data:`MAX_QUERY_CHARS` characters."""
    name = name or f"query {number}"
    if not isinstance(query, str):
        raise UsageError(f"{name} is a {type(query).__name__}, not text; pass the query as a string")
    text = query.strip()
    if not text:
        raise UsageError(f"{name} is empty; pass a text to search for, e.g. \"a red circle moves left\"")
    if len(text) > MAX_QUERY_CHARS:
        raise UsageError(f"{name} is {len(text)} characters long; at most {MAX_QUERY_CHARS} are accepted "
                         "(the model reads only its first words anyway)")
    for pos, ch in enumerate(text):
        kind = unicodedata.category(ch)
        if kind == "Cs":  # no character: half of a UTF-16 pair, or Python's stand-in for a byte that is not UTF-8
            raise UsageError(f"{name} holds U+{ord(ch):04X} at position {pos}, a lone UTF-16 surrogate: it is not "
                             "valid text (a byte that is not UTF-8 in a command-line argument, or a JSON \\u escape "
                             "without its pair); pass the query as UTF-8 text")
        if kind == "Cc" and ch not in "\t\n\r":
            raise UsageError(f"{name} holds the control character U+{ord(ch):04X} at position {pos}: it is "
                             "not text; pass a plain sentence")
    if not any(unicodedata.category(ch)[0] in "LN" or unicodedata.category(ch) == "So" for ch in text):
        raise UsageError(f"{name} ({text[:40]!r}) has no letter, digit or symbol: it is not text; pass a "
                         "sentence describing the video")
    return text
