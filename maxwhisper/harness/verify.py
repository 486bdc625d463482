"""`maxwhisper verify`'s work: the MAX encoder and decoder against the float64 reference layer by
layer, and both pipelines' transcripts. The CLI only parses arguments and prints what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from maxwhisper.audio import load_audio, synthesize
from maxwhisper.harness import producers
from maxwhisper.harness.compare import FIGURE_NAMES, Comparison, first_failure, margins, margins_row, top1_failures, top1_tie
from maxwhisper.harness.inputs import PROMPT, teacher_tokens
from maxwhisper.harness.registry import check_of, input_of
from maxwhisper.harness.speech import reference_text, speech_dir
from maxwhisper.model import MaxWhisper
from maxwhisper.precision import row

# Spoken by eSpeak NG when the shared speech data (and so jfk.flac) is absent.
DEFAULT_SENTENCE = "And so my fellow Americans, ask not what your country can do for you."


@dataclass
class Window:
    """One window openai-whisper encodes: where it starts, and its encoder rows."""

    seek: int  # its first mel frame (100 a second), as openai-whisper's transcribe seeks
    comparisons: list[Comparison]

    @property
    def start_s(self) -> float:
        return self.seek / 100

    @property
    def first_failure(self) -> Comparison | None:
        return first_failure(self.comparisons)

    def summary(self) -> dict:
        bad = self.first_failure
        return {"seek": self.seek, "start_s": self.start_s, "passed": bad is None,
                "first_failure": bad.layer if bad else None,
                "margins": margins_row(self.comparisons)}


@dataclass
class Verification:
    """One precision's verification: every window's encoder rows, then the decoder's on the first
    window, the decoder's top-1 agreement, what each side ran (MAX's mode, the yardstick's and, in
    float32, the sequential-order one's), and, once `add_transcripts` ran, both transcripts."""

    windows: list[Window]
    decoder_rows: list[Comparison]
    decoder: dict  # teacher-forced text, steps, top1_equal, top1_failures
    dtype: str = "float32"
    device: str = "cpu"
    mode: str = ""  # MAX's numeric mode (precision.mode)
    yardstick: str = ""  # PyTorch's, read back from its flags (reference.yardstick.describe)
    order: str = ""  # the second yardstick's (float32 only), `producers.ORDER`
    streamed: bool = False  # the float64 reference judged as computed (`run`'s `stream`)
    transcripts: dict = field(default_factory=dict)

    @property
    def comparisons(self) -> list[Comparison]:
        """The first window's encoder rows, then the decoder's: the table, the plot and the JSON rows."""
        return self.windows[0].comparisons + self.decoder_rows

    @property
    def comparisons_all(self) -> list[Comparison]:
        """Every window's encoder rows, then the decoder's."""
        return [c for w in self.windows for c in w.comparisons] + self.decoder_rows

    @property
    def first_failure(self) -> Comparison | None:
        return first_failure(self.comparisons_all)

    @property
    def worst_window(self) -> Window:
        """The window whose least margin (k over the ratio, any figure) is smallest, failures first."""
        return min(self.windows, key=lambda w: (w.first_failure is None,
                                                min((m for m, _, _ in margins(w.comparisons).values()), default=float("inf"))))

    @property
    def margins(self) -> dict[str, tuple[float, float, str]]:
        """figure -> (margin, ratio, layer) over every window and the decoder (`compare.margins`)."""
        return margins(self.comparisons_all)

    @property
    def passed(self) -> bool:
        return self.first_failure is None and not self.decoder.get("top1_failures")


SEED = 0  # verify --random-weights: the same weights on every run and machine


def random_model(name: str) -> tuple:
    """(dims, state dict, alignment heads, where they come from) of seeded random weights at the true
    size `name` names (`maxwhisper.sizes`): trained-scale (`inputs.random_weights`), heads as
    openai-whisper's table has them for the name, else its default."""
    from maxwhisper.checkpoints import alignment_heads
    from maxwhisper.harness.inputs import random_weights
    from maxwhisper.sizes import SIZES

    if name not in SIZES:
        raise ValueError(f"--random-weights: {name!r} is not a size (one of {', '.join(SIZES)}); "
                         "a checkpoint's own weights load without the flag")
    dims = SIZES[name]
    heads, why = alignment_heads(name, dims) if not name.startswith("distil-") else \
        (None, "openai-whisper's default: every head of the last half of the decoder's layers")
    return dims, random_weights(np.random.default_rng(SEED), dims, prefix=""), heads, why


