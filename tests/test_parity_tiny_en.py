"""tiny.en real weights on real speech (jfk.flac): MAX against the float64 reference, layer by layer.

One MAX trace and one reference trace per session; each layer id is its own test, so a failure
names the layer. Layers are in execution order: the first red one is where a bug starts.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maxwhisper.harness import producers as P
from maxwhisper.harness.compare import Check, compare, passed
from maxwhisper.harness.pytest_plugin import assert_in_order, axis
from reference.capture import layer_ids
from maxwhisper.harness.registry import ENCODER_OUTPUT, check_of, input_of
from maxwhisper.sizes import SIZES
from maxwhisper.checkpoints import to_torch_model

pytestmark = pytest.mark.gate  # the gate for encoder changes (tox -e gate): no transcription

TINY_EN = SIZES["tiny.en"]
LAYERS = layer_ids(TINY_EN.n_audio_layer)
CHECK, INPUT = check_of(TINY_EN, guard=True), input_of(TINY_EN)
BASELINE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_en_errors.json"
# A layer whose error grows this much over the recorded run fails before its tolerance does.
DRIFT_FACTOR = 10.0


@pytest.fixture(scope="module")
def traces(tiny_en, tiny_en_model, jfk_mel, device):
    """(MAX, float64, PyTorch float32) traces, each ending with the production graph's row `encoder`."""
    dims, state_dict = tiny_en
    assert dims == TINY_EN
    return (P.max_encoder(tiny_en_model, jfk_mel), P.torch_encoder(dims, state_dict, jfk_mel),
            P.torch_encoder(dims, state_dict, jfk_mel, "float32", device))


@pytest.fixture(scope="module")
def judged(traces, tiny_en, jfk_mel):
    """Every row as `verify` judges float32: against PyTorch float32's error, or the sequential order's
    (`reference.sequential`) where that is larger, computed only if a row fails PyTorch's alone."""
    return {c.layer: c for c in P.judge(*traces, CHECK, INPUT, order=lambda: P.order_encoder(*tiny_en, jfk_mel))}


@pytest.mark.parametrize("layer", LAYERS)
def test_tiny_en_parity(layer, judged, record_parity):
    record_parity(passed(judged[layer]))


def test_tiny_en_trace_parity_complete(traces, judged):
    assert all(list(t.arrays) == [*LAYERS, ENCODER_OUTPUT] for t in traces)
    assert list(judged) == [*LAYERS, ENCODER_OUTPUT]


def test_tiny_en_encode_parity(judged, record_parity):
    """The production graph (no trace outputs) computes what the traced one does."""
    record_parity(passed(judged[ENCODER_OUTPUT]))


def test_tiny_en_parity_vs_openai_whisper_float32(tiny_en, tiny_en_model, jfk_mel, record_parity):
    """Against openai-whisper's own float32 encoder, the model users run today."""
    model = to_torch_model(*tiny_en)
    with torch.no_grad():
        expected = model.encoder(torch.from_numpy(jfk_mel)).numpy()
    c = compare("encoder (vs openai-whisper float32)", tiny_en_model.encode(jfk_mel), expected,
                Check(guard=CHECK(ENCODER_OUTPUT).guard))
    record_parity(c)
    assert c.passed, c.report()


@pytest.mark.parametrize("dtype", axis("tiny_en"))
def test_tiny_en_parity_axis(dtype, tiny_en, tiny_en_in, jfk_mel, traces, device, record_parity):
    """tiny.en in `dtype` on jfk.flac, every layer and the production graph, by the derived rule
    against openai-whisper's encoder in the same dtype; the first failing layer is named."""
    same = P.torch_encoder(*tiny_en, jfk_mel, dtype, device)
    rows = P.judge(P.max_encoder(tiny_en_in(dtype), jfk_mel), traces[1], same, check_of(TINY_EN, dtype, guard=True),
                   INPUT)
    assert_in_order(rows, dtype, record_parity, [*LAYERS, ENCODER_OUTPUT])


def test_tiny_en_parity_drift(traces):
    """Errors against the float64 reference stay near the recorded run (`maxwhisper verify --json`)."""
    if not BASELINE.exists():
        pytest.fail(f"{BASELINE} missing: run `maxwhisper verify --json {BASELINE.relative_to(Path.cwd())}`")
    baseline = {r["layer"]: r["max_abs"] for r in json.loads(BASELINE.read_text())["layers"]}
    actual, expected = traces[0].arrays, traces[1].arrays
    drifted = []
    for layer in LAYERS:
        err = float(np.abs(actual[layer].astype(np.float64) - expected[layer]).max())
        if err > DRIFT_FACTOR * max(baseline[layer], 1e-7):
            drifted.append(f"{layer}: {err:.2e} vs recorded {baseline[layer]:.2e}")
    assert not drifted, "error drift over the recorded baseline:\n" + "\n".join(drifted)
