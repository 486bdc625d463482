"""`maxwhisper transcribe`: openai-whisper's command line (its options, spellings and defaults), with
the model on MAX, plus maxwhisper's own `--dtype`, `--encoder`, `--decoder`, `--batch-size`.

The options are openai-whisper's `whisper.transcribe.cli`'s; so is their treatment (a `.en` model
transcribes English, the temperature schedule from `--temperature_increment_on_fallback`, the line
options needing `--word_timestamps True`), except that a bad combination is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE
from whisper.utils import optional_float, optional_int, str2bool

from maxwhisper.precision import PRECISIONS

WORD_OPTIONS = ("highlight_words", "max_line_count", "max_line_width", "max_words_per_line")
# openai-whisper's default punctuation, as its command line spells it
PREPEND, APPEND = "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、"


def add_transcribe(sub) -> None:
    t = sub.add_parser("transcribe", help="transcribe audio files: openai-whisper's command line, the model on MAX")
    a = t.add_argument
    a("audio", nargs="*", metavar="FILE", help="wav, flac, mp3 or ogg; any rate, mono or stereo")
    a("--model", default="tiny.en", help="model name or path (default: the embedded tiny.en)")
    a("--model_dir", "--model-dir", default=None, help="where openai-whisper's NAME.pt is kept and downloaded to (default ~/.cache/whisper)")
    a("--device", default="cpu", help="cpu, gpu or gpu:N (openai-whisper's cuda and cuda:N mean gpu)")
    a("--dtype", default=None, choices=list(PRECISIONS),
      help="MAX's precision (default float32; float16 on a GPU with --fp16 True, as openai-whisper)")
    a("--output_dir", "--output-dir", "-o", default=".", help="directory to save the outputs")
    a("--output_format", "--output-format", "-f", default="all", choices=["txt", "vtt", "srt", "tsv", "json", "all"])
    a("--verbose", type=str2bool, default=True, help="print each segment as it is decoded (False: a progress bar)")
    a("--task", default="transcribe", choices=["transcribe", "translate"])
    a("--language", default=None, choices=sorted(LANGUAGES) + sorted(k.title() for k in TO_LANGUAGE_CODE))
    a("--temperature", type=float, default=0)
    a("--best_of", type=optional_int, default=5)
    a("--beam_size", type=optional_int, default=5)
    a("--patience", type=float, default=None)
    a("--length_penalty", type=float, default=None)
    a("--suppress_tokens", default="-1")
    a("--initial_prompt", default=None)
    a("--carry_initial_prompt", type=str2bool, default=False)
    a("--condition_on_previous_text", type=str2bool, default=True)
    a("--fp16", type=str2bool, default=True, help="on a GPU without --dtype: float16; on the CPU float32, as openai-whisper")
    a("--temperature_increment_on_fallback", type=optional_float, default=0.2)
    a("--compression_ratio_threshold", type=optional_float, default=2.4)
    a("--logprob_threshold", type=optional_float, default=-1.0)
    a("--no_speech_threshold", type=optional_float, default=0.6)
    a("--word_timestamps", type=str2bool, default=False)
    a("--prepend_punctuations", default=PREPEND)
    a("--append_punctuations", default=APPEND)
    a("--highlight_words", type=str2bool, default=False)
    a("--max_line_width", type=optional_int, default=None)
    a("--max_line_count", type=optional_int, default=None)
    a("--max_words_per_line", type=optional_int, default=None)
    a("--threads", type=optional_int, default=0, help="torch's CPU threads (openai-whisper's decoding loop; MAX's are its own)")
    a("--clip_timestamps", default="0")
    a("--hallucination_silence_threshold", type=optional_float, default=None)
    a("--encoder", default="max", choices=["max", "torch"], help="'torch': openai-whisper's PyTorch encoder, for comparison")
    a("--decoder", default="max", choices=["max", "torch"], help="'torch': openai-whisper's PyTorch decoder, for comparison")
    a("--batch-size", "--batch_size", type=int, default=1, metavar="N",
      help="transcribe N files at once (their windows decoded as one batch; default 1)")
    a("--no-progress", action="store_true", help="no progress bar over batches")
    a("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
      help="transcribe on a Ray cluster (ADDRESS, or a local one when omitted; pip install 'maxwhisper[ray]'); "
           "writes OUTPUT_DIR/transcripts.parquet beside the per-file outputs, and skips files already in it")
    a("--workers", type=int, default=1, metavar="N", help="with --ray: transcribing actors, one model each (default 1)")
    a("--manifest", action="append", default=[], metavar="PATH",
      help="with --ray: a list of audio paths or URLs (.txt one per line, .csv/.tsv with a 'path' column, .parquet)")
    t.set_defaults(func=run)


def device_of(spec: str) -> str:
    """openai-whisper's `cuda` / `cuda:N` as maxwhisper's `gpu` / `gpu:N`; anything else as given."""
    kind, colon, index = spec.partition(":")
    return f"gpu{colon}{index}" if kind == "cuda" else spec


def options(args: argparse.Namespace) -> tuple[dict, dict]:
    """(transcribe options, writer options) from the parsed arguments, as openai-whisper's cli makes them;
    a bad combination is a ValueError."""
    given = dict(vars(args))
    for key in ("audio", "model", "model_dir", "device", "dtype", "output_dir", "output_format", "encoder",
                "decoder", "batch_size", "no_progress", "func", "command", "fp16", "threads", "ray", "workers",
                "manifest"):
        given.pop(key, None)
    if args.model.endswith(".en") and given["language"] not in {"en", "English"}:
        if given["language"] is not None:
            warnings.warn(f"{args.model} is an English-only model but received '{given['language']}'; using English instead.")
        given["language"] = "en"
    temperature, increment = given.pop("temperature"), given.pop("temperature_increment_on_fallback")
    given["temperature"] = tuple(_schedule(temperature, increment)) if increment is not None else (temperature,)
    if not given["word_timestamps"]:
        for option in WORD_OPTIONS:
            if given[option]:
                raise ValueError(f"--{option} requires --word_timestamps True")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    return given, {k: given.pop(k) for k in WORD_OPTIONS}


def _schedule(start: float, step: float) -> list[float]:
    import numpy as np

    return [float(t) for t in np.arange(start, 1.0 + 1e-6, step)]


def model_path(name: str, model_dir: str | None) -> str:
    """`name`, or where `--model_dir` (openai-whisper's `download_root`) is given and `name` is one of
    openai-whisper's names, its `.pt` there, downloaded into it when absent, as `whisper.load_model` does."""
    if model_dir is None or Path(name).exists():
        return name
    from maxwhisper.checkpoints import download

    if name not in download.urls():
        raise ValueError(f"--model_dir {model_dir}: {name!r} is not one of openai-whisper's names "
                         f"({', '.join(download.urls())}), which is what it holds")
    return str(download.openai_checkpoint(name, Path(model_dir)))


def run(args: argparse.Namespace) -> int:
    import sys

    import torch
    from tqdm import tqdm
    from whisper.utils import get_writer

    from maxwhisper import load_model
    from maxwhisper.audio import load_audio
    from maxwhisper.batch import transcribe_many
    from maxwhisper.device import parse_device
    from maxwhisper.transcribe import pipeline_model

    decode, write_options = options(args)
    device = device_of(args.device)
    dtype = args.dtype or ("float16" if args.fp16 and parse_device(device).kind == "gpu" else "float32")
    if args.ray is not None:
        return run_on_ray(args, decode, write_options, device, dtype)
    if args.manifest or args.workers != 1:
        raise ValueError("--manifest and --workers go with --ray")
    if not args.audio:
        raise ValueError("no audio file given")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = pipeline_model(load_model(model_path(args.model, args.model_dir), device=device, dtype=dtype),
                           args.encoder, args.decoder)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    write = get_writer(args.output_format, args.output_dir)
    failed, paths, audios = 0, [], []
    for path in args.audio:
        try:
            audios.append(load_audio(path))  # a bad file is reported and skipped; the others go on
            paths.append(path)
        except ValueError as e:
            failed += 1
            print(f"maxwhisper: error: {e}", file=sys.stderr)
    # files in chunks of the batch size, so transcripts are written as their chunk finishes
    chunks = range(0, len(audios), args.batch_size)
    for i in tqdm(chunks, unit="batch", disable=args.no_progress or len(chunks) < 2):
        for path, result in zip(paths[i:i + args.batch_size],
                                transcribe_many(model, audios[i:i + args.batch_size], args.batch_size, **decode)):
            write(result, path, **write_options)
    return 2 if failed else 0


def run_on_ray(args: argparse.Namespace, decode: dict, write_options: dict, device: str, dtype: str) -> int:
    """`--ray`: the same inputs, options and per-file outputs, on a Ray Data pipeline (`maxwhisper.corpus`)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ValueError("--ray needs its extra: pip install 'maxwhisper[ray]'") from None
    from maxwhisper.corpus import job
    from maxwhisper.corpus.manifest import inputs

    if args.encoder != "max" or args.decoder != "max":
        raise ValueError("--ray runs the MAX pipeline: --encoder and --decoder max")
    paths = inputs(args.audio, args.manifest)
    decode = {**decode, "verbose": None}  # each worker's printed segments would interleave in the driver's log
    counts = job.run(paths, args.output_dir, address=args.ray, workers=args.workers,
                     model=model_path(args.model, args.model_dir), dtype=dtype, device=device,
                     batch_size=args.batch_size, options=decode, output_format=args.output_format,
                     write_options=write_options)
    return 2 if counts["failed"] else 0
