"""End to end on long audio: the 10 long-form groups of ../shared/speech (66-200 s, several 30 s
windows each) through the MAX pipeline and openai-whisper's, window by window; in float32 and in the
16-bit pipeline. A module of its own: its transcriptions are a fixture of their own, so the test
runner's shards (`maxwhisper.harness.shards`) can put it beside the 108-file corpus of test_transcribe.
"""

from __future__ import annotations

import pytest
import torch

from maxwhisper.audio import SAMPLE_RATE
from maxwhisper.batch import transcribe_many
from maxwhisper.harness.speech import longform_audio, longform_groups
from maxwhisper.harness.wer import normalize, wer
from maxwhisper.precision import mode
from maxwhisper.transcribe import pipeline_model, transcribe
from maxwhisper.harness.pytest_plugin import axis
from test_transcribe import WER_POINTS_16, _tokens


@pytest.fixture(scope="module")
def longform(speech_dir, pipelines):
    """group id -> (row, audio, MAX float32 result, PyTorch float32 result), each group transcribed
    once, when first asked for (the float32 test, then the 16-bit test's comparison)."""
    done = {}

    def get(group: str):
        if group not in done:
            row = longform_groups(speech_dir)[group]
            audio = longform_audio(row, speech_dir)
            done[group] = (row, audio, *(transcribe(p, audio) for p in pipelines))
        return done[group]
    return get


@pytest.mark.parametrize("group", list(longform_groups()) or ["speech-data-absent"])
def test_e2e_longform_windows(group, longform):
    row, audio, m, t = longform(group)
    duration = len(audio) / SAMPLE_RATE
    w_max, w_torch = wer(row["text"], m["text"]), wer(row["text"], t["text"])
    print(f"\n{group}: {duration:.1f} s, WER MAX {100 * w_max:.2f}% PyTorch {100 * w_torch:.2f}%")
    # identical windows: the same tokens (timestamps included) and the same segment boundaries
    assert _tokens(m) == _tokens(t), f"{group}: MAX {m['text']!r}\nPyTorch {t['text']!r}"
    assert [(s["seek"], s["start"], s["end"]) for s in m["segments"]] == [(s["seek"], s["start"], s["end"]) for s in t["segments"]]
    # every 30 s window was decoded: the segments reach the end and the words cover the text
    assert duration > 60 and m["segments"][-1]["end"] >= duration - 5.0
    assert len(normalize(m["text"]).split()) >= 0.8 * len(normalize(row["text"]).split())
    assert w_max < 0.35


def _windows(result: dict) -> dict[int, str]:
    """seek -> the normalized text openai-whisper's loop decoded in the window starting there."""
    texts: dict[int, str] = {}
    for segment in result["segments"]:
        texts[segment["seek"]] = texts.get(segment["seek"], "") + segment["text"]
    return {seek: normalize(text) for seek, text in texts.items()}


@pytest.mark.parametrize("dtype", axis("longform"))  # 16-bit; CI leaves both out (precision.Row.families)
def test_e2e_longform_axis_window_by_window(dtype, longform, tiny_en, tiny_en_in):
    """The 10 long-form groups through the 16-bit pipeline (batched): every window decoded (segments
    reaching the end, words covering the text); compared window by window (text per seek) with the
    MAX float32 pipeline and, whole, with openai-whisper's own pipeline computing in the same dtype on
    the CPU (`reference.pipeline`: openai-whisper cannot be asked for it there) on every other group
    (3 of 10, groups 0, 4 and 8, for the suite's cold time, docs/testing.md; sequential, as openai-whisper runs). WER within the 16-bit
    gate (0.3 points) of float32's on all 10, and of openai-whisper's in the same dtype on its 3."""
    from reference.pipeline import torch_pipeline

    groups = [longform(g) for g in longform_groups()]
    assert len(groups) == 10
    audios = [audio for _, audio, _, _ in groups]
    low = transcribe_many(pipeline_model(tiny_en_in(dtype), "max", "max"), audios, batch_size=10)
    torch16 = torch_pipeline(*tiny_en, dtype)
    same = {i: transcribe(torch16, audios[i]) for i in range(0, len(audios), 4)}
    lines, aligned, equal = [], 0, 0
    for (row, audio, m32, _), r in zip(groups, low):
        duration, gid = len(audio) / SAMPLE_RATE, row["group_id"]
        assert duration > 60 and r["segments"][-1]["end"] >= duration - 5.0, (gid, r["segments"][-1])
        assert len(normalize(r["text"]).split()) >= 0.8 * len(normalize(row["text"]).split()), gid
        w16, w32 = _windows(r), _windows(m32)
        for seek, text in w16.items():
            aligned += seek in w32
            equal += w32.get(seek) == text
            if seek in w32 and w32[seek] != text:
                lines.append(f"  {gid} window at {seek / 100:.2f} s: WER against float32's {100 * wer(w32[seek], text):.1f}%")
    refs = [row["text"] for row, _, _, _ in groups]
    w16, w32 = wer(refs, [r["text"] for r in low]), wer(refs, [m["text"] for _, _, m, _ in groups])
    wt = wer([refs[i] for i in same], [r["text"] for r in same.values()])
    w16_same = wer([refs[i] for i in same], [low[i]["text"] for i in same])
    print(f"\nMAX: {mode(dtype)}; openai-whisper: {dtype} activations, float32 weights, torch {torch.__version__} "
          f"on the CPU (reference.pipeline)")
    print(f"long form, MAX {dtype}: {sum(map(len, map(_windows, low)))} windows, {aligned} at float32's seeks, "
          f"{equal} of them the same text; WER {100 * w16:.2f}% vs MAX float32 {100 * w32:.2f}% "
          f"({100 * (w16 - w32):+.2f} points); on groups {sorted(same)}: {100 * w16_same:.2f}% vs openai-whisper {dtype} "
          f"{100 * wt:.2f}%\n" + "\n".join(lines))
    assert abs(w16 - w32) <= WER_POINTS_16, f"{dtype}: WER {100 * w16:.2f}% vs float32 {100 * w32:.2f}%"
    assert w16_same - wt <= WER_POINTS_16, f"{dtype}: WER {100 * w16_same:.2f}% vs openai-whisper's {dtype} {100 * wt:.2f}%"
