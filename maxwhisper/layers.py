"""Whisper's encoder layers written with max.graph ops.

Every layer is a plain function of graph values and a `Scope`, which looks up parameters by
openai-whisper's state-dict names and records intermediate activations under the same names.
One function therefore serves the fused encoder graph (parameters are `Weight`s) and the
one-layer graphs the parity suite compiles (parameters are graph inputs, so new random weights
need no recompile). `@seam` marks where the mutation catalog may inject a bug (`maxwhisper.seams`).

Activations are channels-last, (batch, time, channels), the layout Whisper's transformer uses;
the conv stem is computed in that layout too, so no transpose sits between the stem and block 0.
"""

from __future__ import annotations

from collections.abc import Callable

from max.dtype import DType
from max.graph import TensorValue, ops
from max.graph.quantization import QuantizationEncoding

from maxwhisper import int8, int8_ops
from maxwhisper.precision import QUANT_KEY

from maxwhisper.seams import seam
from maxwhisper.trace import Traced, decoder_trace, encoder_trace  # noqa: F401  (the table of what layers record)

LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which openai-whisper keeps


class Scope:
    """Parameter lookup and activation trace, both keyed by state-dict style names."""

    def __init__(self, lookup: Callable[[str], TensorValue], prefix: str = "",
                 trace: dict[str, TensorValue] | None = None, product: Callable | None = None,
                 quantizes: Callable[[str], bool] | None = None):
        self.lookup, self.prefix, self.trace = lookup, prefix, trace
        self.product = product or matmul  # (a, b, kind) -> a @ b in the precision's form (`tf32`)
        self.quantizes = quantizes  # weight key -> a quantized product (`precision.Quantizer`: Q4_0 or int8)

    @seam
    def __call__(self, name: str) -> TensorValue:
        return self.lookup(self.prefix + name)

    def sub(self, name: str) -> Scope:
        return Scope(self.lookup, f"{self.prefix}{name}.", self.trace, self.product, self.quantizes)

    def weight_product(self, x: TensorValue, name: str, n_out: int | None = None) -> TensorValue:
        """x @ W.T for weight `name` in torch's (out, in) layout: a quantized product where the precision
        quantizes this weight (its GGUF blocks, `precision.QUANT_KEY`), else in the activations' dtype.
        `n_out`: W's rows, where its blocks may be padded (`quant.padded_rows`)."""
        if self.quantizes is not None and self.quantizes(self.prefix + name):
            if getattr(self.quantizes, "scheme", "q4_0") == "int8":
                return int8_ops.product(x, self(name + int8.CODES), self(name + int8.SUMS), self(name + int8.SCALES))
            blocks = self(name + QUANT_KEY)
            y = qmatmul(x, blocks)
            return y if n_out is None or n_out == int(blocks.shape[0]) else y[..., :n_out]
        return self.product(x, ops.transpose(cast(self(name), x.dtype), 0, 1), "linear")

    def record(self, x: TensorValue, name: str = "") -> TensorValue:
        if self.trace is not None:
            self.trace[(self.prefix + name).rstrip(".")] = x
        return x


def matmul(a: TensorValue, b: TensorValue, kind: str = "linear") -> TensorValue:
    """a @ b as the device computes it. `kind` (precision.LINEAR, CONV) names the product for a
    precision that truncates or splits some products (`maxwhisper.tf32.products`)."""
    return a @ b


@seam
def qmatmul(x: TensorValue, blocks: TensorValue) -> TensorValue:
    """float32 `x` (..., K) times GGUF Q4_0 `blocks` (N, K / 32 * 18) transposed, with MAX's CPU kernel:
    it quantizes `x` to int8 per block of 32 (its arithmetic, bit for bit: `maxwhisper.quant`)."""
    return ops.qmatmul(QuantizationEncoding.Q4_0, None, x, blocks)


def cast(x: TensorValue, dtype: DType) -> TensorValue:
    """`x` in `dtype`; no op where it already is, so a float32 graph is the one it always was."""
    return x if x.dtype == dtype else ops.cast(x, dtype)


@seam
def gelu(x: TensorValue, s: Scope | None = None) -> TensorValue:
    # openai-whisper uses F.gelu / nn.GELU, the exact erf form; the tanh form is off by up to 3e-4.
    # Recorded here (when scoped): an element-wise layer is judged element by element.
    y = ops.gelu(x, approximate="none")
    return s.record(y) if s is not None else y


@seam
def linear(x: TensorValue, s: Scope, bias: bool = True) -> TensorValue:
    # x @ W.T with W in torch's (out, in) layout: MAX matches this as a transposed-B matmul.
    # Weights in the activations' dtype (whisper's Linear casts them per call; `precision`).
    y = s.weight_product(x, "weight")
    return y + cast(s("bias"), x.dtype) if bias else y


