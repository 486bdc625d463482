"""The MAX decoder plugged into openai-whisper's decoding machinery, which runs unchanged.

openai-whisper's `DecodingTask` asks an `Inference` object for logits, for beam search's cache
rearrangement and for cleanup. `MaxInference` answers from `maxwhisper.decoder` (the KV cache stays
in MAX buffers); `decode` is openai-whisper's `decode` with that one object swapped in, so its logit
filters, timestamp rules, suppressed tokens, beam search, best_of, temperature fallback, prompts,
30 s windowing with seek and output writers are all its own code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical
from torch.nn import functional as F
from whisper.decoding import BeamSearchDecoder, DecodingOptions, DecodingTask, GreedyDecoder, Inference, LogitFilter
from whisper.model import Whisper

from maxwhisper.decoder import DecoderState, MaxDecoder
from maxwhisper.seams import seam


class MaxInference(Inference):
    """openai-whisper's `PyTorchInference`, answered by the MAX decoder."""

    def __init__(self, decoder: MaxDecoder, initial_token_length: int, n_group: int = 1, eot: int | None = None):
        self.decoder, self.initial_token_length, self.n_group = decoder, initial_token_length, n_group
        self.state: DecoderState | None = None
        # greedy only: a row that emitted `eot` leaves the batch (its later logits only ever become eot)
        self.eot, self.rows = eot, None

    @seam
    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        if self.state is None:  # first call of a decoding run: cross-attention K/V, empty cache
            if self.n_group > 1 and len(audio_features) == len(tokens):  # repeated per sequence (GroupedTask)
                audio_features = audio_features[:: self.n_group]
            group, rest = divmod(tokens.shape[0], audio_features.shape[0])
            if rest:
                raise ValueError(f"{tokens.shape[0]} token rows for {audio_features.shape[0]} audio features")
            features = audio_features.detach().to("cpu", torch.float32).numpy()
            self.state = self.decoder.start(features, group)
            self.rows = np.arange(len(tokens))
        if tokens.shape[-1] > self.initial_token_length:
            tokens = tokens[:, -1:]  # as PyTorchInference: after the prompt, only the new token
            if self.eot is not None:
                self._drop_finished(tokens)
        logits = self.state.step(tokens[torch.from_numpy(self.rows)].cpu().numpy())
        if len(self.rows) == len(tokens):
            return torch.from_numpy(logits).to(audio_features.device)
        # a finished row's logits: zeros, finite under every filter, and its next token is eot regardless
        full = np.zeros((len(tokens), *logits.shape[1:]), logits.dtype)
        full[self.rows] = logits
        return torch.from_numpy(full).to(audio_features.device)

    def _drop_finished(self, tokens: torch.Tensor) -> None:
        going = tokens[torch.from_numpy(self.rows), -1].cpu().numpy() != self.eot
        if not going.all() and going.any():
            self.state.keep(np.flatnonzero(going))
            self.rows = self.rows[going]

    @seam
    def rearrange_kv_cache(self, source_indices) -> None:
        if self.state is not None:
            self.state.reorder(source_indices)

    @seam
    def cleanup_caching(self) -> None:
        self.state, self.rows = None, None


