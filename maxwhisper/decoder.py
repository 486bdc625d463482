"""openai-whisper's TextDecoder as MAX graphs, its KV cache kept in MAX buffers between steps.

Two graphs, each compiled once for every batch size, token count and cache length (symbolic dims):
- `cross`: audio features (batch, n_audio_ctx, n_audio_state) -> every block's cross-attention keys
  and values, once per 30 s window;
- `step`: tokens (batch, n_tok) int64 after `n_cache` cached tokens -> logits (batch, n_tok, n_vocab)
  and each block's self-attention keys and values grown by the step's tokens.
A step's outputs are device buffers that are the next step's inputs as they are: the cache never
leaves MAX between tokens (`DecoderState`). The grown cache is a new buffer each step (concat): for
tiny.en at 224 tokens that copies 2.8 MB, against the 80 MB of embedding read for the logits.
"""

from __future__ import annotations

import functools

from collections.abc import Mapping, Sequence

import numpy as np
from max import driver
from max.dtype import DType
from max.graph import DeviceRef, Graph, Module, TensorType
from whisper.model import ModelDimensions

from maxwhisper import layers
from maxwhisper import int8
from maxwhisper.precision import dtype_of, form, param_dtype
from maxwhisper.quant import with_quantized
from maxwhisper.seams import seam
from maxwhisper.runtime import Compiled, device_buffer, device_ref, host_float32, host_raw, unit, weight_lookup
from maxwhisper.tf32 import products


def _kv_names(n_layer: int, kind: str) -> list[str]:
    """Output names of cached keys and values ("cache." + the projection's state-dict prefix)."""
    return [f"cache.decoder.blocks.{i}.{kind}.{p}" for i in range(n_layer) for p in ("key", "value")]


def _weights(shapes: Mapping[str, tuple[int, ...]], ref: DeviceRef, dtype: DType):
    """Weights stored in the precision policy's dtype per key (`precision.param_dtype`)."""
    return weight_lookup({}, shapes, ref, lambda key: param_dtype(key, dtype))


def step_graph(dims: ModelDimensions, shapes: Mapping[str, tuple[int, ...]], ref: DeviceRef,
               trace: bool = False, dtype: DType = DType.float32, product=None,
               suffix: str = "", module: Module | None = None, quantizes=None) -> tuple[Graph, list[str]]:
    """(tokens, n_layer x (self k, self v), n_layer x (cross k, cross v)) -> (logits, grown caches).

    Caches and cross K/V are in `dtype` (a 16-bit cache is half the bytes); logits are float32 (whisper
    returns `.float()` logits). With `trace`, the recorded activations (`layers.decoder_trace`, in
    `dtype`) come after the caches, then every block's `layers.alignment_scores` (word timestamps:
    one graph fewer to compile than an alignment graph of its own). `product` and `suffix`: the
    precision's form (`tf32.products`) and what the graph's name carries for it; `quantizes`: which
    weights it multiplies as Q4_0 blocks (`precision.Form.quantizes`); `module`: a
    `Module` compiled as one unit with other graphs.
    """
    d, n = dims.n_text_state, dims.n_text_layer
    types = [TensorType(DType.int64, ["batch", "n_tok"], ref)]
    types += [TensorType(dtype, ["batch", "n_cache", d], ref)] * (2 * n)
    types += [TensorType(dtype, ["batch", dims.n_audio_ctx, d], ref)] * (2 * n)
    name = ("whisper_decoder_step" + ("_trace" if trace else "")
            + ("" if dtype == DType.float32 else f"_{dtype}") + suffix)
    with Graph(name, input_types=types, module=module, custom_extensions=int8.extensions(quantizes)) as g:
        xs = [v.tensor for v in g.inputs]
        pairs = lambda vs: [(vs[2 * i], vs[2 * i + 1]) for i in range(n)]  # noqa: E731
        rec: dict | None = {} if trace else None
        scores: list | None = [] if trace else None
        scope = layers.Scope(_weights(shapes, ref, dtype), "decoder.", rec, product, quantizes)
        out, grown = layers.decoder(xs[0], pairs(xs[1:1 + 2 * n]), pairs(xs[1 + 2 * n:]), scope,
                                    dims.n_text_head, ref, scores)
        if trace:
            want = [t.id for t in layers.decoder_trace(n) if not is_cross(t.id)]
            if list(rec) != want:
                raise RuntimeError(f"the decoder recorded {list(rec)}, layers.decoder_trace says {want}")
        g.output(out, *(t for kv in grown for t in kv), *(rec.values() if trace else []), *(scores or []))
    return g, ["logits", *_kv_names(n, "attn"), *(rec if trace else []),
               *(f"decoder.blocks.{i}.cross_attn.scores" for i in range(n) if trace)]