def default_audio(path: str | None = None) -> tuple[str, np.ndarray]:
    """(what it is, 16 kHz samples): `path`, else jfk.flac from the speech data, else eSpeak NG."""
    if path is not None:
        return path, load_audio(path)
    found = speech_dir()
    if found is not None:
        return str(found / "jfk.flac"), load_audio(found / "jfk.flac")
    return f"eSpeak NG: {DEFAULT_SENTENCE!r}", synthesize(DEFAULT_SENTENCE)


def _on_max_inputs(model: MaxWhisper, rows: list[Comparison], trace) -> list[Comparison]:
    """A quantized precision's rows, each quantized product judged again on MAX's own input after its
    chained row (`harness.quantized`: chained, a code flip upstream hides a small bug)."""
    from maxwhisper.harness import quantized

    extra = quantized.judge_on_max_inputs(trace.arrays, model.dims, model.state_dict, model.form,
                                          check_of(model.dims, model.dtype))
    rows = quantized.interleave(rows, extra)
    if model.form.products == "int8":
        rows = quantized.unjudged_after_codes(rows, quantized.products(model.dims, model.state_dict, model.form))
    return rows


STREAM_BYTES = 1 << 30  # a float64 encoder trace above this (small and up) is judged as it is computed


def run(model: MaxWhisper, audio: np.ndarray, text: str = DEFAULT_SENTENCE, stream: bool | None = None,
        seeks: bool = True) -> Verification:
    """`maxwhisper verify` for one model (one precision). Encoder rows, for every window openai-whisper's
    `transcribe` encodes (`seeks.encoded_windows`): the MAX encoder traced and the reference, every
    layer compared; the row `encoder` is the production graph (no trace outputs), which users run.
    Then decoder rows on the first window: the MAX decoder teacher-forced on `text` (on a longer audio,
    openai-whisper's own text of that window) through the KV cache, the prompt in one step and then
    one token per step, over the float64 reference encoder's features, against openai-whisper's
    decoder on the same features; plus every step's top-1 token compared. The yardstick is
    openai-whisper in the model's precision (`maxwhisper.precision`), and in float32 also float32 in
    sequential summation order where that errs more (`reference.sequential`); the check is that
    precision's; every trace comes from a `producers` producer. A quantized precision's reference computes
    its quantized products, and each of them is judged again on MAX's own input (`harness.quantized`).

    `stream` (default: when the float64 encoder trace passes `STREAM_BYTES`, as from small up): the
    float64 reference is judged as it is computed (`producers.judge_stream`), so a large model's trace
    need not fit in memory, and the sequential-order yardstick, whose cost grows with the model (~12 s
    a window for tiny.en, ~80x that for large-v3), is computed only once a row fails against PyTorch's
    error alone: a unit it could only widen, so no verdict changes.

    `seeks=False` (random weights: openai-whisper's text, and so its seeks, are noise) judges only the
    window at seek 0 (`seeks.first_window`), without openai-whisper's transcription of the audio: up to six
    fallback decodes, each re-encoding, minutes at large-v3's size."""
    from maxwhisper.harness.seeks import encoded_windows, first_window

    dims, sd, dtype, device = model.dims, model.state_dict, model.dtype, model.device
    check, inputs = check_of(dims, dtype, guard=True), input_of(dims)
    quantize = dtype if row(dtype).quantized else None  # the reference computes the same quantized products
    stream = (producers.trace_bytes(dims) > STREAM_BYTES) if stream is None else stream
    if stream and quantize:
        raise ValueError(f"{dtype}: a quantized precision's rows are judged again on MAX's inputs, which a stream drops")
    ordered = dtype == "float32"
    found = encoded_windows(dims, sd, audio) if seeks else first_window(dims, audio)
    windows, features, modes = [], None, None
    for seek, mel in found.windows:
        actual, yardstick = producers.max_encoder(model, mel), producers.torch_encoder(dims, sd, mel, dtype, device)
        modes = modes or (actual.ran.mode, yardstick.ran.mode)
        order = (lambda mel=mel: producers.order_encoder(dims, sd, mel)) if ordered else None
        if stream:
            rows, kept = producers.judge_stream(
                actual, lambda sink, mel=mel: producers.torch_encoder(dims, sd, mel, sink=sink), yardstick, check,
                inputs, order=order)
        else:
            reference = producers.torch_encoder(dims, sd, mel, quantize=quantize)
            rows, kept = producers.judge(actual, reference, yardstick, check, inputs,
                                         order=order() if ordered else None), reference.arrays
            rows = _on_max_inputs(model, rows, actual) if quantize else rows
        windows.append(Window(seek, rows))
        features = kept["encoder.ln_post"] if features is None else features
    text = found.first_text if len(windows) > 1 else text
    tokens = teacher_tokens(dims, text)
    decoder = [producers.max_decoder(model, tokens, features, PROMPT),
               producers.torch_decoder(dims, sd, tokens, features, quantize=quantize, per_part=stream),
               producers.torch_decoder(dims, sd, tokens, features, dtype, device)]
    order = (lambda: producers.order_decoder(dims, sd, tokens, features)) if ordered else None
    rows = producers.judge(*decoder, check, inputs, order=order if stream else order() if ordered else None)
    rows = _on_max_inputs(model, rows, decoder[0]) if quantize else rows
    got, logits, same = (t.arrays["decoder.logits"][0] for t in decoder)
    top2 = np.sort(logits, axis=-1)[:, -2:]
    failures = top1_failures(got, logits.argmax(-1), top2[:, 1] - top2[:, 0], top1_tie(same, logits))
    equal = int((got.argmax(-1) == logits.argmax(-1)).sum())
    agreement = dict(text=text, steps=int(tokens.shape[1]), top1_equal=equal, top1_failures=failures)
    return Verification(windows, rows, agreement, dtype, device, modes[0], modes[1],
                        (producers.ORDER.mode + (", computed where PyTorch's error alone fails a row" if stream else ""))
                        if ordered else "", stream)