class LiveRows(LogitFilter):
    """openai-whisper's logit filter `inner`, applied to the rows still decoding only (`MaxInference.rows`):
    each of its filters acts row by row, and a finished row's next token is eot, at zero log-probability,
    whatever its logits. At batch 8 the filters ran over every row until the longest text ended."""

    def __init__(self, inner: LogitFilter, inference: MaxInference):
        self.inner, self.inference = inner, inference

    def apply(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        rows = self.inference.rows
        if rows is None or len(rows) == len(tokens):
            return self.inner.apply(logits, tokens)
        live = torch.from_numpy(rows)
        some = logits[live]
        self.inner.apply(some, tokens[live])
        logits[live] = some


class PerAudioSampler(GreedyDecoder):
    """openai-whisper's `GreedyDecoder`, sampling each audio's rows (at temperature > 0) from that audio's
    own generator: a file in a batch draws what it would draw transcribed alone from the same state."""

    def __init__(self, temperature: float, eot: int, generators: Sequence[torch.Generator]):
        super().__init__(temperature, eot)
        self.generators = list(generators)

    def update(self, tokens: torch.Tensor, logits: torch.Tensor, sum_logprobs: torch.Tensor):
        if self.temperature == 0:
            return super().update(tokens, logits, sum_logprobs)
        probs = Categorical(logits=logits / self.temperature).probs  # row by row, as Categorical.sample
        rows = len(probs) // len(self.generators)
        next_tokens = torch.cat([torch.multinomial(probs[i * rows:(i + 1) * rows], 1, True, generator=g)[:, 0]
                                 for i, g in enumerate(self.generators)])
        # the rest is GreedyDecoder.update's
        logprobs = F.log_softmax(logits.float(), dim=-1)
        current_logprobs = logprobs[torch.arange(logprobs.shape[0]), next_tokens]
        sum_logprobs += current_logprobs * (tokens[:, -1] != self.eot)
        next_tokens[tokens[:, -1] == self.eot] = self.eot
        tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
        return tokens, (tokens[:, -1] == self.eot).all()


class GroupedTask(DecodingTask):
    """openai-whisper's `DecodingTask`, right for several audios with several sequences each (beam search,
    best_of). openai-whisper repeats the tokens by the group but not the audio features, then keeps every
    n_group-th feature row, so with more than one audio its own assertion fails; here the features are
    repeated as that slicing assumes. One audio takes openai-whisper's path unchanged. With `generators`
    (one per audio), sampling draws each audio's rows from its own (`PerAudioSampler`)."""

    def __init__(self, model: Whisper, options: DecodingOptions, generators: Sequence[torch.Generator] | None = None):
        super().__init__(model, options)
        self.generators = generators
        if generators is not None and options.beam_size is None:
            self.decoder = PerAudioSampler(options.temperature, self.tokenizer.eot, generators)

    def _get_audio_features(self, mel: torch.Tensor):
        features = super()._get_audio_features(mel)
        if self.n_group > 1 and len(mel) > 1 and self.options.task != "lang_id":
            return features.repeat_interleave(self.n_group, dim=0)
        return features

    def _detect_language(self, audio_features: torch.Tensor, tokens: torch.Tensor):
        if len(audio_features) != len(tokens):  # repeated above: one row per audio for the detection
            audio_features = audio_features[:: self.n_group]
        return super()._detect_language(audio_features, tokens)


class MaxDecodingTask(GroupedTask):
    def __init__(self, model: MaxDecoderWhisper, options: DecodingOptions,
                 generators: Sequence[torch.Generator] | None = None):
        super().__init__(model, options, generators)
        greedy = options.beam_size is None and options.temperature == 0 and self.n_group == 1
        self.inference = MaxInference(model.max_decoder, len(self.initial_tokens), self.n_group,
                                      self.tokenizer.eot if greedy else None)
        if isinstance(self.decoder, BeamSearchDecoder):  # it rearranges the cache through this object
            self.decoder.inference = self.inference
        if greedy:
            self.logit_filters = [LiveRows(f, self.inference) for f in self.logit_filters]


@torch.no_grad()
def decode(model: Whisper, mel: torch.Tensor, options: DecodingOptions = DecodingOptions(),
           generators: Sequence[torch.Generator] | None = None, **kwargs):
    """openai-whisper's `decode`, line for line, with `MaxDecodingTask` (a MAX decoder model) or
    `GroupedTask` (openai-whisper's PyTorch model) for `DecodingTask`; `generators` as `GroupedTask`'s."""
    if single := mel.ndim == 2:
        mel = mel.unsqueeze(0)
    if kwargs:
        options = replace(options, **kwargs)
    task = MaxDecodingTask if isinstance(model, MaxDecoderWhisper) else GroupedTask
    result = task(model, options, generators).run(mel)
    return result[0] if single else result


class _Scores(nn.Module):
    """Where openai-whisper's word alignment hooks a block (`block.cross_attn`): called with the MAX
    graph's alignment scores, it returns (None, scores) as `MultiHeadAttention` returns (out, qk)."""

    def forward(self, scores: torch.Tensor):
        return None, scores


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.cross_attn = _Scores()
        # openai-whisper's DecodingTask builds a PyTorchInference (which MaxDecodingTask then replaces)
        # that lists each block's attn.key and attn.value modules; it never calls them
        self.attn = nn.Module()
        self.attn.key, self.attn.value = nn.Identity(), nn.Identity()


class MaxTextDecoder(nn.Module):
    """openai-whisper's `TextDecoder` call, tokens and audio features to logits in one step (language
    detection, word alignment), answered by the MAX decoder's `trace` graph; each block's `cross_attn`
    is then called with that block's alignment scores, so the hooks `whisper.timing.find_alignment`
    installs there receive what its own modules would return."""

    def __init__(self, decoder: MaxDecoder):
        super().__init__()
        self.max_decoder = decoder
        self.blocks = nn.ModuleList(_Block() for _ in range(decoder.dims.n_text_layer))
        # openai-whisper reads the model's device from its first parameter (`Whisper.device`)
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, x: torch.Tensor, xa: torch.Tensor, kv_cache: dict | None = None) -> torch.Tensor:
        if kv_cache:
            raise ValueError("the MAX decoder keeps its own cache: decode through MaxInference")
        logits, scores = self.max_decoder.align(x.cpu().numpy(), xa.detach().to("cpu", torch.float32).numpy())
        for block, s in zip(self.blocks, scores):
            block.cross_attn(torch.from_numpy(s))
        return torch.from_numpy(logits).to(xa.device)


class MaxDecoderWhisper(Whisper):
    """openai-whisper's `Whisper` whose decoder is MAX's: `decode` (what `whisper.transcribe` calls)
    through `MaxInference`, every other decoder call (language detection, word alignment) through
    `MaxTextDecoder`. No PyTorch decoder module is left in it."""

    max_decoder: MaxDecoder | None = None
    decode = decode


def with_max_decoder(decoder: MaxDecoder, state_dict) -> MaxDecoderWhisper:
    """openai-whisper's model on `state_dict`, built as `MaxDecoderWhisper`, deciding with `decoder`."""
    from maxwhisper.checkpoints import to_torch_model

    model = to_torch_model(decoder.dims, state_dict, MaxDecoderWhisper)
    model.max_decoder = decoder
    model.decoder = MaxTextDecoder(decoder)
    return model
