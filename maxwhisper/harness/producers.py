"""The producer contract: whatever the harness compares comes from a producer, in one form.

A producer takes named inputs and returns a `Trace`: {layer id: array} in execution order, plus `Ran`,
what it ran (which side, precision, device, numeric mode). `judge` consumes the triple (MAX, the
float64 reference, PyTorch in MAX's precision) and returns one `Comparison` per layer, which reports,
plots, `diff` and the tests read.

Producers: `max_encoder`, `max_decoder` (a `MaxWhisper`'s graphs), `max_layer` (a record's one-layer
graph), `torch_encoder`, `torch_decoder`, `torch_layer` (openai-whisper's modules: float64 the
reference, a precision name the yardstick), `golden` (a stored fixture's float64 arrays). `judge`
takes whole traces, `judge_layer` a one-layer trace.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from maxwhisper.harness.compare import Check, Comparison, compare, compare_traces
from maxwhisper.harness.registry import ENCODER_OUTPUT
from maxwhisper.harness.runners import torch_device
from maxwhisper.precision import mode, row

REFERENCE = "float64"


@dataclass(frozen=True)
class Ran:
    side: str     # "max" | "reference" (float64) | "yardstick" (PyTorch in MAX's precision) | "golden"
    dtype: str    # a precision name, or "float64"
    device: str
    mode: str     # MAX's numeric mode (precision.mode) or PyTorch's flags (reference.yardstick.describe)
    quantize: str | None = None  # the reference's: the quantized precision whose products it computes


@dataclass
class Trace:
    ran: Ran
    arrays: dict[str, np.ndarray]


def max_encoder(model, mel: np.ndarray, production: bool = True, layers: bool = True) -> Trace:
    """Every traced encoder activation (with `layers`), then (with `production`) `encoder`: the
    production graph's output (no trace outputs), which users run."""
    arrays = model.encode_trace(mel) if layers else {}
    if production:
        arrays[ENCODER_OUTPUT] = model.encode(mel)
    return Trace(Ran("max", model.dtype, model.device, mode(model.dtype, model.device, model.form.target)), arrays)


def max_decoder(model, tokens: np.ndarray, features: np.ndarray, prompt: int) -> Trace:
    """The MAX decoder teacher-forced on `tokens`: `prompt` tokens in one step, then one per step."""
    arrays = model.decoder.trace(tokens, features.astype(np.float32), prompt)
    return Trace(Ran("max", model.dtype, model.device, mode(model.dtype, model.device, model.form.target)), arrays)


def _torch_ran(dtype: str, device: str, quantize: str | None = None) -> Ran:
    from reference.yardstick import describe

    if dtype == REFERENCE:
        how = f", with {quantize}'s quantized products (reference.quantized)" if quantize else ""
        return Ran("reference", REFERENCE, "cpu", f"torch float64 (the reference){how}", quantize)
    return Ran("yardstick", dtype, device, describe(dtype, device))


def torch_encoder(dims, state_dict, mel: np.ndarray, dtype: str = REFERENCE, device: str = "cpu",
                  production: bool = True, layers: bool = True, quantize: str | None = None, sink=None) -> Trace:
    """openai-whisper's encoder on `mel`, every activation (with `layers`), and (with `production`)
    `encoder`: its ln_post again, for the production graph's row. `quantize` (the float64 reference
    only): the quantized precision whose products it computes, as MAX's run of it does. With `sink`,
    each activation goes to `sink(layer id, array)` as it is computed and the trace holds none
    (`judge_stream`)."""
    from reference.capture import reference_encode, reference_trace

    import torch

    args = (dims, state_dict, mel, torch.float64 if dtype == REFERENCE else dtype,
            "cpu" if dtype == REFERENCE else torch_device(device), _quantize(dtype, quantize))
    ran = _torch_ran(dtype, device, args[-1])
    if not layers:
        return Trace(ran, {ENCODER_OUTPUT: reference_encode(*args)} if production else {})
    if sink is not None:
        reference_trace(*args, sink=sink)
        return Trace(ran, {})
    arrays = reference_trace(*args)
    if production:
        arrays[ENCODER_OUTPUT] = arrays["encoder.ln_post"]
    return Trace(ran, arrays)


def _quantize(dtype: str, quantize: str | None) -> str | None:
    """What the float64 reference quantizes; a yardstick quantizes what its own precision does."""
    if quantize is not None and dtype != REFERENCE:
        raise ValueError(f"quantize={quantize!r} is the float64 reference's; the {dtype} yardstick follows its precision")
    return quantize


def torch_decoder(dims, state_dict, tokens: np.ndarray, features: np.ndarray, dtype: str = REFERENCE,
                  device: str = "cpu", quantize: str | None = None, per_part: bool = False) -> Trace:
    """openai-whisper's decoder over all of `tokens` at once (teacher forcing, no cache), every activation;
    `quantize` as `torch_encoder`'s; `per_part`: the float64 weights made one block at a time (a large model)."""
    from reference.capture import reference_decoder_trace

    if dtype == REFERENCE:
        q = _quantize(dtype, quantize)
        return Trace(_torch_ran(dtype, device, q),
                     reference_decoder_trace(dims, state_dict, tokens, features, quantize=q, per_part=per_part))
    _quantize(dtype, quantize)
    arrays = reference_decoder_trace(dims, state_dict, tokens, features.astype(np.float32), dtype, torch_device(device))
    return Trace(_torch_ran(dtype, device), arrays)