def is_cross(trace_id: str) -> bool:
    """A cross-attention key or value: computed by the `cross` graph, not by a step."""
    return trace_id.endswith((".cross_attn.key", ".cross_attn.value"))


def cross_graph(dims: ModelDimensions, shapes: Mapping[str, tuple[int, ...]], ref: DeviceRef,
                dtype: DType = DType.float32, product=None, suffix: str = "",
                module: Module | None = None, quantizes=None) -> tuple[Graph, list[str]]:
    """Audio features (float32, as the encoder returns them) -> (cross k, cross v) of every block in
    `dtype`, named by their trace ids."""
    t = TensorType(DType.float32, ["batch", dims.n_audio_ctx, dims.n_audio_state], ref)
    name = "whisper_decoder_cross_kv" + ("" if dtype == DType.float32 else f"_{dtype}") + suffix
    with Graph(name, input_types=[t], module=module, custom_extensions=int8.extensions(quantizes)) as g:
        rec: dict = {}
        lookup = _weights(shapes, ref, dtype)
        xa = layers.cast(g.inputs[0].tensor, dtype)
        for i in range(dims.n_text_layer):
            layers.cross_kv(xa, layers.Scope(lookup, f"decoder.blocks.{i}.cross_attn.", rec, product, quantizes))
        want = [t.id for t in layers.decoder_trace(dims.n_text_layer) if is_cross(t.id)]
        if list(rec) != want:
            raise RuntimeError(f"cross_kv recorded {list(rec)}, layers.decoder_trace says {want}")
        g.output(*rec.values())
    return g, list(rec)


