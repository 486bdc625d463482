"""`maxwhisper verify`'s work: the MAX encoder and decoder against the float64 reference layer by
layer, and both pipelines' transcripts. The CLI only parses arguments and prints what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from maxwhisper.audio import load_audio, log_mel, synthesize
from maxwhisper.harness.compare import Comparison, compare, compare_traces, first_failure, top1_failures, top1_tie
from maxwhisper.harness.inputs import PROMPT, teacher_tokens
from maxwhisper.harness.registry import ENCODER_OUTPUT, check_of, input_of
from maxwhisper.harness.runners import torch_device
from maxwhisper.harness.speech import reference_text, speech_dir
from maxwhisper.model import MaxWhisper
from maxwhisper.precision import mode
from reference.capture import reference_decoder_trace, reference_trace
from reference.yardstick import describe

# Spoken by eSpeak NG when the shared speech data (and so jfk.flac) is absent.
DEFAULT_SENTENCE = "And so my fellow Americans, ask not what your country can do for you."


@dataclass
class Verification:
    """One precision's verification: every layer's comparison, the decoder's top-1 agreement, what
    each side ran (MAX's mode, the yardstick's), and, once `add_transcripts` ran, both transcripts."""

    comparisons: list[Comparison]
    decoder: dict  # teacher-forced text, steps, top1_equal, top1_failures
    dtype: str = "float32"
    device: str = "cpu"
    mode: str = ""  # MAX's numeric mode (precision.mode)
    yardstick: str = ""  # PyTorch's, read back from its flags (reference.yardstick.describe)
    transcripts: dict = field(default_factory=dict)

    @property
    def first_failure(self) -> Comparison | None:
        return first_failure(self.comparisons)

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


def run(model: MaxWhisper, audio: np.ndarray, text: str = DEFAULT_SENTENCE) -> Verification:
    """`maxwhisper verify` for one model (one precision): `verify_model`'s rows and decoder agreement,
    with the numeric modes MAX and the yardstick ran in."""
    rows, decoder = verify_model(model, audio, text)
    return Verification(rows, decoder, model.dtype, model.device, mode(model.dtype, model.device, model.form.target),
                        describe(model.dtype, model.device))


def add_transcripts(result: Verification, model: MaxWhisper, audio: np.ndarray, source: str) -> dict:
    """Both pipelines' transcripts (`end_to_end`) into `result`: the slow part, run after every table."""
    result.transcripts = end_to_end(model, audio, source)
    return result.transcripts


def verify_model(model: MaxWhisper, audio: np.ndarray, text: str = DEFAULT_SENTENCE) -> tuple[list[Comparison], dict]:
    """Encoder rows: the MAX encoder traced and the reference on the first 30 s of `audio`, every layer
    compared; the last row, `encoder`, is the production graph (no trace outputs), which users run.
    In the model's dtype the yardstick is openai-whisper's in that dtype (`maxwhisper.precision`) and
    the check is that dtype's. Then decoder rows: the MAX decoder teacher-forced on `text`
    (the prompt in one step, then one token per step, through the KV cache) over the float64
    reference encoder's features, against openai-whisper's decoder on the same features; plus every
    step's top-1 token compared."""
    mel = log_mel(audio, model.dims.n_mels)[None]
    expected = reference_trace(model.dims, model.state_dict, mel)
    device = torch_device(model.device)
    same = reference_trace(model.dims, model.state_dict, mel, model.dtype, device)
    check = check_of(model.dims, model.dtype, guard=True)
    rows = compare_traces(model.encode_trace(mel), expected, check, same, input_of(model.dims))
    rows.append(compare(ENCODER_OUTPUT, model.encode(mel), expected["encoder.ln_post"], check(ENCODER_OUTPUT),
                        same["encoder.ln_post"]))
    features, tokens = expected["encoder.ln_post"], teacher_tokens(model.dims, text)
    actual = model.decoder.trace(tokens, features.astype(np.float32), PROMPT)
    ref = reference_decoder_trace(model.dims, model.state_dict, tokens, features)
    same = reference_decoder_trace(model.dims, model.state_dict, tokens, features.astype(np.float32),
                                   model.dtype, device)
    rows += compare_traces(actual, ref, check, same, input_of(model.dims))
    logits, got = ref["decoder.logits"][0], actual["decoder.logits"][0]
    top2 = np.sort(logits, axis=-1)[:, -2:]
    tie = top1_tie(same["decoder.logits"][0], logits)
    failures = top1_failures(got, logits.argmax(-1), top2[:, 1] - top2[:, 0], tie)
    equal = int((got.argmax(-1) == logits.argmax(-1)).sum())
    return rows, dict(text=text, steps=int(tokens.shape[1]), top1_equal=equal, top1_failures=failures)


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
    from maxwhisper.weights import weights_hash

    bad = result.first_failure
    return {"model": model_name, "weights_sha256": weights_hash(model.state_dict), "audio": source,
            "device": device, "dtype": result.dtype, "mode": result.mode,
            "yardstick": result.yardstick, "passed": result.passed,
            "first_failure": bad.layer if bad else None, "transcripts": result.transcripts,
            "decoder": result.decoder, "layers": [c.row() for c in result.comparisons]}
