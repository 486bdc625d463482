"""The mutation catalog: bugs injected into the MAX encoder while `model.emit_encoder` builds it, and
into the decoder while its graphs are built, each through a named seam (`maxwhisper.seams`: nothing is
patched), each with the layer id where the harness must first catch it.

The first eight are gross bugs the public MAX Whisper attempt shipped or could have shipped. The
rest are near-threshold: their effect is only a few to a few hundred times float32 noise, the bugs
a precision regression or a plausible typo makes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import numpy as np
from max.dtype import DType
from max.graph import ops

from maxwhisper import layers, seams
from maxwhisper.decoder import DecoderState
from maxwhisper.runtime import host_raw
from maxwhisper.tf32 import tf32_product

def assert_caught_at(comparisons, bug: str, where: str | None, record_parity, model: str = "encoder") -> None:
    """The first failing comparison is at `where` (none for the clean build); recorded with its margin."""
    from maxwhisper.harness.compare import first_failure

    first = first_failure(comparisons)
    if where is None:
        assert first is None, f"the unmutated {model} fails:\n{first.report()}"
        return
    assert first is not None, f"bug {bug!r} passed every parity check"
    assert first.layer == where, f"bug {bug!r} first caught at {first.layer}, expected {where}:\n{first.report()}"
    assert all(c.passed for c in comparisons[: comparisons.index(first)])
    first.layer = f"mutant {bug}: {first.layer}"  # the report shows each mutant's margin (its ratios)
    record_parity(first)


def _patch(name: str, make: Callable[[Callable], Callable]) -> Callable[[], contextlib.AbstractContextManager]:
    """A bug that replaces seam `layers.<name>` with `make(original)` while a graph is being built."""
    return lambda: seams.inject(f"layers.{name}", make)


def _gelu_variant(approximate: str | None = "tanh", only: str | None = None, relu: bool = False):
    """gelu replaced everywhere, or only in the scope `only` (e.g. one block's MLP)."""
    def make(gelu):
        def buggy(x, s=None):
            if only is not None and (s is None or s.prefix != only):
                return gelu(x, s)
            y = ops.relu(x) if relu else ops.gelu(x, approximate=approximate)
            return s.record(y) if s is not None else y
        return buggy
    return make


def _scaled_twice(qkv_attention):
    def buggy(q, k, v, n_head):  # head_dim**-0.5 on q AND on k (Whisper puts head_dim**-0.25 on each)
        head_dim = int(q.shape[2]) // n_head
        return qkv_attention(q * head_dim**-0.5, k * head_dim**-0.5, v, n_head)
    return buggy


def _scale_off_1pct(qkv_attention):
    return lambda q, k, v, n_head, *mask: qkv_attention(q * 1.01, k, v, n_head, *mask)


def _softmax_wrong_axis(q, k, v, n_head):
    # normalizes over the queries (axis -2) instead of the keys
    batch, n_ctx, n_state = q.shape
    d = int(n_state) // n_head

    def heads(t):
        return ops.permute(ops.reshape(t, [batch, n_ctx, n_head, d]), [0, 2, 1, 3])

    scores = heads(q) @ ops.permute(heads(k), [0, 1, 3, 2])
    # as a transposed softmax: MAX 26.7's softmax with axis=-2 fails to compile on the CPU
    flip = lambda t: ops.permute(t, [0, 1, 3, 2])  # noqa: E731
    wv = flip(ops.softmax(flip(scores * (d**-0.5)))) @ heads(v)
    return ops.reshape(ops.permute(wv, [0, 2, 1, 3]), [batch, n_ctx, n_state])


def _linear_where(prefix: str, change: Callable):
    def make(linear):
        def buggy(x, s, bias=True):
            return change(linear, x, s, bias) if s.prefix == prefix else linear(x, s, bias)
        return buggy
    return make


def _key_bias(linear, x, s, bias):
    y = linear(x, s, bias)
    return y + ops.constant(0.1, DType.float32, y.device)  # a bias the key must not have


def _bf16_operands(linear, x, s, bias):
    # a float32 model with one matmul whose operands were rounded to bfloat16 (a dtype slip)
    round16 = lambda t: ops.cast(ops.cast(t, DType.bfloat16), DType.float32)  # noqa: E731
    y = round16(x) @ ops.transpose(round16(s("weight")), 0, 1)
    return y + s("bias") if bias else y


def _tf32_operands(linear, x, s, bias):
    # a float32 model with one matmul in TF32: what MAX's float32 matmul is on an NVIDIA GPU (a TF32 leak)
    return linear(x, layers.Scope(s.lookup, s.prefix, s.trace, lambda a, b, kind: tf32_product(a, b)), bias)


def _conv2_stride1_wrong_offset(conv1d):
    def buggy(x, s, stride=1):
        if stride == 1:
            return conv1d(x, s, stride)
        return conv1d(x, s, 1)[:, 1::2, :]  # stride 2 keeps frames 0, 2, 4, ...; this keeps 1, 3, 5, ...
    return buggy


def _scope_patch(change: Callable[[str, object], object]):
    """A bug in how parameters are read: `change(name, value)` for every parameter lookup."""
    return _patch("Scope.__call__", lambda original: lambda self, name: change(self.prefix + name, original(self, name)))


def _pos_shift(name, value):  # frame t gets position t + 1
    if name == "encoder.positional_embedding":
        return ops.concat([value[1:, :], value[:1, :]], axis=0)
    return value


def _transposed(weight: str):
    return lambda name, value: ops.transpose(value, 0, 1) if name == weight else value


def _eps(eps: float):
    return lambda layer_norm: lambda x, s, _=None: layer_norm(x, s, eps)


def _no_ln_post(layer_norm):
    def buggy(x, s):
        return s.record(x) if s.prefix == "encoder.ln_post." else layer_norm(x, s)
    return buggy


B = "encoder.blocks"
# bug -> (how it is injected, the layer id where it must be caught first)
BUGS = {
    "clean": (contextlib.nullcontext, None),
    "gelu_tanh": (_patch("gelu", _gelu_variant("tanh")), "encoder.conv1.gelu"),
    "relu_for_gelu": (_patch("gelu", _gelu_variant(relu=True)), "encoder.conv1.gelu"),
    "no_ln_post": (_patch("layer_norm", _no_ln_post), "encoder.ln_post"),
    "layer_norm_eps_1e-3": (_patch("layer_norm", _eps(1e-3)), f"{B}.0.attn_ln"),
    "attn_scale_on_q_and_k": (_patch("qkv_attention", _scaled_twice), f"{B}.0.attn"),
    "nonzero_key_bias": (_patch("linear", _linear_where(f"{B}.0.attn.key.", _key_bias)), f"{B}.0.attn.key"),
    "conv2_stride1_wrong_offset": (_patch("conv1d", _conv2_stride1_wrong_offset), "encoder.conv2"),
    "positional_embedding_shift": (_scope_patch(_pos_shift), "encoder.positional_embedding"),
    # near-threshold
    "layer_norm_eps_1e-6": (_patch("layer_norm", _eps(1e-6)), f"{B}.0.attn_ln"),
    "gelu_tanh_block0_mlp": (_patch("gelu", _gelu_variant("tanh", f"{B}.0.mlp.1.")), f"{B}.0.mlp.1"),
    "gelu_tanh_block3_mlp": (_patch("gelu", _gelu_variant("tanh", f"{B}.3.mlp.1.")), f"{B}.3.mlp.1"),
    "bf16_operands_block1_mlp0": (_patch("linear", _linear_where(f"{B}.1.mlp.0.", _bf16_operands)), f"{B}.1.mlp.0"),
    "tf32_operands_block1_mlp0": (_patch("linear", _linear_where(f"{B}.1.mlp.0.", _tf32_operands)), f"{B}.1.mlp.0"),
    "attn_scale_off_1pct": (_patch("qkv_attention", _scale_off_1pct), f"{B}.0.attn"),
    "softmax_wrong_axis": (_patch("qkv_attention", lambda f: _softmax_wrong_axis), f"{B}.0.attn"),
    "transposed_query_weight_block2": (_scope_patch(_transposed(f"{B}.2.attn.query.weight")), f"{B}.2.attn.query"),
}
NEAR_THRESHOLD = list(BUGS)[9:]


# --- the decoder: bugs injected while `maxwhisper.decoder` builds its graphs --------------------------

def _mask_off_by_one(causal_mask):
    def buggy(n_cache, n_tok, ref):  # query i also sees key i + 1
        start = ops.reshape(ops.shape_to_tensor([n_cache]), [])
        stop = ops.reshape(ops.shape_to_tensor([n_cache + n_tok]), [])
        q = ops.range(start, stop, 1, out_dim=n_tok, dtype=DType.int64, device=ref)
        k = ops.range(0, stop, 1, out_dim=n_cache + n_tok, dtype=DType.int64, device=ref)
        future = ops.unsqueeze(k, 0) > ops.unsqueeze(q, 1) + 1
        return ops.where(future, ops.constant(float("-inf"), DType.float32, ref), ops.constant(0.0, DType.float32, ref))
    return buggy


def _no_mask(causal_mask):
    return lambda n_cache, n_tok, ref: ops.constant(0.0, DType.float32, ref)  # every token sees every token


def _cache_not_appended(cached_attention):
    def buggy(x, cache, s, n_head, mask):  # each step attends to its own tokens only; the cache still grows
        q = s.record(layers.linear(x, s.sub("query")), "query")
        k = s.record(layers.linear(x, s.sub("key"), bias=False), "key")
        v = s.record(layers.linear(x, s.sub("value")), "value")
        own = layers.causal_mask(0, x.shape[1], x.device)
        out = s.record(layers.linear(layers.qkv_attention(q, k, v, n_head, own), s.sub("out")))
        return out, (ops.concat([cache[0], k], axis=1), ops.concat([cache[1], v], axis=1))
    return buggy


def _positions_not_offset(token_embedding):
    return lambda tokens, n_cache, s, *dtype: token_embedding(tokens, 0, s, *dtype)


def _cross_key_bias(linear):
    def buggy(x, s, bias=True):
        y = linear(x, s, bias)
        return y + ops.constant(0.1, DType.float32, y.device) if s.prefix.endswith("cross_attn.key.") else y
    return buggy


def _untied_logits(logits):
    def buggy(x, s):  # the embedding reshaped, not transposed, into (n_state, n_vocab)
        x = layers.layer_norm(x, s.sub("ln"))
        e = s("token_embedding.weight")
        return s.record(x @ ops.reshape(e, [e.shape[1], e.shape[0]]), "logits")
    return buggy


def _no_final_ln(logits):
    def buggy(x, s):
        x = s.sub("ln").record(x)
        return s.record(x @ ops.transpose(s("token_embedding.weight"), 0, 1), "logits")
    return buggy


D = "decoder.blocks"
DECODER_BUGS = {
    "clean": (contextlib.nullcontext, None),
    "causal_mask_off_by_one": (_patch("causal_mask", _mask_off_by_one), f"{D}.0.attn"),
    "no_causal_mask": (_patch("causal_mask", _no_mask), f"{D}.0.attn"),
    "cache_not_appended": (_patch("cached_attention", _cache_not_appended), f"{D}.0.attn"),
    "positions_not_offset_by_cache": (_patch("token_embedding", _positions_not_offset), "decoder.positional_embedding"),
    "cross_attention_key_bias": (_patch("linear", _cross_key_bias), f"{D}.0.cross_attn.key"),
    "untied_logits_wrong_way_round": (_patch("logits", _untied_logits), "decoder.logits"),
    "no_layer_norm_before_logits": (_patch("logits", _no_final_ln), "decoder.ln"),
    # near-threshold: the encoder's near-threshold bugs, in the decoder
    "layer_norm_eps_1e-6": (_patch("layer_norm", _eps(1e-6)), f"{D}.0.attn_ln"),
    "gelu_tanh_block2_mlp": (_patch("gelu", _gelu_variant("tanh", f"{D}.2.mlp.1.")), f"{D}.2.mlp.1"),
    "attn_scale_off_1pct": (_patch("qkv_attention", _scale_off_1pct), f"{D}.0.attn"),
}


# --- the runtime: bugs between graph calls, each caught by a check of `runtime_checks` ---------------

def _cross_tiled(start):
    def buggy(self, features, group=1):  # K/V rows beam-major (np.tile) where the tokens are audio-major
        kv = start(self, features, 1).cross
        return DecoderState(self, [self.buffer(np.tile(host_raw(b), (group, 1, 1))) for b in kv], len(features) * group)
    return buggy


def _cross_reused(start):
    first: dict = {}

    def buggy(self, features, group=1):  # "computed once": the first window's K/V serve every later window
        key = (np.shape(features), group)
        if key not in first:
            first[key] = start(self, features, group).cross
        return DecoderState(self, first[key], len(features) * group)
    return buggy


def _seam(name: str, make: Callable[[Callable], Callable]):
    return lambda: seams.inject(name, make)


def injected(spec, inject: Callable):
    """Record `spec` whose graph is built under `inject()` (a context, as `_seam` makes one): a mutant
    that can share a graph with others (`harness.runners.Records`)."""
    def build(x, s, d):
        with inject():
            return spec.build(x, s, d)
    return dataclasses.replace(spec, build=build)


# bug -> (how it is injected, the check of runtime_checks that must fail, what its message must name)
RUNTIME_BUGS = {
    "cross_kv_tiled_not_repeated": (_seam("decoder.MaxDecoder.start", _cross_tiled), "reorder_rows", r"row 1 \(audio 0"),
    "reorder_ignored": (_seam("decoder.DecoderState.reorder", lambda f: lambda self, source: None), "reorder_rows",
                        r"row 0 \(audio 0, beam 0, from row 2\)"),
    "cross_kv_reused_across_windows": (_seam("decoder.MaxDecoder.start", _cross_reused), "windows_own_cross_attention",
                                       "window 1"),
    "batch_results_reversed": (_seam("batch.deliver", lambda f: lambda chunk, results: f(chunk, list(results)[::-1])),
                               "batch_results_in_order", r"file \d: batched"),
    "finished_rows_drop_their_neighbours": (  # greedy batches drop finished rows (`inference.MaxInference`)
        _seam("decoder.DecoderState.keep", lambda f: lambda self, rows: f(self, sorted({(int(r) + 1) % self.batch for r in rows}))),
        "batch_results_in_order", r"file \d: batched"),
    "encoder_batch_rows_rolled": (_seam("model.MaxWhisper.encode", lambda f: lambda self, mel: np.roll(f(self, mel), 1, 0)),
                                  "encoder_rows", "encoder row 0"),
}


def _encoder_stale(encode):
    first: dict = {}

    def buggy(self, mel):  # "computed once": the first window's features serve every later window
        return first.setdefault(np.shape(mel), encode(self, mel))
    return buggy


# An encoder output reused across windows: only a check that judges every window can see it
# (`test_verify_long.py`, `maxwhisper verify` on a long-form group).
STALE_ENCODER = _seam("model.MaxWhisper.encode", _encoder_stale)


def _heads_rolled(scores):
    def buggy(x, kv, s, n_head):  # head h reported as head h + 1: the alignment reads other heads
        y = scores(x, kv, s, n_head)
        return ops.concat([y[:, 1:], y[:, :1]], axis=1)
    return buggy


# Word-alignment bugs (`test_word_timestamps.py`): each must fail the `alignment_scores` record.
ALIGNMENT_BUGS = {
    "scores_after_softmax": _seam("layers.alignment_scores", lambda f: lambda x, kv, s, n: ops.softmax(f(x, kv, s, n))),
    "heads_rolled": _seam("layers.alignment_scores", _heads_rolled),
}
