"""Alignment heads: the decoder's (layer, head) pairs word timestamps read, from the checkpoint."""

import base64
import gzip
import json
import os
from pathlib import Path

import numpy as np
import torch
from whisper.model import ModelDimensions, Whisper

from maxwhisper.checkpoints.hf import heads_of, is_checkpoint
from maxwhisper.checkpoints.names import hub_id
from maxwhisper.checkpoints.state import WeightsError, one_line


def alignment_heads(name_or_path: str | os.PathLike, dims: ModelDimensions) -> tuple[list[list[int]] | None, str]:
    """The decoder's (layer, head) pairs word timestamps read, and where they come from: openai-whisper's
    table for one of its model names (as `whisper.load_model(name)` sets them), else a CTranslate2
    model's `config.json` (`alignment_heads`, as faster-whisper reads them) or a transformers checkpoint's
    `generation_config.json` (a Hub id's in the cache: this never downloads), else None: openai-whisper's
    default, the last half of the decoder's layers (as `whisper.load_model(path)` leaves them)."""
    import whisper

    name = str(name_or_path)
    if name in whisper._ALIGNMENT_HEADS:
        flat = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[name])), dtype=bool)
        mask = flat.reshape(dims.n_text_layer, dims.n_text_head)
        return np.argwhere(mask).tolist(), f"openai-whisper's table for {name}"
    p = Path(name_or_path).expanduser()
    if not p.exists() and (snapshot := cached_snapshot(name)) is not None:
        p = snapshot
    if is_checkpoint(p) and (heads := heads_of(p)) is not None:
        return check_heads(heads, dims, str(p / "generation_config.json")), "the checkpoint's generation_config.json"
    config = (p if p.is_dir() else p.parent) / "config.json"
    if p.exists() and (p.is_dir() or p.suffix == ".bin") and config.is_file() and not is_checkpoint(p):
        try:
            heads = json.loads(config.read_text()).get("alignment_heads")
        except ValueError as e:
            raise WeightsError(f"{config}: not JSON ({one_line(e)})") from None
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


def cached_snapshot(name: str) -> Path | None:
    """The Hub cache's snapshot folder of the repo `name` stands for, where it holds its config.json."""
    if (repo := hub_id(name)) is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json")
    return Path(found).parent if isinstance(found, str) else None