def max_layer(spec, dims, x, params, dtype: str = "float32", device: str = "cpu",
              emulate: str | None = None) -> Trace:
    """A record's one-layer MAX graph on inputs `x` (by name, or one array) with `params`: {record: output}."""
    from maxwhisper.harness.runners import run_max

    arrays = {spec.name: run_max(spec, dims, x, params, dtype, device, emulate)}
    return Trace(Ran("max", dtype, device, mode(dtype, device, emulate)), arrays)


def torch_layer(spec, dims, x, params, dtype: str = REFERENCE, device: str = "cpu",
                quantize: str | None = None) -> Trace:
    """openai-whisper's module for the record on the same inputs: float64, or the yardstick in `dtype`;
    `quantize` as `torch_encoder`'s."""
    from maxwhisper.harness.runners import run_reference

    if dtype == REFERENCE:
        q = _quantize(dtype, quantize)
        return Trace(_torch_ran(dtype, device, q), {spec.name: run_reference(spec, dims, x, params, quantize=q)})
    _quantize(dtype, quantize)
    arrays = {spec.name: run_reference(spec, dims, x, params, dtype, torch_device(device))}
    return Trace(_torch_ran(dtype, device), arrays)


ORDER = Ran("order", "float32", "cpu", "torch float32 on the CPU, every reduction summed in sequential order")


def order_layer(spec, dims, x, params) -> Trace:
    """The record's openai-whisper module in float32 with every reduction summed in plain sequential
    order (`reference.sequential`): the second yardstick, for a kernel whose summation order differs
    from PyTorch's."""
    from maxwhisper.harness.runners import run_reference
    from reference.sequential import SequentialOrder

    with SequentialOrder():
        return Trace(ORDER, {spec.name: run_reference(spec, dims, x, params, "float32")})


_ORDERED: dict = {}  # (dims, weights, mel) -> trace: a session judges the same few mels many ways
_KEEP = 4


def order_encoder(dims, state_dict, mel: np.ndarray, production: bool = True) -> Trace:
    """`torch_encoder` in float32 with every reduction in sequential order (`order_layer`); the
    slowest producer (~12 s for a 30 s window of tiny.en on 2 cores), so the last few are kept."""
    from maxwhisper.checkpoints import weights_hash
    from reference.sequential import SequentialOrder

    key = (repr(dims), weights_hash(state_dict), hashlib.sha256(np.ascontiguousarray(mel)).hexdigest(), production)
    if key not in _ORDERED:
        with SequentialOrder():
            arrays = torch_encoder(dims, state_dict, mel, "float32", production=production).arrays
        while len(_ORDERED) >= _KEEP:
            del _ORDERED[next(iter(_ORDERED))]
        _ORDERED[key] = Trace(ORDER, arrays)
    return _ORDERED[key]


def order_decoder(dims, state_dict, tokens: np.ndarray, features: np.ndarray) -> Trace:
    """`torch_decoder` in float32 with every reduction in sequential order (`order_layer`)."""
    from reference.sequential import SequentialOrder

    with SequentialOrder():
        return Trace(ORDER, torch_decoder(dims, state_dict, tokens, features, "float32").arrays)


def golden(layers: dict[str, np.ndarray], what: str) -> Trace:
    """A golden fixture's stored float64 reference activations (`what`: its path)."""
    return Trace(Ran("golden", REFERENCE, "cpu", f"stored float64 reference ({what})"), dict(layers))


def _triple(actual: Trace, reference: Trace, yardstick: Trace) -> None:
    if actual.ran.side != "max" or reference.ran.dtype != REFERENCE or yardstick.ran.side != "yardstick":
        raise ValueError(f"judge takes (MAX, float64, yardstick), got ({actual.ran}, {reference.ran}, {yardstick.ran})")
    if yardstick.ran.dtype != actual.ran.dtype:
        raise ValueError(f"the yardstick ran in {yardstick.ran.dtype}, MAX in {actual.ran.dtype}: not one precision")
    want = actual.ran.dtype if row(actual.ran.dtype).quantized else None
    if reference.ran.quantize != want:
        raise ValueError(f"MAX ran {actual.ran.dtype}, the float64 reference computed "
                         f"{reference.ran.quantize or 'no'} quantized products: pass quantize={want!r} to its producer")


def _order(actual: Trace, order: Trace | Callable[[], Trace] | None):
    """`order`'s arrays, or a function returning them when first asked (lazy), each checked to be the
    sequential-order float32 yardstick of a float32 MAX run."""
    def arrays(t: Trace) -> dict[str, np.ndarray]:
        if t.ran.side != "order" or actual.ran.dtype != "float32":
            raise ValueError(f"the sequential-order yardstick is float32's ({t.ran}); MAX ran in {actual.ran.dtype}")
        return t.arrays

    if order is None:
        return None
    return (lambda: arrays(order())) if callable(order) else arrays(order)


