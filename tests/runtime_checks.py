"""Checks of the runtime paths, where a bug lives between graph calls: the decoder state's rows and
their reorder, each window's own cross-attention, the batcher's results, the encoder's batch rows.

Each check raises AssertionError naming the row, window or file that went wrong. `test_runtime.py`
runs each on the clean tree, and again under each runtime mutant of `mutants.RUNTIME_BUGS`, where it
must fail. None needs `../shared/speech`: the audio is the golden fixture's mel and eSpeak NG speech.
"""

from __future__ import annotations

import numpy as np
import torch

from maxwhisper.harness import golden, golden_decoder, producers as P
from maxwhisper.harness.golden_decoder import LOGITS
from maxwhisper.harness.registry import check_of
from maxwhisper.precision import mode

SOT, NO_TIMESTAMPS = 50257, 50362
GROUP = 3


def reorder_rows(model) -> None:
    """Two distinct audios with three beams each (rows audio by audio, as openai-whisper orders them):
    after a reorder that moves beams within each audio, every row's next logits are those of its source
    beam's tokens over its own audio, as openai-whisper's decoder computes them (the logits record's rule).
    The audios: the golden decoder fixture's encoder features (jfk.flac), and the encoder's features of
    the same speech from 5 s on (a permutation of frames would not do: cross-attention ignores order)."""
    dims = model.dims
    fx = golden_decoder.load_fixture()
    features = np.concatenate([fx.features, model.encode(_window_mels()[1][None])]).astype(np.float32)
    text = fx.tokens[0]
    tokens = np.stack([text[[0, 1 + j, 2 + j, 3 + j]] for j in range(2 * GROUP)])  # six distinct beginnings
    source = [2, 0, 0, 4, 5, 3]  # row i continues row source[i]; rows 0-2 are audio 0's, 3-5 audio 1's
    state = model.decoder.start(features, GROUP)
    state.step(tokens)
    state.reorder(source)
    last = text[10:10 + 2 * GROUP, None]
    got = state.step(last)
    history = np.concatenate([tokens[source], last], axis=1)
    rows = np.repeat(features, GROUP, axis=0)
    reference = P.torch_decoder(dims, model.state_dict, history, rows.astype(np.float64))
    same = P.torch_decoder(dims, model.state_dict, history, rows, "float32", model.device)
    check = check_of(dims)(LOGITS)
    actual = P.Trace(P.Ran("max", model.dtype, model.device, mode(model.dtype, model.device)), {LOGITS: got})
    for i in range(2 * GROUP):
        row = lambda t: P.Trace(t.ran, {LOGITS: t.arrays[LOGITS][i:i + 1, -1:]})  # noqa: E731
        c = P.judge_layer(row(actual), row(reference), row(same), check,
                          label=f"row {i} (audio {i // GROUP}, beam {i % GROUP}, from row {source[i]})")
        assert c.passed, c.report()


def _window_mels() -> list[np.ndarray]:
    """Two distinct 30 s windows: the golden fixture's jfk.flac mel, and the same from 5 s on."""
    mel = golden.load_fixture().mel[0]
    later = np.full_like(mel, mel.min())
    later[:, :-500] = mel[:, 500:]
    return [mel, later]


def windows_own_cross_attention(model, torch_model) -> None:
    """Two windows decoded one after another through the MAX decoder (as transcribe decodes a long file)
    give each the tokens openai-whisper's PyTorch decoder gives it: no state carries over between windows."""
    from whisper.decoding import DecodingOptions

    options = DecodingOptions(language="en", without_timestamps=True, fp16=False)
    for w, mel in enumerate(_window_mels()):
        m = model.decode(torch.from_numpy(mel), options)
        t = torch_model.decode(torch.from_numpy(mel), options)
        assert m.tokens == t.tokens, f"window {w}: MAX {m.text!r} vs PyTorch {t.text!r}"


SENTENCES = ("The quick brown fox jumps over the lazy dog.", "Seven red apples fell from the tree.",
             "Please call me back tomorrow morning.")


def batch_results_in_order(pipeline, audios) -> None:
    """`transcribe_many` at batch 3 gives each file the tokens of its own sequential transcription."""
    from maxwhisper.batch import transcribe_many
    from maxwhisper.transcribe import transcribe

    tokens = lambda r: [t for s in r["segments"] for t in s["tokens"]]  # noqa: E731
    batched = transcribe_many(pipeline, audios, 3)
    for i, (audio, got) in enumerate(zip(audios, batched)):
        alone = transcribe(pipeline, audio)
        assert tokens(got) == tokens(alone), f"file {i}: batched {got['text']!r} vs alone {alone['text']!r}"


def encoder_rows(model, mels: np.ndarray) -> None:
    """The production encoder on a batch of distinct mels: each row within the encoder's rule of
    openai-whisper's encoder on that row's mel."""
    from maxwhisper.harness.registry import ENCODER_OUTPUT, SPECS

    batch = P.max_encoder(model, mels, layers=False)
    reference = P.torch_encoder(model.dims, model.state_dict, mels, layers=False)
    same = P.torch_encoder(model.dims, model.state_dict, mels, "float32", model.device, layers=False)
    for i in range(len(mels)):
        row = lambda t: P.Trace(t.ran, {ENCODER_OUTPUT: t.arrays[ENCODER_OUTPUT][i:i + 1]})  # noqa: E731
        c = P.judge_layer(row(batch), row(reference), row(same), SPECS["encoder"].check(), label=f"encoder row {i}")
        assert c.passed, c.report()
