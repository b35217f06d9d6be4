"""The real MiniLM's sentence pools: calibration text never holds a test sentence (the bench's figures depend on it)."""

from models import minilm


def test_pools_are_disjoint_and_distinct():
    a, b, c = (minilm.singles(p) for p in "abc")
    for pool in (a, b, c):
        assert len(set(pool)) == len(pool)
    assert not set(a) & set(b) and not set(c) & set(b) and not set(a) & set(c)


def test_wide_calibration_holds_no_test_sentence():
    wide, test = minilm.wide_sentences(), minilm.singles("b")
    singles = minilm.singles("a") + minilm.singles("c")
    assert wide[:len(singles)] == singles and len(wide) == 2 * len(singles)
    assert all(f"{x} {y}" == pair for x, y, pair in zip(singles, singles[1:], wide[len(singles):]))
    assert not any(sentence in text for sentence in test for text in wide)
