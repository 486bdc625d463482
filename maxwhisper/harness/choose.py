"""Which layers may run quantized, chosen by what users hear (`python -m maxwhisper.harness.choose`).

Like Polygraphy's `debug precision`: a greedy search over groups of weights, in order of what quantizing
them saves, keeping a group while the transcripts change no more than bfloat16's change float32's
(`search`: the 16-bit precision that ships under the project's 0.3-point WER gate).
It chooses on half of LibriSpeech test-other (5 of its 10 speakers); `--report DTYPE` then runs the chosen
precision on MAX itself on the other half and on the 10 long-form groups (which hold all 10 speakers'
chapters: chosen-half audio too, as long form).

Each candidate runs openai-whisper in PyTorch float32 with the chosen groups' products computed as
MAX's Q4_0 arithmetic (`reference.quantized`: Q4_0 weights, activations quantized to int8 per block of
32 from their float32 values), not MAX itself: MAX's kernel computes that arithmetic bit for bit
(tests/test_quant.py), and a MAX graph per candidate would be a cold compile each (~100 s). The chosen
mix is then a precision (`precision.PRECISIONS`), which `verify`, `--report` and the benchmarks run on MAX.
"""

from __future__ import annotations

import json
import time

from maxwhisper.harness.speech import longform_audio, longform_groups, speech_dir, transcripts
from maxwhisper.harness.wer import wer

GATE = 0.3  # WER points over float32's: the project's gate for a 16-bit precision's transcripts


def groups(n_audio_layer: int, n_text_layer: int) -> dict[str, tuple[str, ...]]:
    """Candidate -> its weights' fnmatch patterns, in search order: the logits (80 MB of float32 read per
    token), each decoder block (read per token), each encoder block's MLP (2/3 of its FLOPs), then
    each encoder block's attention projections."""
    out = {"logits": ("decoder.token_embedding.weight",)}
    out.update({f"decoder.blocks.{i}": (f"decoder.blocks.{i}.*",) for i in range(n_text_layer)})
    out.update({f"encoder.blocks.{i}.mlp": (f"encoder.blocks.{i}.mlp.*",) for i in range(n_audio_layer)})
    out.update({f"encoder.blocks.{i}.attn": (f"encoder.blocks.{i}.attn.*",) for i in range(n_audio_layer)})
    return out


def halves() -> tuple[list[dict], list[dict]]:
    """(choose, report): test-other's rows split by speaker, alternate speakers in sorted order."""
    rows = [r for r in transcripts() if r["subset"] == "test-other"]
    if not rows:
        raise ValueError("the speech data (../shared/speech) is absent")
    speakers = sorted({speaker(r) for r in rows})
    choose = set(speakers[::2])
    return [r for r in rows if speaker(r) in choose], [r for r in rows if speaker(r) not in choose]


def speaker(row: dict) -> str:
    """A LibriSpeech row's speaker id: its file name's first field (`1688-142285-0000.flac`)."""
    return row["file"].rsplit("/", 1)[-1].split("-")[0]


class Emulation:
    """openai-whisper (PyTorch float32, greedy) with a set of patterns' products as Q4_0's."""

    def __init__(self):
        import torch

        from maxwhisper.transcribe import pipeline_model
        from maxwhisper import load_model

        torch.set_grad_enabled(False)
        self.max_model = load_model()
        self.model = pipeline_model(self.max_model, "torch", "torch")
        self.dims = self.max_model.dims

    def texts(self, audios, patterns: tuple[str, ...], scheme: str = "q4_0") -> list[str]:
        import contextlib
        from dataclasses import replace

        from maxwhisper.precision import form
        from maxwhisper.transcribe import transcribe
        from reference.quantized import products

        quantizes = replace(form(scheme), quantized=patterns).quantizes  # the scheme's arithmetic, these weights only
        mode = products(scheme)(self.model, quantizes) if patterns else contextlib.nullcontext()
        with mode:
            return [transcribe(self.model, a, fp16=False)["text"] for a in audios]


def _load(rows):
    from maxwhisper.audio import load_audio

    return [load_audio(speech_dir() / r["file"]) for r in rows]


def _max_texts(dtype: str, files: list[str]) -> list[str]:
    """MAX's transcripts of `files` in `dtype` (run in a process of its own: MAX's polling workers would
    slow the PyTorch emulation beside them)."""
    from maxwhisper import load_model
    from maxwhisper.audio import load_audio
    from maxwhisper.transcribe import pipeline_model, transcribe

    model = pipeline_model(load_model(dtype=dtype))
    return [transcribe(model, load_audio(speech_dir() / f))["text"] for f in files]


