"""The full MAX pipeline against openai-whisper on one device, over the carried speech files.

  python gpu/pipeline.py warm --device gpu    MAX's pipeline graphs compiled (one file transcribed)
  python gpu/pipeline.py run --device gpu --json $OUT/pipeline-gpu.json [--limit N]

`run` times each implementation in a fresh process of its own, one after the other (`python -m
maxwhisper.bench transcribe IMPL --device D --tokens`; on a GPU openai-whisper runs with fp16=True,
MAX in float32's GPU form), then compares them file by file: token ids equal, WER between the two
and against the reference transcripts. The JSON is rewritten after each implementation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def probe(impl: str, device: str, limit: int | None) -> dict:
    cmd = [sys.executable, "-m", "maxwhisper.bench", "transcribe", impl, "--device", device, "--tokens"]
    cmd += ["--limit", str(limit)] if limit else []
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        return dict(impl=impl, error=p.stderr[-3000:], process_s=time.perf_counter() - t0)
    return dict(json.loads(p.stdout.strip().splitlines()[-1]), process_s=round(time.perf_counter() - t0, 1))


def compare(runs: dict, references: list[str]) -> dict:
    from maxwhisper.harness.wer import wer

    a, b = runs["max"], runs["torch"]
    equal = [x == y for x, y in zip(a["tokens"], b["tokens"])]
    out = dict(files=len(equal), tokens_equal=sum(equal),
               differ=[i for i, e in enumerate(equal) if not e],
               wer_max_vs_torch=wer(" ".join(b["texts"]), " ".join(a["texts"])))
    if references:
        out.update(wer_max=wer(" ".join(references), " ".join(a["texts"])),
                   wer_torch=wer(" ".join(references), " ".join(b["texts"])))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["warm", "run"])
    ap.add_argument("--device", default="gpu")
    ap.add_argument("--json")
    ap.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    args = ap.parse_args(argv)
    if args.what == "warm":
        from maxwhisper.bench.pipeline import transcribe_probe

        print(json.dumps(transcribe_probe("max", limit=1, device=args.device)))
        return 0
    if not args.json:
        ap.error("run needs --json PATH")
    from maxwhisper.harness.speech import speech_dir, transcripts

    where = speech_dir()
    if where is None:
        print("no speech data: carry gpu/stage/speech (python3 gpu/offline_bundle/stage.py speech) or set MAXWHISPER_SPEECH_DIR")
        return 2
    references = [r["text"] for r in transcripts(where) if r["subset"] != "jfk"][:args.limit]
    doc = dict(device=args.device, speech=str(where), runs={})
    for impl in ("torch", "max"):
        doc["runs"][impl] = probe(impl, args.device, args.limit)
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        r = doc["runs"][impl]
        line = (r["error"][-500:] if "error" in r else
                f"{r['files']} files, {r['audio_s']:.0f} s audio in {r['seconds']:.1f} s (RTF {r['rtf']:.4f})")
        print(f"{impl}: {line}", flush=True)
    if all("tokens" in r for r in doc["runs"].values()):
        doc["compare"] = compare(doc["runs"], references)
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        print(json.dumps(doc["compare"]))
    return 0 if "compare" in doc else 1


if __name__ == "__main__":
    sys.exit(main())
