"""TF32 and the precision table: the truncation against the PTX definition of a `.tf32` operand, the
yardstick's numeric mode, `tf32` as a precision that cannot be float32 in disguise, and float32's GPU
form (3xTF32) emulated on the CPU within float32's rule.

The derived rule is one-sided: a tf32 graph that silently skipped its truncation would be more
accurate than its yardstick and pass. So `test_tf32_is_not_float32_in_disguise` asks for the error TF32
must have, on both sides.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from max.dtype import DType
from max.graph import Graph, TensorType

from maxwhisper import tf32
from maxwhisper.decoder import cross_graph, step_graph
from maxwhisper.device import parse_device
from maxwhisper.harness import producers as P
from maxwhisper.harness.compare import passed
from maxwhisper.harness.inputs import random_mel, random_params
from reference import yardstick
from maxwhisper.harness.registry import SPECS
from maxwhisper.precision import PRECISIONS, form, mode, row
from maxwhisper.runtime import Compiled, device_ref
from maxwhisper.sizes import SIZES

pytestmark = pytest.mark.gate  # the gate for encoder changes (tox -e gate): no transcription

TINY_EN = SIZES["tiny.en"]
MASK = np.uint32(0xFFFFE000)  # PTX: a .tf32 operand is the float32's sign, exponent and top 10 mantissa bits

# Chosen bit patterns: zeros, one, the ends of each mantissa (low 13 bits all set, or just above them),
# the smallest and largest normals, infinities, and negatives of each.
PATTERNS = np.array([0x00000000, 0x3F800000, 0x3F801FFF, 0x3F802000, 0x3FFFFFFF, 0x3FFFE000, 0x00800000,
                     0x00801FFF, 0x7F7FFFFF, 0x7F000000, 0x4B7FFFFF, 0x33FFFFFF, 0x7F800000], np.uint32)
PATTERNS = np.concatenate([PATTERNS, PATTERNS | np.uint32(0x80000000)])


@pytest.fixture(scope="module")
def truncate_graph(device):
    ref = device_ref(device)
    with Graph("tf32_truncate", input_types=[TensorType(DType.float32, ["n"], ref)]) as g:
        g.output(tf32.truncate(g.inputs[0].tensor))
    return Compiled(g, device)


def _bits(rng, n=200_000) -> np.ndarray:
    return np.concatenate([PATTERNS, rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)])


def test_truncate_is_the_ptx_tf32_operand(truncate_graph):
    """Every normal float, zero and infinity: the graph's truncation equals the bit mask exactly. A NaN
    stays a NaN (a mask could turn one whose payload lies in the low bits into an infinity). Subnormals:
    MAX's CPU kernels flush them to zero (measured), so below 2^-126 the result is 0 or the mask's."""
    x = _bits(np.random.default_rng(0)).view(np.float32)
    want, got = (x.view(np.uint32) & MASK).view(np.float32), truncate_graph(x)[0]
    nan, sub = np.isnan(x), (np.abs(x) < 2.0**-126) & (x != 0)
    assert np.isnan(got[nan]).all()
    normal = ~nan & ~sub
    bad = np.flatnonzero(normal & (got != want))
    assert not bad.size, [(hex(int(x.view(np.uint32)[i])), float(got[i]), float(want[i])) for i in bad[:5]]
    assert ((got[sub] == want[sub]) | (got[sub] == 0)).all()
    assert np.array_equal(np.signbit(got[normal & (x != 0)]), np.signbit(x[normal & (x != 0)]))


def test_truncate_is_not_rounding(truncate_graph):
    """1 + 2^-10 - 2^-23 rounds up to 1 + 2^-10 in TF32 but truncates to 1; negatives toward zero."""
    x = np.array([1 + 2.0**-10 - 2.0**-23, -(1 + 2.0**-10 - 2.0**-23), 3.0 + 2.0**-10], np.float32)
    assert truncate_graph(x)[0].tolist() == [1.0, -1.0, 3.0]


def test_torch_truncation_equals_the_graphs():
    x = torch.from_numpy(_bits(np.random.default_rng(1), 10_000).view(np.float32))
    finite = torch.isfinite(x)
    want = torch.from_numpy((x.numpy().view(np.uint32) & MASK).view(np.float32))
    assert torch.equal(yardstick.tf32(x)[finite], want[finite])


def test_yardstick_is_ieee_and_says_so(monkeypatch):
    """Set where the yardstick runs (`yardstick.numerics`), read back in every report header."""
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's own default for cuDNN convolutions
    with yardstick.numerics("float32"):
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        assert not torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    assert yardstick.describe("float32", "gpu:1").endswith("cuda:1, float32, matmul ieee, conv ieee")
    assert "truncated to TF32" in yardstick.describe("tf32")
    monkeypatch.setenv("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1")
    with pytest.raises(ValueError, match="TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"):
        yardstick.ieee()


def _rel(a, ref) -> float:
    return float(np.sqrt(np.mean((a - ref) ** 2)) / np.sqrt(np.mean(ref**2)))


# TF32 keeps 11 of float32's 24 significant bits: its product error is ~2^13 times float32's. On tiny.en's
# encoder (a random mel) the ratio is ~1800-2800 on both sides at the conv stem and the first Linear
# (docs/precision.md); 100 leaves 18x margin and is still 30x what a float32 graph (ratio ~1-3) reaches.
TF32_OVER_FLOAT32 = 100
FIRST_PRODUCTS = ("encoder.conv1", "encoder.blocks.0.attn.query")  # the conv stem; the first Linear


@pytest.mark.thorough  # compiles tf32's encoder (127 s cold), as the golden tf32 trace it shares graphs with
def test_tf32_is_not_float32_in_disguise(tiny_en, tiny_en_in, device):
    """tiny.en's tf32 encoder (the graphs the golden tf32 trace runs: no graph of its own) and the tf32
    yardstick each err far more than float32 at the first conv and Linear products: both truncate."""
    dims, state_dict = tiny_en
    mel = random_mel(np.random.default_rng(5), dims, 1)
    expected = P.torch_encoder(dims, state_dict, mel, production=False).arrays
    f32 = P.torch_encoder(dims, state_dict, mel, "float32", device, production=False).arrays
    same = P.torch_encoder(dims, state_dict, mel, "tf32", device, production=False).arrays
    actual = P.max_encoder(tiny_en_in("tf32"), mel, production=False).arrays
    for layer in FIRST_PRODUCTS:
        floor = TF32_OVER_FLOAT32 * _rel(f32[layer], expected[layer])
        print(f"{layer}: float32 {_rel(f32[layer], expected[layer]):.2e}, yardstick tf32 "
              f"{_rel(same[layer], expected[layer]):.2e}, MAX tf32 {_rel(actual[layer], expected[layer]):.2e}")
        assert _rel(same[layer], expected[layer]) > floor, f"{layer}: the tf32 yardstick did not truncate"
        assert _rel(actual[layer], expected[layer]) > floor, f"{layer}: MAX's tf32 graph did not truncate"


def test_tf32_decoder_graphs_truncate_every_product_operand(tiny_en):
    """tf32's decoder graphs built, not compiled (their numerics are --thorough: precision.PRECISIONS):
    `truncate` takes one floor, so the step graph holds two per Linear (8 a block) and the logits, the
    cross K/V graph two per key and value projection; float32's graphs hold none. A product built as a
    plain matmul fails here, where the numeric check could not see it (less error passes the rule)."""
    dims, state_dict = tiny_en
    shapes = {k: v.shape for k, v in state_dict.items() if k.startswith("decoder.")}
    n = dims.n_text_layer
    for name, step_floors, cross_floors in (("float32", 0, 0), ("tf32", 2 * (8 * n + 1), 2 * 2 * n)):
        f = form(name)
        step, _ = step_graph(dims, shapes, device_ref("cpu"), False, DType.float32, tf32.products(f), f.suffix)
        cross, _ = cross_graph(dims, shapes, device_ref("cpu"), DType.float32, tf32.products(f), f.suffix)
        assert (str(step).count("mo.floor"), str(cross).count("mo.floor")) == (step_floors, cross_floors), name


def test_tf32_encoder_graph_truncates_every_product_operand(tiny_en):
    """tf32's encoder graph built, not compiled (its numerics are --thorough): two floors per product, the
    conv stem's two im2col matmuls and six Linears a block; float32's holds none. CI's check that tf32's
    encoder truncates where the golden tf32 trace is left to --thorough."""
    from maxwhisper.model import encoder_graph

    dims, state_dict = tiny_en
    shapes = {k: v.shape for k, v in state_dict.items() if k.startswith("encoder.")}
    for name, floors in (("float32", 0), ("tf32", 2 * (2 + 6 * dims.n_audio_layer))):
        f = form(name)
        graph, _ = encoder_graph(dims, shapes, device_ref("cpu"), name=f"whisper_encoder{f.suffix}",
                                 product=tf32.products(f))
        assert str(graph).count("mo.floor") == floors, name


@pytest.mark.parametrize("name, products", [("mlp", 2), ("logits", 1), ("conv_stem", 2), ("attention", 4)])
def test_tf32_yardstick_counts_its_products(name, products):
    """Every Linear, conv and the logits' `x @ E.T` go through the truncating mode; SDPA (the attention
    core) does not: it is one call, as the table marks it. (`@` once slipped past it: the logits record
    caught that, its yardstick IEEE while MAX truncated.)"""
    spec, rng = SPECS[name], np.random.default_rng(0)
    x = spec.draw(rng, TINY_EN, 1, 8, "normal")
    counting = yardstick.TF32Operands()
    module = spec.reference(TINY_EN).float()
    with counting, torch.no_grad():
        module(*(torch.from_numpy(v) for v in x.values()))
    assert counting.calls == products


# float32's GPU form: every Linear and conv matmul as 3xTF32, each term's truncation done in the graph, on
# the CPU. Judged by float32's own rule against IEEE float32: a GPU must meet what the CPU meets.
# CI runs the MLP (its two Linears, one graph); the attention record's graph is --thorough only (a cold
# compile of its own for a form no CPU user runs).
GPU_FORM = [pytest.param(name, regime, id=f"{name}-{regime}", marks=[pytest.mark.thorough] if name != "mlp" else [])
            for name in ("mlp", "attention") for regime in SPECS[name].regimes]


@pytest.mark.parametrize("name, regime", GPU_FORM)
@settings(max_examples=max(2, settings.default.max_examples // 3))
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 3), length=st.integers(1, 300))
def test_float32_gpu_form_meets_float32s_rule(name, regime, seed, batch, length, device, record_parity):
    spec = SPECS[name]
    rng = np.random.default_rng(seed)
    params = random_params(rng, spec.param_shapes(TINY_EN))
    x = spec.draw(rng, TINY_EN, batch, length, regime)
    actual = P.max_layer(spec, TINY_EN, x, params, "float32", device, emulate="gpu")
    expected = P.torch_layer(spec, TINY_EN, x, params)
    same = P.torch_layer(spec, TINY_EN, x, params, "float32", device)
    record_parity(passed(P.judge_layer(actual, expected, same, spec.check("float32"),
                                       label=f"{name}[{regime}, float32 3xTF32]")))


def test_gpu_probe_tells_ieee_truncated_and_rounded_apart():
    """gpu/probe_tf32.py's classifier (its graph runs in the GPU lease; here it reads IEEE everywhere)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("probe_tf32", Path(__file__).parents[1] / "gpu" / "probe_tf32.py")
    spec.loader.exec_module(probe := importlib.util.module_from_spec(spec))

    assert probe.classify(probe.LOW) == "ieee"
    assert probe.classify(probe.tf32_trunc(probe.LOW)) == "tf32 truncated"
    assert probe.classify(probe.tf32_round(probe.LOW)) == "tf32 rounded"
    x = torch.from_numpy(probe.LOW)
    assert np.array_equal(yardstick.tf32(x).numpy(), probe.tf32_trunc(probe.LOW))


