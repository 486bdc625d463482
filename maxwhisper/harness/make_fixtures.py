"""Write the golden fixtures: `python -m maxwhisper.harness.make_fixtures [encoder] [decoder]` (from
the project root; both when none is named). The decoder's (`golden_decoder.FIXTURE`) is described at
`build_decoder`; the encoder's is:

The float64 PyTorch reference encoder (openai-whisper's modules, `harness.reference.modules`) runs tiny.en on
the log-mel of ../shared/speech/jfk.flac (read in place, never copied), and `harness.golden.FIXTURE`
receives, as float32:

- `mel` (1, 80, 3000): the input, so golden tests need neither the audio nor the speech folder;
- `act/<layer id>` (1, P, channels) for every id of `maxwhisper.layers.encoder_trace`, at the time
  positions `positions/<frames>` (P = 24 here): 20 spread evenly over 0..frames-1 (first and last
  included), the last frame whose centre lies in speech and the first beyond it (the speech/padding
  boundary), the frame where the last block's output peaks (1478: values to 631), and HARD_FRAME;
  conv1 and conv1.gelu run at the mel rate (3000 frames, positions doubled), every other layer at 1500;
- `input/<layer id>`: the input of each layer a golden case runs alone (`registry.golden_cases`) whose
  input is no traced value (`Traced.input` is None: each block's `mlp_ln`, fed block input + attention
  output), as the model computed it; every other case's input is a stored layer;
- `meta/*`: FORMAT_VERSION, the weights hash, the input (mel) hash, n_samples, and the openai-whisper
  and torch versions (informational).

The float64 -> float32 rounding costs ~6e-8 relative, far below any tolerance. The output is
byte-reproducible (`fixture.save_npz` fixes the zip timestamps that np.savez_compressed would stamp).
"""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import torch
import whisper

from maxwhisper.audio import SAMPLE_RATE, load_audio, log_mel
from maxwhisper.harness import fixture, golden
from reference.capture import layer_ids, trace_encoder
from reference.modules import reference_encoder
from maxwhisper.harness.registry import golden_cases
from maxwhisper.harness.speech import speech_dir
from maxwhisper.trace import decoder_trace, encoder_trace
from maxwhisper.checkpoints import load_weights, weights_hash

N_SPREAD = 20  # evenly spread positions; with the boundary pair, the peak and HARD_FRAME: 24
# Encoder frame where MAX float32 errs most on tiny.en/jfk.flac (1.3e-2 at block 3's MLP, see the
# registry's tolerance notes): the block-3 mlp_ln input has one of the smallest spreads there (std
# 0.67), so LayerNorm amplifies upstream rounding ~10x. The reference alone does not single it out.
HARD_FRAME = 1473


def positions(frames: int, boundary: int, *special: int, spread: int = N_SPREAD) -> np.ndarray:
    """Sorted distinct time positions: `spread` spread over 0..frames-1, boundary-1, boundary, special."""
    spread = np.round(np.linspace(0, frames - 1, spread)).astype(np.int64)
    extra = [min(max(p, 0), frames - 1) for p in (boundary - 1, boundary, *special)]
    return np.unique(np.concatenate([spread, extra]))


