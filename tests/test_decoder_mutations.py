"""The decoder's mutation tests: each bug of `mutants.DECODER_BUGS`, injected while the decoder's own
graph code (`layers.decoder`, `layers.cross_kv`) builds, is caught at its layer.

Every mutant decodes tiny.en teacher-forced on jfk.flac's transcript over the golden decoder fixture's
audio features (`golden_decoder`: no speech data needed) the way openai-whisper does:
a prompt of several tokens in one step (a mask bug shows there), then one token per step through the
KV cache (a cache or position bug shows there). Its trace is judged as `maxwhisper verify` judges the
decoder, against the fixture's stored float64 reference (the reference decodes all tokens at once, so
its activations do not depend on the prompt length), and the first failing layer must be the bug's. All mutants share one cross graph and one step
graph (each mutant with its own caches), because a MAX compile costs minutes cold whatever its size.
"""

from __future__ import annotations

import numpy as np
import pytest
from max.dtype import DType
from max.graph import Graph, TensorType

from maxwhisper import layers
from maxwhisper.decoder import is_cross
from maxwhisper.harness import golden_decoder as gd
from maxwhisper.harness import producers as P
from maxwhisper.harness.fixture import StaleFixtureError
from maxwhisper.harness.registry import check_of, input_of
from maxwhisper.precision import mode
from maxwhisper.runtime import Compiled, device_ref, weight_lookup
from maxwhisper.checkpoints import weights_hash
from mutants import DECODER_BUGS, assert_caught_at

pytestmark = pytest.mark.gate  # the gate for encoder changes (tox -e gate): no transcription

PROMPT = 6  # sot, notimestamps and 4 words' tokens in the first step


def _graphs(dims, shapes, ref):
    """(cross graph, step graph) holding every mutant side by side."""
    n, d = dims.n_text_layer, dims.n_text_state
    xa = TensorType(DType.float32, ["batch", dims.n_audio_ctx, dims.n_audio_state], ref)
    with Graph("whisper_decoder_cross_mutants", input_types=[xa]) as cross:
        lookup, outs = weight_lookup({}, shapes, ref), []
        for inject, _ in DECODER_BUGS.values():
            rec: dict = {}
            with inject():
                for i in range(n):
                    layers.cross_kv(cross.inputs[0].tensor, layers.Scope(lookup, f"decoder.blocks.{i}.cross_attn.", rec))
            outs += list(rec.values())
        cross.output(*outs)
    per_bug = 4 * n  # its self caches, then its cross K/V
    types = [TensorType(DType.int64, ["batch", "n_tok"], ref)]
    for _ in DECODER_BUGS:
        types += [TensorType(DType.float32, ["batch", "n_cache", d], ref)] * (2 * n)
        types += [TensorType(DType.float32, ["batch", dims.n_audio_ctx, d], ref)] * (2 * n)
    names = []
    with Graph("whisper_decoder_step_mutants", input_types=types) as step:
        lookup, outs = weight_lookup({}, shapes, ref), []
        xs = [v.tensor for v in step.inputs]
        for b, (bug, (inject, _)) in enumerate(DECODER_BUGS.items()):
            mine = xs[1 + b * per_bug: 1 + (b + 1) * per_bug]
            pairs = lambda vs: [(vs[2 * i], vs[2 * i + 1]) for i in range(n)]  # noqa: E731
            rec: dict = {}
            with inject():
                _, grown = layers.decoder(xs[0], pairs(mine[:2 * n]), pairs(mine[2 * n:]),
                                          layers.Scope(lookup, "decoder.", rec), dims.n_text_head, ref)
            outs += [t for kv in grown for t in kv] + list(rec.values())
            names.append(list(rec))
        step.output(*outs)
    return cross, step, names


@pytest.fixture(scope="module")
def decoder_mutant_traces(tiny_en, device):
    dims, state_dict = tiny_en
    n = dims.n_text_layer
    fx = gd.load_fixture()
    try:
        gd.check_fresh(fx, weights_hash(state_dict))
    except StaleFixtureError as e:
        pytest.fail(str(e), pytrace=False)
    features, tokens = fx.features, fx.tokens
    weights = {k: v for k, v in state_dict.items() if k.startswith("decoder.")}
    ref = device_ref(device)
    cross_g, step_g, names = _graphs(dims, {k: v.shape for k, v in weights.items()}, ref)
    cross, step = Compiled(cross_g, device, weights), Compiled(step_g, device, weights)
    kv = cross.execute(cross.to_device(features))
    cross_ids = [t.id for t in layers.decoder_trace(n) if is_cross(t.id)]
    traces = {bug: {i: [kv[b * 2 * n + j].to_numpy()] for j, i in enumerate(cross_ids)}
              for b, bug in enumerate(DECODER_BUGS)}
    empty = step.to_device(np.zeros((1, 0, dims.n_text_state), np.float32))
    caches = {bug: [empty] * (2 * n) for bug in DECODER_BUGS}
    crosses = {bug: kv[b * 2 * n:(b + 1) * 2 * n] for b, bug in enumerate(DECODER_BUGS)}
    for lo, hi in [(0, PROMPT), *((i, i + 1) for i in range(PROMPT, tokens.shape[1]))]:
        args = [step.to_device(tokens[:, lo:hi])]
        for bug in DECODER_BUGS:
            args += [*caches[bug], *crosses[bug]]
        outs, at = step.execute(*args), 0
        for bug, ids in zip(DECODER_BUGS, names):
            caches[bug] = outs[at:at + 2 * n]
            for i, o in zip(ids, outs[at + 2 * n: at + 2 * n + len(ids)]):
                traces[bug].setdefault(i, []).append(o.to_numpy())
            at += 2 * n + len(ids)
    # each trace cut to the positions and logit columns the fixture stores
    ran = P.Ran("max", "float32", device, mode("float32", device))
    traces = {bug: P.Trace(ran, {i: fx.select(i, np.concatenate(v, axis=1)) for i, v in t.items()})
              for bug, t in traces.items()}
    torch32 = P.torch_decoder(dims, state_dict, tokens, features, "float32", device)
    torch32 = P.Trace(torch32.ran, {i: fx.select(i, v) for i, v in torch32.arrays.items()})
    order = P.order_decoder(dims, state_dict, tokens, features)
    order = P.Trace(order.ran, {i: fx.select(i, v) for i, v in order.arrays.items()})
    return traces, P.golden(fx.layers, str(fx.path)), torch32, dims, order


@pytest.mark.parametrize("bug", DECODER_BUGS)
def test_decoder_mutation_is_caught_at_its_layer(bug, decoder_mutant_traces, record_parity):
    traces, expected, torch32, dims, order = decoder_mutant_traces
    comparisons = P.judge(traces[bug], expected, torch32, check_of(dims, guard=True), input_of(dims), True, order)
    assert_caught_at(comparisons, bug, DECODER_BUGS[bug][1], record_parity, "decoder")
