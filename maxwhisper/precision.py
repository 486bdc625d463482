"""The compute policy per dtype: where the encoder rounds to a 16-bit type and where it stays float32.

It is openai-whisper's own mixed precision (`transcribe(..., fp16=True)`), so the PyTorch yardstick
run in the same dtype follows the same policy by construction:
- activations and the weights of every matmul (Linear, the conv stem's im2col matmul) in the dtype.
  MAX 26.7's CPU matmul on bfloat16/float16 operands accumulates in float32 and rounds the result
  once (measured: 4096 products of 1.0 sum to 4096, not to 256 as a 16-bit accumulator would give;
  its error equals torch's same-dtype matmul, which accumulates in float32);
- LayerNorm in float32, with its gain and bias in float32: whisper's `LayerNorm.forward` casts the
  input up and the output back (`super().forward(x.float()).type(x.dtype)`), its parameters stay
  float32 (whisper keeps master weights in float32 and casts them per op);
- the positional embedding stays float32: whisper adds it to the 16-bit stem output in float32
  (`(x + self.positional_embedding).to(x.dtype)`);
- the attention core softmax(q k^T / sqrt(d)) v with q, k, v in the dtype and the scores and
  softmax in float32: torch's SDPA on 16-bit inputs keeps them in float32 (its `opmath` type);
- GELU in the dtype (whisper's `F.gelu` on a 16-bit tensor);
- the mel enters as float32 and is rounded in the graph; the encoder output leaves as float32.
The decoder follows the same policy (whisper's `TextDecoder` under `fp16=True`):
- the token and positional embeddings are added in float32 and the sum rounded once
  (`x.to(xa.dtype)`); the features enter as float32 and are rounded before the cross K/V matmuls;
- the self-attention cache and cross K/V are 16-bit (what whisper's kv_cache hooks hold), the
  causal mask and softmax float32 (the emulated attention core), the final LayerNorm float32;
- logits are the 16-bit matmul with the token embedding cast to the dtype, returned as float32
  (`.float()`), which openai-whisper's decoding reads.

Measured on MAX 26.7's CPU (small shapes, against torch's same-dtype op): cast, matmul, layer_norm,
softmax and gelu compile in bfloat16 and float16 and agree within 1-2 ulps. One op is emulated, the
fused attention core: MAX's 16-bit attention kernel rounds the scores to the dtype (error 12.7x torch
SDPA's in bfloat16, 13x in float16, 6 heads x 1500 frames), and float32 scores meeting a 16-bit v
fuse into a kernel call that does not compile. So the graph casts the 16-bit q, k, v to float32,
runs the float32 kernel, and rounds its output to the dtype (exact 16-bit inputs, float32 compute:
what AMX and tensor cores do). The conv stem's im2col matmul is emulated the same way: in bfloat16
it compiles but erred 9-10x torch's bfloat16 conv (see `layers.conv1d`). Every report prints
`mode(dtype)`, which names both.
"""

from __future__ import annotations

from max.dtype import DType

DTYPES = {"float32": DType.float32, "bfloat16": DType.bfloat16, "float16": DType.float16}

# Ops the CPU graph computes in float32 from 16-bit inputs, rounding the output once, because MAX
# 26.7's 16-bit kernels for them do not keep the policy (see above).
EMULATED: dict[str, tuple[str, ...]] = {d: ("conv stem matmul", "attention core") for d in ("bfloat16", "float16")}

# Parameters kept in float32 whatever the dtype (openai-whisper's LayerNorms and positions).
# The decoder's token embedding too: whisper adds it to the positions in float32 before rounding (its
# logits matmul casts it to the dtype per step, `layers.logits`).
_FLOAT32_PARAMS = ("_ln.weight", "_ln.bias", "ln_post.weight", "ln_post.bias", "decoder.ln.weight", "decoder.ln.bias",
                   "positional_embedding", "token_embedding.weight")


def dtype_of(name: str) -> DType:
    """The MAX dtype of a dtype name, or a ValueError naming it."""
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def param_dtype(key: str, dtype: DType) -> DType:
    """The dtype a parameter (by state-dict key) is stored and used in, in a graph of `dtype`."""
    return DType.float32 if key.endswith(_FLOAT32_PARAMS) else dtype


def mode(name: str) -> str:
    """How the graph of dtype `name` runs on the CPU: what every report prints beside the dtype."""
    emulated = EMULATED.get(name, ())
    if name == "float32":
        return "float32"
    if not emulated:
        return f"{name} (real 16-bit MAX kernels; LayerNorm and softmax in float32 by policy)"
    return (f"{name} (real 16-bit MAX kernels, LayerNorm in float32 by policy; emulated, float32 compute "
            f"on 16-bit inputs: {', '.join(emulated)})")