@torch.no_grad()
def build() -> dict[str, np.ndarray]:
    where = speech_dir()
    if where is None or not (where / fixture.AUDIO).is_file():
        sys.exit(f"make_fixtures: the speech data is absent: {fixture.AUDIO} not found in ../shared/speech "
                 "(or $MAXWHISPER_SPEECH_DIR); the golden fixture cannot be (re)generated without it")
    audio = load_audio(where / fixture.AUDIO)
    mel = log_mel(audio)[None]
    dims, state_dict = load_weights(fixture.MODEL)
    encoder = reference_encoder(dims, state_dict)  # float64

    # inputs the golden cases need that no traced value holds, captured as the model computed them
    untraced = {t.id for t in encoder_trace(dims.n_audio_layer) if t.input is None}
    needed = list(dict.fromkeys(c.first for _, c in golden_cases(dims) if c.first in untraced))
    captured: dict[str, torch.Tensor] = {}
    modules = dict(encoder.named_modules())

    def keep(name):
        def hook(module, args):
            captured[name] = args[0]
        return hook

    hooks = [modules[k.removeprefix("encoder.")].register_forward_pre_hook(keep(k)) for k in needed]
    try:
        trace = trace_encoder(encoder, torch.from_numpy(mel).double())
    finally:
        for h in hooks:
            h.remove()
    ids = layer_ids(dims.n_audio_layer)
    assert list(trace) == ids, "reference trace ids differ from layer_ids"

    # speech/padding boundary: mel frame t is centred on sample t * HOP_LENGTH
    hop = whisper.audio.HOP_LENGTH
    mel_boundary = math.ceil(min(audio.size, whisper.audio.N_SAMPLES) / hop)
    last = trace[f"encoder.blocks.{dims.n_audio_layer - 1}"][0]
    peak = int(np.abs(last).max(axis=-1).argmax())
    n_mel, n_ctx = mel.shape[-1], dims.n_audio_ctx
    pos = {n_mel: positions(n_mel, mel_boundary, 2 * peak, 2 * HARD_FRAME),
           n_ctx: positions(n_ctx, math.ceil(mel_boundary / 2), peak, HARD_FRAME)}

    out: dict[str, np.ndarray] = {
        "meta/format_version": np.array(golden.FORMAT_VERSION, dtype=np.int64),
        "meta/model": np.array(fixture.MODEL),
        "meta/audio": np.array(fixture.AUDIO),
        "meta/weights_hash": np.array(weights_hash(state_dict)),
        "meta/mel_hash": np.array(fixture.float32_hash(mel)),
        "meta/n_samples": np.array(audio.size, dtype=np.int64),
        "meta/sample_rate": np.array(SAMPLE_RATE, dtype=np.int64),
        "meta/whisper_version": np.array(whisper.__version__),
        "meta/torch_version": np.array(torch.__version__),
        "mel": np.ascontiguousarray(mel, dtype=np.float32),
        "layer_ids": np.array(ids),
        "layer_frames": np.array([trace[k].shape[1] for k in ids], dtype=np.int64),
    }
    out.update({f"positions/{n}": p for n, p in pos.items()})
    for k in ids:
        out[f"act/{k}"] = np.ascontiguousarray(trace[k][:, pos[trace[k].shape[1]]], dtype=np.float32)
    for k, v in captured.items():
        out[f"input/{k}"] = np.ascontiguousarray(v.numpy()[:, pos[n_ctx]], dtype=np.float32)
    return out


def main() -> None:
    which = sys.argv[1:] or ["encoder", "decoder"]  # the decoder's features come from the encoder fixture
    if not set(which) <= {"encoder", "decoder"}:
        sys.exit(f"usage: {fixture.REGENERATE} [encoder] [decoder] (both when none is named)")
    if "encoder" in which:
        write_encoder()
    if "decoder" in which:
        write_decoder()


def write_encoder() -> None:
    arrays = build()
    golden.FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    fixture.save_npz(golden.FIXTURE, arrays)
    fx = golden.load_fixture()  # what the tests will read: it must load and be fresh
    golden.check_fresh(fx, str(arrays["meta/weights_hash"]), arrays["mel"])
    raw = sum(a.nbytes for a in arrays.values())
    acts = [k for k in arrays if re.match(r"(act|input)/", k)]
    print(f"wrote {golden.FIXTURE} ({golden.FIXTURE.stat().st_size / 1e6:.2f} MB, {raw / 1e6:.2f} MB raw): "
          f"format {fx.version}, {len(acts)} activation entries at "
          + ", ".join(f"{len(p)} of {n} frames" for n, p in fx.positions.items())
          + f"; weights {fx.weights_hash[:12]}.., mel {fx.mel_hash[:12]}.., "
          f"openai-whisper {fx.whisper_version}, torch {fx.torch_version}")


# ------------------------------------------------------------------ the decoder's fixture
# Token positions stored per layer: 16 spread over the T = 28 steps, the prompt/cache boundary pair
# (the prompt's last token, the first cached step) and the two steps nearest a tie for the top-1
# token (whose argmax a small error flips first): 18 of 28. All 28 cost 3.1 MB compressed, and with
# the 2.1 MB of features the file would pass 5 MB. A cache bug at a left-out step still shows at the
# stored steps after it, which attend to its keys and values, and in every step's top-1 token.
N_TOKEN_SPREAD = 16
N_NEAR_TIES = 2
# Logits (T x 51864 vocab, 5.8 MB) are stored at every step at LOGIT_COLUMNS columns: the TOP_K
# largest (the argmax's competition, and the row's largest |logit|, which the absolute guard scales
# by), the BOTTOM_K smallest, and the rest drawn at random without replacement (seeded, a new draw
# each step): the bulk of the vocabulary, where the RMS the rule scales by lives. The top-k bias that
# RMS up ~1.5x for MAX and PyTorch alike, so their ratio is unchanged. Two steps are also stored over
# the whole vocabulary (a bug confined to some rows of the embedding, e.g. the special tokens,
# shows there): the prompt's last (the first token openai-whisper decodes) and the one that
# predicts end of text. The argmax and the top-two gap are stored from float64 at every step, so
# the top-1 check needs no stored row.
LOGIT_COLUMNS, TOP_K, BOTTOM_K, LOGIT_SEED = 512, 16, 4, 0


