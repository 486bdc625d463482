import pytest

from maxwhisper.harness.wer import normalize, wer


def test_wer_identical_is_zero():
    assert wer("the cat sat on the mat", "The cat sat on the mat.") == 0.0


def test_wer_disjoint_is_one():
    assert wer("alpha beta gamma", "one two three") == 1.0


def test_wer_known_case():
    # one substitution (sat->sit), one deletion (the), one insertion (big) over 6 reference words
    assert wer("the cat sat on the mat", "the cat sit on big mat") == pytest.approx(2 / 6)
    assert wer("a b c d", "a x c d e") == pytest.approx(2 / 4)


def test_wer_is_corpus_level():
    # 1 error in 2 words + 0 errors in 8 words = 1/10, not the mean of 0.5 and 0
    assert wer(["a b", "c d e f g h i j"], ["a x", "c d e f g h i j"]) == pytest.approx(0.1)


def test_wer_normalizes_like_the_whisper_paper():
    assert normalize("Mr. Smith's colour, 10%!") == normalize("mister smith's color 10 percent")
    assert wer("It's twenty-five dollars.", "it is $25") == 0.0


def test_wer_empty_hypothesis_and_reference():
    assert wer("one two", "") == 1.0
    assert wer(["", "a"], ["extra words", "a"]) == 2.0
    with pytest.raises(ValueError, match="no words"):
        wer("", "")
    with pytest.raises(ValueError, match="references"):
        wer(["a"], ["a", "b"])
