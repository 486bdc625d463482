"""maxwhisper command line: `maxwhisper verify [AUDIO] [--model NAME|PATH] [--json PATH]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Spoken by eSpeak NG when the shared speech data (and so jfk.flac) is absent.
DEFAULT_SENTENCE = "And so my fellow Americans, ask not what your country can do for you."


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _audio(path: str | None):
    from maxwhisper.audio import load_audio, speech_dir, synthesize

    if path is not None:
        return path, load_audio(path)
    found = speech_dir()
    if found is not None:
        return str(found / "jfk.flac"), load_audio(found / "jfk.flac")
    return f"eSpeak NG: {DEFAULT_SENTENCE!r}", synthesize(DEFAULT_SENTENCE)


def cmd_verify(args) -> int:
    from maxwhisper import load_model
    from maxwhisper.parity import format_table
    from maxwhisper.verify import verify
    from maxwhisper.weights import weights_hash

    source, audio = _audio(args.audio)
    model = load_model(args.model, device=args.device)
    print(f"model: {args.model}  audio: {source} ({len(audio) / 16000:.2f} s)  device: {args.device}",
          flush=True)
    result = verify(model, audio)
    print(format_table(result.comparisons))
    bad = result.first_failure
    print(f"first layer over tolerance: {bad.layer}" if bad else
          f"all {len(result.comparisons)} layers within tolerance")
    if bad:
        print(bad.report())
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "weights_sha256": weights_hash(model.state_dict), "audio": source,
            "device": args.device, "passed": result.passed,
            "first_failure": bad.layer if bad else None,
            "layers": [c.row() for c in result.comparisons]}, indent=1) + "\n")
    return 0 if result.passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maxwhisper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="compare the MAX encoder with the PyTorch reference, layer by layer")
    v.add_argument("audio", nargs="?", help="audio file (default: ../shared/speech/jfk.flac, "
                   "else a sentence spoken offline by eSpeak NG)")
    v.add_argument("--model", default="tiny.en", help="model name or path (default: embedded tiny.en)")
    v.add_argument("--device", default="cpu", help="cpu, gpu or gpu:N")
    v.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    v.set_defaults(func=cmd_verify)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # AudioError and WeightsError are ValueErrors
        print(f"maxwhisper: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
