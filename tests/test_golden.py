"""Golden fixture (fixtures/tiny_en_jfk.npz): MAX against stored float64 reference activations.

The fixture holds tiny.en's reference activations on jfk.flac at 24 time positions per layer, and the
input mel, so these tests need neither the reference encoder nor the speech folder. A fixture made
by other code or for other weights is refused with the command that regenerates it.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from maxwhisper.harness import fixture, golden as g, producers
from maxwhisper.harness.compare import Check, compare, passed
from maxwhisper.harness.pytest_plugin import assert_in_order, axis, fresh, golden_fixtures
from maxwhisper.harness.registry import check_of, golden_cases, input_of
from maxwhisper.sizes import SIZES
from maxwhisper.trace import encoder_trace
from maxwhisper.checkpoints import weights_hash
from reference.capture import layer_ids

pytestmark = pytest.mark.gate  # the gate for encoder changes (tox -e gate): no transcription

TINY_EN = SIZES[g.MODEL]
LAYERS = layer_ids(TINY_EN.n_audio_layer)
CHECK, INPUT = check_of(TINY_EN, guard=True), input_of(TINY_EN)
# one-layer graphs, from the registry: (record, case: `first`'s stored input feeds the graph,
# `last`'s stored output is expected, `params` is the prefix of its weights in the tiny.en state dict)
ONE_LAYER = golden_cases(TINY_EN)
ONE_LAYER_IDS = [f"{spec.name}-{case.last}" for spec, case in ONE_LAYER]
# inputs the fixture must store itself: a golden case's input that is no traced value
UNTRACED_INPUTS = sorted({c.first for _, c in ONE_LAYER} & {t.id for t in encoder_trace(TINY_EN.n_audio_layer)
                                                            if t.input is None})


def _one_layer_case(spec, case, fixture, tiny_en):
    """(input, expected, params): `case.first`'s stored input through the record, vs `case.last`'s output."""
    dims, state_dict = tiny_en
    params = {k: state_dict[f"{case.params}.{k}"] for k in spec.param_shapes(dims)} if case.params else {}
    return fixture.input_of(case.first), fixture.layers[case.last], params


raw_golden_fixture, golden_fixture = golden_fixtures(g, "raw_golden", "golden")


@pytest.fixture(scope="module")
def golden_trace(golden, tiny_en_model):
    return producers.max_encoder(tiny_en_model, golden.mel, production=False)


@pytest.fixture(scope="module")
def torch32_trace(golden, tiny_en, device):
    """The yardstick: openai-whisper's float32 encoder on the stored mel (computed: it needs only torch)."""
    return producers.torch_encoder(*tiny_en, golden.mel, "float32", device, production=False)


def stored(golden, trace: producers.Trace) -> producers.Trace:
    """A full trace at the positions the fixture stores, in execution order."""
    return producers.Trace(trace.ran, {k: trace.arrays[k][:, golden.positions_of(k)] for k in LAYERS})


@pytest.fixture(scope="module")
def judged(golden, golden_trace, torch32_trace):
    """{layer: Comparison} of MAX against the stored float64 activations, in units of PyTorch float32's error."""
    rows = producers.judge(stored(golden, golden_trace), producers.golden(golden.layers, str(golden.path)),
                           stored(golden, torch32_trace), CHECK, INPUT)
    return {c.layer: c for c in rows}


# ------------------------------------------------------------------ freshness
def test_golden_fixture_fresh(raw_golden, tiny_en):
    """Format version and weights hash match the current code and tiny.en weights."""
    fresh(g.check_fresh, raw_golden, weights_hash(tiny_en[1]))


def test_golden_fixture_input_fresh(raw_golden, tiny_en, jfk_mel):
    """The stored mel is the log-mel of jfk.flac computed now, within MEL_ATOL (skipped without the
    speech folder)."""
    assert jfk_mel.shape == raw_golden.mel.shape and jfk_mel.dtype == raw_golden.mel.dtype
    fresh(g.check_fresh, raw_golden, weights_hash(tiny_en[1]), jfk_mel)


