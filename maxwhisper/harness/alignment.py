"""Word alignment judged as layers: openai-whisper's `timing.find_alignment`, step by step, on MAX's
cross-attention scores, against the same steps in float64 and PyTorch float32.

find_alignment runs the model once over [sot..., no_timestamps, text..., eot], keeps the `qk` of the
alignment heads, then: the audio's frames only, a softmax over frames, each frame standardized over the
tokens, a median filter along frames (width 7), the mean over heads, the text rows, and DTW. Each step
is a row here, judged by the `alignment_scores` record's rule (MAX's error over PyTorch float32's,
both against float64); the steps after the scores are openai-whisper's code run on each side's
scores (float32 on MAX's and PyTorch's, as the pipeline runs them; float64 on the reference's), so a
row that fails first there says which step amplified what. The last check is DTW's result: each
token's start frame (the word boundaries) equal to float64's wherever PyTorch float32's is.

The reference reads openai-whisper's heads for the model (`weights.alignment_heads`, what
`whisper.load_model` sets); MAX reads the heads its pipeline reads (`pipeline_model`), so a model
aligning on other heads fails at `alignment.scores`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import whisper
from whisper.audio import N_FRAMES, N_SAMPLES
from whisper.timing import dtw, median_filter

from maxwhisper.harness.compare import Comparison, compare
from maxwhisper.harness.registry import SPECS

MEDFILT_WIDTH, QK_SCALE = 7, 1.0  # find_alignment's defaults, as transcribe calls it
STEPS = ("alignment.scores", "alignment.softmax", "alignment.standardized", "alignment.filtered",
         "alignment.matrix")


@dataclass
class Alignment:
    rows: list[Comparison]      # one per step of `STEPS`
    starts: dict                # side -> each text token's DTW start frame (max, yardstick, reference)
    moved: list[int]            # tokens whose start MAX moves off float64's where PyTorch float32 keeps it

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows) and not self.moved

    def report(self) -> str:
        lines = [r.report() for r in self.rows]
        y = sum(a != b for a, b in zip(self.starts["yardstick"], self.starts["reference"]))
        lines.append(f"DTW starts of {len(self.starts['reference'])} tokens: MAX moves {len(self.moved)} "
                     f"that PyTorch float32 keeps {self.moved[:8]}; PyTorch float32 moves {y}")
        return "\n".join(lines)


def steps(scores: list[np.ndarray], heads: list[list[int]], num_frames: int, n_sot: int,
          dtype: torch.dtype) -> dict[str, np.ndarray]:
    """find_alignment's lines after the model call, in `dtype`, every intermediate kept: `scores` is each
    block's (1, n_head, n_tok, n_audio_ctx) qk."""
    w = torch.stack([torch.from_numpy(np.asarray(scores[layer][0, head])) for layer, head in heads]).to(dtype)
    out = {}
    w = out["alignment.scores"] = w[:, :, : num_frames // 2]
    w = out["alignment.softmax"] = (w * QK_SCALE).softmax(dim=-1)
    std, mean = torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)
    w = out["alignment.standardized"] = (w - mean) / std
    w = out["alignment.filtered"] = median_filter(w, MEDFILT_WIDTH)
    out["alignment.matrix"] = w.mean(axis=0)[n_sot:-1]
    return {k: v.numpy() for k, v in out.items()}


def starts(matrix: np.ndarray) -> list[int]:
    """Each text token's first frame on DTW's path (find_alignment's `jumps`), the word boundaries."""
    text_indices, time_indices = dtw(-torch.from_numpy(np.asarray(matrix, np.float64)))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    return time_indices[jumps].tolist()


def window(audio: np.ndarray) -> tuple[np.ndarray, int]:
    """The first 30 s window's mel as `whisper.transcribe` cuts it, and its frame count."""
    mel = whisper.log_mel_spectrogram(torch.from_numpy(np.asarray(audio, np.float32)), padding=N_SAMPLES)
    frames = min(N_FRAMES, mel.shape[-1] - N_FRAMES)
    return whisper.pad_or_trim(mel[:, :frames], N_FRAMES).numpy()[None], frames


def scores_of(dims, state_dict, mel: np.ndarray, tokens: np.ndarray, dtype: torch.dtype) -> list[np.ndarray]:
    """openai-whisper's modules in `dtype` (float64: the reference; float32: the yardstick): every
    block's alignment scores over its own encoder's output, as find_alignment's model call."""
    from reference.capture import reference_decoder_trace, reference_encode
    from reference.modules import alignment_scores, load

    features = reference_encode(dims, state_dict, mel, dtype)
    trace = reference_decoder_trace(dims, state_dict, tokens, features, dtype)
    out = []
    with torch.no_grad():
        for i in range(dims.n_text_layer):
            module = load(alignment_scores(dims), state_dict, f"decoder.blocks.{i}.cross_attn.", dtype)
            x = torch.from_numpy(trace[f"decoder.blocks.{i}.cross_attn_ln"]).to(dtype)
            out.append(module(x, torch.from_numpy(features).to(dtype)).numpy())
    return out


def judge(model, audio: np.ndarray, text_tokens: list[int], heads: list[list[int]] | None = None,
          max_scores: list[np.ndarray] | None = None) -> Alignment:
    """find_alignment's steps for `text_tokens` (one window's) on `audio`'s first window: MAX's (the
    model's encoder and decoder trace graph, its pipeline's heads) against float64's and PyTorch
    float32's on `heads` (default: openai-whisper's table for `model.name`, else the model's own, else
    openai-whisper's default). `max_scores`: MAX's scores, where already run."""
    from maxwhisper.transcribe import pipeline_model
    from maxwhisper.checkpoints import alignment_heads

    pipeline = pipeline_model(model, "torch", "torch")  # builds no MAX graph; its heads are MAX's pipeline's
    tokenizer = whisper.tokenizer.get_tokenizer(pipeline.is_multilingual, num_languages=pipeline.num_languages,
                                                language="en", task="transcribe")
    tokens = np.array([[*tokenizer.sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]])
    mel, frames = window(audio)
    if max_scores is None:
        _, max_scores = model.decoder.align(tokens, model.encode(mel))
    ours = pipeline.alignment_heads.indices().T.tolist()
    theirs = (heads or (alignment_heads(model.name, model.dims)[0] if model.name else None)
              or model.alignment_heads or torch.nonzero(_default_heads(model.dims)).tolist())
    n_sot = len(tokenizer.sot_sequence)
    sides = {"max": steps(max_scores, ours, frames, n_sot, torch.float32),
             "yardstick": steps(scores_of(model.dims, model.state_dict, mel, tokens, torch.float32), theirs, frames,
                                n_sot, torch.float32),
             "reference": steps(scores_of(model.dims, model.state_dict, mel, tokens, torch.float64), theirs, frames,
                                n_sot, torch.float64)}
    check = SPECS["alignment_scores"].check()
    rows = [compare(step, sides["max"][step], sides["reference"][step], check, sides["yardstick"][step])
            for step in STEPS]
    first = {side: starts(s["alignment.matrix"]) for side, s in sides.items()}
    moved = [i for i, (m, y, r) in enumerate(zip(first["max"], first["yardstick"], first["reference"]))
             if m != r and y == r]
    return Alignment(rows, first, moved)


def _default_heads(dims) -> torch.Tensor:
    """openai-whisper's default: every head of the last half of the decoder's layers."""
    mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    mask[dims.n_text_layer // 2:] = True
    return mask
