"""The harness's subcommands of the `maxwhisper` console script: `verify` and `diff`. Parsing and
printing only; the work is `maxwhisper.harness.verify.run` and `maxwhisper.harness.diff`.
"""

from __future__ import annotations

import json
from pathlib import Path

from maxwhisper.precision import PRECISIONS


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
    from maxwhisper.harness.compare import format_margins, format_table
    from maxwhisper.harness.verify import format_windows
    from maxwhisper.harness.speech import reference_text
    from maxwhisper.precision import form
    from maxwhisper.runtime import device_ref
    from maxwhisper.checkpoints import alignment_heads, load_weights

    dtypes = _dtypes(args.dtype)
    for d in dtypes:
        form(d, args.device, args.emulate)  # a bad device or emulation: exit 2 before any work
    source, audio = verify.default_audio(args.audio)
    device_ref(args.device)
    if args.random_weights:
        dims, state_dict, heads, why = verify.random_model(args.model)
    else:
        dims, state_dict = load_weights(args.model)
        heads, why = alignment_heads(args.model, dims)
    models = {d: MaxWhisper(dims, state_dict, args.device, d, args.emulate, alignment_heads=heads) for d in dtypes}
    print(f"model: {args.model}{f' (seeded random weights, seed {verify.SEED}, at its true size)' if args.random_weights else ''}  audio: {source} ({len(audio) / 16000:.2f} s)  device: {args.device}\n"
          f"word-alignment heads: {len(heads) if heads else dims.n_text_head * (dims.n_text_layer - dims.n_text_layer // 2)}"
          f" ({why})" + ("\nwindows: seek 0 only (random weights: openai-whisper's seeks follow its text, "
                         "here noise)" if args.random_weights else ""), flush=True)
    results = {}

    def write_json():  # after every dtype and again after the transcripts: a run cut short keeps its tables
        if args.json:
            runs = [verify.report(args.model, models[d], source, args.device, r) for d, r in results.items()]
            Path(args.json).write_text(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}, indent=1) + "\n")

    for dtype, model in models.items():
        result = results[dtype] = verify.run(model, audio, reference_text(source) or verify.DEFAULT_SENTENCE,
                                             seeks=not args.random_weights)
        print(f"\nMAX: {result.mode}\nyardstick: {result.yardstick}"
              + (f"\nsecond yardstick: {result.order}, where it errs more" if result.order else "")
              + "\nMAX/torch: MAX's error over the yardstick's, both against float64"
              + (f"; window 1 of {len(result.windows)}" if len(result.windows) > 1 else ""))
        print(format_table(result.comparisons))
        if len(result.windows) > 1:
            print(format_windows(result))
        bad = result.first_failure
        print(f"first layer over tolerance: {bad.layer}" if bad else
              _within(result.comparisons_all))
        if bad:
            print(bad.report())
        print(f"margin, k over the worst ratio (rms / q99 / max): {format_margins(result.comparisons_all)}")
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
    from maxwhisper.harness.diff import BASELINE, FACTOR

    args.baseline = args.baseline or str(BASELINE)  # defaults that live with the gate, not the parser
    args.factor = FACTOR if args.factor is None else args.factor
    from maxwhisper import load_model
    from maxwhisper.harness import diff

    baseline = diff.load(args.baseline)
    if baseline["model"] != args.model:
        raise ValueError(f"{args.baseline} was written for model {baseline['model']!r}, not {args.model!r}")
    from maxwhisper.precision import mode
    from reference.yardstick import describe

    from maxwhisper.bench.machine import cpu

    model = load_model(args.model, device=args.device)
    print(f"MAX: {mode('float32', args.device)}\nyardstick: {describe('float32', args.device)}, and float32 "
          f"summed in sequential order where it errs more (the unit: the larger)\nthis machine: {cpu()}; "
          f"the baseline's: {baseline.get('measured_on', 'not recorded')}")
    rows = diff.regressions(baseline, diff.measure(model), args.factor)
    print(diff.format_rows(rows))
    bad = next((r for r in rows if r.regressed), None)
    print(f"first layer whose error grew more than {args.factor:g}x: {bad.input} {bad.layer}" if bad else
          f"no layer's error grew more than {args.factor:g}x over {args.baseline} ({len(rows)} rows; growth "
          "in units of the yardsticks' error on this machine, from max(the baseline's ratio, 1))")
    return 1 if bad else 0


def add_commands(sub) -> None:
    """Add `verify` and `diff` to the console script's subparsers."""
    v = sub.add_parser("verify", help="compare the MAX encoder and decoder with the PyTorch reference, layer by layer")
    v.add_argument("audio", nargs="?", help="audio file (default: ../shared/speech/jfk.flac, "
                   "else a sentence spoken offline by eSpeak NG)")
    v.add_argument("--model", default="tiny.en", help="model name or path (default: embedded tiny.en)")
    v.add_argument("--random-weights", action="store_true",
                   help="seeded random weights at the true dimensions of the size --model names "
                        "(maxwhisper.sizes: base ... large-v3-turbo, distil-*), instead of its checkpoint")
    v.add_argument("--device", default="cpu", help="cpu, gpu or gpu:N")
    v.add_argument("--dtype", action="append", metavar="DTYPE[,DTYPE]",
                   help=", ".join(f"{n} (default)" if n == "float32" else n for n in PRECISIONS)
                   + "; several (comma-separated or repeated) give one table each and one plot panel each")
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
    d.add_argument("--factor", type=float, default=None, help="regression: a ratio grown more than this over max(the baseline's, 1) (default 2)")
    d.add_argument("--model", default="tiny.en", help="model name or path (default: embedded tiny.en)")
    d.add_argument("--device", default="cpu", help="cpu, gpu or gpu:N")
    d.set_defaults(func=cmd_diff)


def _within(rows) -> str:
    shown = sum(c.status == "shown" for c in rows)
    if not shown:
        return f"all {len(rows)} layers within tolerance"
    return f"all {len(rows) - shown} judged layers within tolerance ({shown} more shown, not judged)"
