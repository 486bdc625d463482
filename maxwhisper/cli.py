"""maxwhisper command line: argument parsing and printing; the work is in the library
(`transcribe`: `maxwhisper.transcribe_cli`; `verify` and `diff`: the harness's, `maxwhisper.harness.cli`).

  maxwhisper verify [AUDIO] [--model NAME|PATH] [--device cpu|gpu|gpu:N] [--dtype float32,tf32,bfloat16,float16,q4_0,int8]
                    [--emulate gpu] [--no-transcripts] [--json PATH] [--plot PATH] [--save-trace PATH]
  maxwhisper diff [BASELINE] [--factor F]
  maxwhisper transcribe FILE... [openai-whisper's options: --model, --output_dir, --beam_size, ...]
                                [--dtype NAME] [--batch-size N] [--encoder max|torch] [--decoder max|torch]
  maxwhisper serve [--model NAME|PATH] [--dtype NAME] [--host H] [--port P] [--max-batch N] [--max-wait-ms T]
                   [--max-upload-mb M]
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maxwhisper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from maxwhisper.harness.cli import add_commands  # verify, diff: the harness's own subcommands
    from maxwhisper.serve.cli import add_serve
    from maxwhisper.transcribe_cli import add_transcribe

    add_commands(sub)
    add_transcribe(sub)  # openai-whisper's command line, the model on MAX
    add_serve(sub)  # OpenAI's audio API; its server imports only when it runs
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # AudioError and WeightsError are ValueErrors
        print(f"maxwhisper: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
