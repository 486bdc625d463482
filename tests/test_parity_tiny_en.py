"""tiny.en real weights on real speech (jfk.flac): MAX against the float64 reference, layer by layer.

One MAX trace and one reference trace per session; each layer id is its own test, so a failure
names the layer. Layers are in execution order: the first red one is where a bug starts.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maxwhisper.parity import assert_parity, compare
from maxwhisper.registry import SPECS, spec_of
from maxwhisper.weights import to_torch_model
from reference.capture import layer_ids, trace_encoder
from reference.modules import reference_encoder

TINY_EN_LAYERS = 4
LAYERS = layer_ids(TINY_EN_LAYERS)
BASELINE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_en_errors.json"
# A layer whose error grows this much over the recorded run fails before its tolerance does.
DRIFT_FACTOR = 10.0


@pytest.fixture(scope="module")
def traces(tiny_en, tiny_en_model, jfk_mel):
    dims, state_dict = tiny_en
    assert dims.n_audio_layer == TINY_EN_LAYERS
    expected = trace_encoder(reference_encoder(dims, state_dict), torch.from_numpy(jfk_mel).double())
    return tiny_en_model.encode_trace(jfk_mel), expected


@pytest.mark.parametrize("layer", LAYERS)
def test_tiny_en_parity(layer, traces, record_parity):
    actual, expected = traces
    record_parity(assert_parity(layer, actual[layer], expected[layer], spec_of(layer).tol()))


def test_tiny_en_trace_parity_complete(traces):
    actual, expected = traces
    assert list(actual) == LAYERS and list(expected) == LAYERS


def test_tiny_en_encode_parity(tiny_en_model, traces, jfk_mel, record_parity):
    """The production graph (no trace outputs) computes what the traced one does."""
    out = tiny_en_model.encode(jfk_mel)
    record_parity(assert_parity("encoder", out, traces[1]["encoder.ln_post"], SPECS["encoder"].tol()))


def test_tiny_en_parity_vs_openai_whisper_float32(tiny_en, tiny_en_model, jfk_mel, record_parity):
    """Against openai-whisper's own float32 encoder, the model users run today."""
    model = to_torch_model(*tiny_en)
    with torch.no_grad():
        expected = model.encoder(torch.from_numpy(jfk_mel)).numpy()
    c = compare("encoder (vs openai-whisper float32)", tiny_en_model.encode(jfk_mel), expected,
                SPECS["encoder"].tol())
    record_parity(c)
    assert c.passed, c.report()


def test_tiny_en_parity_drift(traces):
    """Errors against the float64 reference stay near the recorded run (`maxwhisper verify --json`)."""
    if not BASELINE.exists():
        pytest.fail(f"{BASELINE} missing: run `maxwhisper verify --json {BASELINE.relative_to(Path.cwd())}`")
    baseline = {r["layer"]: r["max_abs"] for r in json.loads(BASELINE.read_text())["layers"]}
    actual, expected = traces
    drifted = []
    for layer in LAYERS:
        err = float(np.abs(actual[layer].astype(np.float64) - expected[layer]).max())
        if err > DRIFT_FACTOR * max(baseline[layer], 1e-7):
            drifted.append(f"{layer}: {err:.2e} vs recorded {baseline[layer]:.2e}")
    assert not drifted, "error drift over the recorded baseline:\n" + "\n".join(drifted)
