"""Reference layers: openai-whisper's own modules, one per MAX layer, runnable in float64.

The reference is the more precise side of every comparison. openai-whisper's `LayerNorm` casts to
float32 and its non-SDPA attention casts scores to float32, so in float64 we swap in a LayerNorm that
keeps the input dtype and require the SDPA path; everything else is whisper's code unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import whisper.model as wm
from torch import nn
from torch.nn import functional as F

if not wm.SDPA_AVAILABLE:  # the fallback path rounds attention scores to float32
    raise ImportError("reference needs torch.nn.functional.scaled_dot_product_attention")


class LayerNorm(wm.LayerNorm):
    """openai-whisper's LayerNorm (float32 compute for float16 input) that leaves float64 alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            return nn.LayerNorm.forward(self, x)
        return super().forward(x)


def precise(module: nn.Module) -> nn.Module:
    """`module` with each of whisper's LayerNorms replaced by a `LayerNorm` of the same shape (same
    state-dict keys; the weights are loaded afterwards)."""
    if type(module) is wm.LayerNorm:
        return LayerNorm(module.normalized_shape, module.eps)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is wm.LayerNorm:
                setattr(parent, name, LayerNorm(child.normalized_shape, child.eps))
    return module


class ConvStem(nn.Module):
    """AudioEncoder's first two lines: gelu(conv1), gelu(conv2), output channels-last."""

    def __init__(self, n_mels: int, n_state: int):
        super().__init__()
        self.conv1 = wm.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = wm.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.conv2(F.gelu(self.conv1(mel)))).permute(0, 2, 1)


class SelfAttention(wm.MultiHeadAttention):
    """MultiHeadAttention without the second (qk) output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]


def conv_stem(dims: wm.ModelDimensions) -> nn.Module:
    return ConvStem(dims.n_mels, dims.n_audio_state)


def gelu(dims: wm.ModelDimensions) -> nn.Module:
    return nn.GELU()


def layer_norm(dims: wm.ModelDimensions) -> nn.Module:
    return precise(wm.LayerNorm(dims.n_audio_state))


def attention(dims: wm.ModelDimensions) -> nn.Module:
    return SelfAttention(dims.n_audio_state, dims.n_audio_head)


def linear(dims: wm.ModelDimensions) -> nn.Module:
    """A Linear of the encoder MLP's first shape (a quantized precision's one-layer record)."""
    return wm.Linear(dims.n_audio_state, 4 * dims.n_audio_state)


def mlp(dims: wm.ModelDimensions) -> nn.Module:
    return wm.ResidualAttentionBlock(dims.n_audio_state, dims.n_audio_head).mlp


def block(dims: wm.ModelDimensions) -> nn.Module:
    return precise(wm.ResidualAttentionBlock(dims.n_audio_state, dims.n_audio_head))


def encoder(dims: wm.ModelDimensions) -> nn.Module:
    return precise(wm.AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
                                   dims.n_audio_head, dims.n_audio_layer))


# --- the text decoder: openai-whisper's modules run one step with its own kv_cache mechanism ---

def kv_cache_hooks(attn: wm.MultiHeadAttention, cache_k: torch.Tensor, cache_v: torch.Tensor):
    """`Whisper.install_kv_cache_hooks` for one self-attention, its cache pre-filled with `cache_k`,
    `cache_v` (batch, n_cache, n_state): the hooks append this step's key and value projections."""
    cache = {attn.key: cache_k, attn.value: cache_v} if cache_k.shape[1] else {}

    def save_to_cache(module, _, output):
        cache[module] = output if module not in cache else torch.cat([cache[module], output], dim=1)
        return cache[module]

    return cache, [attn.key.register_forward_hook(save_to_cache), attn.value.register_forward_hook(save_to_cache)]


# TextDecoder passes its (n_ctx, n_ctx) mask to every block; with SDPA it only switches on is_causal
# for a step of more than one token, which openai-whisper only takes from an empty cache.
_CAUSAL = torch.empty(0)