def format_windows(result: Verification) -> str:
    """One line per window openai-whisper encoded: its start, its least margin per figure, its verdict;
    then the worst window named."""
    lines = [f"the {len(result.windows)} windows openai-whisper encodes (its seeks), encoder rows each:"]
    for i, w in enumerate(result.windows):
        m = margins(w.comparisons)
        bad = w.first_failure
        lines.append(f"  window {i + 1} at {w.start_s:6.2f} s: " + "  ".join(
            f"{FIGURE_NAMES[f]} {ratio:.2f} at {layer} (margin {mg:.2f}x)" for f, (mg, ratio, layer) in m.items())
            + (f"  FAIL at {bad.layer}" if bad else "  ok"))
    worst = result.worst_window
    lines.append(f"worst window: {result.windows.index(worst) + 1} at {worst.start_s:.2f} s")
    return "\n".join(lines)


def add_transcripts(result: Verification, model: MaxWhisper, audio: np.ndarray, source: str) -> dict:
    """Both pipelines' transcripts (`end_to_end`) into `result`: the slow part, run after every table."""
    result.transcripts = end_to_end(model, audio, source)
    return result.transcripts


def end_to_end(model: MaxWhisper, audio: np.ndarray, source: str) -> dict:
    """Both pipelines' greedy transcripts (MAX encoder and decoder; openai-whisper's PyTorch) and their WERs."""
    from maxwhisper.harness.wer import wer
    from maxwhisper.transcribe import pipeline_model, transcribe

    text = {impl: transcribe(pipeline_model(model, impl, impl), audio)["text"].strip() for impl in ("max", "torch")}
    out = dict(max=text["max"], torch=text["torch"], wer_max_vs_torch=wer(text["torch"], text["max"]))
    reference = reference_text(source)
    if reference is not None:
        out.update(reference=reference, wer_max=wer(reference, text["max"]), wer_torch=wer(reference, text["torch"]))
    return out


def report(model_name: str, model: MaxWhisper, source: str, device: str, result: Verification) -> dict:
    """What `maxwhisper verify --json` writes (and `fixtures/tiny_en_errors.json` holds)."""
    from maxwhisper.checkpoints import weights_hash

    bad = result.first_failure
    return {"model": model_name, "weights_sha256": weights_hash(model.state_dict), "audio": source,
            "device": device, "dtype": result.dtype, "mode": result.mode,
            "yardstick": result.yardstick, "order_yardstick": result.order, "passed": result.passed,
            "first_failure": bad.layer if bad else None, "transcripts": result.transcripts,
            "margins": margins_row(result.comparisons_all),
            "windows": [w.summary() for w in result.windows], "worst_window": result.worst_window.seek,
            "decoder": result.decoder, "layers": [c.row() for c in result.comparisons]}
