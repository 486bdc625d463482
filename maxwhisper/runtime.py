"""Devices, sessions and compiled graphs.

A MAX compile costs 15-100 s cold on this project's CPUs and ~2 s warm (MAX keeps compiled graphs
on disk under ~/.cache/modular). Graphs here therefore have symbolic batch/time dimensions and
take weights either as `Weight`s bound at load time or as ordinary inputs, so one compiled graph
serves every input shape and every set of weight values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from max import driver, engine
from max.dtype import DType
from max.graph import DeviceRef, Graph, TensorType, TensorValue, Weight

from maxwhisper.layers import Scope


@functools.cache
def _session(device: str) -> tuple[engine.InferenceSession, DeviceRef]:
    if device == "cpu":
        dev = driver.CPU()
    elif device == "gpu" or device.startswith("gpu:"):
        if driver.accelerator_count() == 0:
            raise ValueError(f"device {device!r}: no MAX accelerator on this machine")
        dev = driver.Accelerator(int(device.partition(":")[2] or 0))
    else:
        raise ValueError(f"device {device!r}: expected 'cpu', 'gpu' or 'gpu:N'")
    # The host CPU is always in the session: weights are staged on it before moving to the device.
    devices = [dev] if device == "cpu" else [dev, driver.CPU()]
    return engine.InferenceSession(devices=devices), DeviceRef.from_device(dev)


def device_ref(device: str) -> DeviceRef:
    return _session(device)[1]


class Compiled:
    """A loaded MAX model called with numpy arrays and returning numpy arrays."""

    def __init__(self, graph: Graph, device: str, weights: Mapping[str, np.ndarray] | None = None,
                 output_names: Sequence[str] = ()):
        session = _session(device)[0]
        self.output_names = list(output_names)
        self.model = session.load(graph, weights_registry=dict(weights or {}))

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        buffers = [self.to_device(a) for a in arrays]
        return [o.to(driver.CPU()).to_numpy() for o in self.model.execute(*buffers)]

    def to_device(self, array: np.ndarray) -> driver.Buffer:
        return driver.Buffer.from_numpy(np.ascontiguousarray(array)).to(self.model.input_devices[0])

    def execute(self, *buffers: driver.Buffer) -> list[driver.Buffer]:
        """Run on device buffers and keep the outputs there (a decoder step feeds the next one)."""
        return self.model.execute(*buffers)


def weight_lookup(graph_weights: dict[str, Weight], shapes: Mapping[str, tuple[int, ...]],
                  ref: DeviceRef, dtype: DType = DType.float32) -> Callable[[str], TensorValue]:
    """Parameters as `Weight`s named by their state-dict key (bound by the weights registry)."""

    def lookup(name: str) -> TensorValue:
        if name not in graph_weights:
            if name not in shapes:
                raise KeyError(f"the graph asks for weight {name!r}, which the state dict lacks")
            graph_weights[name] = Weight(name, dtype, tuple(shapes[name]), ref)
        return graph_weights[name]

    return lookup


def functional_graph(name: str, fn: Callable[[dict[str, TensorValue], Scope], TensorValue | dict],
                     inputs: Mapping[str, Sequence], params: Mapping[str, tuple[int, ...]], ref: DeviceRef,
                     dtype: DType = DType.float32, bind: bool = False,
                     input_dtypes: Mapping[str, DType] | None = None) -> tuple[Graph, list[str]]:
    """A one-layer graph: the named activations `inputs` (name -> shape; a str entry is a symbolic
    dim, shared by name between inputs) come first, in order.

    Parameters are further inputs, in `params` order, so new random weights need no recompile;
    with `bind` they are `Weight`s named by their key instead, bound once at load time from the
    weights registry, as the encoder's are (what a benchmark of one layer should time).
    `fn` may return one value, or a dict of named values when the caller wants a trace.
    `input_dtypes` overrides `dtype` for named inputs (token ids are int64 in every precision).
    """
    types = [TensorType((input_dtypes or {}).get(n, dtype), list(shape), ref) for n, shape in inputs.items()]
    if not bind:
        types += [TensorType(dtype, list(shape), ref) for shape in params.values()]
    with Graph(name, input_types=types) as g:
        xs = dict(zip(inputs, (v.tensor for v in g.inputs[:len(inputs)])))
        if bind:
            lookup = weight_lookup({}, params, ref, dtype)
        else:
            lookup = dict(zip(params, (v.tensor for v in g.inputs[len(inputs):]))).__getitem__
        out = fn(xs, Scope(lookup))
        names = list(out) if isinstance(out, dict) else [name]
        g.output(*(out.values() if isinstance(out, dict) else [out]))
    return g, names
