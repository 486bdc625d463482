"""The MAX decoder plugged into openai-whisper's decoding machinery, which runs unchanged.

openai-whisper's `DecodingTask` asks an `Inference` object for logits, for beam search's cache
rearrangement and for cleanup. `MaxInference` answers from `maxwhisper.decoder` (the KV cache stays
in MAX buffers); `decode` is openai-whisper's `decode` with that one object swapped in, so its logit
filters, timestamp rules, suppressed tokens, beam search, best_of, temperature fallback, prompts,
30 s windowing with seek and output writers are all its own code.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from whisper.decoding import BeamSearchDecoder, DecodingOptions, DecodingTask, Inference
from whisper.model import Whisper

from maxwhisper.decoder import DecoderState, MaxDecoder


class MaxInference(Inference):
    """openai-whisper's `PyTorchInference`, answered by the MAX decoder."""

    def __init__(self, decoder: MaxDecoder, initial_token_length: int):
        self.decoder, self.initial_token_length = decoder, initial_token_length
        self.state: DecoderState | None = None

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        if self.state is None:  # first call of a decoding run: cross-attention K/V, empty cache
            group, rest = divmod(tokens.shape[0], audio_features.shape[0])
            if rest:
                raise ValueError(f"{tokens.shape[0]} token rows for {audio_features.shape[0]} audio features")
            features = audio_features.detach().to("cpu", torch.float32).numpy()
            self.state = self.decoder.start(features, group)
        if tokens.shape[-1] > self.initial_token_length:
            tokens = tokens[:, -1:]  # as PyTorchInference: after the prompt, only the new token
        logits = self.state.step(tokens.cpu().numpy())
        return torch.from_numpy(logits).to(audio_features.device)

    def rearrange_kv_cache(self, source_indices) -> None:
        if self.state is not None:
            self.state.reorder(source_indices)

    def cleanup_caching(self) -> None:
        self.state = None


class MaxDecodingTask(DecodingTask):
    def __init__(self, model: MaxDecoderWhisper, options: DecodingOptions):
        super().__init__(model, options)
        self.inference = MaxInference(model.max_decoder, len(self.initial_tokens))
        if isinstance(self.decoder, BeamSearchDecoder):  # it rearranges the cache through this object
            self.decoder.inference = self.inference


@torch.no_grad()
def decode(model: MaxDecoderWhisper, mel: torch.Tensor, options: DecodingOptions = DecodingOptions(), **kwargs):
    """openai-whisper's `decode`, line for line, with `MaxDecodingTask` for `DecodingTask`."""
    if single := mel.ndim == 2:
        mel = mel.unsqueeze(0)
    if kwargs:
        options = replace(options, **kwargs)
    result = MaxDecodingTask(model, options).run(mel)
    return result[0] if single else result


class MaxDecoderWhisper(Whisper):
    """openai-whisper's `Whisper` whose `decode` (what `whisper.transcribe` calls) uses the MAX decoder.

    Its PyTorch `decoder` keeps the weights for what openai-whisper runs outside `decode`: language
    detection of multilingual models and word timestamps (cross-attention alignment).
    """

    max_decoder: MaxDecoder | None = None
    decode = decode


def with_max_decoder(decoder: MaxDecoder, state_dict) -> MaxDecoderWhisper:
    """openai-whisper's model on `state_dict`, built as `MaxDecoderWhisper`, deciding with `decoder`."""
    from maxwhisper.weights import to_torch_model

    model = to_torch_model(decoder.dims, state_dict, MaxDecoderWhisper)
    model.max_decoder = decoder
    return model
