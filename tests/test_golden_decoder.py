"""Golden decoder fixture (fixtures/tiny_en_jfk_decoder.npz): the MAX decoder against stored float64
reference activations and logits.

The fixture holds the decoder's input (the float64 encoder's output on the golden mel, as the float32
features MAX receives), jfk.flac's teacher-forced tokens, and the float64 reference decoder run on
exactly those features: every traced layer at 18 of the 28 steps (cross-attention K/V at 24 frames),
the logits at 512 columns per step and whole at two steps, and every step's top-1 token. So these
tests need neither the reference encoder nor the speech folder; the yardstick (openai-whisper's
float32 decoder on the same features) is computed, as in every golden test.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from maxwhisper.decoder import is_cross
from maxwhisper.harness import fixture, golden_decoder as gd, producers
from maxwhisper.harness.compare import TOP1_TIE, first_failure, passed, top1_tie
from maxwhisper.harness.fixture import AUDIO, StaleFixtureError, save_npz
from maxwhisper.harness.golden import load_fixture as load_encoder_fixture
from maxwhisper.harness.inputs import teacher_tokens
from maxwhisper.harness.pytest_plugin import assert_in_order, axis, fresh, golden_fixtures
from maxwhisper.harness.registry import check_of, input_of
from maxwhisper.sizes import SIZES
from maxwhisper.trace import decoder_trace
from maxwhisper.checkpoints import weights_hash

pytestmark = pytest.mark.gate  # the gate for encoder changes (tox -e gate): no transcription

TINY_EN = SIZES[gd.MODEL]
LAYERS = [t.id for t in decoder_trace(TINY_EN.n_text_layer)]
CHECK, INPUT = check_of(TINY_EN, guard=True), input_of(TINY_EN)


raw_golden_decoder_fixture, golden_decoder_fixture = golden_fixtures(gd, "raw_golden_decoder", "golden_decoder")


@pytest.fixture(scope="module")
def golden_decoder_trace(golden_decoder, tiny_en_model):
    """The MAX decoder teacher-forced as verify runs it: the prompt in one step, then one token per
    step through the KV cache."""
    fx = golden_decoder
    return producers.max_decoder(tiny_en_model, fx.tokens, fx.features, fx.prompt)


@pytest.fixture(scope="module")
def decoder_torch32(golden_decoder, tiny_en, device):
    """The yardstick: openai-whisper's float32 decoder on the stored (float32) features."""
    fx = golden_decoder
    return producers.torch_decoder(*tiny_en, fx.tokens, fx.features, "float32", device)


def stored(fx: gd.DecoderFixture, trace: producers.Trace) -> producers.Trace:
    """A full trace cut to what the fixture stores, in the trace's own (execution) order."""
    return producers.Trace(trace.ran, {k: fx.select(k, v) for k, v in trace.arrays.items()})


def judged(fx: gd.DecoderFixture, trace: producers.Trace, same: producers.Trace, check) -> list:
    """MAX's stored part against the fixture's float64 reference, in units of the yardstick's error."""
    return producers.judge(stored(fx, trace), producers.golden(fx.layers, str(fx.path)), stored(fx, same), check, INPUT)


# ------------------------------------------------------------------ freshness
def test_golden_decoder_fixture_fresh(raw_golden_decoder, tiny_en):
    """Format version, weights hash, layer ids and the tokenizer's tokens match the current code."""
    fresh(gd.check_fresh, raw_golden_decoder, weights_hash(tiny_en[1]))


def test_golden_decoder_fixture_text_fresh(raw_golden_decoder, tiny_en, speech_dir):
    """The stored transcript is jfk.flac's in the speech data now (skipped without the speech folder)."""
    from maxwhisper.harness.speech import reference_text

    fresh(gd.check_fresh, raw_golden_decoder, weights_hash(tiny_en[1]), reference_text(speech_dir / AUDIO))


def test_golden_decoder_fixture_made_from_the_encoder_fixture(golden_decoder):
    """Its features are the float64 encoder's output on the encoder fixture's mel (regenerate both
    together when that mel changes)."""
    assert golden_decoder.mel_hash == load_encoder_fixture().mel_hash, f"regenerate it with `{gd.REGENERATE}`"