# ------------------------------------------------------------------ the table and the device parser
def test_every_precision_has_a_form_on_every_device_it_names():
    for name, r in PRECISIONS.items():
        for device in ("cpu", "gpu"):
            if device not in r.products:  # a quantized row: CPU kernels only, a GPU is a ValueError
                with pytest.raises(ValueError, match="CPU only"):
                    form(name, device)
                continue
            f = form(name, device)
            assert f.products == r.products[device] and name in mode(name, device)
        if "gpu" in r.products:
            assert form(name, "cpu", "gpu").target == "gpu"
        else:
            with pytest.raises(ValueError, match="CPU only"):
                form(name, "cpu", "gpu")
    assert [n for n, r in PRECISIONS.items() if "gpu" not in r.products] == ["q4_0", "int8"]
    assert form("float32", "cpu").marked == () and form("float32", "gpu").marked == ("linear", "conv")
    assert form("tf32", "gpu").marked == ()  # the tensor cores truncate: the plain graph
    assert form("tf32", "cpu").marked == ("linear", "conv")  # emulated in the graph
    assert "3xTF32" in mode("float32", "cpu", "gpu") and "emulated" in mode("float32", "cpu", "gpu")
    assert "emulated" in mode("bfloat16") and "IEEE" in mode("float32")


def test_bad_precision_and_emulation_are_value_errors():
    with pytest.raises(ValueError, match="'float64'"):
        row("float64")
    with pytest.raises(ValueError, match="emulate 'tpu'"):
        form("float32", "cpu", "tpu")


@pytest.mark.parametrize("spec, kind, torch_name", [("cpu", "cpu", "cpu"), ("gpu", "gpu", "cuda:0"),
                                                    ("gpu:2", "gpu", "cuda:2")])
def test_device_parsed_once(spec, kind, torch_name):
    d = parse_device(spec)
    assert (d.kind, d.torch) == (kind, torch_name) and parse_device(d.name) == d


@pytest.mark.parametrize("bad", ["cuda", "gpu:", "gpu:x", "cpu:0", "GPU", ""])
def test_bad_device_strings_are_value_errors(bad):
    with pytest.raises(ValueError, match="expected 'cpu', 'gpu' or 'gpu:N'"):
        parse_device(bad)
