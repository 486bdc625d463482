"""The suite must fail for real bugs, and name the layer where each one starts.

Each bug below is one the public MAX Whisper attempt shipped or could have shipped. It is injected
into the MAX encoder while the product's `model.emit_encoder` builds it (by patching `maxwhisper.layers`), the trace is
compared with the float64 reference exactly as `maxwhisper verify` does, and the first layer over
tolerance must be the layer the bug lives in.

All mutants are built into ONE graph (each an encoder of its own, sharing the weights), because a
MAX compile costs ~85 s cold whatever its size: eight graphs would cost eleven minutes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from max.dtype import DType
from max.graph import Graph, ops

from maxwhisper import layers
from maxwhisper.harness.compare import compare_traces, first_failure
from maxwhisper.harness.reference.capture import reference_trace
from maxwhisper.harness.registry import tolerance_of
from maxwhisper.model import emit_encoder, mel_type
from maxwhisper.runtime import Compiled, device_ref, weight_lookup


def _patch(name: str, make: Callable[[Callable], Callable]) -> Callable[[], contextlib.AbstractContextManager]:
    """A bug that replaces `layers.<name>` with `make(original)` while a graph is being built."""

    @contextlib.contextmanager
    def inject() -> Iterator[None]:
        original = getattr(layers, name)
        setattr(layers, name, make(original))
        try:
            yield
        finally:
            setattr(layers, name, original)

    return inject


def _scaled_twice(q, k, v, n_head):
    # The bug: head_dim**-0.5 on q AND on k (Whisper puts head_dim**-0.25 on each).
    head_dim = int(q.shape[2]) // n_head
    return _ORIGINAL_QKV(q * head_dim**-0.5, k * head_dim**-0.5, v, n_head)


def _key_bias(linear):
    def buggy(x, s, bias=True):
        y = linear(x, s, bias)
        if s.prefix.endswith("attn.key."):  # a bias the key must not have
            y = y + ops.constant(0.1, DType.float32, y.device)
        return y
    return buggy


def _conv2_stride1_wrong_offset(conv1d):
    def buggy(x, s, stride=1):
        if stride == 1:
            return conv1d(x, s, stride)
        full = conv1d(x, s, 1)
        return full[:, 1::2, :]  # stride 2 keeps frames 0, 2, 4, ...; this keeps 1, 3, 5, ...
    return buggy


def _pos_shift(call):
    def buggy(self, name):
        value = call(self, name)
        if self.prefix + name == "encoder.positional_embedding":  # frame t gets position t + 1
            value = ops.concat([value[1:, :], value[:1, :]], axis=0)
        return value
    return buggy


@contextlib.contextmanager
def _scope_patch() -> Iterator[None]:
    original = layers.Scope.__call__
    layers.Scope.__call__ = _pos_shift(original)
    try:
        yield
    finally:
        layers.Scope.__call__ = original


def _no_ln_post(layer_norm):
    def buggy(x, s):
        return s.record(x) if s.prefix == "encoder.ln_post." else layer_norm(x, s)
    return buggy


_ORIGINAL_QKV = layers.qkv_attention

# bug -> (how it is injected, the layer id where it must be caught first)
BUGS = {
    "clean": (contextlib.nullcontext, None),
    "gelu_tanh": (_patch("gelu", lambda f: lambda x: ops.gelu(x, approximate="tanh")),
                  "encoder.conv1.gelu"),
    "relu_for_gelu": (_patch("gelu", lambda f: ops.relu), "encoder.conv1.gelu"),
    "no_ln_post": (_patch("layer_norm", _no_ln_post), "encoder.ln_post"),
    "layer_norm_eps_1e-3": (_patch("LN_EPS", lambda eps: 1e-3), "encoder.blocks.0.attn_ln"),
    "attn_scale_on_q_and_k": (_patch("qkv_attention", lambda f: _scaled_twice), "encoder.blocks.0.attn"),
    "nonzero_key_bias": (_patch("linear", _key_bias), "encoder.blocks.0.attn.key"),
    "conv2_stride1_wrong_offset": (_patch("conv1d", _conv2_stride1_wrong_offset), "encoder.conv2"),
    "positional_embedding_shift": (_scope_patch, "encoder.positional_embedding"),
}


@pytest.fixture(scope="module")
def mutant_traces(tiny_en, jfk_mel, device):
    """{bug: (MAX trace with the bug, reference trace)} for tiny.en on jfk.flac."""
    dims, state_dict = tiny_en
    weights = {k: v for k, v in state_dict.items() if k.startswith("encoder.")}
    ref = device_ref(device)
    names = []
    with Graph("whisper_encoder_mutants", input_types=[mel_type(dims, ref)]) as g:
        lookup = weight_lookup({}, {k: v.shape for k, v in weights.items()}, ref)
        outputs = []
        for bug, (inject, _) in BUGS.items():
            trace: dict = {}
            with inject():  # the product's own encoder builder, with one bug patched in
                emit_encoder(g.inputs[0].tensor, lookup, dims, trace)
            names += [(bug, layer) for layer in trace]
            outputs += list(trace.values())
        g.output(*outputs)
    results = Compiled(g, device, weights)(jfk_mel)
    traces: dict[str, dict] = {bug: {} for bug in BUGS}
    for (bug, layer), value in zip(names, results):
        traces[bug][layer] = value
    return traces, reference_trace(dims, state_dict, jfk_mel), tolerance_of(dims)


@pytest.mark.parametrize("bug", BUGS)
def test_mutation_is_caught_at_its_layer(bug, mutant_traces):
    traces, expected, tol = mutant_traces
    comparisons = compare_traces(traces[bug], expected, tol)
    first = first_failure(comparisons)
    where = BUGS[bug][1]
    if where is None:
        assert first is None, f"the unmutated encoder fails:\n{first.report()}"
        return
    assert first is not None, f"bug {bug!r} passed every parity check"
    assert first.layer == where, f"bug {bug!r} first caught at {first.layer}, expected {where}:\n{first.report()}"
    assert all(c.passed for c in comparisons[: comparisons.index(first)])


def test_mutation_key_bias_is_invisible_downstream(mutant_traces):
    """Why the key trace matters: a key bias adds q.b to every score of a row, which softmax
    cancels, so the attention output (and the transcript) cannot reveal it."""
    traces, expected, _ = mutant_traces
    bugged = traces["nonzero_key_bias"]
    assert np.abs(bugged["encoder.blocks.0.attn"] - expected["encoder.blocks.0.attn"]).max() < 1e-4
