"""Text tokenisation: open_clip's BPE tokenizer, with the EOT position computed here as int32.

The exported text graph takes the EOT position as an input so it never needs ``ArgMax`` over int64 ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from rap_deploy.config import TokenizerConfig


@lru_cache(maxsize=4)
def _simple_tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def tokenize(texts: Sequence[str], cfg: TokenizerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise ``texts`` into ids ``[N, L]`` int32 and EOT positions ``[N]`` int32.

    Texts longer than ``cfg.context_length`` are truncated with the EOT token kept as the last token (open_clip's
    behaviour). Raises ``ValueError`` for an unknown tokenizer name.
    """
    if cfg.name != "open_clip.SimpleTokenizer":
        raise ValueError(f"tokenizer '{cfg.name}' is not supported; use open_clip.SimpleTokenizer")
    tok = _simple_tokenizer(cfg.context_length)
    ids = tok(list(texts), context_length=cfg.context_length).numpy()
    eot_id = tok.eot_token_id
    is_eot = ids == eot_id
    if not is_eot.any(axis=1).all():
        raise ValueError("a tokenised text has no EOT token; context_length too small?")
    eot = is_eot.argmax(axis=1).astype(np.int32)
    return ids.astype(np.int32), eot


def vocab_size(cfg: TokenizerConfig) -> int:
    """Number of token ids the tokenizer can produce (ids are ``0 .. vocab_size - 1``)."""
    if cfg.name != "open_clip.SimpleTokenizer":
        raise ValueError(f"tokenizer '{cfg.name}' is not supported; use open_clip.SimpleTokenizer")
    return int(_simple_tokenizer(cfg.context_length).vocab_size)


def token_count(text: str, cfg: TokenizerConfig) -> int:
    """Number of BPE tokens ``text`` becomes, without the start and end tokens (after open_clip's text cleaning).

    :func:`tokenize` keeps at most ``cfg.context_length - 2`` of them. Raises ``ValueError`` for an unknown tokenizer.
    """
    if cfg.name != "open_clip.SimpleTokenizer":
        raise ValueError(f"tokenizer '{cfg.name}' is not supported; use open_clip.SimpleTokenizer")
    return len(_simple_tokenizer(cfg.context_length).encode(text))