def test_golden_decoder_fixture_complete(golden_decoder, tiny_en):
    fx, dims = golden_decoder, tiny_en[0]
    n_tok = fx.tokens.shape[1]
    assert fx.layer_ids == tuple(LAYERS)
    assert fx.features.shape == (1, dims.n_audio_ctx, dims.n_audio_state) and fx.features.dtype == np.float32
    np.testing.assert_array_equal(fx.tokens, teacher_tokens(dims, fx.text))
    assert fx.prompt == 2 and n_tok == 28
    for pos, n in ((fx.token_positions, n_tok), (fx.frame_positions, dims.n_audio_ctx)):
        assert pos[0] == 0 and pos[-1] == n - 1 and np.all(np.diff(pos) > 0)
    assert {fx.prompt - 1, fx.prompt} <= set(fx.token_positions.tolist())  # the prompt/cache boundary
    for layer in LAYERS:
        a = fx.layers[layer]
        width = (fx.logit_columns.shape[1] if layer == gd.LOGITS else
                 4 * dims.n_text_state if layer.endswith((".mlp.0", ".mlp.1")) else dims.n_text_state)
        rows = (n_tok if layer == gd.LOGITS else
                len(fx.frame_positions if is_cross(layer) else fx.token_positions))
        assert a.shape == (1, rows, width) and a.dtype == np.float32 and np.isfinite(a).all(), layer
    # the stored columns hold each step's reference argmax, and the stored whole rows agree with them
    assert (fx.logit_columns == fx.top1[:, None]).any(axis=1).all()
    assert fx.full_logits.shape == (1, len(fx.full_steps), dims.n_vocab)
    np.testing.assert_array_equal(fx.full_logits[0].argmax(-1), fx.top1[fx.full_steps])
    for j, step in enumerate(fx.full_steps):  # the same float64 row, rounded alike
        np.testing.assert_array_equal(fx.layers[gd.LOGITS][0, step], fx.full_logits[0, j, fx.logit_columns[step]])
    assert (fx.top2_gap >= 0).all()


def _doctor(path, tmp_path, **changes):
    return fixture.doctored_copy(gd, path, tmp_path, **changes)


STALE = {  # reason -> (changed entries, text the message must hold)
    "version": (lambda fx: {"meta/format_version": np.int64(gd.FORMAT_VERSION + 1)}, "format version"),
    "weights": (lambda fx: {"meta/weights_hash": "0" * 64}, "weights hash"),
    "tokens": (lambda fx: {"tokens": fx.tokens[:, :-1]}, "tokens differ"),
    "layers": (lambda fx: {"layer_ids": np.array(fx.layer_ids[:-1])}, "layer ids"),
}


@pytest.mark.parametrize("reason", list(STALE))
def test_golden_decoder_check_fresh_refuses(reason, raw_golden_decoder, tmp_path):
    """Each reason is reported alone, with the command that regenerates the fixture. (Doctored copies
    are checked against the hash the fixture records: this tests the check, fresh fixture or not.)"""
    fx = raw_golden_decoder
    changes, says = STALE[reason]
    gd.check_fresh(_doctor(fx.path, tmp_path), fx.weights_hash, fx.text)  # the undoctored copy passes
    doctored = _doctor(fx.path, tmp_path, **changes(fx))
    with pytest.raises(StaleFixtureError) as e:
        gd.check_fresh(doctored, fx.weights_hash, fx.text)
    msg = str(e.value)
    assert says in msg and gd.REGENERATE in msg and str(doctored.path) in msg, msg
    assert not any(s in msg for r, (_, s) in STALE.items() if r != reason), f"names a reason that does not apply: {msg}"


def test_golden_decoder_check_fresh_names_every_reason(raw_golden_decoder):
    fx = raw_golden_decoder
    with pytest.raises(StaleFixtureError) as e:
        gd.check_fresh(replace(fx, version=-1, tokens=fx.tokens[:, :-1]), "0" * 64, "another text")
    msg = str(e.value)
    assert all(s in msg for r, (_, s) in STALE.items() if r != "layers") and "transcript now" in msg
    assert gd.REGENERATE in msg


def test_golden_decoder_load_refuses_missing_and_corrupt(raw_golden_decoder, tmp_path):
    with pytest.raises(StaleFixtureError, match="missing.*" + gd.REGENERATE):
        gd.load_fixture(tmp_path / "absent.npz")
    features = raw_golden_decoder.features.copy()
    features[0, 7, 3] += 1.0  # changed without updating its hash
    with pytest.raises(StaleFixtureError, match="corrupt"):
        _doctor(raw_golden_decoder.path, tmp_path, features=features)
    with pytest.raises(StaleFixtureError, match="unreadable or incomplete.*logits/top1"):
        with np.load(raw_golden_decoder.path) as z:
            save_npz(tmp_path / "partial.npz", {k: z[k] for k in z.files if k != "logits/top1"})
        gd.load_fixture(tmp_path / "partial.npz")


