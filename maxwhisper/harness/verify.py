"""`maxwhisper verify`'s work: the MAX encoder and decoder against the float64 reference layer by
layer, and both pipelines' transcripts. The CLI only parses arguments and prints what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from maxwhisper.audio import load_audio, log_mel, synthesize
from maxwhisper.harness import producers
from maxwhisper.harness.compare import Comparison, first_failure, top1_failures, top1_tie
from maxwhisper.harness.inputs import PROMPT, teacher_tokens
from maxwhisper.harness.registry import check_of, input_of
from maxwhisper.harness.speech import reference_text, speech_dir
from maxwhisper.model import MaxWhisper

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
    """`maxwhisper verify` for one model (one precision). Encoder rows: the MAX encoder traced and the
    reference on the first 30 s of `audio`, every layer compared; the row `encoder` is the production
    graph (no trace outputs), which users run. Then decoder rows: the MAX decoder teacher-forced on
    `text` (the prompt in one step, then one token per step, through the KV cache) over the float64
    reference encoder's features, against openai-whisper's decoder on the same features; plus every
    step's top-1 token compared. The yardstick is openai-whisper in the model's precision
    (`maxwhisper.precision`), the check that precision's; every trace comes from a `producers` producer."""
    dims, sd, dtype, device = model.dims, model.state_dict, model.dtype, model.device
    check, inputs = check_of(dims, dtype, guard=True), input_of(dims)
    mel = log_mel(audio, dims.n_mels)[None]
    encoder = [producers.max_encoder(model, mel), producers.torch_encoder(dims, sd, mel),
               producers.torch_encoder(dims, sd, mel, dtype, device)]
    features, tokens = encoder[1].arrays["encoder.ln_post"], teacher_tokens(dims, text)
    decoder = [producers.max_decoder(model, tokens, features, PROMPT),
               producers.torch_decoder(dims, sd, tokens, features),
               producers.torch_decoder(dims, sd, tokens, features, dtype, device)]
    rows = producers.judge(*encoder, check, inputs) + producers.judge(*decoder, check, inputs)
    got, logits, same = (t.arrays["decoder.logits"][0] for t in decoder)
    top2 = np.sort(logits, axis=-1)[:, -2:]
    failures = top1_failures(got, logits.argmax(-1), top2[:, 1] - top2[:, 0], top1_tie(same, logits))
    equal = int((got.argmax(-1) == logits.argmax(-1)).sum())
    agreement = dict(text=text, steps=int(tokens.shape[1]), top1_equal=equal, top1_failures=failures)
    return Verification(rows, agreement, dtype, device, encoder[0].ran.mode, encoder[2].ran.mode)


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
    from maxwhisper.weights import weights_hash

    bad = result.first_failure
    return {"model": model_name, "weights_sha256": weights_hash(model.state_dict), "audio": source,
            "device": device, "dtype": result.dtype, "mode": result.mode,
            "yardstick": result.yardstick, "passed": result.passed,
            "first_failure": bad.layer if bad else None, "transcripts": result.transcripts,
            "decoder": result.decoder, "layers": [c.row() for c in result.comparisons]}
