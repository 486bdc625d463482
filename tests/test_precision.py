"""The precision axis can fail: a 16-bit graph that breaks the compute policy (`maxwhisper.precision`)
at one op fails the same derived rule that passes the policy's graph, on the same input.

The mutant drops the float32 casts around the attention core, so MAX's own 16-bit attention kernel
runs, which rounds the scores q k^T to bfloat16 before softmax where torch's SDPA (and the policy)
keeps them in float32: the plausible bug of a 16-bit port, and the reason the core is emulated."""

from __future__ import annotations


import numpy as np
import pytest
from max.dtype import DType
from max.graph import ops

from maxwhisper import layers, seams
from maxwhisper.harness import producers as P
from maxwhisper.harness.compare import passed
from maxwhisper.harness.inputs import random_params
from maxwhisper.harness.registry import SPECS
from maxwhisper.harness.runners import Records
from maxwhisper.precision import PRECISIONS, mode
from maxwhisper.sizes import SIZES
from mutants import injected

pytestmark = pytest.mark.gate  # the gate for encoder changes (tox -e gate): no transcription

TINY_EN = SIZES["tiny.en"]


def _scores_in_dtype(q, k, v, n_head):
    batch, n_ctx, n_state = q.shape
    head_dim = int(n_state) // n_head

    def heads(t):
        return ops.permute(ops.reshape(t, [batch, n_ctx, n_head, head_dim]), [0, 2, 1, 3])

    scores = heads(q) @ ops.permute(heads(k), [0, 1, 3, 2])  # rounded to q's dtype: the bug
    wv = ops.softmax(scores * (head_dim**-0.5)) @ heads(v)
    return ops.reshape(ops.permute(wv, [0, 2, 1, 3]), [batch, n_ctx, n_state])


@pytest.fixture(scope="module")
def attention_case():
    spec = SPECS["attention"]
    rng = np.random.default_rng(9)
    params = random_params(rng, spec.param_shapes(TINY_EN))
    return spec, spec.draw(rng, TINY_EN, 1, 300, "normal"), params


def _scores_rounded(original):
    return _scores_in_dtype


@pytest.fixture(scope="module")
def mutants(device):
    """This file's bfloat16 mutants and their clean records in one graph: one cold compile, not the
    mutants' plus bfloat16's whole records graph (160 s cold, which CI no longer compiles otherwise)."""
    return Records(TINY_EN, "bfloat16", device, {
        **{f"clean_{name}": SPECS[name] for name in ("attention", "layer_norm", "token_embedding")},
        "attention_scores_in_16bit": injected(SPECS["attention"],
                                              lambda: seams.inject("layers.qkv_attention", _scores_rounded)),
        **{bug: injected(SPECS[name], lambda name=name, make=make: seams.inject(f"layers.{name}", make))
           for bug, (name, make) in POLICY_MUTANTS.items()}},
        name="bfloat16_mutants")


def _clean(mutants, spec, x, params, device) -> P.Trace:
    """The unmutated record, from the mutants' graph: the same one-layer graph `P.max_layer` runs."""
    return P.Trace(P.Ran("max", "bfloat16", device, mode("bfloat16", device)),
                   {spec.name: mutants(f"clean_{spec.name}", x, params)})


def test_bf16_attention_with_16bit_scores_fails_the_rule(attention_case, mutants, device, record_parity):
    spec, x, params = attention_case
    dtype = "bfloat16"
    expected = P.torch_layer(spec, TINY_EN, x, params)
    same = P.torch_layer(spec, TINY_EN, x, params, dtype, device)
    clean = _clean(mutants, spec, x, params, device)
    passed(P.judge_layer(clean, expected, same, spec.check(dtype), label="attention[bfloat16]"))

    bugged = mutants("attention_scores_in_16bit", x, params)
    c = P.judge_layer(P.Trace(clean.ran, {spec.name: bugged}), expected, same, spec.check(dtype),
                      label="mutant attention scores in bfloat16")
    record_parity(c)
    assert not c.passed, f"scores rounded to bfloat16 pass the rule:\n{c.report()}"


def test_every_report_says_real_or_emulated():
    assert mode("float32") == "float32 (IEEE; cpu)"
    for dtype in ("bfloat16", "float16"):
        assert dtype in mode(dtype)
        assert ("emulated" in mode(dtype)) == bool(PRECISIONS[dtype].emulated)



# --- rounding-bound records: one extra 16-bit rounding ---------------------------------------------
# LayerNorm (statistics in float32, one rounding of the output) and the token embedding (tables added
# in float32, rounded once) compute what openai-whisper computes, rounding for rounding: MAX's error in
# bfloat16 is PyTorch's to within 1% (norm ratio 1.00, measured). One extra 16-bit rounding (LayerNorm's
# statistics in bfloat16; positions rounded before the add) raises it only 1.2-1.5x (measured,
# docs/judging.md), far below the derived rule's k of 8, which must also cover kernels that sum in
# other orders. So these records carry a policy check: where the rounding is the whole error, MAX's
# norm figure is within 1.1x PyTorch's.
POLICY_K = 1.1


def _layer_norm_16(layer_norm):
    def buggy(x, s, eps=1e-5):  # statistics in the activations' dtype, not float32
        return s.record(ops.layer_norm(x, layers.cast(s("weight"), x.dtype), layers.cast(s("bias"), x.dtype),
                                       epsilon=eps))
    return buggy


def _positions_rounded(token_embedding):
    def buggy(tokens, n_cache, s, dtype=DType.float32):  # both tables rounded, then added in 16-bit
        n_tok = tokens.shape[1]
        start = ops.reshape(ops.shape_to_tensor([n_cache]), [])
        stop = ops.reshape(ops.shape_to_tensor([n_cache + n_tok]), [])
        pos = ops.slice_tensor(layers.cast(s("positional_embedding"), dtype), [(slice(start, stop), n_tok), slice(None)])
        x = ops.gather(layers.cast(s("token_embedding.weight"), dtype), tokens, axis=0)
        return s.record(x + pos, "positional_embedding")
    return buggy


POLICY_MUTANTS = {"layer_norm_statistics_in_16bit": ("layer_norm", _layer_norm_16),
                  "positions_rounded_before_the_add": ("token_embedding", _positions_rounded)}


@pytest.mark.parametrize("bug", POLICY_MUTANTS)
def test_16bit_rounding_policy_check_catches_one_extra_rounding(bug, mutants, device, record_parity):
    spec = SPECS[POLICY_MUTANTS[bug][0]]
    for seed in range(2):
        rng = np.random.default_rng(seed)
        params = random_params(rng, spec.param_shapes(TINY_EN))
        x = spec.draw(rng, TINY_EN, 2, 24, "normal")
        expected = P.torch_layer(spec, TINY_EN, x, params)
        same = P.torch_layer(spec, TINY_EN, x, params, "bfloat16", device)
        clean = P.judge_layer(_clean(mutants, spec, x, params, device), expected, same,
                              spec.check("bfloat16"), label=f"{spec.name}[bfloat16, seed {seed}]")
        bugged = P.judge_layer(P.Trace(P.Ran("max", "bfloat16", device, mode("bfloat16", device)),
                                       {spec.name: mutants(bug, x, params)}), expected, same,
                               spec.check("bfloat16"), label=f"mutant {bug} [bfloat16, seed {seed}]")
        record_parity(bugged)
        assert clean.passed and clean.ratios["norm"] <= POLICY_K, clean.report()
        assert bugged.ratios["norm"] > POLICY_K, f"{bug}: norm ratio {bugged.ratios['norm']:.2f} <= {POLICY_K}"
