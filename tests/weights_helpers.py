"""Shared by the weights tests: a small random Whisper, an independent CTranslate2 writer (following
CTranslate2's model_spec.py _serialize and its Whisper converter), and the error assertion."""

from pathlib import Path
import struct

import numpy as np
import pytest
import whisper.model as wm

from maxwhisper.checkpoints import WeightsError, load_weights

TINY = wm.ModelDimensions(
    n_mels=4, n_audio_ctx=6, n_audio_state=8, n_audio_head=2, n_audio_layer=2,
    n_vocab=11, n_text_ctx=5, n_text_state=8, n_text_head=2, n_text_layer=2,
)



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


