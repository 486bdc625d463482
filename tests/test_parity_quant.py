"""A quantized precision's one-layer records (`registry.QUANTIZED_SPECS`): MAX's Q4_0 products against the
float64 reference of the same quantized arithmetic, judged by the derived rule in units of PyTorch
float32's error on the same quantized arithmetic (`reference.quantized`), and the mutants that rule must
catch at the layer: a block's scale one float16 ulp off, activations quantized in blocks of 16, and
activations left unquantized.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maxwhisper.harness import producers as P
from maxwhisper.harness.compare import passed
from maxwhisper.harness.inputs import random_params
from maxwhisper.harness.pytest_plugin import axis
from maxwhisper.harness.registry import QUANTIZED_SPECS
from maxwhisper.precision import mode
from maxwhisper.quant import BLOCK_BYTES, q4_0_blocks, q4_0_weights
from maxwhisper.sizes import SIZES

pytestmark = [pytest.mark.gate, pytest.mark.precision("q4_0")]

TINY_EN = SIZES["tiny.en"]
CASES = [pytest.param(name, regime, p.values[0], marks=p.marks, id=f"{name}-{regime}-{p.values[0]}")
         for p in axis("quantized_records") for name, spec in QUANTIZED_SPECS.items() for regime in spec.regimes]


def _case(name: str, seed: int, batch: int, length: int, regime: str = "normal"):
    spec = QUANTIZED_SPECS[name]
    rng = np.random.default_rng(seed)
    params = random_params(rng, spec.param_shapes(TINY_EN))
    return spec, spec.draw(rng, TINY_EN, batch, length, regime), params


def _judge(label: str, spec, x, params, actual: P.Trace, dtype: str = "q4_0"):
    expected = P.torch_layer(spec, TINY_EN, x, params, quantize=dtype)
    same = P.torch_layer(spec, TINY_EN, x, params, dtype)
    return P.judge_layer(actual, expected, same, spec.check(dtype), label=label)


@pytest.mark.parametrize("name, regime, dtype", CASES)
@settings(max_examples=max(3, settings.default.max_examples // 3))
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 3), length=st.integers(1, 48))
def test_quantized_layer_parity(name, regime, dtype, seed, batch, length, record_parity):
    spec, x, params = _case(name, seed, batch, length, regime)
    actual = P.max_layer(spec, TINY_EN, x, params, dtype)
    record_parity(passed(_judge(f"{name}[{regime}, {dtype}]", spec, x, params, actual, dtype)))


def test_reference_must_compute_the_same_quantized_products():
    """A quantized MAX run judged against the plain float64 reference is refused, not silently passed
    or failed: the quantization is the precision's, so both sides must compute it."""
    spec, x, params = _case("linear", 0, 1, 4)
    actual = P.Trace(P.Ran("max", "q4_0", "cpu", mode("q4_0")), {"linear": np.zeros((1, 4, 1536), np.float32)})
    with pytest.raises(ValueError, match="quantize='q4_0'"):
        P.judge_layer(actual, P.torch_layer(spec, TINY_EN, x, params), P.torch_layer(spec, TINY_EN, x, params, "q4_0"),
                      spec.check("q4_0"))
    with pytest.raises(ValueError, match="float64 reference's"):
        P.torch_layer(spec, TINY_EN, x, params, "q4_0", quantize="q4_0")


def test_quantized_reference_quantizes_every_selected_product():
    """The quantized float64 reference differs from the plain one by the quantization (~1% of the RMS
    for 4-bit weights), and equals the numpy model of the same arithmetic (`maxwhisper.quant`) to float32
    rounding: its products are Q4_0 weights times int8 activations, not a loose imitation."""
    from maxwhisper.quant import q4_0_matmul

    spec, x, params = _case("linear", 1, 2, 9)
    plain = P.torch_layer(spec, TINY_EN, x, params).arrays["linear"]
    quantized = P.torch_layer(spec, TINY_EN, x, params, quantize="q4_0").arrays["linear"]
    rms = np.sqrt(np.mean(plain**2))
    assert 1e-3 < np.sqrt(np.mean((quantized - plain) ** 2)) / rms < 0.1
    a = x["x"].reshape(-1, x["x"].shape[-1])
    want = q4_0_matmul(a, q4_0_blocks(params["weight"])) + params["bias"]
    np.testing.assert_allclose(quantized.reshape(want.shape), want, atol=1e-5 * rms, rtol=0)


