"""The in-memory form every checkpoint becomes: openai-whisper's `ModelDimensions` plus a state dict
`{openai key: float32 C-contiguous np.ndarray}` with exactly the keys and shapes of
`whisper.model.Whisper(dims).state_dict()`; its checks, its hash and the PyTorch round trip.
"""

import hashlib

import numpy as np
import torch
from whisper.model import AudioEncoder, ModelDimensions, TextDecoder, Whisper


class WeightsError(ValueError):
    """Any failure to load weights; the message names the file and the key."""


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def expected_shapes(dims: ModelDimensions) -> dict[str, tuple[int, ...]]:
    # built from openai-whisper's own modules on the meta device (no memory,
    # no random init); Whisper() itself can't be, its alignment_heads
    # buffer uses to_sparse, which meta tensors lack
    with torch.device("meta"):
        enc = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
        dec = TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer)
    return {
        f"{prefix}.{k}": tuple(t.shape)
        for prefix, module in (("encoder", enc), ("decoder", dec))
        for k, t in module.state_dict().items()
    }


def check_state_dict(dims: ModelDimensions, state_dict: dict[str, np.ndarray], source: str) -> None:
    """WeightsError unless `state_dict` is exactly what Whisper(dims) holds."""
    for n_state, n_head, side in ((dims.n_audio_state, dims.n_audio_head, "audio"),
                                  (dims.n_text_state, dims.n_text_head, "text")):
        if n_head <= 0 or n_state % n_head:
            raise WeightsError(f"{source}: n_{side}_head={n_head} does not divide n_{side}_state={n_state}")
    expected = expected_shapes(dims)
    for problem, keys in (("missing", expected.keys() - state_dict.keys()),
                          ("unexpected", state_dict.keys() - expected.keys())):
        if keys:
            first = sorted(keys)[0]
            more = f" (+{len(keys) - 1} more)" if len(keys) > 1 else ""
            raise WeightsError(f"{source}: {problem} weight '{first}'{more}")
    for key, want in expected.items():
        a = state_dict[key]
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
            raise WeightsError(f"{source}: '{key}' is not a C-contiguous float32 array")
        if a.shape != want:
            raise WeightsError(f"{source}: '{key}' has shape {list(a.shape)}, expected {list(want)}")
        if not np.isfinite(a).all():
            raise WeightsError(f"{source}: '{key}' has non-finite values")


def to_torch_model(dims: ModelDimensions, state_dict: dict[str, np.ndarray], cls: type[Whisper] = Whisper) -> Whisper:
    """openai-whisper's PyTorch model (or a subclass `cls` of it), float32, eval mode, every weight loaded."""
    check_state_dict(dims, state_dict, "state dict")
    model = cls(dims)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    return model.float().eval()


def weights_hash(state_dict: dict[str, np.ndarray]) -> str:
    """sha256 hex over sorted keys, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        a = np.ascontiguousarray(state_dict[key])
        h.update(f"{key}\0{a.shape}\0{a.dtype.str}\0".encode())
        h.update(a.data)
    return h.hexdigest()


