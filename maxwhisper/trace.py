"""What the traced graphs record, as a table without MAX: openai-whisper's state-dict ids of every
activation the encoder and the decoder trace, the `maxwhisper.layers` function that records each,
and the traced input it takes. The float64 reference (`reference`) reads the same ids.
"""

from __future__ import annotations

from typing import NamedTuple


class Traced(NamedTuple):
    """One activation of a traced graph (`MaxWhisper.encode_trace`).

    `id` is openai-whisper's state-dict name of the module that computes it (plus `conv1.gelu`,
    `conv2.gelu` and `positional_embedding`, the stem output plus positions); `layer` is the function
    of this module that records it, which is also the name of the harness record that judges it;
    `input` is the traced id whose value the layer takes as its input, None where that input is no
    traced value (a residual sum, the mel).
    """

    id: str
    layer: str
    input: str | None


def encoder_trace(n_layer: int) -> list[Traced]:
    """Every id `encoder(..., trace)` records, in execution order (the graph builder checks it)."""
    e = "encoder"
    out = [Traced(f"{e}.conv1", "conv_stem", None), Traced(f"{e}.conv1.gelu", "gelu", f"{e}.conv1"),
           Traced(f"{e}.conv2", "conv_stem", f"{e}.conv1.gelu"),
           Traced(f"{e}.conv2.gelu", "gelu", f"{e}.conv2"),
           Traced(f"{e}.positional_embedding", "encoder", f"{e}.conv2.gelu")]
    prev = f"{e}.positional_embedding"
    for i in range(n_layer):
        b = f"{e}.blocks.{i}"
        out += [Traced(f"{b}.attn_ln", "layer_norm", prev),
                *(Traced(f"{b}.attn.{p}", "attention", f"{b}.attn_ln") for p in ("query", "key", "value")),
                Traced(f"{b}.attn", "attention", f"{b}.attn_ln"),
                Traced(f"{b}.mlp_ln", "layer_norm", None),  # block input + attention output
                Traced(f"{b}.mlp.0", "mlp", f"{b}.mlp_ln"), Traced(f"{b}.mlp.1", "gelu", f"{b}.mlp.0"),
                Traced(f"{b}.mlp.2", "mlp", f"{b}.mlp.1"), Traced(b, "block", prev)]
        prev = b
    return out + [Traced(f"{e}.ln_post", "layer_norm", prev)]


def decoder_trace(n_layer: int) -> list[Traced]:
    """Every id the decoder records: each block's cross-attention keys and values (`cross_kv`, once
    per window), then what `decoder(..., trace)` records in a step, in execution order."""
    d = "decoder"
    out = [Traced(f"{d}.blocks.{i}.cross_attn.{p}", "cross_attention", None)
           for i in range(n_layer) for p in ("key", "value")]
    out += [Traced(f"{d}.positional_embedding", "token_embedding", None)]
    prev = f"{d}.positional_embedding"
    for i in range(n_layer):
        b = f"{d}.blocks.{i}"
        out += [Traced(f"{b}.attn_ln", "layer_norm", prev),
                *(Traced(f"{b}.attn.{p}", "cached_attention", f"{b}.attn_ln") for p in ("query", "key", "value")),
                Traced(f"{b}.attn", "cached_attention", f"{b}.attn_ln"),
                Traced(f"{b}.cross_attn_ln", "layer_norm", None),
                Traced(f"{b}.cross_attn.query", "cross_attention", f"{b}.cross_attn_ln"),
                Traced(f"{b}.cross_attn", "cross_attention", f"{b}.cross_attn_ln"),
                Traced(f"{b}.mlp_ln", "layer_norm", None),
                Traced(f"{b}.mlp.0", "mlp", f"{b}.mlp_ln"), Traced(f"{b}.mlp.1", "gelu", f"{b}.mlp.0"),
                Traced(f"{b}.mlp.2", "mlp", f"{b}.mlp.1"), Traced(b, "decoder_block", prev)]
        prev = b
    return out + [Traced(f"{d}.ln", "layer_norm", prev), Traced(f"{d}.logits", "logits", f"{d}.ln")]
