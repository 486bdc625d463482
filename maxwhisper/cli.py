"""maxwhisper command line: argument parsing and printing; the work is in the library
(`maxwhisper.harness.verify`, `maxwhisper.transcribe`).

  maxwhisper verify [AUDIO] [--model NAME|PATH] [--device cpu|gpu|gpu:N] [--dtype float32,tf32,bfloat16,float16]
                    [--emulate gpu] [--no-transcripts] [--json PATH] [--plot PATH] [--save-trace PATH]
  maxwhisper diff [BASELINE] [--factor F]
  maxwhisper transcribe FILE... [--model NAME|PATH] [--output-format txt|json|srt|vtt|tsv|all] [--output-dir DIR]
                                [--batch-size N] [--encoder max|torch] [--decoder max|torch]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _dtypes(values: list[str] | None) -> list[str]:
    """`--dtype a,b --dtype c` -> [a, b, c] (float32 when none), each checked, no repeats."""
    from maxwhisper.precision import row

    out = []
    for name in (x.strip() for v in values or ["float32"] for x in v.split(",")):
        row(name)  # a bad name is a ValueError naming it: exit 2
        if name not in out:
            out.append(name)
    return out


def cmd_verify(args) -> int:
    from maxwhisper import MaxWhisper
    from maxwhisper.harness import verify
    from maxwhisper.harness.compare import format_table
    from maxwhisper.harness.speech import reference_text
    from maxwhisper.precision import form
    from maxwhisper.runtime import device_ref
    from maxwhisper.weights import load_weights

    dtypes = _dtypes(args.dtype)
    for d in dtypes:
        form(d, args.device, args.emulate)  # a bad device or emulation: exit 2 before any work
    source, audio = verify.default_audio(args.audio)
    device_ref(args.device)
    dims, state_dict = load_weights(args.model)
    models = {d: MaxWhisper(dims, state_dict, args.device, d, args.emulate) for d in dtypes}
    print(f"model: {args.model}  audio: {source} ({len(audio) / 16000:.2f} s)  device: {args.device}",
          flush=True)
    results = {}

    def write_json():  # after every dtype and again after the transcripts: a run cut short keeps its tables
        if args.json:
            runs = [verify.report(args.model, models[d], source, args.device, r) for d, r in results.items()]
            Path(args.json).write_text(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}, indent=1) + "\n")

    for dtype, model in models.items():
        result = results[dtype] = verify.run(model, audio, reference_text(source) or verify.DEFAULT_SENTENCE)
        print(f"\nMAX: {result.mode}\nyardstick: {result.yardstick}"
              f"\nMAX/torch: MAX's error over the yardstick's, both against float64")
        print(format_table(result.comparisons))
        bad = result.first_failure
        print(f"first layer over tolerance: {bad.layer}" if bad else
              f"all {len(result.comparisons)} layers within tolerance")
        if bad:
            print(bad.report())
        d = result.decoder
        print(f"decoder teacher-forced on {d['text']!r}: top-1 token equal to the reference's at "
              f"{d['top1_equal']}/{d['steps']} steps" + (f"; differs beyond a tie at {d['top1_failures']}"
                                                         if d["top1_failures"] else ""), flush=True)
        write_json()
    if args.plot:  # before the transcripts: the slow part
        from maxwhisper.harness.plot import plot_errors

        plot_errors({d: r.comparisons for d, r in results.items()}, args.plot,
                    f"{args.model} on {source}: MAX vs float64")
        print(f"error plot written to {args.plot}")
    for dtype, result in results.items() if not args.no_transcripts else ():
        e2e = verify.add_transcripts(result, models[dtype], audio, source)
        print(f"transcript, MAX ({dtype}): {e2e['max']}")
        print(f"transcript, PyTorch (float32): {e2e['torch']}")
        line = f"WER MAX vs PyTorch: {100 * e2e['wer_max_vs_torch']:.2f}%"
        if "reference" in e2e:
            line += (f"   against the reference text: MAX {100 * e2e['wer_max']:.2f}%, "
                     f"PyTorch {100 * e2e['wer_torch']:.2f}%")
        print(line, flush=True)
    write_json()
    if args.save_trace:
        from maxwhisper.harness.diff import save

        plain = None if args.emulate else models.get("float32")  # the baseline is the device's own float32
        save(plain or MaxWhisper(dims, state_dict, args.device), args.save_trace, args.model)
        print(f"error trace (golden mel and seeded random mels) written to {args.save_trace}")
    return 0 if all(r.passed for r in results.values()) else 1


def cmd_diff(args) -> int:
    from maxwhisper import load_model
    from maxwhisper.harness import diff

    baseline = diff.load(args.baseline)
    if baseline["model"] != args.model:
        raise ValueError(f"{args.baseline} was written for model {baseline['model']!r}, not {args.model!r}")
    from reference.yardstick import describe
    from maxwhisper.precision import mode

    model = load_model(args.model, device=args.device)
    print(f"MAX: {mode('float32', args.device)}\nyardstick: {describe('float32', args.device)}")
    rows = diff.compare(baseline, diff.measure(model), args.factor)
    print(diff.format_rows(rows))
    bad = next((r for r in rows if r.regressed), None)
    print(f"first layer whose error grew more than {args.factor:g}x: {bad.input} {bad.layer}" if bad else
          f"no layer's error grew more than {args.factor:g}x over {args.baseline} ({len(rows)} rows)")
    return 1 if bad else 0


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
    v = sub.add_parser("verify", help="compare the MAX encoder and decoder with the PyTorch reference, layer by layer")
    v.add_argument("audio", nargs="?", help="audio file (default: ../shared/speech/jfk.flac, "
                   "else a sentence spoken offline by eSpeak NG)")
    v.add_argument("--model", default="tiny.en", help="model name or path (default: embedded tiny.en)")
    v.add_argument("--device", default="cpu", help="cpu, gpu or gpu:N")
    v.add_argument("--dtype", action="append", metavar="DTYPE[,DTYPE]",
                   help="float32 (default), tf32, bfloat16, float16; several (comma-separated or repeated) give "
                        "one table each and one plot panel each")
    v.add_argument("--emulate", choices=["gpu"], default=None,
                   help="build each dtype in its NVIDIA GPU form on this device (float32 as 3xTF32, tf32 "
                        "truncated), the tensor cores' operand truncation done in the graph")
    v.add_argument("--json", metavar="PATH", help="also write the table as JSON (after each dtype, then with "
                   "the transcripts)")
    v.add_argument("--no-transcripts", action="store_true",
                   help="layers only: skip both pipelines' transcripts (the slow part on a CPU)")
    v.add_argument("--plot", metavar="PATH", help="also draw every layer's error, MAX's and PyTorch's, as a PNG")
    v.add_argument("--save-trace", metavar="PATH",
                   help="also write every layer's error figures (golden and seeded random mels): a diff baseline")
    v.set_defaults(func=cmd_verify)
    d = sub.add_parser("diff", help="the encoder-change gate: this tree's errors per layer against a saved baseline")
    d.add_argument("baseline", nargs="?", default=None, help="written by verify --save-trace "
                   "(default: fixtures/encoder_errors_baseline.json)")
    d.add_argument("--factor", type=float, default=None, help="regression: error grown more than this (default 2)")
    d.add_argument("--model", default="tiny.en", help="model name or path (default: embedded tiny.en)")
    d.add_argument("--device", default="cpu", help="cpu, gpu or gpu:N")
    d.set_defaults(func=cmd_diff)
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
    if args.command == "diff":  # defaults that live with the gate, not with the parser
        from maxwhisper.harness.diff import BASELINE, FACTOR

        args.baseline = args.baseline or str(BASELINE)
        args.factor = FACTOR if args.factor is None else args.factor
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # AudioError and WeightsError are ValueErrors
        print(f"maxwhisper: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
