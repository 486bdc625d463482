"""The start-up check of a built model: `verify`'s judgement of every encoder and decoder layer on
one window of the bundled speech (jfk.flac, else a sentence spoken by eSpeak NG), in the model's own
precision, on its own device, against the float64 reference. A server (and a corpus worker) runs it on the graphs it will serve
with, before it takes work, and refuses to start naming the first layer over tolerance.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from maxwhisper.model import MaxWhisper


@dataclass
class CheckResult:
    passed: bool
    first_failure: str | None  # the first layer over tolerance, or a decoder step whose top-1 differs
    detail: str  # its figures (`Comparison.report`)
    rows: int
    margins: dict  # figure -> k over the worst ratio, and its layer
    audio: str
    dtype: str
    device: str
    mode: str  # MAX's numeric mode
    yardstick: str
    cpu: str
    seconds: float

    def line(self) -> str:
        if self.passed:
            worst = min(self.margins.items(), key=lambda kv: kv[1]["margin"])
            return (f"start-up check passed: {self.rows} layers within tolerance ({self.dtype}, {self.device}; "
                    f"least margin {worst[1]['margin']:.2f}x, {worst[0]} at {worst[1]['layer']}; {self.seconds:.1f} s)")
        return f"start-up check failed ({self.dtype}, {self.device}): first layer over tolerance: {self.first_failure}"

    def as_dict(self) -> dict:
        return asdict(self)


def run_check(model: MaxWhisper) -> CheckResult:
    """Judge `model`'s graphs layer by layer against the float64 reference on the bundled speech's
    first window (`verify.run` with `seeks=False`: no transcription, one window)."""
    from maxwhisper.bench.machine import cpu
    from maxwhisper.harness import verify
    from maxwhisper.harness.speech import reference_text
    from maxwhisper.precision import row

    start = time.perf_counter()
    source, audio = verify.default_audio()
    # streamed: the sequential-order yardstick only once a row fails against PyTorch's error alone, which
    # changes no verdict (`verify.run`; docs/serving.md has the times); a quantized precision cannot stream
    stream = not row(model.dtype).quantized
    result = verify.run(model, audio, reference_text(source) or verify.DEFAULT_SENTENCE, stream=stream, seeks=False)
    bad = result.first_failure
    failure, detail = None, ""
    if bad is not None:
        failure, detail = bad.layer, bad.report()
    elif result.decoder.get("top1_failures"):
        failure = f"decoder top-1 token beyond a tie at steps {result.decoder['top1_failures']}"
    margins = {k: {"margin": m, "ratio": r, "layer": layer} for k, (m, r, layer) in result.margins.items()}
    return CheckResult(failure is None, failure, detail, len(result.comparisons_all), margins, source, model.dtype,
                       model.device, result.mode, result.yardstick, cpu(), time.perf_counter() - start)


def misloaded(name: str = "tiny.en", weight: str = "encoder.blocks.1.mlp.2.weight", factor: float = 1 + 2**-12,
              device: str = "cpu", dtype: str = "float32") -> MaxWhisper:
    """A wrong build for proving the check fails: MAX computes with `weight` scaled by `factor` (a loading
    bug the shapes do not show), while the reference reads the checkpoint. Picklable as a partial, so a
    Ray worker can build it."""
    import numpy as np

    from maxwhisper.checkpoints import alignment_heads, load_weights

    dims, sd = load_weights(name)
    bad = dict(sd)
    bad[weight] = sd[weight] * np.float32(factor)
    model = MaxWhisper(dims, bad, device, dtype, name=name, alignment_heads=alignment_heads(name, dims)[0])
    model.compile()
    model.decoder.compile()
    model.state_dict = sd  # what the reference judges against; the graphs hold the scaled weight
    return model
