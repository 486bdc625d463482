"""CTranslate2 (faster-whisper) Whisper models: our own `model.bin` reader and its mapping to
openai-whisper's state-dict names. `maxwhisper.checkpoints.load_weights` is the entry point.
"""

import re
import struct
from pathlib import Path

import numpy as np
from whisper.model import ModelDimensions

from maxwhisper.checkpoints.state import WeightsError, check_state_dict, expected_shapes, one_line


# ---------------------------------------------------------------- CT2 model.bin
# Layout (CTranslate2 src/models/model.cc, python/ctranslate2/specs/model_spec.py),
# little endian: u32 binary version; spec name (u16 length incl. NUL, bytes);
# u32 spec revision; u32 variable count; per variable: name, u8 rank,
# u32 dims[rank], u8 dtype id, u32 byte count, raw bytes; u32 alias count,
# then (alias, target) name pairs.
# Versions < 4 stored an item size instead of a dtype id, which cannot tell
# float16 from int16, so we only read 4..6 (6 is CTranslate2's current one).
_CT2_VERSIONS = range(4, 7)
_CT2_DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}


class _Cursor:
    def __init__(self, buf: bytes, path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.buf):
            raise WeightsError(
                f"{self.path}: truncated file: {what} needs {n} bytes at offset "
                f"{self.pos}, only {len(self.buf) - self.pos} left"
            )
        out = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", what)
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise WeightsError(f"{self.path}: corrupted file: {what} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise WeightsError(f"{self.path}: corrupted file: {what} is not UTF-8") from None


def read_ct2_model_bin(path) -> tuple[str, dict[str, np.ndarray]]:
    """Reads a CTranslate2 `model.bin`: (spec name, {name: array}).

    Arrays keep their stored dtype, except bfloat16, widened (exactly) to
    float32 since numpy has none. Scalars are 0-d arrays. Aliases map to the
    same array as their target.
    """
    try:
        buf = Path(path).read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read CTranslate2 model: {one_line(e)}") from None
    r = _Cursor(buf, path)
    (version,) = r.unpack("I", "binary version")
    if version not in _CT2_VERSIONS:
        raise WeightsError(
            f"{path}: unsupported or corrupted CTranslate2 binary version {version} "
            f"(readable: {_CT2_VERSIONS.start}..{_CT2_VERSIONS.stop - 1})"
        )
    spec = r.string("spec name")
    (revision,) = r.unpack("I", "spec revision")
    (count,) = r.unpack("I", "variable count")
    variables = {}
    for i in range(count):
        name = r.string(f"name of variable #{i}")
        (rank,) = r.unpack("B", f"rank of {name}")
        shape = r.unpack(f"{rank}I", f"shape of {name}")
        type_id, nbytes = r.unpack("B", f"dtype of {name}")[0], r.unpack("I", f"size of {name}")[0]
        if type_id not in _CT2_DTYPES:
            raise WeightsError(f"{path}: corrupted file: unknown dtype id {type_id} for '{name}'")
        dtype = np.dtype("uint16" if _CT2_DTYPES[type_id] == "bfloat16" else _CT2_DTYPES[type_id])
        if nbytes != int(np.prod(shape)) * dtype.itemsize:
            raise WeightsError(
                f"{path}: corrupted file: '{name}' has {nbytes} bytes, "
                f"shape {list(shape)} of {_CT2_DTYPES[type_id]} needs {int(np.prod(shape)) * dtype.itemsize}"
            )
        if name in variables:
            raise WeightsError(f"{path}: corrupted file: variable '{name}' appears twice")
        a = np.frombuffer(r.take(nbytes, f"data of {name}"), dtype).reshape(shape)
        if _CT2_DTYPES[type_id] == "bfloat16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        variables[name] = a
    (count,) = r.unpack("I", "alias count")
    for i in range(count):
        alias, target = r.string(f"alias #{i}"), r.string(f"target of alias #{i}")
        if target not in variables or alias in variables:
            raise WeightsError(f"{path}: corrupted file: bad alias '{alias}' -> '{target}'")
        variables[alias] = variables[target]
    if r.pos != len(buf):
        raise WeightsError(f"{path}: corrupted file: {len(buf) - r.pos} trailing bytes after the aliases")
    if spec == "WhisperSpec" and revision > 3:
        # 3 is the layout revision this mapping (and CTranslate2 itself) knows
        raise WeightsError(f"{path}: unsupported WhisperSpec revision {revision} (known: up to 3)")
    return spec, variables


# ------------------------------------------------- CT2 names -> openai-whisper
# openai module -> (CT2 module, slice, number of slices): CT2 fuses the
# self-attention q/k/v into one linear and the cross-attention k/v into
# another, concatenated along the output dimension in that order.
_BLOCK = {
    "attn.query": ("self_attention/linear_0", 0, 3),
    "attn.key": ("self_attention/linear_0", 1, 3),
    "attn.value": ("self_attention/linear_0", 2, 3),
    "attn.out": ("self_attention/linear_1", 0, 1),
    "attn_ln": ("self_attention/layer_norm", 0, 1),
    "cross_attn.query": ("attention/linear_0", 0, 1),
    "cross_attn.key": ("attention/linear_1", 0, 2),
    "cross_attn.value": ("attention/linear_1", 1, 2),
    "cross_attn.out": ("attention/linear_2", 0, 1),
    "cross_attn_ln": ("attention/layer_norm", 0, 1),
    "mlp.0": ("ffn/linear_0", 0, 1),
    "mlp.2": ("ffn/linear_1", 0, 1),
    "mlp_ln": ("ffn/layer_norm", 0, 1),
}
_TOP = {
    "encoder.conv1": "encoder/conv1",
    "encoder.conv2": "encoder/conv2",
    "encoder.ln_post": "encoder/layer_norm",
    "decoder.token_embedding": "decoder/embeddings",
    "decoder.ln": "decoder/layer_norm",
}
# both positional tables are stored as plain matrices (the encoder's is
# openai-whisper's sinusoids buffer, the decoder's the learned embedding)
_POSITIONS = {
    "encoder.positional_embedding": "encoder/position_encodings/encodings",
    "decoder.positional_embedding": "decoder/position_encodings/encodings",
}
_LN_PARAMS = {"weight": "gamma", "bias": "beta"}
# decoder options CT2 stores as scalars; any other value is another architecture
_OPTIONS = {
    "decoder/activation": 3,  # common_spec.Activation.GELU
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}
# read but unused: head counts go into dims, alignment heads only serve CT2's aligner
_KNOWN = {"encoder/num_heads", "decoder/num_heads", "decoder/alignment_heads", "decoder/alignment_layer"}


def _ct2_source(key: str) -> tuple[str, int, int]:
    """openai key -> (CT2 variable, slice, number of slices)."""
    if key in _POSITIONS:
        return _POSITIONS[key], 0, 1
    module, param = key.rsplit(".", 1)
    if m := re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)", module):
        side, layer, sub = m.groups()
        ct2, part, parts = _BLOCK[sub]
        ct2 = f"{side}/layer_{layer}/{ct2}"
    else:
        ct2, part, parts = _TOP[module], 0, 1
    if ct2.endswith("layer_norm"):
        param = _LN_PARAMS[param]
    return f"{ct2}/{param}", part, parts


