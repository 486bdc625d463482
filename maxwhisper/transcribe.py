"""Transcription: openai-whisper's own decoding machinery on the MAX encoder and decoder.

Nothing of the decoding loop is rewritten. `pipeline_model` returns openai-whisper's `Whisper` (same
weights) whose `encoder` submodule calls the MAX encoder graph and whose `decode` asks the MAX
decoder for logits (`maxwhisper.inference`), so `whisper.transcribe` (temperature fallback, timestamp
rules, 30 s windows with seek, condition_on_previous_text, writers) runs unchanged. Either part can be
PyTorch's instead, for comparison.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING

import numpy as np
import torch
import whisper
from torch import nn

from maxwhisper.audio import load_audio
from maxwhisper.inference import with_max_decoder
from maxwhisper.checkpoints import set_heads, to_torch_model

if TYPE_CHECKING:  # the model imports this module: no import back
    from maxwhisper.model import MaxWhisper

# Greedy decoding without temperature fallback: deterministic, so two pipelines can be compared token by token.
GREEDY = dict(temperature=0.0, fp16=False)

_threads = threading.local()  # torch's thread count is OpenMP's, which each thread keeps for itself


@contextlib.contextmanager
def torch_beside_max(model: whisper.model.Whisper):
    """openai-whisper's per-token torch work (logit filters, token updates, the mel) on one torch thread
    in the calling thread while `model`'s decoder runs on MAX: MAX's CPU workers keep polling the cores
    after each call, and a second torch thread only fights them (benchmarks/README.md has the
    measurement). A PyTorch decoder keeps its threads. `torch.set_num_threads` sets only the calling
    thread's OpenMP team (and the count new threads start with), so every thread that runs torch work
    beside MAX enters this itself: a batch's decoding thread (`batch.transcribe_many`, the server's
    engine) as well as each file's worker. Restored when that thread's outermost entry leaves."""
    if not hasattr(model.decoder, "max_decoder"):
        yield
        return
    depth = getattr(_threads, "depth", 0)
    if depth == 0:
        _threads.saved = torch.get_num_threads()
        torch.set_num_threads(1)
    _threads.depth = depth + 1
    try:
        yield
    finally:
        _threads.depth -= 1
        if _threads.depth == 0:
            torch.set_num_threads(_threads.saved)


class MaxEncoder(nn.Module):
    """A torch module that runs `MaxWhisper.encode`: (batch, n_mels, 3000) -> (batch, 1500, n_state)."""

    def __init__(self, model: MaxWhisper):
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        features = self.model.encode(mel.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(features).to(mel.device)


def pipeline_model(model: MaxWhisper, encoder: str = "max", decoder: str = "max") -> whisper.model.Whisper:
    """openai-whisper's model on `model`'s weights, its encoder and its decoder each on MAX ("max")
    or PyTorch ("torch"): ("max", "max") is the MAX pipeline, ("torch", "torch") openai-whisper's.
    It reads `model.alignment_heads` for word timestamps (openai-whisper's default where None)."""
    for part, value in (("encoder", encoder), ("decoder", decoder)):
        if value not in ("max", "torch"):
            raise ValueError(f"{part} must be 'max' or 'torch', got {value!r}")
    torch_model = (with_max_decoder(model.decoder, model.state_dict) if decoder == "max"
                   else to_torch_model(model.dims, model.state_dict))
    set_heads(torch_model, model.alignment_heads)  # as whisper.load_model sets its table's
    if encoder == "max":
        torch_model.encoder = MaxEncoder(model)  # a submodule of the model built here, not the caller's
    return torch_model


def transcribe(model: MaxWhisper | whisper.model.Whisper, audio: str | os.PathLike | np.ndarray,
               **options) -> dict:
    """`whisper.transcribe` with the MAX encoder; `audio` is a file or float32 16 kHz samples.

    Options are openai-whisper's; the default is greedy decoding (temperature 0, no fallback).
    A `MaxWhisper` is wrapped by `pipeline_model` on each call; pass the wrapped model to reuse it.
    """
    if hasattr(model, "encode_trace"):  # a MaxWhisper (duck-typed: model.py imports this module)
        model = pipeline_model(model)
    if not isinstance(audio, np.ndarray):
        audio = load_audio(audio)  # openai-whisper's own loader needs the ffmpeg program
    if audio.ndim != 1 or audio.size == 0 or not np.isfinite(audio).all():
        raise ValueError("audio must be non-empty, finite, 1-D float32 samples at 16 kHz")
    with torch_beside_max(model):
        return whisper.transcribe(model, audio.astype(np.float32), **{**GREEDY, **options})