class TokenEmbedding(nn.Module):
    """TextDecoder.forward's first line: token embedding plus positions at the cache's length."""

    def __init__(self, n_vocab: int, n_ctx: int, n_state: int):
        super().__init__()
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.empty(n_ctx, n_state))

    def forward(self, tokens: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        offset = cache.shape[1]  # then whisper's `x.to(xa.dtype)`: the cache's dtype here
        return (self.token_embedding(tokens) + self.positional_embedding[offset:offset + tokens.shape[-1]]).to(cache.dtype)


class CachedSelfAttention(wm.MultiHeadAttention):
    """The decoder's causal self-attention, one step after `cache_k`/`cache_v`."""

    def forward(self, x, cache_k, cache_v):
        cache, hooks = kv_cache_hooks(self, cache_k, cache_v)
        try:
            return super().forward(x, mask=_CAUSAL, kv_cache=cache)[0]
        finally:
            for h in hooks:
                h.remove()


class CrossAttention(wm.MultiHeadAttention):
    """Cross-attention of the tokens over the audio features (keys and values from `xa`)."""

    def forward(self, x, xa):
        return super().forward(x, xa)[0]


class AlignmentScores(wm.MultiHeadAttention):
    """What openai-whisper's word alignment reads from a cross-attention (`timing.find_alignment`): the
    `qk` of its non-SDPA `qkv_attention`, scores scaled before softmax, (batch, n_head, n_tok, frames).
    That line rounds `qk` to float32 (`qk.float()`), so in float64 the same product is written out here."""

    def forward(self, x, xa):
        q, k = self.query(x), self.key(xa)
        if x.dtype != torch.float64:
            with wm.disable_sdpa():
                return self.qkv_attention(q, k, self.value(xa))[1]
        scale = (q.shape[-1] // self.n_head) ** -0.25
        q = q.view(*q.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)
        k = k.view(*k.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)
        return (q * scale) @ (k * scale).transpose(-1, -2)


class CachedBlock(wm.ResidualAttentionBlock):
    """ResidualAttentionBlock(cross_attention=True), one step after its self-attention cache."""

    def forward(self, x, cache_k, cache_v, xa):
        cache, hooks = kv_cache_hooks(self.attn, cache_k, cache_v)
        try:
            return super().forward(x, xa, mask=_CAUSAL, kv_cache=cache)
        finally:
            for h in hooks:
                h.remove()


class Logits(nn.Module):
    """TextDecoder.forward's last lines: final LayerNorm, logits through the tied token embedding."""

    def __init__(self, n_vocab: int, n_state: int):
        super().__init__()
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.ln = wm.LayerNorm(n_state)

    def forward(self, x):
        x = self.ln(x)
        return x @ torch.transpose(self.token_embedding.weight.to(x.dtype), 0, 1)


def token_embedding(dims: wm.ModelDimensions) -> nn.Module:
    return TokenEmbedding(dims.n_vocab, dims.n_text_ctx, dims.n_text_state)


def cached_attention(dims: wm.ModelDimensions) -> nn.Module:
    return CachedSelfAttention(dims.n_text_state, dims.n_text_head)


def cross_attention(dims: wm.ModelDimensions) -> nn.Module:
    return CrossAttention(dims.n_text_state, dims.n_text_head)


def alignment_scores(dims: wm.ModelDimensions) -> nn.Module:
    return AlignmentScores(dims.n_text_state, dims.n_text_head)


def decoder_block(dims: wm.ModelDimensions) -> nn.Module:
    return precise(CachedBlock(dims.n_text_state, dims.n_text_head, cross_attention=True))


def logits(dims: wm.ModelDimensions) -> nn.Module:
    return precise(Logits(dims.n_vocab, dims.n_text_state))


def load(module: nn.Module, state_dict: Mapping[str, np.ndarray], prefix: str = "",
         dtype: torch.dtype = torch.float64) -> nn.Module:
    """Load `prefix`-scoped numpy weights strictly (a missing or extra key raises) and cast."""
    own = {k[len(prefix):]: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()
           if k.startswith(prefix)}
    module.load_state_dict(own, strict=True)
    return module.to(dtype).eval()


def reference_encoder(dims: wm.ModelDimensions, state_dict: Mapping[str, np.ndarray],
                      dtype: torch.dtype = torch.float64, per_part: bool = False) -> wm.AudioEncoder:
    """openai-whisper's AudioEncoder holding `state_dict`'s encoder weights in `dtype`: built on the
    meta device and handed the arrays themselves (no random init, and in float32 no copy). With
    `per_part` (for a model whose `dtype` copy would not fit beside its trace: large-v3's is 5 GB in
    float64), it keeps the float32 arrays and each part that holds weights (conv1, conv2, each block,
    ln_post) holds its `dtype` copy only while it runs: the same arithmetic, one block's copy at a time."""
    with torch.device("meta"):
        module = encoder(dims)
    own = {k[len("encoder."):]: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()
           if k.startswith("encoder.")}
    module.load_state_dict(own, strict=True, assign=True)
    if not per_part:
        return module.to(dtype).eval()
    module.positional_embedding = module.positional_embedding.to(dtype)
    for part in (module.conv1, module.conv2, *module.blocks, module.ln_post):
        part.register_forward_pre_hook(_cast_while_running(dtype))
    return module.eval()


def _cast_while_running(dtype: torch.dtype):
    """A forward pre-hook casting its module to `dtype`, and a hook it installs putting the original
    tensors back once the module has run."""
    def before(module, args):
        kept = {name: p.data for name, p in module.named_parameters()}
        module.to(dtype)

        def after(module, args, out):
            for name, p in module.named_parameters():
                p.data = kept[name]
            handle.remove()

        handle = module.register_forward_hook(after)
    return before


def reference_decoder(dims: wm.ModelDimensions, state_dict: Mapping[str, np.ndarray],
                      dtype: torch.dtype = torch.float64, per_part: bool = False) -> wm.TextDecoder:
    """openai-whisper's TextDecoder holding `state_dict`'s decoder weights in `dtype`, built as
    `reference_encoder` builds the encoder; with `per_part` each block holds its `dtype` copy only
    while it runs (large-v3's float64 decoder is 7 GB), the token embedding stays float32 (a lookup
    and whisper's own `.to(x.dtype)` in the logits: exact casts either way)."""
    with torch.device("meta"):
        module = precise(wm.TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head,
                                        dims.n_text_layer))
    own = {k[len("decoder."):]: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()
           if k.startswith("decoder.")}
    module.load_state_dict(own, strict=True, assign=True)
    module.mask = torch.empty(dims.n_text_ctx, dims.n_text_ctx).fill_(-np.inf).triu_(1)  # a buffer, not loaded
    if not per_part:
        return module.to(dtype).eval()
    module.positional_embedding.data = module.positional_embedding.data.to(dtype)
    module.ln.to(dtype)
    for block in module.blocks:
        block.register_forward_pre_hook(_cast_while_running(dtype))
    return module.eval()
