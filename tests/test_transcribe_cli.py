"""`maxwhisper transcribe` as openai-whisper's command line: its options, spellings and defaults, the
model on MAX (no PyTorch encoder or decoder call), the same tokens as openai-whisper's."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import whisper
import whisper.model as wm

from maxwhisper.audio import load_audio
from maxwhisper.cli import main
from maxwhisper.transcribe_cli import options
from maxwhisper.checkpoints import to_torch_model


def _option_names(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_]+", help_text))


def test_every_openai_whisper_option_is_accepted():
    """Each option openai-whisper's `whisper --help` lists (as installed) is one of ours, same spelling."""
    theirs = subprocess.run([sys.executable, "-m", "whisper", "--help"], capture_output=True, text=True).stdout
    with pytest.raises(SystemExit):
        main(["transcribe", "--help"])
    assert len(_option_names(theirs)) >= 30, theirs[:300]  # 33 in openai-whisper 20250625
    from maxwhisper.transcribe_cli import add_transcribe
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    add_transcribe(sub)
    ours = _option_names(sub.choices["transcribe"].format_help())
    assert _option_names(theirs) - ours == set()


def _parse(*argv):
    import argparse

    from maxwhisper.transcribe_cli import add_transcribe

    parser = argparse.ArgumentParser()
    add_transcribe(parser.add_subparsers())
    return parser.parse_args(["transcribe", "x.flac", *argv])


def test_options_as_openai_whisper_makes_them():
    decode, write = options(_parse())
    assert decode["temperature"] == pytest.approx((0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
    assert (decode["beam_size"], decode["best_of"], decode["language"], decode["verbose"]) == (5, 5, "en", True)
    assert write == {"highlight_words": False, "max_line_count": None, "max_line_width": None, "max_words_per_line": None}
    decode, _ = options(_parse("--temperature_increment_on_fallback", "None", "--beam_size", "None", "--task", "translate"))
    assert decode["temperature"] == (0.0,) and decode["beam_size"] is None and decode["task"] == "translate"
    with pytest.raises(ValueError, match="--max_line_width requires --word_timestamps True"):
        options(_parse("--max_line_width", "40"))


@pytest.mark.parametrize("argv, words", [
    (["--max_line_count", "2"], "--max_line_count requires --word_timestamps True"),
    (["--model_dir", "/nonexistent", "--model", "nonsense"], "not one of openai-whisper's names"),
    (["--device", "cuda:x"], "device 'gpu:x'"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_bad_options_are_one_line_exit_2(argv, words, tmp_path, capsys):
    assert main(["transcribe", str(tmp_path / "a.flac"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


def test_defaults_and_prompt_give_openai_whisper_tokens_without_pytorch_model_calls(speech_dir, tiny_en, tmp_path,
                                                                                      monkeypatch):
    """openai-whisper's defaults (beam 5, best_of 5, the temperature fallback), an initial prompt and
    word timestamps: `maxwhisper transcribe` writes the tokens, words and word times openai-whisper's
    PyTorch pipeline gives (with tiny.en's alignment heads), and never calls PyTorch's AudioEncoder or
    TextDecoder."""
    jfk = speech_dir / "jfk.flac"
    prompt = "President Kennedy's inaugural address."
    model = to_torch_model(*tiny_en)
    model.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])  # as whisper.load_model("tiny.en")
    expected = whisper.transcribe(model, load_audio(jfk), fp16=False, language="en", beam_size=5, best_of=5,
                                  initial_prompt=prompt, temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), word_timestamps=True)

    def forbidden(self, *args, **kwargs):
        raise AssertionError(f"PyTorch's {type(self).__name__}.forward was called")

    monkeypatch.setattr(wm.TextDecoder, "forward", forbidden)
    monkeypatch.setattr(wm.AudioEncoder, "forward", forbidden)
    assert main(["transcribe", str(jfk), "--output_dir", str(tmp_path), "--output_format", "json", "--verbose",
                 "False", "--initial_prompt", prompt, "--word_timestamps", "True"]) == 0
    got = json.loads((tmp_path / "jfk.json").read_text())
    assert [s["tokens"] for s in got["segments"]] == [s["tokens"] for s in expected["segments"]]
    assert got["text"] == expected["text"]
    words = lambda r: [(w["word"], round(w["start"], 2), round(w["end"], 2)) for s in r["segments"] for w in s["words"]]  # noqa: E731
    assert words(got) == words(expected) and len(words(got)) > 20, (len(words(got)), len(words(expected)))
