import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn.text.tokenizer import CharTokenizer, tokenizer_from_state


def test_round_trip_and_ids_are_dense():
    text = "Hello, wörld!\n\tindent  trailing  \n日本語 🙂"
    tok = CharTokenizer.build(text)
    ids = tok.encode(text)
    assert ids.dtype == np.int64
    assert ids.min() >= 1 and ids.max() == tok.vocab_size - 1  # 0 is the unknown id
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(text)) + 1


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_round_trip_any_unicode(text):
    tok = CharTokenizer.build(text)
    assert tok.decode(tok.encode(text)) == text


def test_unknown_characters_map_to_unk_and_are_counted():
    tok = CharTokenizer.build("abc")
    ids = tok.encode("abxcz")
    assert list(ids) == [1, 2, 0, 3, 0]
    assert tok.count_unknown("abxcz") == 2
    assert tok.unknown("abxczx") == ["x", "z"]
    assert tok.decode(ids) == "ab\ufffdc\ufffd"


def test_state_round_trip():
    tok = CharTokenizer.build("some text\nwith lines")
    again = tokenizer_from_state(tok.state())
    assert again.chars == tok.chars
    assert list(again.encode("lines text")) == list(tok.encode("lines text"))


def test_char_encoding_in_blocks_is_the_whole_texts(monkeypatch):
    """CharTokenizer.encode works ENCODE_BLOCK characters at a time (the whole text's temporaries were about 37
    bytes a character): ids across block edges, unknown and astral characters, as one pass gives them."""
    from charnn.text import tokenizer as tk

    tok = tk.CharTokenizer.build("abc \U0001F600\u00e9\n")
    text = "ab\U0001F600c zq\u00e9\n\U0001F601" * 7 + "a"
    whole = np.array([tok._index.get(c, tok.unk_id) for c in text], dtype=np.int64)
    for block in (1, 3, 10, 1 << 20):
        monkeypatch.setattr(tk, "ENCODE_BLOCK", block)
        ids = tok.encode(text)
        assert ids.dtype == np.int64 and np.array_equal(ids, whole), block
    assert tok.encode("").shape == (0,) and tk.CharTokenizer([]).encode("ab").tolist() == [0, 0]