def test_golden_fixture_complete(golden, tiny_en):
    dims = tiny_en[0]
    assert golden.layer_ids == tuple(LAYERS), f"layer ids changed: regenerate with `{g.REGENERATE}`"
    assert golden.mel.shape == (1, dims.n_mels, 2 * dims.n_audio_ctx) and golden.mel.dtype == np.float32
    for n, pos in golden.positions.items():
        assert pos[0] == 0 and pos[-1] == n - 1 and np.all(np.diff(pos) > 0), n
    for layer in LAYERS:
        n = golden.frames[layer]
        assert n == (2 * dims.n_audio_ctx if layer.startswith("encoder.conv1") else dims.n_audio_ctx)
        width = 4 * dims.n_audio_state if re.search(r"\.mlp\.[01]$", layer) else dims.n_audio_state
        assert golden.layers[layer].shape == (1, len(golden.positions[n]), width), layer
        assert golden.layers[layer].dtype == np.float32 and np.isfinite(golden.layers[layer]).all()
    assert sorted(golden.inputs) == UNTRACED_INPUTS
    assert UNTRACED_INPUTS == [f"encoder.blocks.{i}.mlp_ln" for i in range(dims.n_audio_layer)]


def _doctor(path, tmp_path, **changes):
    return fixture.doctored_copy(g, path, tmp_path, **changes)


def _doctored_mel(fx):
    mel = fx.mel.copy()
    mel[0, 0, 0] += 0.5
    return {"mel": mel, "meta/mel_hash": fixture.float32_hash(mel)}


STALE = {  # reason -> (changed entries, text the message must hold)
    "version": (lambda fx: {"meta/format_version": np.int64(g.FORMAT_VERSION + 1)}, "format version"),
    "weights": (lambda fx: {"meta/weights_hash": "0" * 64}, "weights hash"),
    "input": (_doctored_mel, "input mel"),
}

# The check_fresh unit tests compare doctored copies with the hashes the fixture itself records, so
# they test the check, whether or not the checked-in fixture is fresh (test_golden_fixture_fresh).


@pytest.mark.parametrize("reason", list(STALE))
def test_golden_check_fresh_refuses(reason, raw_golden, tmp_path):
    changes, says = STALE[reason]
    base = _doctor(raw_golden.path, tmp_path)
    g.check_fresh(base, raw_golden.weights_hash, raw_golden.mel)  # the undoctored copy passes
    g.check_fresh(base, raw_golden.weights_hash)                  # the input is optional
    doctored = _doctor(raw_golden.path, tmp_path, **changes(raw_golden))
    with pytest.raises(fixture.StaleFixtureError) as e:
        g.check_fresh(doctored, raw_golden.weights_hash, raw_golden.mel)
    msg = str(e.value)
    assert says in msg and g.REGENERATE in msg and str(doctored.path) in msg, msg
    others = [s for r, (_, s) in STALE.items() if r != reason]
    assert not any(s in msg for s in others), f"names a reason that does not apply: {msg}"


@pytest.mark.parametrize("shift, fresh", [(2.4e-5, True), (g.MEL_ATOL, True), (2 * g.MEL_ATOL, False),
                                          (7.4e-3, False), (float("nan"), False)])
def test_golden_check_fresh_mel_tolerance(raw_golden, shift, fresh):
    """Rounding across CPUs (2.4e-5 measured) passes; a front-end change (soxr MQ: 7.4e-3) does not."""
    mel = raw_golden.mel.copy()
    mel[0, 40, 100] += shift
    if fresh:
        g.check_fresh(raw_golden, raw_golden.weights_hash, mel)
    else:
        with pytest.raises(fixture.StaleFixtureError, match="input mel differs"):
            g.check_fresh(raw_golden, raw_golden.weights_hash, mel)
    with pytest.raises(fixture.StaleFixtureError, match="input mel shape"):
        g.check_fresh(raw_golden, raw_golden.weights_hash, raw_golden.mel[..., :-1])


def test_golden_check_fresh_names_every_reason(raw_golden):
    with pytest.raises(fixture.StaleFixtureError) as e:
        g.check_fresh(replace(raw_golden, version=-1), "0" * 64, raw_golden.mel + 1.0)
    assert all(s in str(e.value) for _, s in STALE.values()) and g.REGENERATE in str(e.value)


def test_golden_load_refuses_missing_and_corrupt(raw_golden, tmp_path):
    with pytest.raises(fixture.StaleFixtureError, match=re.escape(g.REGENERATE)):
        g.load_fixture(tmp_path / "absent.npz")
    mel = raw_golden.mel.copy()
    mel[0, 1, 2] = 7.0  # changed without updating its hash
    with pytest.raises(fixture.StaleFixtureError, match="corrupt"):
        _doctor(raw_golden.path, tmp_path, mel=mel)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(fixture.StaleFixtureError, match="unreadable"):
        g.load_fixture(tmp_path / "junk.npz")


