"""openai-whisper's result dict as OpenAI's audio API returns it: json, text, srt, vtt, verbose_json.
Subtitles are openai-whisper's own writers' (`whisper.utils.WriteSRT`, `WriteVTT`)."""

from __future__ import annotations

import io

from whisper.tokenizer import LANGUAGES
from whisper.utils import WriteSRT, WriteVTT

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MEDIA = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain; charset=utf-8",
         "srt": "application/x-subrip; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}
SEGMENT_KEYS = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                "compression_ratio", "no_speech_prob")


def render(result: dict, response_format: str, task: str, duration: float, words: bool, segments: bool):
    """(body, media type): a dict for the JSON formats, else text."""
    if response_format == "json":
        return {"text": result["text"]}, MEDIA["json"]
    if response_format == "text":
        return result["text"], MEDIA["text"]
    if response_format in ("srt", "vtt"):
        out = io.StringIO()
        writer = (WriteSRT if response_format == "srt" else WriteVTT)(output_dir=".")
        writer.write_result(result, out)
        return out.getvalue(), MEDIA[response_format]
    body = {"task": task, "language": LANGUAGES.get(result["language"], result["language"]),
            "duration": round(duration, 3), "text": result["text"]}
    if segments:
        body["segments"] = [{k: s[k] for k in SEGMENT_KEYS} for s in result["segments"]]
    if words:
        body["words"] = [{"word": w["word"], "start": w["start"], "end": w["end"]}
                         for s in result["segments"] for w in s.get("words", [])]
    return body, MEDIA["json"]
