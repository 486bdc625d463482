"""whisper.cpp's model file (the ggml format of its `models/convert-pt-to-ggml.py`) written from an
openai-whisper state dict, in its f16 form, or in q8_0 as its `quantize` tool makes it: every 2-D
tensor but the conv biases and positional embeddings in blocks of 32 (an fp16 scale, amax / 127, and
32 int8 codes rounded half away from zero), the rest as f16 does. For the benchmarks' whisper.cpp
row (pywhispercpp), on the same tiny.en weights as every other row.
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import numpy as np

MAGIC = 0x67676D6C  # "ggml"
QNT_VERSION, QNT_FACTOR = 2, 1000  # ggml.h: a quantized file's ftype is QNT_VERSION * 1000 + its ftype
FTYPE = {"f16": 1, "q8_0": 7}  # ggml_ftype: MOSTLY_F16, MOSTLY_Q8_0
F32, F16, Q8_0 = 0, 1, 8  # ggml_type of one tensor
KEPT_F32 = ("encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding")


def q8_0(x: np.ndarray) -> bytes:
    """ggml's quantize_row_q8_0_ref over rows of `x` (the last axis a multiple of 32)."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / 127
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    scaled = blocks * inv[:, None]
    codes = (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int8)  # C's roundf
    out = np.empty(len(blocks), dtype=[("d", "<f2"), ("qs", "i1", 32)])
    out["d"], out["qs"] = d.astype(np.float16), codes
    return out.tobytes()


def write(dims, state_dict, path: str | Path, kind: str = "f16") -> Path:
    """Write `state_dict` (openai-whisper's names, float32 numpy arrays) as whisper.cpp's model file."""
    import whisper

    if kind not in FTYPE:
        raise ValueError(f"kind must be one of {', '.join(FTYPE)}, got {kind!r}")
    assets = Path(whisper.__file__).parent / "assets"
    with np.load(assets / "mel_filters.npz") as f:
        filters = f[f"mel_{dims.n_mels}"].astype(np.float32)
    vocab = assets / ("multilingual.tiktoken" if dims.n_vocab >= 51865 else "gpt2.tiktoken")
    tokens = [base64.b64decode(line.split()[0]) for line in vocab.read_bytes().splitlines() if line]
    ftype = FTYPE[kind] + (QNT_VERSION * QNT_FACTOR if kind != "f16" else 0)
    path = Path(path)
    with path.open("wb") as out:
        out.write(struct.pack("i", MAGIC))
        out.write(struct.pack("11i", dims.n_vocab, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                              dims.n_audio_layer, dims.n_text_ctx, dims.n_text_state, dims.n_text_head,
                              dims.n_text_layer, dims.n_mels, ftype))
        out.write(struct.pack("ii", *filters.shape))
        out.write(filters.tobytes())
        out.write(struct.pack("i", len(tokens)))
        for t in tokens:
            out.write(struct.pack("i", len(t)) + t)
        for name, value in state_dict.items():
            data = np.asarray(value, dtype=np.float32).squeeze()
            if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
                data = data.reshape(data.shape[0], 1)
            if data.ndim < 2 or name in KEPT_F32:
                kind_of, payload = F32, data.astype(np.float32).tobytes()
            elif kind == "q8_0" and data.ndim == 2:
                kind_of, payload = Q8_0, q8_0(data.astype(np.float16))  # quantize reads the f16 file
            else:
                kind_of, payload = F16, data.astype(np.float16).tobytes()
            key = name.encode()
            out.write(struct.pack("iii", data.ndim, len(key), kind_of))
            out.write(struct.pack(f"{data.ndim}i", *reversed(data.shape)))
            out.write(key)
            out.write(payload)
    return path