# ------------------------------------------------------------------ the MAX decoder, layer by layer
@pytest.fixture(scope="module")
def by_layer(golden_decoder, golden_decoder_trace, decoder_torch32) -> dict:
    return {c.layer: c for c in judged(golden_decoder, golden_decoder_trace, decoder_torch32, CHECK)}


@pytest.mark.parametrize("layer", LAYERS)
def test_golden_decoder_trace(layer, by_layer, record_parity):
    """Each layer within its record's derived rule (and the absolute guard) at the stored positions."""
    c = by_layer[layer]
    c.layer = f"golden decoder:{layer}"
    record_parity(passed(c))


def test_golden_decoder_trace_in_order(golden_decoder, golden_decoder_trace, decoder_torch32):
    """The whole trace judged in execution order: the first failing layer is where a bug lives."""
    fx = golden_decoder
    assert list(golden_decoder_trace.arrays) == LAYERS
    rows = judged(fx, golden_decoder_trace, decoder_torch32, CHECK)
    bad = first_failure(rows)
    assert bad is None, bad.report()
    assert len(rows) == len(LAYERS)


def test_golden_decoder_logits_whole_rows(golden_decoder, golden_decoder_trace, decoder_torch32, record_parity):
    """The two steps stored over the whole vocabulary (51864 columns), by the logits record's rule."""
    fx, at = golden_decoder, golden_decoder.full_steps
    rows = lambda t: producers.Trace(t.ran, {gd.LOGITS: t.arrays[gd.LOGITS][:, at]})  # noqa: E731
    c = producers.judge_layer(rows(golden_decoder_trace), producers.golden({gd.LOGITS: fx.full_logits}, str(fx.path)),
                              rows(decoder_torch32), CHECK(gd.LOGITS), label=f"golden decoder:{gd.LOGITS} steps {at.tolist()}")
    record_parity(passed(c))


def test_golden_decoder_top1(golden_decoder, golden_decoder_trace):
    """Every step's top-1 token (whole vocabulary) is the float64 reference's, near-ties excepted."""
    fx = golden_decoder
    failures = fx.top1_failures(golden_decoder_trace.arrays[gd.LOGITS], TOP1_TIE)
    got = golden_decoder_trace.arrays[gd.LOGITS][0].argmax(-1)
    assert not failures, (f"top-1 differs from the reference at steps {failures}: MAX {got[failures].tolist()}, "
                          f"reference {fx.top1[failures].tolist()} (top-two gaps {fx.top2_gap[failures].tolist()})")


def test_golden_decoder_top1_check_can_fail(golden_decoder):
    """The top-1 check itself: a swapped argmax fails unless the reference's top two nearly tie."""
    fx = golden_decoder
    logits = np.zeros((1, len(fx.top1), 8))
    assert fx.top1_failures(logits, TOP1_TIE) == [i for i in range(len(fx.top1)) if fx.top1[i] != 0]
    assert fx.top1_failures(logits, np.inf) == []


# ------------------------------------------------------------------ the precision axis (tf32, bfloat16, float16)
@pytest.mark.parametrize("dtype", axis("golden_decoder"))
def test_golden_decoder_trace_axis(dtype, golden_decoder, tiny_en, tiny_en_in, device, record_parity):
    """tiny.en's decoder in `dtype` on the stored features and tokens: every stored layer within the
    derived rule of openai-whisper's decoder in the same dtype (its fp16 mixed precision), both
    against the stored float64 reference; every step's top-1 token the reference's unless the
    reference's top two lie within twice PyTorch's own logit error in that dtype."""
    fx = golden_decoder
    trace = producers.max_decoder(tiny_en_in(dtype), fx.tokens, fx.features, fx.prompt)
    same = producers.torch_decoder(*tiny_en, fx.tokens, fx.features, dtype, device)
    rows = judged(fx, trace, same, check_of(TINY_EN, dtype, guard=True))
    assert_in_order(rows, f"golden decoder {dtype}", record_parity, LAYERS)
    # PyTorch's own logit error per step, on the stored columns (the top 16 among them)
    tie = top1_tie(fx.select(gd.LOGITS, same.arrays[gd.LOGITS])[0], fx.layers[gd.LOGITS][0])
    failures = fx.top1_failures(trace.arrays[gd.LOGITS], tie)
    assert not failures, f"{dtype}: top-1 differs at steps {failures} beyond ties of {tie[failures].tolist()}"
