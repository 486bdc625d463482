"""Every intermediate activation of openai-whisper's AudioEncoder, keyed by maxwhisper's layer ids.

Forward hooks record what the model itself computed, so a reference failure cannot be masked by a
re-implementation here. Conv outputs are turned channels-last to match the MAX layout.
"""

from __future__ import annotations

import numpy as np
import torch
import whisper.model as wm
from torch.nn import functional as F


def _ids(encoder: wm.AudioEncoder) -> list[str]:
    ids = ["conv1", "conv2"]
    for i in range(len(encoder.blocks)):
        b = f"blocks.{i}"
        ids += [f"{b}.attn_ln", f"{b}.attn.query", f"{b}.attn.key", f"{b}.attn.value", f"{b}.attn",
                f"{b}.mlp_ln", f"{b}.mlp.0", f"{b}.mlp.1", f"{b}.mlp.2", b]
    return ids + ["ln_post"]


@torch.no_grad()
def trace_encoder(encoder: wm.AudioEncoder, mel: torch.Tensor) -> dict[str, np.ndarray]:
    """Run `encoder` once on `mel` and return {layer id: activation (batch, time, channels)}."""
    out: dict[str, torch.Tensor] = {}
    modules = dict(encoder.named_modules())
    hooks = []

    def record(name):
        def hook(module, args, result):
            if isinstance(result, tuple):  # MultiHeadAttention returns (out, qk)
                result = result[0]
            if name in ("conv1", "conv2"):
                out[f"encoder.{name}"] = result.permute(0, 2, 1)
                out[f"encoder.{name}.gelu"] = F.gelu(result).permute(0, 2, 1)
            else:
                out[f"encoder.{name}"] = result
        return hook

    def blocks_input(module, args):
        out["encoder.positional_embedding"] = args[0]

    try:
        for name in _ids(encoder):
            hooks.append(modules[name].register_forward_hook(record(name)))
        first = encoder.blocks[0] if len(encoder.blocks) else encoder.ln_post
        hooks.append(first.register_forward_pre_hook(blocks_input))
        encoder(mel)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.detach().cpu().numpy() for k, v in out.items()}
