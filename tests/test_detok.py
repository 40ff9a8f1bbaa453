from edgescale.runtime.detok import IncrementalText


def test_multibyte_split_across_tokens() -> None:
    raw = "héllo 世界 🙂".encode()
    t = IncrementalText()
    out = "".join(t.feed(raw[i : i + 1]) for i in range(len(raw)))
    out += t.flush()
    assert out == "héllo 世界 🙂" == t.text


def test_incomplete_tail_is_held_then_replaced() -> None:
    t = IncrementalText()
    assert t.feed("a".encode() + "€".encode()[:2]) == "a"
    assert t.flush() == "\ufffd"
