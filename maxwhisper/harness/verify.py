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
    return quantized.interleave(rows, extra)


def run(model: MaxWhisper, audio: np.ndarray, text: str = DEFAULT_SENTENCE) -> Verification:
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
    its quantized products, and each of them is judged again on MAX's own input (`harness.quantized`)."""
    from maxwhisper.harness.seeks import encoded_windows

    dims, sd, dtype, device = model.dims, model.state_dict, model.dtype, model.device
    check, inputs = check_of(dims, dtype, guard=True), input_of(dims)
    ordered = dtype == "float32"
    quantize = dtype if row(dtype).quantized else None  # the reference computes the same quantized products
    found = encoded_windows(dims, sd, audio)
    windows, first = [], None
    for seek, mel in found.windows:
        encoder = [producers.max_encoder(model, mel), producers.torch_encoder(dims, sd, mel, quantize=quantize),
                   producers.torch_encoder(dims, sd, mel, dtype, device)]
        order = producers.order_encoder(dims, sd, mel) if ordered else None
        rows = producers.judge(*encoder, check, inputs, order=order)
        windows.append(Window(seek, _on_max_inputs(model, rows, encoder[0]) if quantize else rows))
        first = first or encoder
    text = found.first_text if len(windows) > 1 else text
    features, tokens = first[1].arrays["encoder.ln_post"], teacher_tokens(dims, text)
    decoder = [producers.max_decoder(model, tokens, features, PROMPT),
               producers.torch_decoder(dims, sd, tokens, features, quantize=quantize),
               producers.torch_decoder(dims, sd, tokens, features, dtype, device)]
    order = producers.order_decoder(dims, sd, tokens, features) if ordered else None
    rows = producers.judge(*decoder, check, inputs, order=order)
    rows = _on_max_inputs(model, rows, decoder[0]) if quantize else rows
    got, logits, same = (t.arrays["decoder.logits"][0] for t in decoder)
    top2 = np.sort(logits, axis=-1)[:, -2:]
    failures = top1_failures(got, logits.argmax(-1), top2[:, 1] - top2[:, 0], top1_tie(same, logits))
    equal = int((got.argmax(-1) == logits.argmax(-1)).sum())
    agreement = dict(text=text, steps=int(tokens.shape[1]), top1_equal=equal, top1_failures=failures)
    return Verification(windows, rows, agreement, dtype, device, first[0].ran.mode, first[2].ran.mode,
                        producers.ORDER.mode if ordered else "")


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
