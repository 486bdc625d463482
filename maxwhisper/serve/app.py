"""OpenAI's audio API over an `Engine`: `POST /v1/audio/transcriptions` and `/v1/audio/translations`,
`GET /v1/models`, `GET /health`. Errors are OpenAI's JSON (`{"error": {message, type, param, code}}`).
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

from maxwhisper.audio import AudioError, decode_audio
from maxwhisper.batch import Cancelled
from maxwhisper.serve.engine import Engine, Job
from maxwhisper.serve.formats import FORMATS, render

log = logging.getLogger("maxwhisper.serve")
POLL_S = 0.2  # how often a waiting request looks for its client's disconnect
# OpenAI's temperature 0: "the model will use log probability to automatically increase the temperature
# until certain thresholds are hit", which is openai-whisper's fallback schedule
FALLBACK = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
ALIASES = ("whisper-1",)  # what OpenAI's clients and tools send by default


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_body(message: str, kind: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.kind, e.param, e.code), status_code=e.status)


def request_options(decode_options: dict | None, task: str = "transcribe", language: str | None = None,
                    prompt: str | None = None, temperature: float = 0.0, words: bool = False,
                    stream: bool = False) -> dict:
    """openai-whisper's `transcribe` options for a request: the server's decoding options, then the
    request's fields (a transcription alone with these is what the request must get)."""
    return {**(decode_options or {}), "task": task, "language": language, "initial_prompt": prompt,
            "temperature": FALLBACK if temperature == 0 else temperature, "word_timestamps": words,
            "verbose": True if stream else None}  # verbose prints each segment: the stream's events


