"""Word error rate as the Whisper paper measures it: openai-whisper's EnglishTextNormalizer, then jiwer."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jiwer
from whisper.normalizers import EnglishTextNormalizer


@functools.cache
def _normalizer() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return _normalizer()(text)


def wer(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> float:
    """Corpus WER (errors over reference words, summed across pairs) after normalization, in [0, inf).

    A pair whose normalized reference is empty counts its hypothesis words as insertions.
    """
    refs = [reference] if isinstance(reference, str) else list(reference)
    hyps = [hypothesis] if isinstance(hypothesis, str) else list(hypothesis)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    errors = words = 0
    for r, h in zip(refs, hyps):
        r, h = normalize(r), normalize(h)
        n = len(r.split())
        words += n
        if n == 0:
            errors += len(h.split())
        elif h.strip():
            out = jiwer.process_words(r, h)
            errors += out.substitutions + out.deletions + out.insertions
        else:
            errors += n
    if words == 0:
        raise ValueError("the references hold no words after normalization")
    return errors / words