def _bumped(blocks: np.ndarray, row: int = 5, block: int = 3) -> np.ndarray:
    """`blocks` with one block's float16 scale one ulp larger in magnitude."""
    out = blocks.copy()
    at = slice(block * BLOCK_BYTES, block * BLOCK_BYTES + 2)
    out[row, at] = (out[row, at].view(np.uint16) + np.uint16(1)).view(np.uint8)
    return out


def test_mutant_scale_one_ulp_off_is_caught(monkeypatch, record_parity):
    """One block of one output channel with its scale one float16 ulp off (2^-11 relative: what a scale
    rounded by another rule, or read from a neighbouring byte order, does): MAX's linear record fails."""
    from maxwhisper.harness import runners

    real = runners.with_quantized

    def bugged(values, quantizes):
        out = real(values, quantizes)
        out["weight.q4_0"] = _bumped(out["weight.q4_0"])
        return out

    spec, x, params = _case("linear", 2, 2, 16)
    monkeypatch.setattr(runners, "with_quantized", bugged)
    actual = P.max_layer(spec, TINY_EN, x, params, "q4_0")
    monkeypatch.undo()
    c = _judge("mutant linear: a scale one ulp off", spec, x, params, actual)
    record_parity(c)
    assert not c.passed and "max" in c.verdict.failed, c.report()


def _deq_linear(a: np.ndarray, params: dict, act_block: int | None) -> np.ndarray:
    """A port's bug, in float32: the Q4_0 weights times activations quantized per `act_block` values
    (None: not quantized at all)."""
    w = q4_0_weights(q4_0_blocks(params["weight"]))
    if act_block is not None:
        b = a.reshape(*a.shape[:-1], -1, act_block)
        top = np.abs(b).max(axis=-1, keepdims=True)
        mult = np.divide(np.float32(127), top, out=np.zeros_like(top), where=top != 0)
        a = (np.rint(b * mult) * (top / np.float32(127))).reshape(a.shape).astype(np.float32)
    return (a @ w.T + params["bias"]).astype(np.float32)


@pytest.mark.parametrize("act_block", [16, None], ids=["activation-blocks-of-16", "activations-unquantized"])
def test_mutant_activation_quantization_is_caught(act_block, record_parity):
    """The activations quantized in blocks of 16 instead of MAX's 32, or not at all (weight-only Q4_0):
    both fail the linear record. (The products are numpy's float32: what is judged is the arithmetic.)"""
    spec, x, params = _case("linear", 3, 2, 16)
    out = _deq_linear(x["x"], params, act_block)
    bugged = P.Trace(P.Ran("max", "q4_0", "cpu", mode("q4_0")), {"linear": out})
    c = _judge(f"mutant linear: activation blocks {act_block}", spec, x, params, bugged)
    record_parity(c)
    assert not c.passed, c.report()


def test_clean_arithmetic_in_numpy_float32_passes(record_parity):
    """The control of the mutants above: the same numpy float32 arithmetic with MAX's blocks of 32 passes,
    so what fails them is the bug, not numpy."""
    spec, x, params = _case("linear", 3, 2, 16)
    clean = P.Trace(P.Ran("max", "q4_0", "cpu", mode("q4_0")), {"linear": _deq_linear(x["x"], params, 32)})
    c = _judge("numpy float32, blocks of 32", spec, x, params, clean)
    record_parity(c)
    assert c.passed, c.report()


def test_torch_quantizer_is_maxs_bit_for_bit():
    """The reference's activation quantizer (`reference.quantized.q8`) equals the numpy model of MAX's
    kernel (`quant.q8_activations`, itself bit-exact to MAX) on 4000 rows, near-ties among them: a
    quantizer that rounds its multiplier differently moves whole rows by a code (it did: torch's
    `127 / top` is reciprocal(top) * 127)."""
    import torch

    from maxwhisper.quant import q8_activations
    from reference.quantized import q8

    rng = np.random.default_rng(7)
    a = (rng.standard_normal((4000, 384)) * np.exp(rng.uniform(-3, 3, (4000, 1)))).astype(np.float32)
    codes, scale = q8_activations(a)
    want = (codes.reshape(4000, 12, 32) * scale[..., None]).reshape(a.shape)
    np.testing.assert_array_equal(q8(torch.from_numpy(a)).numpy(), want)


