"""Every intermediate activation of openai-whisper's AudioEncoder and TextDecoder, keyed by
maxwhisper's layer ids.

Forward hooks record what the model itself computed, so a reference failure cannot be masked by a
re-implementation here. Conv outputs are turned channels-last to match the MAX layout.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import whisper.model as wm
from torch.nn import functional as F

from reference.modules import reference_decoder, reference_encoder
from reference.yardstick import setup
from maxwhisper.trace import decoder_trace, encoder_trace


def layer_ids(n_layer: int) -> list[str]:
    """Trace ids of an n_layer encoder in execution order (`maxwhisper.layers.encoder_trace`)."""
    return [t.id for t in encoder_trace(n_layer)]


class _Sink(dict):
    """A trace dict that hands each activation to `sink(layer id, numpy array)` as the hook records it,
    keeping none: a large model's trace need not fit in memory at once."""

    def __init__(self, sink):
        super().__init__()
        self.sink = sink

    def __setitem__(self, key, value):
        self.sink(key, _numpy(value))


@torch.no_grad()
def trace_encoder(encoder: wm.AudioEncoder, mel: torch.Tensor, sink=None) -> dict[str, np.ndarray]:
    """Run `encoder` once on `mel` and return {layer id: activation (batch, time, channels)}; with
    `sink`, hand each to `sink(layer id, array)` in execution order instead, and return {}."""
    out: dict[str, torch.Tensor] = {} if sink is None else _Sink(sink)
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
        for layer in layer_ids(len(encoder.blocks)):
            name = layer.removeprefix("encoder.")
            if name in modules:  # the rest are recorded by the hooks of conv1, conv2 and blocks.0
                hooks.append(modules[name].register_forward_hook(record(name)))
        first = encoder.blocks[0] if len(encoder.blocks) else encoder.ln_post
        hooks.append(first.register_forward_pre_hook(blocks_input))
        encoder(mel)
    finally:
        for h in hooks:
            h.remove()
    return {} if sink is not None else {k: _numpy(out[k]) for k in layer_ids(len(encoder.blocks))}


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t if t.dtype in (torch.float32, torch.float64) else t.float()).numpy()


def reference_trace(dims: wm.ModelDimensions, state_dict: Mapping[str, np.ndarray], mel: np.ndarray,
                    dtype: torch.dtype | str = torch.float64, device: str = "cpu",
                    quantize: str | None = None, sink=None) -> dict[str, np.ndarray]:
    """openai-whisper's encoder on `mel`, every activation by layer id (or, with `sink`, each handed to
    it as it is computed: `trace_encoder`): in float64 the reference,
    in MAX's dtype (and on MAX's kind of device) the yardstick, PyTorch's own error, which the
    derived rule measures MAX by; `dtype` a precision name or its torch dtype (`yardstick.setup`). In a
    16-bit dtype it is whisper's own mixed precision (`transcribe(..., fp16=True)`): float32 weights,
    the mel rounded to `dtype` (`maxwhisper.precision`). `quantize`: a quantized precision whose products
    the float64 reference computes (`yardstick.setup`)."""
    dtype, weights, numerics = setup(dtype, quantize)
    # streamed (a large model), the float64 weights are made one block at a time as well
    encoder = reference_encoder(dims, state_dict, weights, per_part=sink is not None and device == "cpu").to(device)
    with numerics(encoder, "encoder."):
        return trace_encoder(encoder, torch.from_numpy(np.asarray(mel)).to(device, dtype), sink)


@torch.no_grad()
def trace_decoder(decoder: wm.TextDecoder, tokens: torch.Tensor, xa: torch.Tensor) -> dict[str, np.ndarray]:
    """Run `decoder` once over all of `tokens` (teacher forcing, no cache) and return
    {layer id: activation (batch, tokens or audio frames, channels)} (`layers.decoder_trace`)."""
    out: dict[str, torch.Tensor] = {}
    modules = dict(decoder.named_modules())
    ids = [t.id for t in decoder_trace(len(decoder.blocks))]

    def record(layer):
        def hook(module, args, result):
            out[layer] = result[0] if isinstance(result, tuple) else result
        return hook

    def blocks_input(module, args):
        out["decoder.positional_embedding"] = args[0]

    hooks = [modules[i.removeprefix("decoder.")].register_forward_hook(record(i)) for i in ids
             if i.removeprefix("decoder.") in modules]
    hooks.append(decoder.blocks[0].register_forward_pre_hook(blocks_input))
    try:
        out["decoder.logits"] = decoder(tokens, xa)
    finally:
        for h in hooks:
            h.remove()
    return {k: _numpy(out[k]) for k in ids}


@torch.no_grad()
def reference_encode(dims: wm.ModelDimensions, state_dict: Mapping[str, np.ndarray], mel: np.ndarray,
                     dtype: torch.dtype | str = torch.float64, device: str = "cpu",
                     quantize: str | None = None) -> np.ndarray:
    """openai-whisper's encoder output alone (no hooks), as `reference_trace` computes it."""
    dtype, weights, numerics = setup(dtype, quantize)
    encoder = reference_encoder(dims, state_dict, weights).to(device)
    with numerics(encoder, "encoder."):
        out = encoder(torch.from_numpy(np.asarray(mel)).to(device, dtype))
    return out.cpu().numpy() if out.dtype in (torch.float32, torch.float64) else out.float().cpu().numpy()


def reference_decoder_trace(dims: wm.ModelDimensions, state_dict: Mapping[str, np.ndarray], tokens: np.ndarray,
                            features: np.ndarray, dtype: torch.dtype | str = torch.float64,
                            device: str = "cpu", quantize: str | None = None,
                            per_part: bool = False) -> dict[str, np.ndarray]:
    """openai-whisper's decoder, teacher-forced on `tokens` over `features`, every activation by id.
    In a 16-bit dtype it is whisper's own mixed precision, as `reference_trace`: float32 weights, the
    features rounded to `dtype`. `per_part`: `reference_decoder`'s, on the CPU."""
    dtype, weights, numerics = setup(dtype, quantize)
    decoder = reference_decoder(dims, state_dict, weights, per_part=per_part and device == "cpu").to(device)
    with numerics(decoder, "decoder."):
        return trace_decoder(decoder, torch.from_numpy(np.asarray(tokens, np.int64)).to(device),
                             torch.from_numpy(np.asarray(features)).to(device, dtype))