# ------------------------------------------------------------------ MAX encoder, layer by layer
@pytest.mark.parametrize("layer", LAYERS)
def test_golden_trace(layer, golden, judged, record_parity):
    if layer not in golden.layers:
        pytest.fail(f"{golden.path} holds no {layer}: regenerate it with `{g.REGENERATE}`", pytrace=False)
    c = judged[layer]
    c.layer = f"golden:{layer}"
    record_parity(passed(c))


def test_golden_trace_complete(golden, golden_trace):
    assert list(golden_trace.arrays) == LAYERS


# ------------------------------------------------------------------ one-layer graphs alone
@pytest.mark.parametrize("spec,case", ONE_LAYER, ids=ONE_LAYER_IDS)
def test_golden_one_layer(spec, case, golden, tiny_en, device, record_parity):
    """The layer's own MAX graph on the stored input (24 positions: the layers are position-wise)."""
    x, expected, params = _one_layer_case(spec, case, golden, tiny_en)
    out = producers.max_layer(spec, tiny_en[0], x, params, device=device)
    torch32 = producers.torch_layer(spec, tiny_en[0], x, params, "float32", device)
    record_parity(passed(producers.judge_layer(out, producers.golden({spec.name: expected}, str(golden.path)), torch32,
                                               spec.check(guard=True), x, f"golden:{spec.name} {case.last}")))


# ------------------------------------------------------------------ the precision axis (tf32, bfloat16, float16)
@pytest.mark.parametrize("dtype", axis("golden"))
def test_golden_trace_axis(dtype, golden, tiny_en, tiny_en_in, device, record_parity):
    """tiny.en's encoder in `dtype` on the stored mel: every layer within the derived rule of
    openai-whisper's encoder in the same dtype (its own mixed precision), both against float64."""
    trace = producers.max_encoder(tiny_en_in(dtype), golden.mel, production=False)
    same = producers.torch_encoder(*tiny_en, golden.mel, dtype, device, production=False)
    check = check_of(TINY_EN, dtype, guard=True)
    assert check(LAYERS[0]).guard is None  # the rule alone (precision.Row.guard, registry.NO_GUARD)
    rows = producers.judge(stored(golden, trace), producers.golden(golden.layers, str(golden.path)),
                           stored(golden, same), check, INPUT)
    assert_in_order(rows, f"golden {dtype}", record_parity, LAYERS)


@pytest.mark.parametrize("dtype", axis("records"))
@pytest.mark.parametrize("spec,case", ONE_LAYER, ids=ONE_LAYER_IDS)
def test_golden_one_layer_axis(spec, case, dtype, golden, tiny_en, device, record_parity):
    x, expected, params = _one_layer_case(spec, case, golden, tiny_en)
    out = producers.max_layer(spec, tiny_en[0], x, params, dtype, device)
    same = producers.torch_layer(spec, tiny_en[0], x, params, dtype, device)
    record_parity(passed(producers.judge_layer(out, producers.golden({spec.name: expected}, str(golden.path)), same,
                                               spec.check(dtype, guard=True), x, f"golden {dtype}:{spec.name} {case.last}")))


@pytest.mark.parametrize("spec,case", ONE_LAYER, ids=ONE_LAYER_IDS)
def test_golden_fixture_consistent(spec, case, golden, tiny_en):
    """The fixture itself: the float64 reference layer maps each stored input to the stored output.

    A failure here is a bad fixture (wrong input entry, wrong weights), not a MAX bug.
    """
    x, expected, params = _one_layer_case(spec, case, golden, tiny_en)
    reference = producers.torch_layer(spec, tiny_en[0], x, params).arrays[spec.name]
    passed(compare(f"golden fixture {case.last}", reference, expected, Check(guard=spec.tol())))


def test_repo_files_resolve_beside_the_source_or_under_the_working_directory(tmp_path, monkeypatch):
    """An installed (non-editable) package, run from the repository root, still finds the fixtures."""
    assert fixture.repo_file("fixtures/tiny_en_jfk.npz") == g.FIXTURE and g.FIXTURE.is_file()
    monkeypatch.chdir(tmp_path)
    assert fixture.repo_file("fixtures/absent.json") == tmp_path / "fixtures" / "absent.json"
