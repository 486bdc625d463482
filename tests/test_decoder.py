"""The MAX decoder's API: bad input is a ValueError naming the problem before any graph runs; a step
through the cache and one step over all tokens both compute openai-whisper's logits; reorder refuses bad indices; `MaxWhisper.transcribe` returns openai-whisper's result dict."""

from __future__ import annotations

import numpy as np
import pytest

from maxwhisper.decoder import MaxDecoder
from maxwhisper.harness import producers as P
from maxwhisper.harness.compare import passed
from maxwhisper.harness.registry import check_of
from maxwhisper.precision import mode


@pytest.fixture(scope="module")
def features(tiny_en):
    dims, _ = tiny_en
    return np.random.default_rng(0).standard_normal((2, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32)


@pytest.mark.parametrize("tokens, words", [
    ([[50257, 51864]], "token id 51864 is outside the vocabulary"),
    ([[-1]], "token id -1 is outside the vocabulary"),
    ([[1.5]], "integer token ids"),
    ([[]], "shape (batch, n_tok)"),
    ([1, 2], "shape (batch, n_tok)"),
    (np.zeros((1, 449), np.int64), "exceed n_text_ctx = 448"),
])
def test_bad_tokens_are_value_errors_before_any_graph(tokens, words, tiny_en, features, monkeypatch):
    dims, state_dict = tiny_en
    decoder = MaxDecoder(dims, state_dict)
    state = decoder.start(features[:1])
    monkeypatch.setattr(MaxDecoder, "compile", lambda *a: pytest.fail("a graph was asked for"))
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        state.step(tokens)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((1, 1499, 384), np.float32), "audio features must be"),
    (np.zeros((1500, 384), np.float32), "audio features must be"),
    (np.zeros((0, 1500, 384), np.float32), "audio features must be"),
    (np.full((1, 1500, 384), np.nan, np.float32), "NaN"),
    ([[0.0]], "audio features must be"),
])
def test_bad_features_are_value_errors_before_any_graph(bad, words, tiny_en, monkeypatch):
    decoder = MaxDecoder(*tiny_en)
    monkeypatch.setattr(MaxDecoder, "compile", lambda *a: pytest.fail("a graph was asked for"))
    with pytest.raises(ValueError, match=words):
        decoder.start(bad)


def test_cache_full_and_too_long_continuation(tiny_en, features, tiny_en_model):
    """Position 447 is the last: a step that would pass n_text_ctx is refused, not clipped."""
    state = tiny_en_model.decoder.start(features[:1])
    state.step(np.full((1, 447), 220))
    assert state.step([[220]]).shape == (1, 1, tiny_en[0].n_vocab)
    with pytest.raises(ValueError, match="448 cached \\+ 1 new tokens exceed"):
        state.step([[220]])


def test_steps_through_the_cache_equal_one_step(tiny_en, tiny_en_model, features, device, record_parity):
    """Six tokens of two distinct audios in one step, and as a prompt of three then one token per step
    through the cache: both are openai-whisper's decoder's logits (all six at once, no cache) by the
    logits' rule: float64 the reference, PyTorch float32 the yardstick."""
    dims, state_dict = tiny_en
    tokens = np.array([[50257, 50362, 400, 1770, 11, 2], [50257, 50362, 50, 20, 30, 40]])
    whole = tiny_en_model.decoder.start(features).step(tokens)
    state = tiny_en_model.decoder.start(features)
    parts = np.concatenate([state.step(tokens[:, :3])] + [state.step(tokens[:, i:i + 1]) for i in range(3, 6)], axis=1)
    assert state.length == 6
    reference = P.torch_decoder(dims, state_dict, tokens, features)
    same = P.torch_decoder(dims, state_dict, tokens, features, "float32", device)
    ran = P.Ran("max", "float32", device, mode("float32", device))
    for label, logits in (("logits, one step", whole), ("logits, steps through the cache", parts)):
        record_parity(passed(P.judge_layer(P.Trace(ran, {"decoder.logits": logits}), reference, same,
                                           check_of(dims)("decoder.logits"), label=label)))


def test_reorder_refuses_bad_source_indices(tiny_en_model, features):
    """Bad indices are a ValueError. (That reorder moves the right rows, for distinct audios with
    several beams each, against PyTorch: `test_runtime.py`'s reorder_rows and its mutants.)"""
    state = tiny_en_model.decoder.start(features[:1], 2)
    state.step([[50257], [50257]])
    with pytest.raises(ValueError, match="source indices"):
        state.reorder([0, 2])


def test_model_transcribe_returns_openai_whisper_result(speech_dir, tiny_en_model):
    result = tiny_en_model.transcribe(str(speech_dir / "jfk.flac"))
    assert set(result) == {"text", "segments", "language"}
    assert "ask not what your country can do for you" in result["text"]
    assert result["segments"][-1]["end"] == pytest.approx(10.74, abs=0.5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_finished_rows_are_compacted_in_place_as_views(dtype):
    """`keep`'s CPU path: the kept rows, in order, at the front of each buffer's own memory (bfloat16's bits
    moved unrounded), seen through a view of their first rows; no other row's data in it."""
    from max import driver
    from max.dtype import DType

    from maxwhisper.decoder import _compacted
    from maxwhisper.runtime import device_buffer, host_raw

    rng = np.random.default_rng(0)
    data = rng.standard_normal((6, 5, 4)).astype(np.float32)
    kind = DType.bfloat16 if dtype == "bfloat16" else DType.float32
    buffers = [device_buffer(data * (i + 1), kind, driver.CPU()) for i in range(2)]
    want = [host_raw(b).copy() for b in buffers]
    rows = np.array([1, 2, 4, 5])
    views = _compacted(buffers, rows)
    for v, b, w in zip(views, buffers, want):
        assert v.dtype == b.dtype and v.shape == (4, 5, 4)
        np.testing.assert_array_equal(host_raw(v), w[rows])
        assert np.shares_memory(host_raw(v), host_raw(b))  # no copy
