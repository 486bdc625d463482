"""`maxwhisper serve`: parse, load the model, start the engine (compile, start-up check), run uvicorn.
Exit 2 for bad arguments, 1 when the start-up check finds a layer over tolerance (named on stderr)."""

from __future__ import annotations

import sys

from maxwhisper.precision import PRECISIONS
from whisper.utils import optional_int


def add_serve(sub) -> None:
    s = sub.add_parser("serve", help="OpenAI's audio API (POST /v1/audio/transcriptions) on MAX, batching across requests")
    a = s.add_argument
    a("--model", default="tiny.en", help="model name or path (default: the embedded tiny.en)")
    a("--dtype", default="float32", choices=list(PRECISIONS), help="MAX's precision (default float32)")
    a("--device", default="cpu", help="cpu, gpu or gpu:N")
    a("--host", default="127.0.0.1")
    a("--port", type=int, default=8000)
    a("--max-batch", type=int, default=8, metavar="N", help="windows decoded together, across requests (default 8)")
    a("--max-wait-ms", type=float, default=20.0, metavar="T",
      help="how long a window waits for others to join its batch (default 20)")
    a("--max-upload-mb", type=float, default=25.0, metavar="M", help="largest upload taken (default 25, as OpenAI's)")
    a("--beam-size", type=optional_int, default=None, metavar="N",
      help="beam search with N beams (default None: greedy, as openai-whisper's transcribe)")
    a("--best-of", type=optional_int, default=None, metavar="N",
      help="samples per window at a fallback temperature (default None: one, as openai-whisper's transcribe)")
    a("--no-check", action="store_true", help="serve without the start-up check (not advised: /health says so)")
    s.set_defaults(func=run)


def run(args) -> int:
    try:
        import uvicorn
        from maxwhisper.serve.app import create_app
    except ImportError as e:
        raise ValueError(f"maxwhisper serve needs its extra: pip install 'maxwhisper[serve]' ({e.name} is missing)") from None
    from maxwhisper import load_model
    from maxwhisper.serve.engine import Engine

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1-65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {args.max_upload_mb:g}")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    engine = Engine(model, args.max_batch, args.max_wait_ms, check=not args.no_check)  # a bad value: exit 2
    decode = {k: v for k, v in (("beam_size", args.beam_size), ("best_of", args.best_of)) if v is not None}
    holder = {}
    app = create_app(engine, str(args.model), args.max_upload_mb, decode,
                     on_failed=lambda: setattr(holder["server"], "should_exit", True))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=None)
    server = holder["server"] = uvicorn.Server(config)
    print(f"maxwhisper serve: {args.model} ({args.dtype}, {args.device}) on http://{args.host}:{args.port}; "
          "building and checking the graphs (GET /health says ready)", file=sys.stderr, flush=True)
    engine.start()
    server.run()
    if engine.state == "failed":
        print(f"maxwhisper serve: refused to serve: {engine.error}", file=sys.stderr)
        if engine.check is not None and engine.check.detail:
            print(engine.check.detail, file=sys.stderr)
        return 1
    return 0