def check_tokens(tokens, dims: ModelDimensions, n_cache: int = 0) -> np.ndarray:
    """The tokens a step accepts, as int64, or a ValueError saying what is wrong with them."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or 0 in tokens.shape:
        raise ValueError(f"tokens must have shape (batch, n_tok) with both > 0, got {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
    bad = tokens[(tokens < 0) | (tokens >= dims.n_vocab)]
    if bad.size:
        raise ValueError(f"token id {int(bad[0])} is outside the vocabulary [0, {dims.n_vocab})")
    if n_cache + tokens.shape[1] > dims.n_text_ctx:
        raise ValueError(f"{n_cache} cached + {tokens.shape[1]} new tokens exceed n_text_ctx = {dims.n_text_ctx}")
    return np.ascontiguousarray(tokens, dtype=np.int64)


def check_features(features, dims: ModelDimensions) -> np.ndarray:
    want = (dims.n_audio_ctx, dims.n_audio_state)
    if not isinstance(features, np.ndarray) or features.ndim != 3 or features.shape[1:] != want or not len(features):
        shape = getattr(features, "shape", type(features).__name__)
        raise ValueError(f"audio features must be (batch, {want[0]}, {want[1]}) float32, got {shape}")
    if not np.isfinite(features).all():
        raise ValueError("audio features hold NaN or infinite values")
    return np.ascontiguousarray(features, dtype=np.float32)


class MaxDecoder:
    """The decoder's two graphs on one device, weights bound from the state dict, computing in
    `dtype` under the policy of `maxwhisper.precision` (logits are float32 in every dtype); `emulate`
    as `MaxWhisper`'s."""

    def __init__(self, dims: ModelDimensions, state_dict: Mapping[str, np.ndarray], device: str = "cpu",
                 dtype: str = "float32", emulate: str | None = None):
        self._dtype = dtype_of(dtype)  # a bad dtype fails here, naming it
        self.form = form(dtype, device, emulate)
        self.dims, self.device, self.dtype = dims, device, dtype
        self.weights = {k: v for k, v in state_dict.items() if k.startswith("decoder.")}
        self._compiled: dict[str, Compiled] = {}

    @functools.cached_property
    def _bound(self) -> dict[str, np.ndarray]:
        """The weights the graphs bind: the state dict's, plus each quantized weight's codes and scales."""
        return with_quantized(self.weights, self.form.quantizer)

    def compile(self, which: str = "step") -> Compiled:
        """One of the decoder's graphs: "step" (through the cache), "trace" (every activation and the
        alignment scores) or "cross" (cross-attention K/V). The three are one compile unit: whichever
        is asked for first compiles all three (their shared kernels once; docs/architecture.md); int8's,
        which MAX compiles one by one (`runtime.unit`), only the one asked for (words need "trace")."""
        if which not in ("step", "trace", "cross"):
            raise ValueError(f"no decoder graph {which!r}: step, trace or cross")
        if which not in self._compiled:
            q = self.form.quantizer
            weights = self._bound
            shapes = {k: v.shape for k, v in weights.items()}
            ref, dtype, how, suffix = device_ref(self.device), self._dtype, products(self.form), self.form.suffix
            module = unit(q)
            build = dict(step=lambda: step_graph(self.dims, shapes, ref, False, dtype, how, suffix, module, q),
                         trace=lambda: step_graph(self.dims, shapes, ref, True, dtype, how, suffix, module, q),
                         cross=lambda: cross_graph(self.dims, shapes, ref, dtype, how, suffix, module, q))
            names = tuple(build) if module is not None else (which,)
            graphs = [build[n]() for n in names]
            kinds = {k: param_dtype(k, dtype) for k in weights}
            compiled = Compiled.together(graphs, module, self.device, weights, kinds)
            self._compiled.update(zip(names, compiled))
        return self._compiled[which]

    @seam
    def start(self, features: np.ndarray, group: int = 1) -> DecoderState:
        """A decoding run over `features` (n_audio, n_audio_ctx, n_audio_state) with `group` sequences
        per audio (beam search, best_of: openai-whisper repeats the tokens, not the features), rows
        ordered audio by audio: cross K/V computed now, once per audio."""
        features = check_features(features, self.dims)
        cross = self.compile("cross")
        kv = cross.execute(cross.to_device(features))
        if group > 1:  # copying K/V costs less than computing them `group` times
            kv = [self.buffer(np.repeat(host_raw(b), group, axis=0)) for b in kv]
        return DecoderState(self, kv, len(features) * group)

    def trace(self, tokens, features: np.ndarray, prompt: int = 1) -> dict[str, np.ndarray]:
        """Every activation (`layers.decoder_trace`) of teacher-forced decoding of `tokens` (batch, T):
        the first `prompt` tokens in one step from an empty cache, then one token per step, as
        openai-whisper decodes; each id's steps joined along the token axis, (batch, T, ...)."""
        tokens = check_tokens(tokens, self.dims)
        if not 1 <= prompt <= tokens.shape[1]:
            raise ValueError(f"prompt must be 1..{tokens.shape[1]} tokens, got {prompt}")
        state = self.start(features)
        out = {n: [host_float32(b)] for n, b in zip(self.compile("cross").output_names, state.cross)}
        compiled = self.compile("trace")
        n = self.dims.n_text_layer
        skip = 1 + 2 * n  # logits and the grown caches come first, the alignment scores last
        for lo, hi in [(0, prompt), *((i, i + 1) for i in range(prompt, tokens.shape[1]))]:
            outs = compiled.execute(compiled.to_device(tokens[:, lo:hi]), *state.cache, *state.cross)
            state.cache = outs[1:skip]
            for name, o in zip(compiled.output_names[skip:-n], outs[skip:-n]):
                out.setdefault(name, []).append(host_float32(o))
        return {k: np.concatenate(v, axis=1) for k, v in out.items()}

    def align(self, tokens, features: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(logits (1, T, n_vocab), every block's `layers.alignment_scores` (1, n_head, T, n_audio_ctx))
        of `tokens` (1, T) over `features` (1, ...), all in one step from an empty cache: what
        openai-whisper's word alignment runs its model for (`timing.find_alignment`)."""
        tokens = check_tokens(tokens, self.dims)
        state = self.start(features)
        compiled = self.compile("trace")  # its last outputs are the scores
        outs = compiled.execute(compiled.to_device(tokens), *state.cache, *state.cross)
        return host_float32(outs[0]), [host_float32(o) for o in outs[-self.dims.n_text_layer:]]

    def buffer(self, array: np.ndarray) -> driver.Buffer:
        """An activation (float32 values, or `host_raw` bits) as a buffer in the decoder's dtype on its
        device. The device is the cross graph's, which every run compiles first (`start`): asking the
        step graph would compile it for `trace`, which never runs it."""
        return device_buffer(array, self._dtype, self.compile("cross").model.input_devices[0])


def _compacted(buffers: Sequence[driver.Buffer], rows: np.ndarray) -> list[driver.Buffer]:
    """Host `buffers` (batch first) with rows `rows` (ascending) moved to the front, in place, as views of
    their first len(rows) rows: no allocation and no copy of the rows already in place. A fresh copy of
    the rows kept took ~50 ms a call at batch 8 (147 MB of cross K/V for tiny.en, its pages faulted anew)."""
    out = []
    for b in buffers:
        a = host_raw(b)  # on the host: the buffer's own memory
        for i, r in enumerate(rows):
            if i != r:  # r > i (ascending): row r is read before anything overwrites it
                a[i] = a[r]
        view = driver.Buffer.from_numpy(a[:len(rows)])
        out.append(view.view(b.dtype) if view.dtype != b.dtype else view)
    return out


class DecoderState:
    """One decoding run: cross-attention K/V and the growing self-attention cache, all MAX buffers."""

    def __init__(self, decoder: MaxDecoder, cross: Sequence[driver.Buffer], batch: int):
        self.decoder, self.cross, self.batch = decoder, list(cross), batch
        d = decoder.dims
        empty = np.zeros((batch, 0, d.n_text_state), np.float32)
        self.cache = [decoder.buffer(empty) for _ in range(2 * d.n_text_layer)]
        self.length = 0
        # on the CPU, `keep` leaves views of these buffers' memory: held while a view may be read
        self._held_cross: list[driver.Buffer] = []
        self._held_cache: list[driver.Buffer] = []

    def step(self, tokens) -> np.ndarray:
        """Logits (batch, n_tok, n_vocab) of `tokens` (batch, n_tok), which follow the cached ones."""
        tokens = check_tokens(tokens, self.decoder.dims, self.length)
        if len(tokens) != self.batch:
            raise ValueError(f"tokens have batch {len(tokens)}, this decoding run has {self.batch}")
        step = self.decoder.compile("step")
        logits, *self.cache = step.execute(step.to_device(tokens), *self.cache, *self.cross)
        self.length += tokens.shape[1]
        logits = host_float32(logits)  # the step has run: the caches it read may go
        self._held_cache = []
        return logits

    @seam
    def keep(self, rows: Sequence[int]) -> None:
        """Only `rows` (ascending) go on: the others' caches and cross K/V are dropped (finished rows)."""
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 1 or not len(rows) or (np.diff(rows) <= 0).any() or rows[0] < 0 or rows[-1] >= self.batch:
            raise ValueError(f"rows to keep must ascend within [0, {self.batch}), got {rows.tolist()}")
        if len(rows) == self.batch:
            return
        if self.cross[0].device == driver.CPU():
            self._held_cache += self.cache
            self._held_cross += self.cross
            self.cache, self.cross = _compacted(self.cache, rows), _compacted(self.cross, rows)
        else:
            self.cache = [self.decoder.buffer(host_raw(c)[rows]) for c in self.cache]
            self.cross = [self.decoder.buffer(host_raw(c)[rows]) for c in self.cross]
        self.batch = len(rows)

    @seam
    def reorder(self, source: Sequence[int]) -> None:
        """Row i of the self-attention cache becomes row source[i] (beam search's rearrangement)."""
        source = np.asarray(source, np.int64)
        if source.shape != (self.batch,) or ((source < 0) | (source >= self.batch)).any():
            raise ValueError(f"source indices must be {self.batch} rows in [0, {self.batch}), got {source.tolist()}")
        if (source == np.arange(self.batch)).all():
            return
        self.cache = [self.decoder.buffer(host_raw(c)[source]) for c in self.cache]
