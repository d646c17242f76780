"""The torch-free tokenizer gives open_clip's ids, EOT positions and vocabulary size, and never imports torch."""

import subprocess
import sys

import numpy as np
import pytest

from rap_deploy.config import TokenizerConfig
from rap_deploy.tokenizer import token_count, tokenize, vocab_size

TEXTS = [
    "a small red circle moves to the left, then a big blue square appears",
    "",
    "   ",
    "A   MAN\tis   Singing\n\nloudly!!!",
    "don't stop: it's 3.14159 o'clock, we'll see; they'd've",
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u2014 na\u00efve co\u00f6perate",
    "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt; &quot;quoted&quot; &#39;single&#39;",
    "\u00e2\u0080\u0099mojibake\u00e2\u0080\u009d fixed by ftfy",
    "\u4e00\u53ea\u732b\u5728\u8df3\u821e \u72ac\u304c\u8d70\u308b \ud55c\uad6d\uc5b4",
    "emoji \U0001f600\U0001f3ac\U0001f468\u200d\U0001f469\u200d\U0001f467 and \u00a9 \u00ae \u2122",
    "<start_of_text> spelled <end_of_text> inside a query",
    "a" * 300,
    " ".join(["word"] * 200),
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    "x1y2z3 #hashtag @user http://example.com/a?b=c&d=e",
]


@pytest.fixture(scope="module")
def reference():
    from open_clip.tokenizer import SimpleTokenizer  # a pinned dependency: missing is a failure, not a skip

    return SimpleTokenizer()


@pytest.mark.parametrize("context_length", [77, 32, 8])
def test_ids_and_eot_equal_open_clip(reference, context_length):
    cfg = TokenizerConfig(context_length=context_length)
    ids, eot = tokenize(TEXTS, cfg)
    expected = reference(TEXTS, context_length=context_length).numpy()
    assert ids.dtype == np.int32 and eot.dtype == np.int32
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(eot, expected.argmax(axis=1))  # open_clip's text tower pools at argmax
    assert vocab_size(cfg) == reference.vocab_size == 49408
    for text in TEXTS:
        assert token_count(text, cfg) == len(reference.encode(text))


def test_synthetic_captions_equal_open_clip(reference, synth_root):
    from rap_deploy.data.datasets import load_split

    captions = [c for split in ("train", "test") for c in load_split("msrvtt", synth_root, split).captions]
    cfg = TokenizerConfig(context_length=32)
    np.testing.assert_array_equal(tokenize(captions, cfg)[0], reference(captions, context_length=32).numpy())


def test_tokenizing_imports_neither_torch_nor_open_clip():
    code = ("import sys; from rap_deploy.config import TokenizerConfig; from rap_deploy.tokenizer import tokenize; "
            "tokenize(['a red circle'], TokenizerConfig()); print(sorted(m for m in ('torch', 'open_clip') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_tokenizer_and_tiny_context_are_refused():
    with pytest.raises(ValueError, match="not supported"):
        tokenize(["x"], TokenizerConfig(name="bert"))
    with pytest.raises(ValueError, match="context_length 1"):
        tokenize(["x"], TokenizerConfig(context_length=1))


def test_one_string_or_a_text_that_is_not_a_str_is_refused():
    """tokenize("a query") tokenised each character as a text of its own (3 rows for "abc", so encode_texts gave one
    embedding per character, silently); None or bytes among the texts were ftfy's tracebacks."""
    cfg = TokenizerConfig()
    with pytest.raises(TypeError, match="got one string"):
        tokenize("abc", cfg)
    for bad in (None, b"abc", 3):
        with pytest.raises(TypeError, match=r"text 1 is a \w+, not a str"):
            tokenize(["fine", bad], cfg)
    assert tokenize(("a", "b"), cfg)[0].shape == (2, 32) and tokenize([], cfg)[0].shape == (0, 32)


def test_a_model_config_of_a_one_token_context_is_refused():
    """RAPConfig took context_length 1 (`rapdeploy init --context-length 1` wrote the checkpoint), whose tokenizer
    then refused every text and whose export was a torch traceback; the model config now needs 2 (start and end)."""
    from rap_deploy.config import RAPConfig
    from rap_deploy.errors import UsageError

    with pytest.raises(UsageError, match="'context_length' must be >= 2, got 1"):
        RAPConfig(context_length=1)
    assert tokenize(["x"], RAPConfig(context_length=2).tokenizer)[1].tolist() == [1]


def test_a_huge_caption_costs_what_its_kept_tokens_cost():
    """Encoding stops at the context (each word is encoded on its own, so the kept ids are the same as a full
    encode's) and one word is read up to MAX_PIECE_CHARS characters: a 1.1 MB caption or a 24k-letter word is quick."""
    from rap_deploy.config import TokenizerConfig
    from rap_deploy.tokenizer import tokenize

    cfg = TokenizerConfig()
    huge, short = tokenize(["a dog runs " * 100_000], cfg), tokenize(["a dog runs " * 20], cfg)
    assert (huge[0] == short[0]).all() and (huge[1] == short[1]).all()
    ids, eot = tokenize(["a " + "x" * 24_000 + " dog"], cfg)
    assert eot[0] == cfg.context_length - 1


def test_the_word_memo_of_a_long_running_process_stays_bounded():
    """The BPE result of every distinct word was kept for the life of the process: a server answering queries of
    ever new words (up to MAX_PIECE_CHARS characters each) grew without limit. The memo now holds at most
    MAX_MEMO_WORDS words, and ids are unchanged when it is emptied."""
    from rap_deploy import tokenizer as tok_module

    bpe = tok_module.BPETokenizer()
    first = bpe.encode("the quick brown fox")
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    for _ in range(tok_module.MAX_MEMO_WORDS // 40 + 50):
        bpe.encode(" ".join("".join(rng.choice(letters, 12)) for _ in range(50)))
    assert len(bpe._words) <= tok_module.MAX_MEMO_WORDS + len(tok_module.SPECIAL_TOKENS)
    assert bpe.encode("the quick brown fox") == first
    assert bpe.encode("<end_of_text>") == [bpe.eot_id]


def test_a_memo_emptied_by_another_thread_between_check_and_read_is_no_error():
    """serve tokenizes queries in a thread pool with one shared tokenizer: a word found in the memo, which another
    thread then emptied (it was full) before it was read, raised KeyError. Simulated deterministically: the memo
    is replaced while it is being searched."""
    from rap_deploy import tokenizer as tok_module

    bpe = tok_module.BPETokenizer()
    expected = bpe.encode("the quick brown fox")

    class EmptiedMeanwhile(dict):
        def __contains__(self, key: object) -> bool:
            found = super().__contains__(key)
            bpe._words = {t: (t,) for t in tok_module.SPECIAL_TOKENS}  # what a full memo's next insert does
            return found

    bpe._words = EmptiedMeanwhile(bpe._words)
    assert bpe.encode("the quick brown fox") == expected
