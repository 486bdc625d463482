"""The windows openai-whisper encodes when it transcribes an audio: its seeks, not fixed 30 s slices.

openai-whisper's `transcribe` moves `seek` by the last timestamp a window decoded, cuts
`mel[:, seek:seek + 3000]` from the whole file's log-mel and pads it with zeros; the hackathon port
judged the first 30 s and transcribed the rest unjudged. `verify` judges every window found here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOOKAHEAD = 8  # mel frames matched to place a window in the whole file's log-mel


@dataclass
class Found:
    windows: list[tuple[int, np.ndarray]]  # (seek in mel frames, the (1, n_mels, 3000) mel encoded)
    first_text: str                         # openai-whisper's text of the first window

    @property
    def seeks(self) -> list[int]:
        return [seek for seek, _ in self.windows]


def encoded_windows(dims, state_dict, audio: np.ndarray) -> Found:
    """Run openai-whisper's `transcribe` (its default options: greedy with temperature fallback, float32
    on the CPU) on `audio` and return each distinct window its encoder saw, in order, with its seek.
    A window re-encoded by the fallback counts once."""
    import torch
    import whisper
    from whisper.audio import N_SAMPLES, log_mel_spectrogram

    from maxwhisper.checkpoints import to_torch_model

    model = to_torch_model(dims, state_dict)
    seen: list[np.ndarray] = []
    hook = model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().numpy().copy()))
    try:
        with torch.no_grad():
            result = whisper.transcribe(model, np.asarray(audio, np.float32), fp16=False, verbose=None)
    finally:
        hook.remove()
    whole = log_mel_spectrogram(np.asarray(audio, np.float32), dims.n_mels, padding=N_SAMPLES).numpy()
    windows: list[tuple[int, np.ndarray]] = []
    for mel in seen:
        seek = _place(whole, mel[0], windows[-1][0] if windows else 0)
        if not windows or windows[-1][0] != seek:
            windows.append((seek, mel))
    first = windows[0][0]
    text = "".join(s["text"] for s in result["segments"] if s["seek"] == first).strip()
    return Found(windows, text)


def first_window(dims, audio: np.ndarray) -> Found:
    """The window openai-whisper's `transcribe` encodes first, at seek 0, without transcribing: where its
    text (and so every later seek) is noise, as with random weights."""
    from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram

    whole = log_mel_spectrogram(np.asarray(audio, np.float32), dims.n_mels, padding=N_SAMPLES).numpy()
    return Found([(0, np.ascontiguousarray(whole[None, :, :N_FRAMES]))], "")


def _place(whole: np.ndarray, window: np.ndarray, start: int) -> int:
    """The frame of `whole` at which `window` begins (its first LOOKAHEAD frames equal), from `start` on."""
    head = window[:, :LOOKAHEAD]
    for seek in np.flatnonzero(whole[0, start:] == head[0, 0]) + start:
        if np.array_equal(whole[:, seek:seek + LOOKAHEAD], head):
            return int(seek)
    raise ValueError("a window openai-whisper encoded is not in the file's log-mel: its mel differs from ours")