@seam
def layer_norm(x: TensorValue, s: Scope, eps: float = LN_EPS) -> TensorValue:
    # In float32 with float32 gain and bias, whatever the activations' dtype: whisper's LayerNorm.
    f32 = DType.float32
    y = ops.layer_norm(cast(x, f32), cast(s("weight"), f32), cast(s("bias"), f32), epsilon=eps)
    return s.record(cast(y, x.dtype))


@seam
def conv1d(x: TensorValue, s: Scope, stride: int = 1) -> TensorValue:
    """Conv1d(kernel k, padding 1) on channels-last (batch, time, c_in) -> (batch, time', c_out).

    MAX has no conv1d. This is im2col: the k shifted (and strided) copies of the zero-padded input
    side by side, (batch, time', k * c_in), times the filter as a (k * c_in, c_out) matrix. One
    matmul keeps both cores busy; the NHWC conv2d it replaces (time as W, H = 1) kept 0.9-1.0 of 2
    and took 12.4-12.9 ms against 10.7 ms for the tiny.en stem (one process), bitwise equal output.
    """
    # In a 16-bit graph this is emulated (`precision.Row.emulated`): the 16-bit input and weights are
    # computed on in float32 and the output rounded once, as torch's 16-bit conv rounds it. MAX
    # 26.7's bfloat16 im2col matmul + bias erred 9-10x torch's bfloat16 conv on normal-range mels
    # (0.19 abs on values near 1.3, 4% RMS; not on mels of +-40: an error that does not scale with
    # the input, bias-like), cause not isolated.
    dtype, f32 = x.dtype, DType.float32
    x, w = cast(x, f32), cast(cast(s("weight"), dtype), f32)
    c_out, c_in, k = (int(d) for d in w.shape)
    n_out = (x.shape[1] + 2 - k) // stride + 1  # torch's output length; symbolic when time is
    padded = ops.pad(x, [0, 0, 1, 1, 0, 0])
    # tap j: padded frames j, j + stride, ... (n_out of them); the stop leaves the last k-1-j.
    taps = [padded[:, (slice(j, j - (k - 1) or None, stride), n_out), :] for j in range(k)]
    cols = ops.concat(taps, axis=2)
    # torch's (c_out, c_in, k) filter -> (k * c_in, c_out), rows ordered (tap, c_in) as `cols` is.
    filt = ops.reshape(ops.permute(w, [2, 1, 0]), [k * c_in, c_out])
    return cast(s.product(cols, filt, "conv") + cast(cast(s("bias"), dtype), f32), dtype)


def conv_stem(mel: TensorValue, s: Scope) -> TensorValue:
    """(batch, n_mels, frames) log-mel -> (batch, frames // 2, n_state), before the positions."""
    x = ops.permute(mel, [0, 2, 1])
    x = gelu(s.record(conv1d(x, s.sub("conv1")), "conv1"), s.sub("conv1.gelu"))
    x = gelu(s.record(conv1d(x, s.sub("conv2"), stride=2), "conv2"), s.sub("conv2.gelu"))
    return x


@seam
def qkv_attention(q: TensorValue, k: TensorValue, v: TensorValue, n_head: int,
                  mask: TensorValue | None = None) -> TensorValue:
    """softmax(q k^T / sqrt(head_dim) + mask) v over heads; q (batch, time, n_state), k and v
    (batch, keys, n_state), out like q. `mask` (time, keys) is added to the scores (0 or -inf)."""
    batch, n_ctx, n_state = q.shape
    head_dim = int(n_state) // n_head

    def heads(t: TensorValue) -> TensorValue:  # (b, t, h*d) -> (b, h, t, d)
        return ops.permute(ops.reshape(t, [batch, t.shape[1], n_head, head_dim]), [0, 2, 1, 3])

    # Whisper scales q and k by head_dim**-0.25 each; one head_dim**-0.5 on the scores is the
    # same product, and `softmax(scores * scale) @ v` in this operand order is the pattern
    # MAX's compiler fuses into one attention kernel.
    # In a 16-bit graph this core is emulated (`precision.Row.emulated`): q, k, v are 16-bit values, the
    # kernel runs on them in float32 and its output is rounded to the dtype. MAX 26.7's own 16-bit
    # kernel rounds the scores to the dtype (12x torch SDPA's error in bfloat16, measured), and
    # float32 scores with a 16-bit v fuse into a kernel call that fails to compile (q float32, v bf16).
    dtype, f32 = q.dtype, DType.float32
    q, k, v = cast(q, f32), cast(k, f32), cast(v, f32)
    scores = heads(q) @ ops.permute(heads(k), [0, 1, 3, 2])
    scale = head_dim**-0.5
    # With a mask the softmax is spelled out: MAX 26.7's CPU compiler fuses `softmax(scores * scale +
    # mask) @ v` (and `softmax((scores + mask) * scale) @ v`) at head_dim 64 into an attention kernel
    # that drops the additive mask: the output equalled unmasked attention (2.9 abs off) until the
    # cached_attention parity test caught it. Decoder score rows are short, so this costs nothing.
    if mask is None:
        wv = ops.softmax(scores * scale) @ heads(v)
    else:
        z = (scores + cast(mask, f32)) * scale
        e = ops.exp(z - ops.max(z, axis=-1))
        wv = (e / ops.sum(e, axis=-1)) @ heads(v)
    return cast(ops.reshape(ops.permute(wv, [0, 2, 1, 3]), [batch, n_ctx, n_state]), dtype)