def search(log=print, yardstick: str = "bfloat16") -> dict:
    """The greedy search on the choosing half. A group is kept while the candidate's transcripts diverge
    from float32's (word error against float32's own transcripts) no more than `yardstick`'s do: the
    16-bit precision the project ships under the 0.3-point WER gate, run on MAX on the same files. The
    divergence is paired (0 where nothing changes) where WER against the references is not: by WER
    (search 1) the choice overfitted the choosing half, and a fixed 0.3 points of divergence (search 2)
    kept nothing, every group changing 3.6-5.1% of the words (docs/precision.md)."""
    import concurrent.futures
    import multiprocessing

    em = Emulation()
    choose, _ = halves()
    audios, refs = _load(choose), [r["text"] for r in choose]

    def run(patterns):
        t0 = time.perf_counter()
        return em.texts(audios, patterns), round(time.perf_counter() - t0, 1)

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        other = pool.submit(_max_texts, yardstick, [r["file"] for r in choose]).result()
    table = groups(em.dims.n_audio_layer, em.dims.n_text_layer)
    base, s = run(())
    base_wer, bound = round(100 * wer(refs, base), 2), round(100 * wer(base, other), 2)
    log(f"float32 on the choosing half: WER {base_wer:.2f}% ({s} s); MAX {yardstick}: divergence {bound:.2f}%, "
        f"WER {100 * wer(refs, other):.2f}%")
    kept: list[str] = []
    steps = []
    for name in table:
        texts, s = run(tuple(p for g in [*kept, name] for p in table[g]))
        w, d = round(100 * wer(refs, texts), 2), round(100 * wer(base, texts), 2)
        ok = d <= bound
        steps.append(dict(group=name, wer=w, divergence=d, kept=ok))
        log(f"+ {name}: divergence {d:.2f}%, WER {w:.2f}% ({'kept' if ok else 'dropped'}, {s} s)")
        kept += [name] if ok else []
    from maxwhisper.precision import mode

    modes = dict(candidates="openai-whisper, PyTorch float32 on the CPU, IEEE, the candidate's products as "
                 "Q4_0 weights times int8 activations (reference.quantized)", yardstick=f"MAX {mode(yardstick)}")
    return dict(modes=modes, criterion=f"divergence from float32's transcripts at most MAX {yardstick}'s", bound=bound,
                choose_files=len(choose), float32=base_wer, yardstick_wer=round(100 * wer(refs, other), 2),
                steps=steps, kept=kept, patterns=[p for g in kept for p in table[g]])


def report(dtype: str, log=print) -> dict:
    """What users hear, on MAX itself: WER of MAX in `dtype` and in float32 on the report half and on each
    long-form group (the gate: within `GATE` points of float32 on the half and on every group)."""
    from maxwhisper import load_model
    from maxwhisper.precision import mode
    from maxwhisper.transcribe import pipeline_model, transcribe

    _, rows = halves()
    audios, refs = _load(rows), [r["text"] for r in rows]
    long = [(g, longform_audio(row), row["text"]) for g, row in longform_groups().items()]
    out = {}
    for d in ("float32", dtype):
        model = pipeline_model(load_model(dtype=d))
        half = 100 * wer(refs, [transcribe(model, a)["text"] for a in audios])
        per = {g: 100 * wer(text, transcribe(model, a)["text"]) for g, a, text in long}
        out[d] = dict(mode=f"MAX {mode(d)}", report_half=round(half, 2),
                      longform={g: round(w, 2) for g, w in per.items()})
        log(f"{d}: report half {half:.2f}%, long form " + " ".join(f"{w:.1f}" for w in per.values()))
    f32, q = out["float32"], out[dtype]
    worse = [g for g in q["longform"] if q["longform"][g] > f32["longform"][g] + GATE]
    out["within_gate"] = dict(report_half=q["report_half"] <= f32["report_half"] + GATE, longform_groups_over=worse)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m maxwhisper.harness.choose", description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write the result as JSON")
    p.add_argument("--report", metavar="DTYPE", help="instead of searching, report a chosen precision on MAX")
    args = p.parse_args(argv)
    result = report(args.report) if args.report else search()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
