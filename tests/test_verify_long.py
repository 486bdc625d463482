"""`maxwhisper verify` on long audio: every window openai-whisper's transcribe encodes is judged layer
by layer, and a bug that only shows after the first window is found in the window it starts in."""

from __future__ import annotations

import pytest

from maxwhisper.harness import verify
from maxwhisper.harness.seeks import encoded_windows, first_window
from maxwhisper.harness.speech import longform_audio, longform_groups
from mutants import STALE_ENCODER

GROUP = "3005-163389-0000_0009"  # the shortest long-form group, 66 s: three windows


@pytest.fixture(scope="module")
def long_audio(speech_dir):
    return longform_audio(longform_groups(speech_dir)[GROUP], speech_dir)


@pytest.fixture(scope="module")
def found(long_audio, tiny_en):
    return encoded_windows(*tiny_en, long_audio)  # openai-whisper's transcribe of 66 s: ~30 s, so once


def test_verify_judges_every_window_openai_whisper_encodes(long_audio, found, tiny_en_model):
    """The windows are openai-whisper's seeks (not 30 s slices); each is judged, and passes."""
    seeks = found.seeks
    assert len(seeks) >= 3 and any(s % 3000 for s in seeks), seeks  # its seeks follow the timestamps
    result = verify.run(tiny_en_model, long_audio)
    assert [w.seek for w in result.windows] == seeks
    assert all(len(w.comparisons) == len(result.windows[0].comparisons) > 40 for w in result.windows)
    assert result.passed, verify.format_windows(result)
    assert result.decoder["top1_failures"] == [] and result.decoder["text"].startswith("They swarmed")
    printed = verify.format_windows(result)
    assert printed.count("ok") == len(seeks) and "worst window:" in printed
    assert all(m >= 1 for m, _, _ in result.margins.values())


def test_the_first_window_is_openai_whispers_without_transcribing(long_audio, found, tiny_en):
    """`first_window` (verify with random weights, whose text is noise) is the mel openai-whisper's
    transcribe encodes first, at seek 0, bit for bit."""
    first = first_window(tiny_en[0], long_audio)
    assert first.seeks == [0] == found.seeks[:1]
    assert first.windows[0][1].shape == found.windows[0][1].shape
    assert (first.windows[0][1] == found.windows[0][1]).all()


def test_verify_names_the_window_a_stale_encoder_breaks(long_audio, tiny_en_model):
    """The encoder's output reused after the first window (a cache keyed by shape): the first window
    passes, the second fails at `encoder` (the production row), and it is the worst window."""
    with STALE_ENCODER():
        result = verify.run(tiny_en_model, long_audio)
    first, second = result.windows[:2]
    assert first.first_failure is None
    assert second.first_failure is not None and second.first_failure.layer == "encoder", verify.format_windows(result)
    assert result.worst_window is second and not result.passed
    assert "window 2 at  29.60 s" in verify.format_windows(result) and "FAIL at encoder" in verify.format_windows(result)