def attention(x: TensorValue, s: Scope, n_head: int) -> TensorValue:
    """Whisper's self-attention: q/v/out carry a bias, the key has none (it would cancel in softmax)."""
    q = s.record(linear(x, s.sub("query")), "query")
    k = s.record(linear(x, s.sub("key"), bias=False), "key")
    v = s.record(linear(x, s.sub("value")), "value")
    return s.record(linear(qkv_attention(q, k, v, n_head), s.sub("out")))


def mlp(x: TensorValue, s: Scope) -> TensorValue:
    h = s.record(linear(x, s.sub("0")), "0")
    h = gelu(h, s.sub("1"))
    return s.record(linear(h, s.sub("2")), "2")


def block(x: TensorValue, s: Scope, n_head: int) -> TensorValue:
    x = x + attention(layer_norm(x, s.sub("attn_ln")), s.sub("attn"), n_head)
    x = x + mlp(layer_norm(x, s.sub("mlp_ln")), s.sub("mlp"))
    return s.record(x)


def encoder(mel: TensorValue, s: Scope, n_head: int, n_layer: int) -> TensorValue:
    """openai-whisper's AudioEncoder.forward; `s` is scoped at "encoder."."""
    x = conv_stem(mel, s)
    # whisper adds its float32 positions in float32 and rounds the sum: `(x + pos).to(x.dtype)`
    x = s.record(cast(cast(x, DType.float32) + s("positional_embedding"), x.dtype), "positional_embedding")
    for i in range(n_layer):
        x = block(x, s.sub(f"blocks.{i}"), n_head)
    return layer_norm(x, s.sub("ln_post"))


# --- the text decoder ------------------------------------------------------------------------
# One step of openai-whisper's TextDecoder with its KV cache: `tokens` (batch, n_tok) follow
# `n_cache` tokens whose self-attention keys and values are cached, (batch, n_cache, n_state) per
# block. n_cache = 0 is the prompt step, n_tok = 1 every later one; both dims are symbolic, so one
# compiled graph serves every step, position and batch size.


@seam
def causal_mask(n_cache, n_tok, ref) -> TensorValue:
    """(n_tok, n_cache + n_tok): 0 where query i (at position n_cache + i) may see key j, else -inf."""
    start = ops.reshape(ops.shape_to_tensor([n_cache]), [])
    stop = ops.reshape(ops.shape_to_tensor([n_cache + n_tok]), [])
    q_pos = ops.range(start, stop, 1, out_dim=n_tok, dtype=DType.int64, device=ref)
    k_pos = ops.range(0, stop, 1, out_dim=n_cache + n_tok, dtype=DType.int64, device=ref)
    future = ops.unsqueeze(k_pos, 0) > ops.unsqueeze(q_pos, 1)
    return ops.where(future, ops.constant(float("-inf"), DType.float32, ref),
                     ops.constant(0.0, DType.float32, ref))


@seam
def token_embedding(tokens: TensorValue, n_cache, s: Scope, dtype: DType = DType.float32) -> TensorValue:
    """Token embedding plus the positional embedding at positions n_cache ... n_cache + n_tok - 1,
    rounded to `dtype` once: whisper adds the float32 tables, then `x.to(xa.dtype)`."""
    n_tok = tokens.shape[1]
    start = ops.reshape(ops.shape_to_tensor([n_cache]), [])
    stop = ops.reshape(ops.shape_to_tensor([n_cache + n_tok]), [])
    pos = ops.slice_tensor(cast(s("positional_embedding"), DType.float32), [(slice(start, stop), n_tok), slice(None)])
    x = ops.gather(cast(s("token_embedding.weight"), DType.float32), tokens, axis=0)
    return s.record(cast(x + pos, dtype), "positional_embedding")


