"""Hugging Face transformers Whisper checkpoints: a folder with `config.json` and `model.safetensors`
(or `pytorch_model.bin`), as `WhisperForConditionalGeneration.save_pretrained` writes it, mapped to
openai-whisper's state-dict names. `maxwhisper.checkpoints.load_weights` is the entry point.

`KEYS` is the one mapping between transformers' names and openai-whisper's (both ways: `to_openai`,
`to_transformers`). transformers' output projection (`proj_out`) is tied to the token embedding as
openai-whisper's logits are; an untied one is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from whisper.model import ModelDimensions

from maxwhisper.checkpoints.state import WeightsError, check_state_dict, one_line

# transformers' module name -> openai-whisper's, per block ({i}) and at the top
KEYS = {
    "model.encoder.conv1": "encoder.conv1",
    "model.encoder.conv2": "encoder.conv2",
    "model.encoder.embed_positions.weight": "encoder.positional_embedding",
    "model.encoder.layer_norm": "encoder.ln_post",
    "model.decoder.embed_tokens": "decoder.token_embedding",
    "model.decoder.embed_positions.weight": "decoder.positional_embedding",
    "model.decoder.layer_norm": "decoder.ln",
}
BLOCK = {
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln",
}
_SIDES = {"model.encoder.layers": "encoder.blocks", "model.decoder.layers": "decoder.blocks"}
TIED = "proj_out.weight"  # transformers' logits projection: the token embedding again


def to_openai(key: str) -> str | None:
    """transformers' parameter name -> openai-whisper's; None for a name outside the mapping."""
    for theirs, ours in KEYS.items():
        if key == theirs or key.startswith(theirs + "."):
            return ours + key[len(theirs):]
    if m := re.fullmatch(r"(model\.(?:encoder|decoder)\.layers)\.(\d+)\.(.+)\.(weight|bias)", key):
        side, i, module, param = m.groups()
        if module in BLOCK:
            return f"{_SIDES[side]}.{i}.{BLOCK[module]}.{param}"
    return None


def to_transformers(key: str) -> str:
    """openai-whisper's parameter name -> transformers' (the inverse of `to_openai`)."""
    for theirs, ours in KEYS.items():
        if key == ours or key.startswith(ours + "."):
            return theirs + key[len(ours):]
    m = re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)", key)
    inverse = {v: k for k, v in BLOCK.items()}
    if m is None or m[3] not in inverse:
        raise KeyError(f"no transformers name for {key!r}")
    return f"model.{m[1]}.layers.{m[2]}.{inverse[m[3]]}.{m[4]}"


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")  # the first found is read


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHTS)


def dims_of(config: dict, source: str) -> ModelDimensions:
    if config.get("model_type") != "whisper":
        raise WeightsError(f"{source}: not a Whisper config (model_type {config.get('model_type')!r})")
    for key, want in (("activation_function", "gelu"), ("scale_embedding", False)):
        if config.get(key, want) != want:
            raise WeightsError(f"{source}: unsupported {key} = {config[key]!r} (openai-whisper's is {want!r})")
    try:
        return ModelDimensions(config["num_mel_bins"], config["max_source_positions"], config["d_model"],
                               config["encoder_attention_heads"], config["encoder_layers"], config["vocab_size"],
                               config["max_target_positions"], config["d_model"], config["decoder_attention_heads"],
                               config["decoder_layers"])
    except KeyError as e:
        raise WeightsError(f"{source}: config.json lacks {e}") from None


def _tensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file

        if (path / "model.safetensors").is_file():
            return load_file(str(path / "model.safetensors"))
        if (index := path / "model.safetensors.index.json").is_file():  # sharded, as large checkpoints are
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(str(path / shard)).items()}
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    except Exception as e:  # safetensors and torch raise many types for a bad file
        raise WeightsError(f"{path}: cannot read the weights: {one_line(e)}") from None


def load_hf(path: Path) -> tuple[ModelDimensions, dict[str, np.ndarray]]:
    """(dims, openai-whisper state dict) of a transformers checkpoint folder."""
    config = json.loads((path / "config.json").read_text())
    dims = dims_of(config, str(path / "config.json"))
    tensors, sd = _tensors(path), {}
    for key, value in tensors.items():
        if key == TIED:
            continue
        ours = to_openai(key)
        if ours is None:
            raise WeightsError(f"{path}: unexpected weight '{key}' (no openai-whisper name)")
        if not np.issubdtype(value.dtype, np.floating):
            raise WeightsError(f"{path}: '{key}' is {value.dtype}, not float")
        sd[ours] = np.ascontiguousarray(value, np.float32)
    if TIED in tensors and not np.array_equal(tensors[TIED], tensors["model.decoder.embed_tokens.weight"]):
        raise WeightsError(f"{path}: '{TIED}' differs from the token embedding (openai-whisper ties them)")
    check_state_dict(dims, sd, str(path))
    return dims, sd


def heads_of(path: Path) -> list | None:
    """`generation_config.json`'s alignment heads, where the checkpoint has them."""
    config = path / "generation_config.json"
    return json.loads(config.read_text()).get("alignment_heads") if config.is_file() else None


def save_hf(dims: ModelDimensions, state_dict: dict[str, np.ndarray], path: str | Path,
            heads: list | None = None) -> Path:
    """Write openai-whisper weights as a transformers checkpoint (config.json, model.safetensors and,
    with `heads`, generation_config.json): what `WhisperForConditionalGeneration.from_pretrained` reads."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {to_transformers(k): np.ascontiguousarray(v) for k, v in state_dict.items()}
    tensors[TIED] = tensors["model.decoder.embed_tokens.weight"].copy()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = dict(model_type="whisper", architectures=["WhisperForConditionalGeneration"],
                  num_mel_bins=dims.n_mels, max_source_positions=dims.n_audio_ctx, d_model=dims.n_audio_state,
                  encoder_attention_heads=dims.n_audio_head, encoder_layers=dims.n_audio_layer,
                  vocab_size=dims.n_vocab, max_target_positions=dims.n_text_ctx,
                  decoder_attention_heads=dims.n_text_head, decoder_layers=dims.n_text_layer,
                  encoder_ffn_dim=4 * dims.n_audio_state, decoder_ffn_dim=4 * dims.n_text_state,
                  activation_function="gelu", scale_embedding=False, tie_word_embeddings=True)
    (path / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    if heads is not None:
        (path / "generation_config.json").write_text(json.dumps({"alignment_heads": heads}, indent=1) + "\n")
    return path
