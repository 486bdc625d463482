"""The public API: load_model / encode, and a clear ValueError for every bad input before MAX runs."""

import numpy as np
import pytest

import maxwhisper
from maxwhisper.harness import producers as P
from maxwhisper.harness.compare import passed
from maxwhisper.harness.registry import ENCODER_OUTPUT, SPECS
from maxwhisper.model import check_mel
from maxwhisper.checkpoints import WeightsError


def test_load_model_default_is_embedded_tiny_en(tiny_en_model):
    d = tiny_en_model.dims
    assert (d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer) == (80, 1500, 384, 6, 4)


def test_encode_shape_dtype_and_batch(tiny_en_model, jfk_mel):
    two = np.concatenate([jfk_mel, jfk_mel[:, :, ::-1].copy()])
    out = tiny_en_model.encode(two)
    assert out.shape == (2, 1500, 384) and out.dtype == np.float32
    alone = tiny_en_model.encode(two[1:])
    np.testing.assert_allclose(out[1:], alone, atol=1e-5, rtol=0)


BAD_MELS = {
    "rank 2": (np.zeros((80, 3000), np.float32), "rank 3"),
    "empty batch": (np.zeros((0, 80, 3000), np.float32), "empty batch"),
    "n_mels 128": (np.zeros((1, 128, 3000), np.float32), "shape"),
    "short": (np.zeros((1, 80, 2999), np.float32), "shape"),
    "float64": (np.zeros((1, 80, 3000), np.float64), "dtype float64"),
    "int": (np.zeros((1, 80, 3000), np.int32), "dtype int32"),
    "nan": (np.full((1, 80, 3000), np.nan, np.float32), "NaN"),
    "inf": (np.full((1, 80, 3000), np.inf, np.float32), "infinite"),
    "list": ([[0.0] * 3000] * 80, "numpy array"),
}


@pytest.mark.parametrize("case", BAD_MELS)
def test_bad_mel_is_a_value_error(case, tiny_en):
    mel, words = BAD_MELS[case]
    with pytest.raises(ValueError, match=words):
        check_mel(mel, tiny_en[0])


def test_bad_mel_raises_before_any_graph(tiny_en):
    model = maxwhisper.MaxWhisper(*tiny_en)
    with pytest.raises(ValueError):
        model.encode(np.zeros((1, 80, 10), np.float32))
    assert model._compiled == {}  # nothing was compiled or run


def test_unknown_model_name():
    with pytest.raises(WeightsError, match="no-such-model"):
        maxwhisper.load_model("no-such-model")


def test_unknown_device():
    with pytest.raises(ValueError, match="device"):
        maxwhisper.load_model("tiny.en", device="tpu")


@pytest.mark.parametrize("dtype", ["float64", "bf16", "int4", ""])
def test_unknown_dtype_names_it(dtype, tiny_en):
    with pytest.raises(ValueError, match=f"dtype '{dtype}'"):
        maxwhisper.load_model("tiny.en", dtype=dtype)
    with pytest.raises(ValueError, match=f"dtype '{dtype}'"):
        maxwhisper.MaxWhisper(*tiny_en, dtype=dtype)


# Lower bounds on the error against float64: measured 2.5e-3 (tf32) and a few bfloat16 ulps on jfk.flac,
# where float32 in disguise would be ~1e-6.
NOT_FLOAT32 = {"bfloat16": 2.0**-12, "tf32": 2.0**-12}


@pytest.mark.parametrize("dtype", ["bfloat16", "tf32"])
def test_reduced_precision_encode_takes_and_returns_float32(dtype, tiny_en, tiny_en_in, jfk_mel, device):
    """`dtype=` through the public API: float32 in and out, within the encoder's rule of openai-whisper's
    encoder in the same precision (both against float64), and rounded: not float32 in disguise."""
    actual = P.max_encoder(tiny_en_in(dtype), jfk_mel, layers=False)
    assert actual.arrays[ENCODER_OUTPUT].dtype == np.float32 and actual.arrays[ENCODER_OUTPUT].shape == (1, 1500, 384)
    expected = P.torch_encoder(*tiny_en, jfk_mel, layers=False)
    same = P.torch_encoder(*tiny_en, jfk_mel, dtype, device, layers=False)
    c = passed(P.judge_layer(actual, expected, same, SPECS["encoder"].check(dtype), label=f"encoder[{dtype}]"))
    assert c.verdict.max_errors.norm > NOT_FLOAT32[dtype], c.report()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_weight_data_rounds_as_torch(dtype):
    """Weights enter MAX rounded to nearest even, exactly as torch's `.to(dtype)` rounds them."""
    import torch
    from max.dtype import DType

    from maxwhisper.runtime import weight_data

    rng = np.random.default_rng(0)
    a = np.concatenate([rng.standard_normal(10000), [1 + 2**-8, 1 + 3 * 2**-8, -0.0, 65504.0, 1e-30]]).astype(np.float32)
    data = weight_data(a, getattr(DType, dtype))
    got = (torch.from_dlpack(data) if dtype == "bfloat16" else torch.from_numpy(data)).float().numpy()
    want = torch.from_numpy(a).to(getattr(torch, dtype)).float().numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_decoder_buffers_round_trip_exactly(dtype):
    """The decoder's 16-bit caches leave MAX (beam reorder, repeated cross K/V) as their raw bits and
    come back unchanged; read as float32 they equal torch's rounding to the dtype."""
    import torch
    from max import driver
    from max.dtype import DType

    from maxwhisper.runtime import device_buffer, host_float32, host_raw

    a = np.random.default_rng(1).standard_normal((2, 3, 5)).astype(np.float32)
    buf = device_buffer(a, getattr(DType, dtype), driver.CPU())
    assert buf.dtype == getattr(DType, dtype)
    want = torch.from_numpy(a).to(getattr(torch, dtype)).float().numpy()
    np.testing.assert_array_equal(host_float32(buf), want)
    back = device_buffer(host_raw(buf)[::-1], buf.dtype, driver.CPU())  # a reorder of the rows
    np.testing.assert_array_equal(host_float32(back), want[::-1])