@seam
def cached_attention(x: TensorValue, cache: tuple[TensorValue, TensorValue], s: Scope, n_head: int,
                     mask: TensorValue) -> tuple[TensorValue, tuple[TensorValue, TensorValue]]:
    """Causal self-attention over the cached keys/values plus this step's; returns the output and
    the grown cache (what openai-whisper's kv_cache hooks concatenate)."""
    q = s.record(linear(x, s.sub("query")), "query")
    k = ops.concat([cache[0], s.record(linear(x, s.sub("key"), bias=False), "key")], axis=1)
    v = ops.concat([cache[1], s.record(linear(x, s.sub("value")), "value")], axis=1)
    return s.record(linear(qkv_attention(q, k, v, n_head, mask), s.sub("out"))), (k, v)


def cross_kv(xa: TensorValue, s: Scope) -> tuple[TensorValue, TensorValue]:
    """Cross-attention keys (no bias, as in Whisper) and values of the audio features, computed
    once per 30 s window and reused by every token step."""
    return s.record(linear(xa, s.sub("key"), bias=False), "key"), s.record(linear(xa, s.sub("value")), "value")


def cross_attention(x: TensorValue, kv: tuple[TensorValue, TensorValue], s: Scope, n_head: int) -> TensorValue:
    q = s.record(linear(x, s.sub("query")), "query")
    return s.record(linear(qkv_attention(q, kv[0], kv[1], n_head), s.sub("out")))


@seam
def alignment_scores(x: TensorValue, kv: tuple[TensorValue, TensorValue], s: Scope, n_head: int) -> TensorValue:
    """What openai-whisper's word alignment reads (`timing.find_alignment`, the non-SDPA
    `qkv_attention`'s `qk`): the cross-attention scores before softmax, scaled by head_dim**-0.5,
    float32, (batch, n_head, n_tok, n_audio_ctx)."""
    batch, n_ctx, n_state = x.shape
    head_dim = int(n_state) // n_head

    def heads(t: TensorValue) -> TensorValue:  # (b, t, h*d) -> (b, h, t, d)
        return ops.permute(ops.reshape(cast(t, DType.float32), [batch, t.shape[1], n_head, head_dim]), [0, 2, 1, 3])

    q = linear(x, s.sub("query"))
    return (heads(q) @ ops.permute(heads(kv[0]), [0, 1, 3, 2])) * head_dim**-0.5


def decoder_block(x: TensorValue, cache: tuple[TensorValue, TensorValue], cross: tuple[TensorValue, TensorValue],
                  s: Scope, n_head: int, mask: TensorValue,
                  scores: list | None = None) -> tuple[TensorValue, tuple[TensorValue, TensorValue]]:
    """ResidualAttentionBlock(cross_attention=True) with its self-attention cache; `scores`, if given,
    receives the cross-attention's `alignment_scores`."""
    a, cache = cached_attention(layer_norm(x, s.sub("attn_ln")), cache, s.sub("attn"), n_head, mask)
    x = x + a
    h = layer_norm(x, s.sub("cross_attn_ln"))
    if scores is not None:
        scores.append(alignment_scores(h, cross, s.sub("cross_attn"), n_head))
    x = x + cross_attention(h, cross, s.sub("cross_attn"), n_head)
    x = x + mlp(layer_norm(x, s.sub("mlp_ln")), s.sub("mlp"))
    return s.record(x), cache


@seam
def logits(x: TensorValue, s: Scope) -> TensorValue:
    """Final LayerNorm, then logits through the tied token embedding: x @ E^T."""
    x = layer_norm(x, s.sub("ln"))
    # whisper: (x @ E.to(x.dtype).T).float(): a 16-bit matmul, its rounded result leaves as float32.
    # The table is stored in float32 (the embedding adds it unrounded), so a 16-bit graph casts it
    # per step: on the CPU that reads the 80 MB table twice, a cost only 16-bit pays.
    y = s.weight_product(x, "token_embedding.weight", int(s("token_embedding.weight").shape[0]))
    return s.record(cast(y, DType.float32), "logits")


def decoder(tokens: TensorValue, caches: list, crosses: list, s: Scope, n_head: int,
            ref, scores: list | None = None) -> tuple[TensorValue, list]:
    """openai-whisper's TextDecoder.forward with a kv_cache; `s` is scoped at "decoder.". The
    activations and caches are in the cross-attention keys' dtype (whisper: `x.to(xa.dtype)`)."""
    n_cache = caches[0][0].shape[1]
    mask = causal_mask(n_cache, tokens.shape[1], ref)
    x = token_embedding(tokens, n_cache, s, crosses[0][0].dtype)
    grown = []
    for i, (cache, cross) in enumerate(zip(caches, crosses)):
        x, cache = decoder_block(x, cache, cross, s.sub(f"blocks.{i}"), n_head, mask, scores)
        grown.append(cache)
    return logits(x, s), grown
