"""Text tokenisation: open_clip's BPE tokenizer (``open_clip.SimpleTokenizer``), without importing torch.

The vocabulary and merge table are open_clip's own file (``bpe_simple_vocab_16e6.txt.gz``, located in the installed
package without importing it), and the text cleaning, pre-tokenisation pattern, byte alphabet, merge order and
truncation follow ``SimpleTokenizer`` with ``clean='lower'``. open_clip's module imports torch (≈ 500 MiB resident
on CPU wheels) only to return a tensor; a search process that runs ONNX Runtime sessions must not pay for that.
``tests/test_tokenizer.py`` checks every id against open_clip's tokenizer on captions, Unicode, HTML entities, special
tokens and truncation. The EOT position is computed here as int32: the exported text graph takes it as an input so it
never needs ``ArgMax`` over int64 ids.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from rap_deploy.config import TokenizerConfig

SUPPORTED = "open_clip.SimpleTokenizer"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # open_clip keeps this many merges of the file: 49,408 ids in all
MAX_PIECE_CHARS = 4096  # one pre-token (a run of letters, say): no word is longer; far past any context
# The BPE symbols of words met before are kept, as open_clip does, but not for ever in a long-running server: words
# up to MAX_MEMO_CHARS characters, at most MAX_MEMO_WORDS of them (the memo is emptied when full; ids are unchanged).
MAX_MEMO_CHARS = 32
MAX_MEMO_WORDS = 20_000
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
END_OF_WORD = "</w>"


def vocab_path() -> Path:
    """The BPE vocabulary file shipped with the installed open_clip package.

    Raises ``FileNotFoundError`` naming the missing file and the fix.
    """
    spec = importlib.util.find_spec("open_clip")  # locates the package without running its __init__ (and torch)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"open_clip's BPE vocabulary {VOCAB_FILE} was not found in {folders or 'any package'}; "
                            "install the pinned open_clip_torch (pip install -e .)")


def byte_alphabet() -> dict[int, str]:
    """CLIP's reversible map from the 256 byte values to printable Unicode characters: printable Latin-1 bytes map
    to themselves, the others to code points from 256 up, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in kept}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_text(text: str) -> str:
    """open_clip's ``clean='lower'``: ftfy's repair, HTML entities unescaped twice, whitespace runs collapsed,
    lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class BPETokenizer:
    """CLIP's byte-level BPE over open_clip's vocabulary: :meth:`encode` gives the ids of a text without the start and
    end tokens; :attr:`sot_id`, :attr:`eot_id` and :attr:`vocab_size` are the tokenizer's constants."""

    def __init__(self, path: Path | None = None) -> None:
        import regex

        lines = gzip.open(path or vocab_path()).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
        self._bytes = byte_alphabet()
        symbols = list(self._bytes.values())
        vocab = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self._ids = {token: i for i, token in enumerate(vocab)}
        self._ranks = {pair: i for i, pair in enumerate(merges)}
        self._words: dict[str, tuple[str, ...]] = {t: (t,) for t in SPECIAL_TOKENS}
        self._pattern = regex.compile("|".join(SPECIAL_TOKENS)
                                      + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                      regex.IGNORECASE)
        self.vocab_size = len(vocab)
        self.sot_id, self.eot_id = (self._ids[t] for t in SPECIAL_TOKENS)

    def _merge(self, piece: str) -> tuple[str, ...]:
        """The BPE symbols of one pre-token (already in the byte alphabet): lowest-ranked adjacent pair first, every
        non-overlapping occurrence left to right, until no pair of the table is left."""
        cached = self._words.get(piece)  # one look-up: another thread (serve's pool) may empty the memo meanwhile
        if cached is not None:
            return cached
        word = (*piece[:-1], piece[-1] + END_OF_WORD)
        while len(word) > 1:
            ranked = [(self._ranks.get(pair, NUM_MERGES), pair) for pair in zip(word, word[1:], strict=False)]
            rank, (first, second) = min(ranked)
            if rank == NUM_MERGES:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        if len(piece) <= MAX_MEMO_CHARS:
            if len(self._words) >= MAX_MEMO_WORDS + len(SPECIAL_TOKENS):
                self._words = {t: (t,) for t in SPECIAL_TOKENS}
            self._words[piece] = word
        return word

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """Token ids of ``text`` after cleaning, without the start and end tokens.

        With ``limit``, encoding stops once that many ids exist (each pre-token is encoded on its own, so the ids kept
        are the same); a pre-token is read up to :data:`MAX_PIECE_CHARS` characters. Both bound the cost of a
        hostile caption: BPE on one piece is quadratic in its length.
        """
        ids: list[int] = []
        for match in self._pattern.finditer(clean_text(text)):
            if limit is not None and len(ids) >= limit:
                break
            piece = match.group()[:MAX_PIECE_CHARS]
            symbols = self._merge("".join(self._bytes[b] for b in piece.encode("utf-8")))
            ids.extend(self._ids[s] for s in symbols)
        return ids


@lru_cache(maxsize=1)
def _bpe() -> BPETokenizer:
    return BPETokenizer()


def _check(cfg: TokenizerConfig) -> BPETokenizer:
    if cfg.name != SUPPORTED:
        raise ValueError(f"tokenizer '{cfg.name}' is not supported; use {SUPPORTED}")
    return _bpe()


def tokenize(texts: Sequence[str], cfg: TokenizerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise ``texts`` into ids ``[N, L]`` int32 and EOT positions ``[N]`` int32.

    Texts longer than ``cfg.context_length`` are truncated with the EOT token kept as the last token (open_clip's
    behaviour). Raises ``ValueError`` for an unknown tokenizer name or a context length below 2, ``TypeError`` for
    ``texts`` that is one string (its characters were tokenised as texts of their own) or holds something else.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError("tokenize takes a list of texts, got one string; pass [text]")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is a {type(text).__name__}, not a str")
    tok = _check(cfg)
    length = int(cfg.context_length)
    if length < 2:
        raise ValueError(f"context_length {length} leaves no room for the start and end tokens; use >= 2")
    ids = np.zeros((len(texts), length), dtype=np.int32)
    eot = np.zeros(len(texts), dtype=np.int32)
    for row, text in enumerate(texts):
        tokens = [tok.sot_id, *tok.encode(text, limit=length - 2)[:length - 2], tok.eot_id]
        ids[row, :len(tokens)] = tokens
        eot[row] = tokens.index(tok.eot_id)  # the first, as open_clip's argmax finds it (a text may spell one)
    return ids, eot


def vocab_size(cfg: TokenizerConfig) -> int:
    """Number of token ids the tokenizer can produce (ids are ``0 .. vocab_size - 1``)."""
    return _check(cfg).vocab_size


def token_count(text: str, cfg: TokenizerConfig) -> int:
    """Number of BPE tokens ``text`` becomes, without the start and end tokens (after open_clip's text cleaning).

    :func:`tokenize` keeps at most ``cfg.context_length - 2`` of them. Raises ``ValueError`` for an unknown tokenizer.
    """
    return len(_check(cfg).encode(text))
