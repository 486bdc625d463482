"""What runs on the cluster: `decode` (a Ray Data task per file: read and decode, or a row with the
error) and `Transcriber` (an actor of the pool: one MAX model, checked at start-up, transcribing its
batches with the CLI's batcher, `batch.transcribe_many`)."""

from __future__ import annotations

import json
import os
import socket

import numpy as np


def _read(path: str) -> bytes:
    if path.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(path, timeout=60) as r:
            return r.read()
    import pyarrow.fs

    fs, where = pyarrow.fs.FileSystem.from_uri(path)  # s3://, gs://, hdfs://, file://
    with fs.open_input_stream(where) as f:
        return f.read()


def decode(row: dict) -> dict:
    """{"path"} -> {"path", "audio" (16 kHz float32; empty on error), "error" ("" when none)}."""
    from maxwhisper.audio import decode_audio, load_audio

    path = str(row["path"])
    try:
        audio = decode_audio(_read(path), path) if "://" in path else load_audio(path)
        return {"path": path, "audio": audio, "error": ""}
    except Exception as e:  # a file that cannot be read or decoded is a row with its error: the job goes on
        return {"path": path, "audio": np.zeros(0, np.float32), "error": f"{type(e).__name__}: {e}".splitlines()[0]}


class Transcriber:
    """One worker: its model built and judged by the start-up check before it takes any batch."""

    def __init__(self, model: str, dtype: str, device: str, options: dict, batch_size: int, factory=None):
        from max._mlir_context import ensure_default_mlir_context  # MLIR's context is per thread

        from maxwhisper.bench.machine import cpu
        from maxwhisper.harness.check import run_check
        from maxwhisper.transcribe import pipeline_model

        self.name, self.dtype, self.options, self.batch_size = model, dtype, options, batch_size
        self.worker, self.cpu = f"{socket.gethostname()}:{os.getpid()}", cpu()
        with ensure_default_mlir_context():
            if factory is None:
                from maxwhisper import load_model

                built = load_model(model, device=device, dtype=dtype)
            else:
                built = factory()
            built.compile()
            built.decoder.compile()
            self.check = run_check(built)
            if not self.check.passed:
                raise RuntimeError(f"worker {self.worker} ({self.cpu}) refused work: {self.check.line()}")
            self.pipeline = pipeline_model(built)
        least = min(self.check.margins.values(), key=lambda m: m["margin"])
        self.check_summary = json.dumps({"passed": True, "rows": self.check.rows, "least_margin": round(least["margin"], 3),
                                         "at": least["layer"], "mode": self.check.mode})

    def __call__(self, batch: dict) -> dict:
        from max._mlir_context import ensure_default_mlir_context

        from maxwhisper.batch import transcribe_many

        paths, audios, errors = list(batch["path"]), list(batch["audio"]), [str(e) for e in batch["error"]]
        ok = [i for i, e in enumerate(errors) if not e]
        with ensure_default_mlir_context():
            results = transcribe_many(self.pipeline, [np.asarray(audios[i], np.float32) for i in ok],
                                      self.batch_size, **self.options) if ok else []
        by_row = dict(zip(ok, results))
        out = {k: [] for k in ("path", "text", "segments", "language", "duration", "model", "dtype", "worker", "cpu",
                               "check", "error")}
        for i, path in enumerate(paths):
            r = by_row.get(i)
            out["path"].append(str(path))
            out["text"].append(r["text"] if r else None)
            out["segments"].append(json.dumps(r["segments"]) if r else None)
            out["language"].append(r["language"] if r else None)
            out["duration"].append(len(audios[i]) / 16000 if r else None)
            out["error"].append(errors[i] or None)
            for k, v in (("model", self.name), ("dtype", self.dtype), ("worker", self.worker), ("cpu", self.cpu),
                         ("check", self.check_summary)):
                out[k].append(v)
        return out
