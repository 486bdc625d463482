"""A quantized precision's products judged on MAX's own inputs, in the traced model.

Chained, a quantized model is judged coarsely: where MAX's float32 input to a quantized product differs
from the float64 reference's by rounding, an activation can land on the other side of a code's rounding
boundary, and that row's output moves by a code step (~1e-3 of its RMS in tiny.en on jfk.flac, against
~1e-7 for float32 rounding). PyTorch's float32 yardstick moves alike, so the chained rows pass, but a bug
below that noise passes too: one block's scale one float16 ulp off in every channel of
`encoder.blocks.1.mlp.0` left every chained ratio unchanged to two digits (docs/precision.md).
So each quantized product is judged again here on the input MAX itself traced: the reference (float64)
and the yardstick (PyTorch float32) quantize the same float32 values to the same codes, and the three
differ only in how they sum, as in the one-layer records (`registry.QUANTIZED_SPECS`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from maxwhisper.harness.compare import Check, Comparison, Tolerance, compare
from maxwhisper.layers import decoder_trace, encoder_trace
from maxwhisper.precision import Form

SUFFIX = " (on MAX's input)"
EXACT = " (bit for bit, on MAX's input)"
EXACTLY = Tolerance(0.0, 0.0)  # int8's check: MAX's output equals `int8.linear_np` of its input


def _weight(trace_id: str) -> str:
    return "decoder.token_embedding.weight" if trace_id == "decoder.logits" else trace_id + ".weight"


def products(dims, state_dict: Mapping[str, np.ndarray], form: Form) -> dict[str, str]:
    """Trace id of each quantized product's output -> the traced id of its input (its product's own input:
    the logits' is `decoder.ln`, which they take through the final LayerNorm)."""
    out = {}
    for t in encoder_trace(dims.n_audio_layer) + decoder_trace(dims.n_text_layer):
        key, source = _weight(t.id), "decoder.ln" if t.id == "decoder.logits" else t.input
        w = state_dict.get(key)
        if source is not None and w is not None and np.ndim(w) == 2 and form.quantizes(key):
            out[t.id] = source
    return out


def _product(x: np.ndarray, wq: np.ndarray, bias: np.ndarray | None, dtype, scheme: str = "q4_0") -> np.ndarray:
    """q(x) @ wq.T + bias in torch `dtype`: `wq` the dequantized weights, q the scheme's activation
    quantizer (`reference.quantized`)."""
    import torch

    from reference.quantized import products
    from reference.yardstick import ieee

    ieee()
    q = products(scheme).activations
    y = q(torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(dtype)) @ torch.from_numpy(wq).to(dtype).T
    if bias is not None:
        y = y + torch.from_numpy(np.asarray(bias, np.float32)).to(dtype)
    return y.numpy()


def judge_on_max_inputs(trace: Mapping[str, np.ndarray], dims, state_dict: Mapping[str, np.ndarray], form: Form,
                        check_of) -> dict[str, list[Comparison]]:
    """Output id -> its quantized product re-run on MAX's traced input: MAX's traced output against
    float64 of the same quantized arithmetic, in units of PyTorch float32's (`check_of(id)`'s rule); in
    int8 also against MAX's arithmetic done in numpy, which it must equal bit for bit."""
    import torch

    from reference.quantized import products as modes

    scheme, out = form.products, {}
    for layer, source in products(dims, state_dict, form).items():
        if layer not in trace or source not in trace:
            continue
        w, b = state_dict[_weight(layer)], state_dict.get(layer + ".bias")
        wq, x = modes(scheme).dequantize(w), trace[source]
        reference = _product(x, wq, b, torch.float64, scheme)
        yardstick = _product(x, wq, b, torch.float32, scheme)
        c: Check = check_of(layer)
        out[layer] = [compare(layer + SUFFIX, trace[layer], reference, Check(c.rule, None, c.dtype), yardstick)]
        if scheme == "int8":  # MAX's arithmetic is defined to the bit (`maxwhisper.int8`): equal, or a bug
            from maxwhisper.int8 import linear_np

            out[layer].append(compare(layer + EXACT, trace[layer], linear_np(x, w, b), Check(None, EXACTLY, c.dtype)))
    return out


def interleave(rows: list[Comparison], extra: Mapping[str, list[Comparison]]) -> list[Comparison]:
    """`rows` with each extra comparison right after the chained row of the same id."""
    out = []
    for c in rows:
        out.append(c)
        out += extra.get(c.layer, [])
    return out


CHAINED = " (chained through int8 codes: shown, not judged)"


def unjudged_after_codes(rows: list[Comparison], product_ids) -> list[Comparison]:
    """int8's chained rows from its first product on, shown with their figures but not judged: an input
    one ulp from a code's rounding boundary flips that code on one side only (MAX's or PyTorch's), so
    chained error past a product is which side each flip fell on, not arithmetic (tiny.en on jfk.flac:
    block 0's query 200x PyTorch's rms, two flipped rows in MAX and none in PyTorch). What is judged
    instead: every product on MAX's own input, by the rule and bit for bit (`judge_on_max_inputs`),
    the decoder's top-1 tokens and the transcript."""
    from dataclasses import replace

    out, past = [], False
    for c in rows:
        if c.layer in product_ids:
            past = True
        if past and not c.layer.endswith((SUFFIX, EXACT)):
            c = replace(c, layer=c.layer + CHAINED, passed=True, failed_by=[], verdict=None, guard_passed=None,
                        check=Check(None, None, c.check.dtype))
        out.append(c)
    return out
