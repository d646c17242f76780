"""A query holding a lone UTF-16 surrogate (``"\\ud800"`` in a ``/search`` JSON body, or Python's stand-in for a byte
that is not UTF-8 in a command-line argument) was refused as holding "the control character U+D800": it is no
control character but no character at all. The refusal now names it a lone UTF-16 surrogate, not valid text, and
says where one comes from; control characters keep their message."""

from __future__ import annotations

import pytest

from rap_deploy.config import TokenizerConfig
from rap_deploy.errors import UsageError
from rap_deploy.library.queries import check_queries, check_query


@pytest.mark.parametrize("query, code, pos", [
    ("a red \ud800 circle", "U+D800", 6),  # a JSON "\ud800" without its pair
    ("a red circle\udfff", "U+DFFF", 12),  # a trailing half
    (b"caf\xe9 au lait".decode("utf-8", "surrogateescape"), "U+DCE9", 3),  # a Latin-1 byte in argv
])
def test_a_lone_surrogate_is_named_as_such(query, code, pos):
    with pytest.raises(UsageError) as err:
        check_query(query)
    message = str(err.value)
    assert message == (f"query 1 holds {code} at position {pos}, a lone UTF-16 surrogate: it is not valid text (a "
                       "byte that is not UTF-8 in a command-line argument, or a JSON \\u escape without its pair); "
                       "pass the query as UTF-8 text"), message
    assert "control character" not in message


def test_the_servers_check_names_the_surrogate_and_control_characters_keep_their_message():
    with pytest.raises(UsageError, match=r"^query holds U\+D83D at position 2, a lone UTF-16 surrogate: "):
        check_queries(["a \ud83d cat"], TokenizerConfig(), names=["query"])  # as serve's /search calls it
    with pytest.raises(UsageError) as err:
        check_query("a red\x1b circle")
    assert str(err.value) == ("query 1 holds the control character U+001B at position 5: it is not text; pass a plain "
                              "sentence")
    assert check_query(" a red\tcircle\n") == "a red\tcircle" and check_query("a \U0001f408 cat") == "a \U0001f408 cat"
