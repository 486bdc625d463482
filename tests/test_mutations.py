"""The suite must fail for real bugs, and name the layer where each one starts.

Each bug of the catalog (`mutants.py`) is injected into the MAX encoder while the product's
`model.emit_encoder` builds it; the trace is judged exactly as `maxwhisper verify` judges it (the
derived rule against PyTorch float32, and the absolute guard), on the golden fixture's mel, and the
first layer that fails must be the layer the bug lives in.

All mutants are built into ONE graph (each an encoder of its own, sharing the weights), because a
MAX compile costs ~85 s cold whatever its size: eight graphs would cost eleven minutes.
"""

from __future__ import annotations

import numpy as np
import pytest
from max.graph import Graph

from maxwhisper.harness import golden as g
from maxwhisper.harness import producers as P
from maxwhisper.harness.compare import Check
from maxwhisper.harness.registry import check_of, input_of
from maxwhisper.precision import mode
from maxwhisper.model import emit_encoder, mel_type
from maxwhisper.runtime import Compiled, device_ref, weight_lookup
from mutants import BUGS, NEAR_THRESHOLD, assert_caught_at

pytestmark = pytest.mark.gate  # the gate for encoder changes (tox -e gate): no transcription

# Near-threshold mutants the absolute float32 guard alone (atol 1e-4 + rtol x row max) lets through at
# their layer, measured on the golden mel: the derived rule is what catches them.
GUARD_MISSES = {"layer_norm_eps_1e-6", "gelu_tanh_block3_mlp"}


@pytest.fixture(scope="module")
def mutant_traces(tiny_en, device):
    """({bug: MAX trace with the bug}, float64 trace, PyTorch float32 trace) for tiny.en on the golden
    fixture's mel (jfk.flac's, checked in: no speech data needed)."""
    dims, state_dict = tiny_en
    mel = g.load_fixture().mel
    weights = {k: v for k, v in state_dict.items() if k.startswith("encoder.")}
    ref = device_ref(device)
    names = []
    with Graph("whisper_encoder_mutants", input_types=[mel_type(dims, ref)]) as graph:
        lookup = weight_lookup({}, {k: v.shape for k, v in weights.items()}, ref)
        outputs = []
        for bug, (inject, _) in BUGS.items():
            trace: dict = {}
            with inject():  # the product's own encoder builder, with one bug patched in
                emit_encoder(graph.inputs[0].tensor, lookup, dims, trace)
            names += [(bug, layer) for layer in trace]
            outputs += list(trace.values())
        graph.output(*outputs)
    results = Compiled(graph, device, weights)(mel)
    ran = P.Ran("max", "float32", device, mode("float32", device))
    traces = {bug: P.Trace(ran, {}) for bug in BUGS}
    for (bug, layer), value in zip(names, results):
        traces[bug].arrays[layer] = value
    return (traces, P.torch_encoder(dims, state_dict, mel, production=False),
            P.torch_encoder(dims, state_dict, mel, "float32", device, production=False), dims,
            P.order_encoder(dims, state_dict, mel, production=False))


def _judge(traces, expected, torch32, dims, order, bug, check_of=check_of, until_first_failure=True):
    """As `verify` judges: PyTorch float32's error, or the sequential order's where that is larger."""
    return P.judge(traces[bug], expected, torch32, check_of(dims, guard=True), input_of(dims), until_first_failure,
                   order)


@pytest.mark.parametrize("bug", BUGS)
def test_mutation_is_caught_at_its_layer(bug, mutant_traces, record_parity):
    traces, expected, torch32, dims, order = mutant_traces
    assert_caught_at(_judge(traces, expected, torch32, dims, order, bug), bug, BUGS[bug][1], record_parity)


def _guard_only(dims):
    rules = check_of(dims, guard=True)
    return lambda layer: Check(None, rules(layer).guard)


@pytest.mark.parametrize("bug", NEAR_THRESHOLD)
def test_mutation_near_threshold_needs_the_derived_rule(bug, mutant_traces):
    """What the absolute guard alone (the rule before the derived one) makes of each near-threshold
    mutant at its layer; docs/judging.md lists the ones it misses. This pins that list: a change in which
    mutants the guard misses is a change to the documented margins."""
    traces, expected, torch32, dims, order = mutant_traces
    where = BUGS[bug][1]
    guard = next(c for c in _judge(traces, expected, torch32, dims, order, bug, lambda d, guard: _guard_only(d), False)
                 if c.layer == where)
    assert guard.passed == (bug in GUARD_MISSES), f"{bug}: the absolute guard alone {'passes' if guard.passed else 'fails'} it"


def test_mutation_key_bias_is_invisible_downstream(mutant_traces):
    """Why the key trace matters: a key bias adds q.b to every score of a row, which softmax
    cancels, so the attention output (and the transcript) cannot reveal it."""
    traces, expected = mutant_traces[:2]
    bugged, expected = traces["nonzero_key_bias"].arrays, expected.arrays
    assert np.abs(bugged["encoder.blocks.0.attn"] - expected["encoder.blocks.0.attn"]).max() < 1e-4


@pytest.mark.parametrize("bug", ["clean", *NEAR_THRESHOLD])
def test_diff_gate_fails_each_near_threshold_mutant_at_its_layer(bug, mutant_traces):
    """`maxwhisper diff` (growth in units of this machine's yardsticks, from max(the baseline's ratio, 1))
    on the golden mel: each near-threshold mutant, LayerNorm eps 1e-6 among them, regresses first at the
    layer it lives in, and the clean encoder's figures from the same graph do not regress."""
    from maxwhisper.harness import diff

    traces, expected, torch32, dims, order = mutant_traces
    baseline = diff.load(diff.BASELINE)
    baseline = {**baseline, "inputs": {"golden": baseline["inputs"]["golden"]}}
    rows = diff.regressions(baseline, {"golden": diff.figures(traces[bug], expected, torch32, order, dims)})
    first = next((r for r in rows if r.regressed), None)
    assert (first and first.layer) == BUGS[bug][1], diff.format_rows(rows)
