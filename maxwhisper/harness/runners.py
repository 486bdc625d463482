"""The two producers of every comparison: a record's MAX graph and its PyTorch reference.

Runners only produce arrays; `compare` judges them (Polygraphy's split), so a new device or dtype
is a new argument here, not new test code. Inputs are given by the record's input names, or as one
array for a single-input record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple

import numpy as np
import torch
from max import driver
from max.dtype import DType
from whisper.model import ModelDimensions

from maxwhisper.device import parse_device
from maxwhisper.harness.registry import QUANTIZED_SPECS, SPECS, LayerSpec
from maxwhisper.layers import Scope
from maxwhisper.precision import QUANT_KEY, Form, dtype_of, form, quantized_dtype, row
from maxwhisper.quant import BLOCK, BLOCK_BYTES, eligible, padded_rows, with_quantized
from maxwhisper.runtime import Compiled, device_ref, functional_graph
from maxwhisper.tf32 import products
from reference import modules as ref
from reference.yardstick import setup


def _arrays(spec: LayerSpec, x) -> list[np.ndarray]:
    """The record's inputs in declaration order, from a mapping by name or one array."""
    names = [i.name for i in spec.inputs]
    if not isinstance(x, Mapping):
        if len(names) != 1:
            raise ValueError(f"{spec.name} takes inputs {names}: pass them by name")
        x = {names[0]: x}
    if sorted(x) != sorted(names):
        raise ValueError(f"{spec.name} takes inputs {names}, got {sorted(x)}")
    return [np.asarray(x[n]) for n in names]


def _input_dtypes(spec: LayerSpec) -> dict[str, DType]:
    return {n: DType.int64 for n, t in spec.input_dtypes().items() if t == "int64"}


