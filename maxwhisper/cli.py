"""maxwhisper command line: argument parsing and printing; the work is in the library
(`maxwhisper.transcribe`; `verify` and `diff` are the harness's, `maxwhisper.harness.cli`).

  maxwhisper verify [AUDIO] [--model NAME|PATH] [--device cpu|gpu|gpu:N] [--dtype float32,tf32,bfloat16,float16]
                    [--emulate gpu] [--no-transcripts] [--json PATH] [--plot PATH] [--save-trace PATH]
  maxwhisper diff [BASELINE] [--factor F]
  maxwhisper transcribe FILE... [--model NAME|PATH] [--output-format txt|json|srt|vtt|tsv|all] [--output-dir DIR]
                                [--batch-size N] [--encoder max|torch] [--decoder max|torch]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_transcribe(args) -> int:
    from tqdm import tqdm
    from whisper.utils import get_writer

    from maxwhisper import load_model
    from maxwhisper.audio import load_audio
    from maxwhisper.batch import transcribe_many
    from maxwhisper.transcribe import pipeline_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    model = pipeline_model(load_model(args.model, device=args.device), args.encoder, args.decoder)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    write = get_writer(args.output_format, args.output_dir)
    failed, paths, audios = 0, [], []
    for path in args.files:
        try:
            audios.append(load_audio(path))  # a bad file is reported and skipped; the others go on
            paths.append(path)
        except ValueError as e:
            failed += 1
            print(f"maxwhisper: error: {e}", file=sys.stderr)
    # files in chunks of the batch size, so transcripts are written as their chunk finishes
    chunks = range(0, len(audios), args.batch_size)
    for i in tqdm(chunks, unit="batch", disable=args.no_progress or len(chunks) < 2):
        results = transcribe_many(model, audios[i:i + args.batch_size], args.batch_size)
        for path, result in zip(paths[i:i + args.batch_size], results):
            write(result, path)
            tqdm.write(f"{path}: {result['text'].strip()}")
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maxwhisper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from maxwhisper.harness.cli import add_commands  # verify, diff: the harness's own subcommands

    add_commands(sub)
    t = sub.add_parser("transcribe", help="transcribe audio files: MAX encoder and decoder, openai-whisper decoding")
    t.add_argument("files", nargs="+", metavar="FILE", help="wav, flac, mp3 or ogg; any rate, mono or stereo")
    t.add_argument("--model", default="tiny.en", help="model name or path (default: embedded tiny.en)")
    t.add_argument("--device", default="cpu", help="cpu, gpu or gpu:N")
    t.add_argument("--output-format", default="txt", choices=["txt", "json", "srt", "vtt", "tsv", "all"])
    t.add_argument("--output-dir", default=".", help="where the transcripts are written")
    t.add_argument("--encoder", default="max", choices=["max", "torch"],
                   help="'torch' runs openai-whisper's PyTorch encoder instead, for comparison")
    t.add_argument("--decoder", default="max", choices=["max", "torch"],
                   help="'torch' runs openai-whisper's PyTorch decoder instead, for comparison")
    t.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="transcribe N files at once (their 30 s windows decoded as one batch; default 1)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_transcribe)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # AudioError and WeightsError are ValueErrors
        print(f"maxwhisper: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