def _ct2_dims(v: dict, path) -> ModelDimensions:
    def shape(name, rank):
        if name not in v:
            raise WeightsError(f"{path}: missing variable '{name}'")
        if v[name].ndim != rank:
            raise WeightsError(f"{path}: variable '{name}' has shape {list(v[name].shape)}, expected rank {rank}")
        return v[name].shape

    def heads(name):
        if shape(name, 0) != () or v[name].dtype.kind not in "iu":
            raise WeightsError(f"{path}: '{name}' is not an integer scalar")
        return int(v[name])

    def layers(side):
        found = {int(m[1]) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))}
        return max(found, default=-1) + 1  # gaps show up as missing variables

    return ModelDimensions(
        n_mels=shape("encoder/conv1/weight", 3)[1],
        n_audio_ctx=shape("encoder/position_encodings/encodings", 2)[0],
        n_audio_state=shape("encoder/conv1/weight", 3)[0],
        n_audio_head=heads("encoder/num_heads"),
        n_audio_layer=layers("encoder"),
        n_vocab=shape("decoder/embeddings/weight", 2)[0],
        n_text_ctx=shape("decoder/position_encodings/encodings", 2)[0],
        n_text_state=shape("decoder/embeddings/weight", 2)[1],
        n_text_head=heads("decoder/num_heads"),
        n_text_layer=layers("decoder"),
    )


def load_ct2(path: Path) -> tuple[ModelDimensions, dict[str, np.ndarray]]:
    spec, v = read_ct2_model_bin(path)
    if spec != "WhisperSpec":
        raise WeightsError(f"{path}: not a Whisper model (CTranslate2 spec '{spec}')")
    for name, want in _OPTIONS.items():
        if name in v and (v[name].shape != () or int(v[name]) != want):
            raise WeightsError(f"{path}: unsupported '{name}' = {v[name].tolist()} (openai-whisper needs {want})")
    dims = _ct2_dims(v, path)
    # openai-whisper ties the output projection to the token embedding
    proj, emb = v.get("decoder/projection/weight"), v.get("decoder/embeddings/weight")
    if proj is not None and not (proj is emb or np.array_equal(proj, emb)):
        raise WeightsError(f"{path}: 'decoder/projection/weight' differs from the token embedding")

    used = set(_OPTIONS) | _KNOWN | {"decoder/projection/weight"}
    sd = {}
    for key, want in expected_shapes(dims).items():
        name, part, parts = _ct2_source(key)
        if name not in v:
            raise WeightsError(f"{path}: missing variable '{name}' (for '{key}')")
        a = v[name]
        if a.shape != (want[0] * parts, *want[1:]):
            raise WeightsError(
                f"{path}: variable '{name}' has shape {list(a.shape)}, "
                f"expected {[want[0] * parts, *want[1:]]} (for '{key}')"
            )
        if a.dtype.kind != "f":
            raise WeightsError(f"{path}: variable '{name}' is {a.dtype}, not float (quantized models are not supported)")
        sd[key] = np.array(a[part * want[0] : (part + 1) * want[0]], np.float32, order="C")
        used.add(name)
    for key in [k for k in sd if k.endswith("attn.key.weight")]:
        # openai-whisper's key projection has no bias; CT2 stores zeros
        # there, and silently dropping anything else would change the model
        name, part, _ = _ct2_source(key)
        bias, n = name.removesuffix("weight") + "bias", sd[key].shape[0]
        if bias in v and np.any(v[bias][part * n : (part + 1) * n]):
            raise WeightsError(f"{path}: nonzero key bias in '{bias}' (for '{key}')")
    extra = sorted(set(v) - used)
    if extra:
        raise WeightsError(f"{path}: unexpected variable '{extra[0]}'" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""))
    check_state_dict(dims, sd, str(path))
    return dims, sd
