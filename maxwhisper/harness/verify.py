"""`maxwhisper verify`'s work: the MAX encoder against the float64 reference layer by layer, and both
pipelines' transcripts. The CLI only parses arguments and prints what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from maxwhisper.audio import load_audio, log_mel, synthesize
from maxwhisper.harness.compare import Comparison, compare, compare_traces, first_failure
from maxwhisper.harness.reference.capture import reference_trace
from maxwhisper.harness.registry import ENCODER_OUTPUT, check_of, input_of
from maxwhisper.harness.runners import torch_device, torch_dtype
from maxwhisper.harness.speech import reference_text, speech_dir
from maxwhisper.model import MaxWhisper
from maxwhisper.precision import mode

# Spoken by eSpeak NG when the shared speech data (and so jfk.flac) is absent.
DEFAULT_SENTENCE = "And so my fellow Americans, ask not what your country can do for you."


@dataclass
class Verification:
    comparisons: list[Comparison]
    transcripts: dict = field(default_factory=dict)

    @property
    def first_failure(self) -> Comparison | None:
        return first_failure(self.comparisons)

    @property
    def passed(self) -> bool:
        return self.first_failure is None


def default_audio(path: str | None = None) -> tuple[str, np.ndarray]:
    """(what it is, 16 kHz samples): `path`, else jfk.flac from the speech data, else eSpeak NG."""
    if path is not None:
        return path, load_audio(path)
    found = speech_dir()
    if found is not None:
        return str(found / "jfk.flac"), load_audio(found / "jfk.flac")
    return f"eSpeak NG: {DEFAULT_SENTENCE!r}", synthesize(DEFAULT_SENTENCE)


def verify_layers(model: MaxWhisper, audio: np.ndarray) -> list[Comparison]:
    """Trace the MAX encoder and the reference on the first 30 s of `audio` and compare every layer.

    The last row, `encoder`, is the production graph (no trace outputs), which users actually run.
    In the model's dtype, the yardstick is openai-whisper's encoder in that dtype (its own mixed
    precision: `maxwhisper.precision`) and the check is that dtype's (no absolute guard in 16-bit).
    """
    mel = log_mel(audio, model.dims.n_mels)[None]
    expected = reference_trace(model.dims, model.state_dict, mel)
    same = reference_trace(model.dims, model.state_dict, mel, torch_dtype(model.dtype), torch_device(model.device))
    check = check_of(model.dims, model.dtype, guard=True)
    rows = compare_traces(model.encode_trace(mel), expected, check, same, input_of(model.dims))
    rows.append(compare(ENCODER_OUTPUT, model.encode(mel), expected["encoder.ln_post"], check(ENCODER_OUTPUT),
                        same["encoder.ln_post"]))
    return rows


def end_to_end(model: MaxWhisper, audio: np.ndarray, source: str) -> dict:
    """Both pipelines' greedy transcripts (MAX encoder, PyTorch encoder) and their WERs."""
    from maxwhisper.harness.wer import wer
    from maxwhisper.transcribe import pipeline_model, transcribe

    text = {enc: transcribe(pipeline_model(model, enc), audio)["text"].strip() for enc in ("max", "torch")}
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
            "device": device, "dtype": model.dtype, "mode": mode(model.dtype), "passed": result.passed, "first_failure": bad.layer if bad else None,
            "transcripts": result.transcripts, "layers": [c.row() for c in result.comparisons]}
