"""The MAX Whisper model: weights from `maxwhisper.checkpoints`, the encoder as one MAX graph, the decoder
as two (`maxwhisper.decoder`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping

import numpy as np
from max.graph import DeviceRef, Graph, Module, TensorType, TensorValue
from max.dtype import DType
from whisper.model import ModelDimensions

from maxwhisper import layers
from maxwhisper import int8
from maxwhisper.decoder import MaxDecoder
from maxwhisper.layers import cast
from maxwhisper.precision import dtype_of, form, param_dtype
from maxwhisper.quant import with_quantized
from maxwhisper.seams import seam
from maxwhisper.runtime import Compiled, device_ref, unit, weight_lookup
from maxwhisper.tf32 import products
from maxwhisper.transcribe import pipeline_model, transcribe
from maxwhisper.checkpoints import alignment_heads as weights_heads, check_heads, load_weights


def mel_type(dims: ModelDimensions, ref: DeviceRef) -> TensorType:
    """(batch, n_mels, 2 * n_audio_ctx) float32: batch is symbolic, the frame count is static
    because the positional embedding fixes it."""
    return TensorType(DType.float32, ["batch", dims.n_mels, 2 * dims.n_audio_ctx], ref)


def emit_encoder(mel: TensorValue, lookup: Callable[[str], TensorValue], dims: ModelDimensions,
                 trace: dict | None = None, product: Callable | None = None,
                 quantizes: Callable[[str], bool] | None = None) -> TensorValue:
    """openai-whisper's AudioEncoder into the graph being built; `trace` receives every activation.

    With `trace`, the ids recorded must be `layers.encoder_trace`'s, in its order: the harness reads
    ids from that table, so a layer that records under another name fails here, at build time.
    """
    scope = layers.Scope(lookup, "encoder.", trace, product, quantizes)
    out = layers.encoder(mel, scope, dims.n_audio_head, dims.n_audio_layer)
    if trace is not None:
        want = [t.id for t in layers.encoder_trace(dims.n_audio_layer)]
        if list(trace) != want:
            raise RuntimeError(f"the encoder recorded {list(trace)}, layers.encoder_trace says {want}")
    return out


def encoder_graph(dims: ModelDimensions, shapes: Mapping[str, tuple[int, ...]], ref: DeviceRef,
                  trace: bool = False, name: str = "whisper_encoder",
                  dtype: DType = DType.float32, product: Callable | None = None,
                  module: Module | None = None, quantizes: Callable[[str], bool] | None = None) -> tuple[Graph, list[str]]:
    """mel (batch, n_mels, 2 * n_audio_ctx) -> (batch, n_audio_ctx, n_audio_state), both float32.

    With `trace`, the graph returns every recorded activation, keyed by layer id. In a 16-bit
    `dtype` the mel is rounded on entry, weights are stored as `precision.param_dtype` says, and
    every output is cast back to float32 (`maxwhisper.precision`); `product` is the precision's form of
    a matmul (`tf32.products`), `quantizes` which weights it multiplies as Q4_0 blocks (`precision.Form`).
    `module`: a `Module` compiled as one unit with other graphs.
    """
    with Graph(name, input_types=[mel_type(dims, ref)], module=module, custom_extensions=int8.extensions(quantizes)) as g:
        rec: dict | None = {} if trace else None
        lookup = weight_lookup({}, shapes, ref, lambda key: param_dtype(key, dtype))
        out = emit_encoder(cast(g.inputs[0].tensor, dtype), lookup, dims, rec, product, quantizes)
        g.output(*(cast(v, DType.float32) for v in (rec.values() if trace else [out])))
    return g, list(rec) if trace else ["encoder"]


def check_mel(mel, dims: ModelDimensions) -> np.ndarray:
    """The mel the encoder accepts, or a ValueError saying what is wrong with it."""
    want = f"(batch, {dims.n_mels}, {2 * dims.n_audio_ctx}) float32"
    if not isinstance(mel, np.ndarray):
        raise ValueError(f"mel must be a numpy array {want}, got {type(mel).__name__}")
    if mel.ndim != 3:
        raise ValueError(f"mel must have rank 3 {want}, got shape {mel.shape}")
    if mel.shape[0] == 0:
        raise ValueError(f"mel has an empty batch: shape {mel.shape}, expected {want}")
    if mel.shape[1:] != (dims.n_mels, 2 * dims.n_audio_ctx):
        raise ValueError(f"mel has shape {mel.shape}, expected {want} "
                         "(pad or trim audio to 30 s first, e.g. maxwhisper.audio.log_mel)")
    if mel.dtype != np.float32:
        raise ValueError(f"mel has dtype {mel.dtype}, expected float32")
    if not np.isfinite(mel).all():
        raise ValueError(f"mel holds {int((~np.isfinite(mel)).sum())} NaN or infinite values")
    return np.ascontiguousarray(mel)


class MaxWhisper:
    """Whisper with its audio encoder compiled as a MAX graph.

    `state_dict` uses openai-whisper's key names; the graph's weights carry the same names.
    `dtype` (a `maxwhisper.precision` row: float32, tf32, bfloat16, float16, q4_0, int8) is the graph's precision;
    `emulate="gpu"` builds a GPU's form of it on this device (its TF32 truncation done in the graph).
    `encode` takes and returns float32 in every dtype.
    """

    def __init__(self, dims: ModelDimensions, state_dict: Mapping[str, np.ndarray], device: str = "cpu",
                 dtype: str = "float32", emulate: str | None = None, name: str | None = None,
                 alignment_heads: list[list[int]] | None = None):
        self._dtype = dtype_of(dtype)  # a bad dtype fails here, naming it
        self.name = name  # openai-whisper's model name, where known
        # the (layer, head) pairs word timestamps read: given, else openai-whisper's table for `name`,
        # else None, its default (`weights.alignment_heads` says which and why)
        if alignment_heads is None and name is not None:
            alignment_heads, _ = weights_heads(name, dims)
        self.alignment_heads = None if alignment_heads is None else check_heads(alignment_heads, dims, "alignment_heads")
        self.form = form(dtype, device, emulate)
        self.dims, self.state_dict, self.device, self.dtype = dims, dict(state_dict), device, dtype
        self._compiled: dict[bool, Compiled] = {}
        self._pipeline = None

    def compile(self, trace: bool = False) -> Compiled:
        """The encoder graph (with every activation as an output when `trace`), compiled or loaded
        from MAX's cache now rather than on first use. The two encoder graphs are one compile unit:
        whichever is asked for first compiles both (their shared kernels once; docs/architecture.md);
        int8's, which MAX compiles one by one (`runtime.unit`), only the one asked for."""
        if trace not in self._compiled:
            weights = {k: v for k, v in self.state_dict.items() if k.startswith("encoder.")}
            weights = with_quantized(weights, self.form.quantizer)
            shapes = {k: v.shape for k, v in weights.items()}
            module = unit(self.form.quantizer)
            which = (False, True) if module is not None else (trace,)
            # Weights are stored in the dtype they are used in (bfloat16 data enters as a view of its
            # bits): half the memory of float32 and no cast per call; one compile per dtype either way.
            graphs = [encoder_graph(self.dims, shapes, device_ref(self.device), t,
                                    "whisper_encoder" + ("_trace" if t else "") + self.form.suffix,
                                    self._dtype, products(self.form), module, self.form.quantizer)
                      for t in which]
            kinds = {k: param_dtype(k, self._dtype) for k in weights}
            compiled = Compiled.together(graphs, module, self.device, weights, kinds)
            self._compiled.update(zip(which, compiled))
        return self._compiled[trace]

    @functools.cached_property
    def decoder(self) -> MaxDecoder:
        """The text decoder's MAX graphs (compiled on first use), on this model's device."""
        return MaxDecoder(self.dims, self.state_dict, self.device, self.dtype, self.form.target)

    def transcribe(self, audio, **options) -> dict:
        """openai-whisper's `transcribe` result dict for a file or 16 kHz float32 samples, encoder and
        decoder on MAX (see `maxwhisper.transcribe`); options are openai-whisper's."""
        if self._pipeline is None:
            self._pipeline = pipeline_model(self)
        return transcribe(self._pipeline, audio, **options)

    @seam
    def encode(self, mel: np.ndarray) -> np.ndarray:
        """(batch, n_mels, 3000) float32 log-mel -> (batch, 1500, n_audio_state) float32."""
        mel = check_mel(mel, self.dims)
        return self.compile(trace=False)(mel)[0]

    def encode_trace(self, mel: np.ndarray) -> dict[str, np.ndarray]:
        """Every intermediate activation of the encoder, keyed by layer id (see `layers`)."""
        mel = check_mel(mel, self.dims)
        compiled = self.compile(trace=True)
        return dict(zip(compiled.output_names, compiled(mel)))


def load_model(name_or_path: str | os.PathLike = "tiny.en", device: str = "cpu",
               dtype: str = "float32", emulate: str | None = None) -> MaxWhisper:
    """Load Whisper weights (embedded tiny.en by default; a .pt, a CTranslate2 model, a transformers
    checkpoint folder: `maxwhisper.checkpoints`) and their alignment heads onto MAX, to
    compute in `dtype` (float32, tf32, bfloat16, float16, q4_0 or int8; see `maxwhisper.precision`)."""
    device_ref(device)  # a bad device, dtype or emulation fails here, before any weights are read
    form(dtype, device, emulate)
    import whisper

    dims, state_dict = load_weights(name_or_path)
    name = str(name_or_path) if str(name_or_path) in whisper.available_models() else None
    heads, _ = weights_heads(name_or_path, dims)
    return MaxWhisper(dims, state_dict, device, dtype, emulate, name, heads)