def logit_columns(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T, LOGIT_COLUMNS) vocabulary columns per step of `logits` (T, n_vocab): see LOGIT_COLUMNS."""
    rows = []
    for row in logits:
        order = np.argsort(row, kind="stable")
        fixed = np.concatenate([order[::-1][:TOP_K], order[:BOTTOM_K]])
        rest = np.setdiff1d(np.arange(row.size), fixed)
        rows.append(np.sort(np.concatenate([fixed, rng.choice(rest, LOGIT_COLUMNS - fixed.size, replace=False)])))
    return np.stack(rows).astype(np.int64)


@torch.no_grad()
def build_decoder() -> dict[str, np.ndarray]:
    """The float64 decoder teacher-forced on jfk.flac's transcript over the float64 encoder's output on
    the encoder fixture's mel, rounded to the float32 features MAX receives (the reference decoder
    then reads those exact features, upcast). The speech folder is needed for the transcript only."""
    from maxwhisper.harness import golden_decoder as gd
    from reference.capture import reference_decoder_trace
    from maxwhisper.harness.speech import reference_text
    from maxwhisper.harness.inputs import PROMPT, teacher_tokens

    where = speech_dir()
    text = reference_text(where / fixture.AUDIO) if where is not None else None
    if text is None:
        sys.exit(f"make_fixtures: {fixture.AUDIO}'s transcript is absent (../shared/speech/transcripts.tsv or "
                 "$MAXWHISPER_SPEECH_DIR); the decoder fixture cannot be (re)generated without it")
    dims, state_dict = load_weights(fixture.MODEL)
    enc = golden.load_fixture()
    golden.check_fresh(enc, weights_hash(state_dict))
    features = reference_encoder(dims, state_dict)(torch.from_numpy(enc.mel).double()).numpy().astype(np.float32)
    tokens, prompt = teacher_tokens(dims, text), PROMPT
    trace = reference_decoder_trace(dims, state_dict, tokens, features.astype(np.float64))
    ids = [t.id for t in decoder_trace(dims.n_text_layer)]
    assert list(trace) == ids, "reference decoder trace ids differ from layers.decoder_trace"

    logits = trace[gd.LOGITS][0]
    top2 = np.sort(logits, axis=-1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    n_tok = tokens.shape[1]
    ties = np.argsort(gap, kind="stable")[:N_NEAR_TIES]
    token_positions = positions(n_tok, prompt, *ties, spread=N_TOKEN_SPREAD)
    frame_positions = enc.positions[dims.n_audio_ctx]
    columns = logit_columns(logits, np.random.default_rng(LOGIT_SEED))
    full_steps = np.array([prompt - 1, n_tok - 2])
    out: dict[str, np.ndarray] = {
        "meta/format_version": np.array(gd.FORMAT_VERSION, dtype=np.int64),
        "meta/model": np.array(fixture.MODEL),
        "meta/audio": np.array(fixture.AUDIO),
        "meta/text": np.array(text),
        "meta/weights_hash": np.array(weights_hash(state_dict)),
        "meta/mel_hash": np.array(enc.mel_hash),
        "meta/features_hash": np.array(fixture.float32_hash(features)),
        "meta/prompt": np.array(prompt, dtype=np.int64),
        "meta/logit_seed": np.array(LOGIT_SEED, dtype=np.int64),
        "meta/whisper_version": np.array(whisper.__version__),
        "meta/torch_version": np.array(torch.__version__),
        "features": features,
        "tokens": tokens.astype(np.int64),
        "layer_ids": np.array(ids),
        "positions/tokens": token_positions,
        "positions/frames": frame_positions,
        "logits/columns": columns,
        "logits/full_steps": full_steps,
        "logits/full": np.ascontiguousarray(trace[gd.LOGITS][:, full_steps], dtype=np.float32),
        "logits/top1": logits.argmax(-1).astype(np.int64),
        "logits/top2_gap": gap,
    }
    for k in ids:
        out[f"act/{k}"] = np.ascontiguousarray(gd.select(k, trace[k], token_positions, frame_positions, columns),
                                               dtype=np.float32)
    return out


def write_decoder() -> None:
    from maxwhisper.harness import golden_decoder as gd

    arrays = build_decoder()
    fixture.save_npz(gd.FIXTURE, arrays)
    fx = gd.load_fixture()  # what the tests will read: it must load and be fresh
    gd.check_fresh(fx, str(arrays["meta/weights_hash"]), fx.text)
    print(f"wrote {gd.FIXTURE} ({gd.FIXTURE.stat().st_size / 1e6:.2f} MB, "
          f"{sum(a.nbytes for a in arrays.values()) / 1e6:.2f} MB raw): format {fx.version}, "
          f"{len(fx.layers)} layers; {fx.tokens.shape[1]} tokens (prompt {fx.prompt}), "
          f"{len(fx.token_positions)} token positions, {len(fx.frame_positions)} frames, "
          f"logits at {fx.logit_columns.shape[1]} columns per step and in full at steps "
          f"{fx.full_steps.tolist()}; weights {fx.weights_hash[:12]}.., openai-whisper {fx.whisper_version}")


if __name__ == "__main__":
    main()