@pytest.mark.thorough  # a cold compile of q4_0's traced encoder (98 s), as int8's twin in test_cli
def test_model_mutant_scale_fails_on_maxs_input_at_its_layer(tiny_en, jfk_mel, monkeypatch):
    """In the traced model, chained rows cannot see a scale one ulp off (an upstream code flip moves a row
    ~1e-3, the bug ~1e-4): the product judged on MAX's own input (`harness.quantized`) fails, at its layer,
    and every clean product passes there."""
    from maxwhisper import model as M
    from maxwhisper.harness import quantized
    from maxwhisper.harness.registry import check_of

    key = "encoder.blocks.1.mlp.0.weight.q4_0"
    real = M.with_quantized

    def bugged(weights, quantizes):
        out = real(weights, quantizes)
        out[key] = np.stack([_bumped(out[key], row)[row] for row in range(len(out[key]))])  # block 3 of every channel
        return out

    monkeypatch.setattr(M, "with_quantized", bugged)
    m = M.MaxWhisper(*tiny_en, dtype="q4_0")
    trace = P.max_encoder(m, jfk_mel, production=False).arrays
    rows = {k: v for k, (v,) in quantized.judge_on_max_inputs(trace, m.dims, m.state_dict, m.form,
                                                             check_of(m.dims, "q4_0")).items()}
    assert len(rows) == 4 * 5  # q, k, v, mlp.0, mlp.2 of 4 blocks (the attention's out-projection has no traced input)
    bad = [layer for layer, c in rows.items() if not c.passed]
    assert bad == ["encoder.blocks.1.mlp.0"], {k: c.report() for k, c in rows.items() if k in bad or k.endswith("1.mlp.0")}
    assert min(rows["encoder.blocks.1.mlp.0"].ratios.values()) > 32


# search 1's mix (docs/precision.md): encoder block 0's MLP, block 3's attention, decoder block 0
MIX = ("decoder.blocks.0.*", "encoder.blocks.0.mlp.*", "encoder.blocks.3.attn.*")


@pytest.mark.parametrize("patterns, encoder, step, cross", [
    (("*",), 4 * 6, 4 * 8 + 1, 4 * 2),  # q4_0. Per block q, k, v, out, mlp.0, mlp.2; decoder: cross q, out too; the logits
    (MIX, 2 + 4, 8, 2),  # decoder block 0's cross K/V: 2
    ((), 0, 0, 0),  # float32
], ids=["q4_0", "mix", "float32"])
def test_graphs_quantize_exactly_the_selected_products(tiny_en, patterns, encoder, step, cross):
    """Built, not compiled: the encoder and decoder graphs call MAX's Q4_0 kernel once per product the
    patterns (`precision.Row.quantized`) select, and nowhere else (a pattern that silently matched
    nothing, or a Linear left float32, changes a count)."""
    from dataclasses import replace

    from max.graph import DeviceRef

    from maxwhisper import decoder, model
    from maxwhisper.precision import form
    from maxwhisper.quant import with_blocks

    dims, state_dict = tiny_en
    f = replace(form("q4_0"), quantized=patterns)
    q = f.quantizer
    shapes = {k: v.shape for k, v in (with_blocks(state_dict, q) if q else state_dict).items()}
    enc = {k: s for k, s in shapes.items() if k.startswith("encoder.")}
    dec = {k: s for k, s in shapes.items() if k.startswith("decoder.")}
    ref = DeviceRef.CPU()
    count = lambda g: str(g).count("vroom_q4_0_matmul")  # noqa: E731
    assert count(model.encoder_graph(dims, enc, ref, quantizes=q)[0]) == encoder
    assert count(decoder.step_graph(dims, dec, ref, quantizes=q)[0]) == step
    assert count(decoder.cross_graph(dims, dec, ref, quantizes=q)[0]) == cross