def create_app(engine: Engine, model_name: str, max_upload_mb: float = 25.0, decode_options: dict | None = None,
               on_failed=None) -> FastAPI:
    """The app; `on_failed()` is called once if the engine's start-up (compile, check) fails."""
    limit = int(max_upload_mb * 1024 * 1024)
    names = (model_name, *ALIASES)
    english_only = engine.model.dims.n_vocab < 51865  # the .en models' vocabulary has no language tokens

    async def watch_start():
        await asyncio.to_thread(engine.ready.wait)
        if engine.state == "failed":
            log.error(engine.error)
            if on_failed is not None:
                on_failed()

    async def lifespan(app):
        watcher = asyncio.create_task(watch_start())
        yield
        watcher.cancel()
        await asyncio.to_thread(engine.close)  # the requests in flight are done: uvicorn waited for them

    app = FastAPI(title="maxwhisper", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        return JSONResponse(error_body(str(e.detail), "invalid_request_error", None, None), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):
        log.exception("request failed")
        return JSONResponse(error_body(f"internal error ({type(e).__name__})", "server_error", None, None),
                            status_code=500)

    @app.get("/health")
    async def health():
        body = {"status": engine.state, "model": model_name, "dtype": engine.model.dtype,
                "check": engine.check.as_dict() if engine.check else None, "error": engine.error}
        if engine.state == "ready":
            body["engine"] = engine.stats()
        return JSONResponse(body, status_code=200 if engine.state == "ready" else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "maxwhisper"}
                                           for n in names]}

    async def read_form(request: Request) -> dict:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit + (1 << 20):  # past the form's overhead
            async for _ in request.stream():  # drained, not kept: the client is answered, not cut off
                pass
            raise APIError(413, f"the upload is {int(size) / 2**20:.1f} MB; this server takes at most "
                                f"{max_upload_mb:g} MB (--max-upload-mb)", "file", "file_too_large")
        try:
            form = await request.form()
        except Exception as e:  # not multipart, or a malformed body
            raise APIError(400, f"the body must be multipart/form-data ({e})", None, "invalid_body") from e
        fields = {}
        for key in form.keys():
            values = form.getlist(key)
            fields[key] = values if key.endswith("[]") else values[-1]
        return fields

    async def options_of(request: Request, task: str) -> tuple[Job, dict]:
        fields = await read_form(request)
        for required in ("file", "model"):
            if required not in fields:
                raise APIError(422, f"missing required field: {required!r}", required, "missing_field")
        upload = fields["file"]
        if isinstance(upload, str) or not hasattr(upload, "read"):
            raise APIError(400, "'file' must be a file upload", "file", "invalid_file")
        if fields["model"] not in names:
            raise APIError(404, f"the model {fields['model']!r} does not exist here; this server serves "
                                f"{model_name!r} (also as {', '.join(map(repr, ALIASES))})", "model", "model_not_found")
        response_format = fields.get("response_format", "json")
        if response_format not in FORMATS:
            raise APIError(400, f"response_format must be one of {', '.join(FORMATS)}, got {response_format!r}",
                           "response_format", "invalid_value")
        try:
            temperature = float(fields.get("temperature", 0) or 0)
        except ValueError:
            raise APIError(400, f"temperature must be a number, got {fields['temperature']!r}", "temperature",
                           "invalid_value") from None
        if not 0 <= temperature <= 1:
            raise APIError(400, f"temperature must be between 0 and 1, got {temperature:g}", "temperature", "invalid_value")
        granularities = fields.get("timestamp_granularities[]", [])
        granularities = [granularities] if isinstance(granularities, str) else granularities
        bad = [g for g in granularities if g not in ("segment", "word")]
        if bad:
            raise APIError(400, f"timestamp_granularities[] takes segment and word, got {bad[0]!r}",
                           "timestamp_granularities", "invalid_value")
        if granularities and response_format != "verbose_json":
            raise APIError(400, "timestamp_granularities[] needs response_format verbose_json",
                           "timestamp_granularities", "invalid_value")
        stream = str(fields.get("stream", "false")).lower()
        if stream not in ("true", "false"):
            raise APIError(400, f"stream must be true or false, got {fields['stream']!r}", "stream", "invalid_value")
        stream = stream == "true"
        if stream and response_format not in ("json", "text"):
            raise APIError(400, "stream=true sends text events: response_format json or text",
                           "stream", "invalid_value")
        language = fields.get("language") or None
        if language is not None:
            if task == "translate":
                raise APIError(400, "translations take no language (the output is English)", "language", "invalid_value")
            code = language.lower() if language.lower() in LANGUAGES else TO_LANGUAGE_CODE.get(language.lower())
            if code is None:
                raise APIError(400, f"unknown language {language!r} (ISO-639-1, as 'en')", "language", "invalid_value")
            if english_only and code != "en":
                raise APIError(400, f"{model_name} is English-only; it cannot transcribe {language!r}",
                               "language", "invalid_value")
            language = code
        data = await upload.read()
        if len(data) > limit:
            raise APIError(413, f"the file is {len(data) / 2**20:.1f} MB; this server takes at most "
                                f"{max_upload_mb:g} MB (--max-upload-mb)", "file", "file_too_large")
        try:
            audio = await asyncio.to_thread(decode_audio, data, upload.filename or "file")
        except AudioError as e:
            raise APIError(400, str(e), "file", "invalid_file") from None
        options = request_options(decode_options, task, language, fields.get("prompt") or None, temperature,
                                  "word" in granularities, stream)
        shape = {"format": response_format, "task": task, "duration": len(audio) / 16000, "stream": stream,
                 "words": "word" in granularities, "segments": not granularities or "segment" in granularities}
        return Job(audio, options), shape

    def ensure_ready():
        if engine.state != "ready":
            raise APIError(503, f"the server is {engine.state}" + (f": {engine.error}" if engine.error else ""),
                           None, "not_ready", "server_error")

    async def run(request: Request, task: str):
        ensure_ready()
        job, shape = await options_of(request, task)
        if shape["stream"]:
            return stream_response(request, job)
        engine.submit(job)
        future = asyncio.wrap_future(job.future)
        while True:
            done, _ = await asyncio.wait({future}, timeout=POLL_S)
            if done:
                break
            if await request.is_disconnected():
                engine.cancel(job)
                try:
                    await future
                except Cancelled:
                    pass
                return Response(status_code=499)  # nobody reads it
        result = future.result()
        body, media = render(result, shape["format"], task, shape["duration"], shape["words"], shape["segments"])
        return JSONResponse(body) if isinstance(body, dict) else PlainTextResponse(body, media_type=media)

    def stream_response(request: Request, job: Job) -> StreamingResponse:
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job.on_segment = lambda text: loop.call_soon_threadsafe(events.put_nowait, text)
        job.future.add_done_callback(lambda f: loop.call_soon_threadsafe(events.put_nowait, None))

        async def sse():
            engine.submit(job)
            try:
                while (text := await events.get()) is not None:
                    yield f"data: {json.dumps({'type': 'transcript.text.delta', 'delta': text})}\n\n"
                try:
                    result = job.future.result()
                except Exception as e:
                    log.exception("streamed request failed")
                    body = error_body(f"transcription failed ({type(e).__name__})", "server_error", None, None)
                    yield f"data: {json.dumps(body)}\n\n"
                    return
                yield f"data: {json.dumps({'type': 'transcript.text.done', 'text': result['text']})}\n\n"
            finally:
                if not job.future.done():  # the client went away mid-stream
                    engine.cancel(job)

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        return await run(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request):
        return await run(request, "translate")

    return app