def param_shapes(spec: LayerSpec, dims: ModelDimensions, f: Form) -> dict[str, tuple[int, ...]]:
    """The record's parameters in graph order: its state dict's, then, in a quantized form, the Q4_0
    blocks of each weight the form quantizes (uint8, `precision.QUANT_KEY`)."""
    shapes = spec.param_shapes(dims)
    if not f.quantized:
        return shapes
    if f.products == "int8":
        from maxwhisper import int8

        return {**shapes, **{q: v for k, s in shapes.items() if int8.eligible(k, s) and f.quantizes(k)
                             for q, v in int8.param_shapes(k, s).items()}}
    blocks = {k + QUANT_KEY: (padded_rows(s[0]), s[1] // BLOCK * BLOCK_BYTES) for k, s in shapes.items()
              if eligible(k, s) and f.quantizes(k)}
    return {**shapes, **blocks}


def param_values(spec: LayerSpec, dims: ModelDimensions, f: Form, params: Mapping[str, np.ndarray]) -> dict:
    """`params` in `param_shapes` order, with the Q4_0 blocks a quantized form needs made from them."""
    values = {k: np.asarray(params[k]) for k in spec.param_shapes(dims)}
    return with_quantized(values, f.quantizer)


_COMPILED: dict[tuple, tuple[LayerSpec, Compiled]] = {}


def compile_layer(spec: LayerSpec, dims: ModelDimensions, dtype: str = "float32", device: str = "cpu",
                  emulate: str | None = None) -> Compiled:
    """The record's one-layer graph (weights as inputs), compiled once per (record, dims, precision form):
    the record given, which need not be the registry's."""
    key = (id(spec), astuple(dims), dtype, device, emulate)
    if key not in _COMPILED:  # the record is kept beside its graph, so its id is not reused
        f = form(dtype, device, emulate)
        graph, _ = functional_graph(spec.name + f.suffix, lambda x, s: spec.build(x, s, dims), spec.input_shapes(dims),
                                    param_shapes(spec, dims, f), device_ref(device), dtype_of(dtype),
                                    input_dtypes=_input_dtypes(spec), product=products(f), quantizes=f.quantizer)
        _COMPILED[key] = (spec, Compiled(graph, device))
    return _COMPILED[key][1]


class Records:
    """Several records in one graph: by default every registry record but the encoder, one graph per
    (dims, precision, device). Each record (keyed by name: a mutant may share its record's `name`) has
    its own inputs, parameters, symbolic dims and output, so running one runs it exactly as its graph
    alone would (no value crosses between records). A cold compile of many layers costs little more
    than of one (docs/testing.md), and the suite's cold time is mostly compiles. The records not asked
    for run on zeros one row long, staged once."""

    def __init__(self, dims: ModelDimensions, dtype: str, device: str,
                 specs: Mapping[str, LayerSpec] | None = None, name: str = "records"):
        self.specs = dict(specs) if specs is not None else {n: s for n, s in SPECS.items() if n != "encoder"}
        self.dims = dims
        inputs, params, kinds = {}, {}, {}
        self.form = f = form(dtype, device)
        for n, spec in self.specs.items():
            for k, shape in spec.input_shapes(dims).items():  # symbolic dims are the record's own
                inputs[f"{n}/{k}"] = [f"{n}_{d}" if isinstance(d, str) else d for d in shape]
            kinds.update({f"{n}/{k}": t for k, t in _input_dtypes(spec).items()})
            params.update({f"{n}/{k}": shape for k, shape in param_shapes(spec, dims, f).items()})

        def build(xs, scope):
            return {n: spec.build({k.split("/", 1)[1]: v for k, v in xs.items() if k.split("/", 1)[0] == n},
                                  _within(scope, n), dims) for n, spec in self.specs.items()}

        graph, self.outputs = functional_graph(name + f.suffix, build, inputs, params, device_ref(device),
                                               dtype_of(dtype), input_dtypes=kinds, product=products(f),
                                               quantizes=f.quantizer)
        self.compiled = Compiled(graph, device)
        # the graph takes every record's inputs first, then every record's parameters
        self.keys = [*inputs, *params]
        zero = lambda k: np.int64 if kinds.get(k) == DType.int64 else (quantized_dtype(k) or DType.float32).to_numpy()  # noqa: E731
        self.zeros = {k: self.compiled.to_device(np.zeros([1 if isinstance(d, str) else d for d in shape], zero(k)))
                      for k, shape in [*inputs.items(), *params.items()]}

    def __call__(self, name: str, x, params: Mapping[str, np.ndarray]) -> np.ndarray:
        """Record `name` on inputs `x` (by name, or one array) with `params`, as `run_max` takes them."""
        if name not in self.specs:
            raise ValueError(f"{name!r} is not among this graph's records {list(self.specs)}")
        spec = self.specs[name]
        arrays = [*_arrays(spec, x), *param_values(spec, self.dims, self.form, params).values()]
        given = dict(zip([k for k in self.keys if k.split("/", 1)[0] == name], arrays, strict=True))
        buffers = [self.compiled.to_device(given[k]) if k in given else self.zeros[k] for k in self.keys]
        return self.compiled.execute(*buffers)[self.outputs.index(name)].to(driver.CPU()).to_numpy()


def _within(scope: Scope, record: str) -> Scope:
    """`scope` with parameter names looked up under `record/`."""
    return Scope(lambda k: scope.lookup(f"{record}/{k}"), product=scope.product, quantizes=scope.quantizes)


_RECORDS: dict[tuple, Records] = {}


def records(dims: ModelDimensions, dtype: str = "float32", device: str = "cpu") -> Records:
    """Every record of `dtype` in one graph: the registry's, or for a quantized precision its own
    (`registry.QUANTIZED_SPECS`)."""
    key = (astuple(dims), dtype, device)
    if key not in _RECORDS:
        _RECORDS[key] = Records(dims, dtype, device, QUANTIZED_SPECS if row(dtype).quantized else None)
    return _RECORDS[key]


def run_max(spec: LayerSpec, dims: ModelDimensions, x, params: Mapping[str, np.ndarray],
            dtype: str = "float32", device: str = "cpu", emulate: str | None = None) -> np.ndarray:
    """Run the layer's MAX graph on `x` with `params` (new values never recompile); `dtype` a
    precision (`maxwhisper.precision`), `emulate="gpu"` its GPU form on this device. A registry
    record runs in `Records`' graph, any other record (a mutant) in a graph of its own."""
    table = QUANTIZED_SPECS if row(dtype).quantized else SPECS
    if emulate is None and spec.name != "encoder" and table.get(spec.name) is spec:
        return records(dims, dtype, device)(spec.name, x, params)
    f = form(dtype, device, emulate)
    values = param_values(spec, dims, f, params)
    return compile_layer(spec, dims, dtype, device, emulate)(*_arrays(spec, x), *values.values())[0]


def bound_max(spec: LayerSpec, dims: ModelDimensions, params: Mapping[str, np.ndarray],
              dtype: str = "float32", device: str = "cpu") -> Compiled:
    """The layer with `params` bound as weights, as in the encoder graph: call it with the inputs alone.

    Benchmarks time this one: `run_max` stages every weight from numpy on each call, work the
    PyTorch module (whose weights are loaded once) does not do. Weights enter as `Weight`s, so
    new values reuse MAX's cached compile; each call to this function is one (warm) load.
    """
    missing = sorted(set(spec.param_shapes(dims)) - set(params))
    if missing:
        raise ValueError(f"{spec.name}: params lack {missing}")
    f = form(dtype, device)
    graph, _ = functional_graph(f"{spec.name}_bound{f.suffix}", lambda x, s: spec.build(x, s, dims),
                                spec.input_shapes(dims), param_shapes(spec, dims, f), device_ref(device),
                                dtype_of(dtype), bind=True, input_dtypes=_input_dtypes(spec), product=products(f),
                                quantizes=f.quantizer)
    return Compiled(graph, device, param_values(spec, dims, f, params))


def torch_device(device: str) -> str:
    """PyTorch's device for the yardstick of a MAX run on `device`: the same kind of device, since
    PyTorch's own error there is what MAX there is judged by."""
    d = parse_device(device)
    if d.kind != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: the PyTorch yardstick needs CUDA, and torch {torch.__version__} "
                         "has none")
    return d.torch


@torch.no_grad()
def run_reference(spec: LayerSpec, dims: ModelDimensions, x, params: Mapping[str, np.ndarray],
                  dtype: torch.dtype | str = torch.float64, device: str = "cpu", quantize: str | None = None) -> np.ndarray:
    """openai-whisper's module for the record, float64 (the reference) or as the yardstick of a
    precision (its name, or its torch dtype: `yardstick.setup`), returned as float32 or float64;
    `quantize`, a quantized precision whose products the float64 reference computes.

    In a 16-bit dtype it is openai-whisper's own mixed precision (`fp16=True`), the policy of
    `maxwhisper.precision`: the weights stay float32 and the input is rounded to `dtype`; whisper's
    Linear and Conv1d cast their weights to the input's dtype, its LayerNorm computes in float32.
    Integer inputs (token ids) go in as they are.
    """
    dtype, weights, numerics = setup(dtype, quantize)
    module = ref.load(spec.reference(dims), params, "", weights).to(device)
    args = [torch.from_numpy(a).to(device, dtype if a.dtype.kind == "f" else None) for a in _arrays(spec, x)]
    with numerics(module):
        out = module(*args)
    return out.cpu().numpy() if out.dtype in (torch.float32, torch.float64) else out.float().cpu().numpy()
