"""Devices, sessions and compiled graphs.

A MAX compile costs 15-100 s cold on this project's CPUs and ~2 s warm (MAX keeps compiled graphs
on disk under ~/.cache/modular). Graphs here therefore have symbolic batch/time dimensions and
take weights either as `Weight`s bound at load time or as ordinary inputs, so one compiled graph
serves every input shape and every set of weight values.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from max import driver, engine
from max.dtype import DType
from max.graph import DeviceRef, Graph, Module, TensorType, TensorValue, Weight

from maxwhisper import artifacts, int8
from maxwhisper.device import parse_device
from maxwhisper.layers import Scope, cast
from maxwhisper.precision import quantized_dtype


@functools.cache
def _session(device: str) -> tuple[engine.InferenceSession, DeviceRef]:
    d = parse_device(device)
    if d.kind == "cpu":
        dev = driver.CPU()
    else:
        if driver.accelerator_count() == 0:
            raise ValueError(f"device {device!r}: no MAX accelerator on this machine")
        dev = driver.Accelerator(d.index)
    # The host CPU is always in the session: weights are staged on it before moving to the device.
    devices = [dev] if d.kind == "cpu" else [dev, driver.CPU()]
    return engine.InferenceSession(devices=devices), DeviceRef.from_device(dev)


def device_ref(device: str) -> DeviceRef:
    """MAX's reference to `device`, or a ValueError in the caller's spelling of it."""
    d = parse_device(device)
    if d.kind != "cpu" and driver.accelerator_count() == 0:
        raise ValueError(f"device {device!r}: no MAX accelerator on this machine")
    return _session(d.name)[1]


def weight_data(a: np.ndarray, dtype: DType):
    """A float32 array as the weights registry takes it in `dtype`, rounded to nearest even as
    torch's `.to(dtype)` rounds. numpy has no bfloat16: its bits go in as uint16, viewed by MAX."""
    if dtype == DType.float32:
        return a
    packed = {DType.uint8: np.uint8, DType.int8: np.int8, DType.int32: np.int32}  # GGUF blocks, int8 codes and sums
    if dtype in packed:  # already packed (`maxwhisper.quant`, `maxwhisper.int8`)
        if np.asarray(a).dtype != packed[dtype]:
            raise ValueError(f"weights in {dtype} are packed quantized weights: expected a {np.dtype(packed[dtype])} "
                             f"array, got {np.asarray(a).dtype}")
        return np.ascontiguousarray(a)
    if dtype == DType.float16:
        return np.ascontiguousarray(a, np.float16)
    if dtype == DType.bfloat16:
        u = np.ascontiguousarray(a, np.float32).view(np.uint32)
        bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # finite weights only
        return driver.Buffer.from_numpy(bits).view(DType.bfloat16)
    raise ValueError(f"weights in {dtype}: expected float32, bfloat16, float16, or uint8/int8/int32 (quantized)")


def host_float32(buffer: driver.Buffer) -> np.ndarray:
    """A float buffer on any device as a float32 numpy array (bfloat16 widened exactly: numpy has
    no bfloat16, so its bits are read as uint16 and shifted into float32's upper half)."""
    buffer = buffer.to(driver.CPU())
    if buffer.dtype == DType.bfloat16:
        return (buffer.view(DType.uint16).to_numpy().astype(np.uint32) << 16).view(np.float32)
    return buffer.to_numpy().astype(np.float32, copy=False)


def host_raw(buffer: driver.Buffer) -> np.ndarray:
    """A buffer's data on the host as numpy holds it without rounding (bfloat16 as its uint16 bits),
    to be rearranged and sent back with `device_buffer(..., buffer.dtype)`."""
    buffer = buffer.to(driver.CPU())
    return buffer.view(DType.uint16).to_numpy() if buffer.dtype == DType.bfloat16 else buffer.to_numpy()


def device_buffer(array: np.ndarray, dtype: DType, device: driver.Device) -> driver.Buffer:
    """`array` (float32 values, or `host_raw`'s bits of a bfloat16 buffer) as a `dtype` buffer on `device`."""
    if dtype == DType.bfloat16 and array.dtype == np.uint16:
        data = driver.Buffer.from_numpy(np.ascontiguousarray(array)).view(DType.bfloat16)
    else:
        data = weight_data(np.asarray(array), dtype)
        data = data if isinstance(data, driver.Buffer) else driver.Buffer.from_numpy(np.ascontiguousarray(data))
    return data.to(device)