def judge(actual: Trace, reference: Trace, yardstick: Trace, check_of: Callable[[str], Check],
          input_of: Callable[[str], str | None] = lambda layer: None,
          until_first_failure: bool = False, order: Trace | Callable[[], Trace] | None = None) -> list[Comparison]:
    """One Comparison per layer of `actual` (MAX), against `reference` (float64), judged in units of
    `yardstick`'s own error (PyTorch in MAX's precision), or of `order`'s (`order_encoder`,
    `order_decoder`; float32 only) where that is larger: a trace, or a function that computes it only
    once a row fails against PyTorch's error alone (the slow producer, spared where it cannot change a
    verdict); with `until_first_failure`, up to the first failing layer (all a localization needs)."""
    _triple(actual, reference, yardstick)
    return compare_traces(actual.arrays, reference.arrays, check_of, yardstick.arrays, input_of, until_first_failure,
                          _order(actual, order))


def trace_bytes(dims, itemsize: int = 8) -> int:
    """The bytes of one window's encoder trace (every traced activation) at `itemsize` per value."""
    from maxwhisper.trace import encoder_trace

    def values(layer: str) -> int:  # conv1 runs at the mel's 3000 frames, the MLP 4x wide
        return (2 if layer.startswith("encoder.conv1") else 4 if layer.endswith((".mlp.0", ".mlp.1")) else 1) \
            * dims.n_audio_ctx * dims.n_audio_state

    return sum(values(t.id) for t in encoder_trace(dims.n_audio_layer)) * itemsize


def _carries(layer: str) -> bool:
    """A layer whose activation is the next block's input: what a stream holds on to."""
    parts = layer.split(".")
    return layer == "encoder.positional_embedding" or (len(parts) == 3 and parts[1] == "blocks")


def judge_stream(actual: Trace, reference: Callable[[Callable], Trace], yardstick: Trace,
                 check_of: Callable[[str], Check], input_of: Callable[[str], str | None] = lambda layer: None,
                 order: Callable[[], Trace] | None = None) -> tuple[list[Comparison], dict[str, np.ndarray]]:
    """`judge` with the float64 reference streamed: `reference(sink)` runs it (`torch_encoder(...,
    sink=sink)`), and each activation is judged as its hook records it, against MAX's and the
    yardstick's (each dropped once judged), so only one block of the float64 trace is held at once.
    The same rows, in the same order, as `judge` with a lazy `order`; and the reference's activations
    still held at the end (its last block's and `encoder.ln_post`)."""
    from maxwhisper.harness.compare import _failed

    rows, recent, lazy = [], {}, _order(actual, order)
    ordered = None

    def take(layer: str, expected: np.ndarray) -> None:
        nonlocal ordered
        recent[layer] = expected
        if layer not in actual.arrays:
            rows.append(_failed(layer, expected.shape, check_of(layer), "missing from the MAX trace"))
            return
        src = input_of(layer)
        args = (layer, actual.arrays.pop(layer), expected, check_of(layer), yardstick.arrays.pop(layer),
                recent[src] if src else None)
        rows.append(compare(*args, order=None if ordered is None else ordered[layer]))
        if not rows[-1].passed and ordered is None and lazy is not None and rows[-1].verdict is not None:
            ordered = lazy()  # as compare_traces: from here on every row also has the sequential order's unit
            rows[-1] = compare(*args, order=ordered[layer])
        if _carries(layer):
            for k in [k for k in recent if k != layer]:
                del recent[k]

    ran = reference(take).ran
    _triple(Trace(actual.ran, {}), Trace(ran, {}), yardstick)
    if ENCODER_OUTPUT in actual.arrays and "encoder.ln_post" in recent:  # the production graph's row
        take(ENCODER_OUTPUT, recent["encoder.ln_post"])
    for layer in list(actual.arrays):
        rows.append(_failed(layer, actual.arrays[layer].shape, check_of(layer), "missing from the reference trace"))
    return rows, recent


def judge_layer(actual: Trace, reference: Trace, yardstick: Trace, check: Check, x: np.ndarray | None = None,
                label: str | None = None, order: Trace | Callable[[], Trace] | None = None) -> Comparison:
    """`judge` for one-layer traces (`max_layer`, `torch_layer`): one Comparison, named `label`; `x` the
    record's input, for a record judged element by element; `order` (`order_layer`), where given,
    the second yardstick (float32 precisions only: it is float32 arithmetic)."""
    _triple(actual, reference, yardstick)
    (layer,) = actual.arrays
    args = (label or layer, actual.arrays[layer], reference.arrays[layer], check, yardstick.arrays[layer], x)
    order = _order(actual, order)
    if callable(order):  # computed only when PyTorch's error alone fails the layer (`judge`)
        c = compare(*args)
        return c if c.passed or c.verdict is None else compare(*args, order=order()[layer])
    return compare(*args, order=None if order is None else order[layer])