def log_load(graph: Graph, device: str, seconds: float, key: str) -> None:
    """Append one line per loaded graph to $MAXWHISPER_GRAPH_LOG: the GPU run's budget counts graphs
    from a run (each is a cold compile on a fresh machine), not from a list kept by hand. `key` tells
    apart graphs of one name (the encoder and its trace)."""
    path = os.environ.get("MAXWHISPER_GRAPH_LOG")
    if path:
        line = dict(graph=graph.name, key=key, device=device, load_s=round(seconds, 3), pid=os.getpid(),
                    shard=os.environ.get("MAXWHISPER_SHARD", ""), t=round(time.time(), 3),
                    test=os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0])
        with open(path, "a") as f:  # one short write per line: shards append to the same file safely
            f.write(json.dumps(line) + "\n")


_USED: set[tuple[str, str]] = set()


def log_use(graph_name: str, key: str) -> None:
    """Append one line to $MAXWHISPER_GRAPH_USES the first time each test runs a graph: a test that
    reuses a graph another test loaded must share that test's shard (`maxwhisper.harness.shards`)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    if (key, test) not in _USED:
        _USED.add((key, test))
        with open(os.environ["MAXWHISPER_GRAPH_USES"], "a") as f:
            f.write(json.dumps(dict(graph=graph_name, key=key, test=test)) + "\n")


def _registry(weights: Mapping[str, np.ndarray] | None, kinds: Mapping[str, DType] | None) -> dict:
    default = lambda k: quantized_dtype(k) or DType.float32  # noqa: E731
    return {k: weight_data(v, (kinds or {}).get(k, default(k))) for k, v in (weights or {}).items()}


def unit(quantizer) -> Module | None:
    """The compile unit for a set of graphs: one `Module`, or None (each alone) for int8's, whose custom op
    MAX 26.7 does not compile inside a Module ("'mo.custom' op currently not supported")."""
    return None if getattr(quantizer, "scheme", None) == "int8" else Module()


class Compiled:
    """A loaded MAX model called with numpy arrays and returning numpy arrays.

    `weights` are float32 arrays; `weight_dtypes` (key -> dtype, float32 where absent) says which
    the graph declares in another dtype, so the registry gets them as the graph stores them."""

    def __init__(self, graph: Graph, device: str, weights: Mapping[str, np.ndarray] | None = None,
                 output_names: Sequence[str] = (), weight_dtypes: Mapping[str, DType] | None = None):
        session = _session(parse_device(device).name)[0]
        t0 = time.perf_counter()
        model = session.init(artifacts.compiled(session, graph), weights_registry=_registry(weights, weight_dtypes))
        self._bind(model, graph, output_names, device, time.perf_counter() - t0)

    @classmethod
    def together(cls, graphs: Sequence[tuple[Graph, Sequence[str]]], module: Module | None, device: str,
                 weights: Mapping[str, np.ndarray], weight_dtypes: Mapping[str, DType] | None = None) -> list[Compiled]:
        """Graphs built into one `Module` (each with its output names), compiled as one unit: MAX
        compiles the kernels they share once (the saving, measured: docs/architecture.md) and caches
        the unit as one entry. `module` None (`unit`): each graph compiled on its own."""
        if module is None:
            return [cls(g, device, weights, names, weight_dtypes) for g, names in graphs]
        session = _session(parse_device(device).name)[0]
        t0 = time.perf_counter()
        models = session.load_all(module, weights_registry=_registry(weights, weight_dtypes))
        seconds = time.perf_counter() - t0
        out = []
        for i, (graph, names) in enumerate(graphs):
            c = cls.__new__(cls)
            c._bind(models[graph.name], graph, names, device, seconds if i == 0 else 0.0)  # the unit's, once
            out.append(c)
        return out

    def _bind(self, model, graph: Graph, output_names: Sequence[str], device: str, seconds: float) -> None:
        self.model, self.output_names, self._use = model, list(output_names), None
        if os.environ.get("MAXWHISPER_GRAPH_LOG") or os.environ.get("MAXWHISPER_GRAPH_USES"):
            # once: a second str(graph) of a loaded graph differs from the first
            key = hashlib.sha256(str(graph).encode()).hexdigest()[:12]
            log_load(graph, device, seconds, key)
            self._use = (graph.name, key) if os.environ.get("MAXWHISPER_GRAPH_USES") else None

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        if self._use:
            log_use(*self._use)
        buffers = [self.to_device(a) for a in arrays]
        return [o.to(driver.CPU()).to_numpy() for o in self.model.execute(*buffers)]

    def to_device(self, array: np.ndarray) -> driver.Buffer:
        return driver.Buffer.from_numpy(np.ascontiguousarray(array)).to(self.model.input_devices[0])

    def execute(self, *buffers: driver.Buffer) -> list[driver.Buffer]:
        """Run on device buffers and keep the outputs there (a decoder step feeds the next one)."""
        if self._use:
            log_use(*self._use)
        return self.model.execute(*buffers)


def weight_lookup(graph_weights: dict[str, Weight], shapes: Mapping[str, tuple[int, ...]],
                  ref: DeviceRef, dtype: DType | Callable[[str], DType] = DType.float32) -> Callable[[str], TensorValue]:
    """Parameters as `Weight`s named by their state-dict key (bound by the weights registry), in
    `dtype`, or in `dtype(key)` per key (the precision policy's storage dtype)."""

    def lookup(name: str) -> TensorValue:
        if name not in graph_weights:
            if name not in shapes:
                raise KeyError(f"the graph asks for weight {name!r}, which the state dict lacks")
            kind = dtype(name) if callable(dtype) else dtype
            graph_weights[name] = Weight(name, kind, tuple(shapes[name]), ref)
        return graph_weights[name]

    return lookup


def functional_graph(name: str, fn: Callable[[dict[str, TensorValue], Scope], TensorValue | dict],
                     inputs: Mapping[str, Sequence], params: Mapping[str, tuple[int, ...]], ref: DeviceRef,
                     dtype: DType = DType.float32, bind: bool = False,
                     input_dtypes: Mapping[str, DType] | None = None,
                     product: Callable | None = None, quantizes: Callable[[str], bool] | None = None) -> tuple[Graph, list[str]]:
    """A one-layer graph: the named activations `inputs` (name -> shape; a str entry is a symbolic
    dim, shared by name between inputs) come first, in order.

    Parameters are further inputs, in `params` order, so new random weights need no recompile;
    with `bind` they are `Weight`s named by their key instead, bound once at load time from the
    weights registry, as the encoder's are (what a benchmark of one layer should time).
    `fn` may return one value, or a dict of named values when the caller wants a trace.
    Every float input, parameter and output is float32 whatever `dtype`: the graph rounds the
    activations to `dtype` on entry, the layers cast each parameter where the precision policy uses
    it (a float32 LayerNorm gain is never rounded), and the outputs leave as float32. Rounding in the
    graph is round-to-nearest-even, as torch's `.to(dtype)`. `input_dtypes` names inputs of another
    type, which enter as they are (token ids are int64 in every precision). `product` is the
    precision's form of a matmul (`tf32.products`; a plain matmul by default), `quantizes` which weights
    it multiplies quantized, whose packed weights are parameters of their own (`precision.quantized_dtype`).
    """
    f32, kinds = DType.float32, dict(input_dtypes or {})
    types = [TensorType(kinds.get(n, f32), list(shape), ref) for n, shape in inputs.items()]
    if not bind:
        types += [TensorType(quantized_dtype(k) or f32, list(shape), ref)
                  for k, shape in params.items()]
    with Graph(name, input_types=types, custom_extensions=int8.extensions(quantizes)) as g:
        xs = {k: v.tensor if k in kinds else cast(v.tensor, dtype) for k, v in zip(inputs, g.inputs[:len(inputs)])}
        if bind:
            lookup = weight_lookup({}, params, ref, lambda k: quantized_dtype(k) or f32)
        else:
            lookup = dict(zip(params, (v.tensor for v in g.inputs[len(inputs):]))).__getitem__
        out = fn(xs, Scope(lookup, product=product, quantizes=quantizes))
        out = {k: cast(v, f32) for k, v in out.items()} if isinstance(out, dict) else {name: cast(out, f32)}
        g.output(*out.values())
    return g, list(out)
