"""The server's engine: one model, one thread that builds and runs every MAX graph (the start-up
check's too), and the batcher that the requests' transcriptions, each in a thread of its own, join:
`batch.DecodeBatcher`, as `transcribe_many` uses it, with a bound on how long a window waits for others.

A request's transcription is `maxwhisper.transcribe.transcribe` (openai-whisper's `transcribe`), the
entry the CLI uses; only its `decode` calls are served together.
"""

from __future__ import annotations

import concurrent.futures
import copy
import threading
import traceback
from dataclasses import dataclass, field

import torch

from maxwhisper.batch import Cancelled, DecodeBatcher, _own_decoder, _threadsafe_sdpa_switch
from maxwhisper.harness.check import CheckResult, run_check
from maxwhisper.model import MaxWhisper
from maxwhisper.serve import tap
from maxwhisper.transcribe import pipeline_model, torch_beside_max, transcribe

# Every request samples (the temperature fallback) from its own generator started from this seed, so
# a text does not depend on which requests shared its batches.
SEED = 0


@dataclass
class Job:
    audio: object
    options: dict
    on_segment: object = None  # called with each segment's text as openai-whisper adds it (streaming)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancel: threading.Event = field(default_factory=threading.Event)


class Engine:
    """Start with `start()`; `ready` is set once the graphs are built and checked (`state` says how
    that went: "ready" or "failed", with `error`). `submit` runs a transcription; `close` finishes the
    running ones and stops."""

    def __init__(self, model: MaxWhisper, max_batch: int = 8, max_wait_ms: float = 20.0, check: bool = True):
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        self.model, self.max_batch, self.max_wait, self.checking = model, max_batch, max_wait_ms / 1000, check
        self.state, self.error, self.check = "starting", None, None
        self.ready = threading.Event()
        self.batcher: DecodeBatcher | None = None
        self.counts = {"done": 0, "cancelled": 0, "failed": 0}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._main, name="maxwhisper-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _main(self) -> None:
        from max._mlir_context import ensure_default_mlir_context  # MLIR's context is per thread

        try:
            with ensure_default_mlir_context():
                self._build_and_serve()
        except BaseException as e:  # start-up failed: the server reports it and exits
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            traceback.print_exc()
        finally:
            self.ready.set()

    def _build_and_serve(self) -> None:
        pipeline = pipeline_model(self.model)
        self.model.compile()  # built here: MAX builds graphs in the thread that runs them
        pipeline.decoder.max_decoder.compile("trace")  # word alignment runs it from the request threads
        if self.checking:
            self.check: CheckResult = run_check(self.model)
            if not self.check.passed:
                self.state, self.error = "failed", self.check.line()
                return
        batcher = DecodeBatcher(pipeline, self.max_batch, self.max_wait)
        batcher.closed = False
        self.view = copy.copy(pipeline)  # the requests' model: its decode is the batcher's
        self.view.decode = batcher.decode
        self.batcher, self.state = batcher, "ready"
        self.ready.set()
        # concurrent word alignments (see batch.SdpaSwitch); this thread's torch work beside MAX on one thread
        with _threadsafe_sdpa_switch(), torch_beside_max(pipeline):
            batcher.serve()

    def submit(self, job: Job) -> Job:
        """Run `job`'s transcription in a thread of its own; its result (openai-whisper's dict) or error
        arrives in `job.future`, `Cancelled` if `cancel(job)` came first."""
        if self.state != "ready":
            raise RuntimeError(f"the engine is {self.state}")
        self.batcher.enter()
        threading.Thread(target=self._work, args=(job,), daemon=True, name="maxwhisper-request").start()
        return job

    def cancel(self, job: Job) -> None:
        """The caller went away: its windows not yet in a round leave the batches."""
        self.batcher.cancel(job.cancel)

    def _work(self, job: Job) -> None:
        b = self.batcher
        try:
            own = _own_decoder(self.view) if job.options.get("word_timestamps") else self.view
            b.local.generator, b.local.cancel = torch.Generator().manual_seed(SEED), job.cancel
            with tap.segments(job.on_segment):
                result = transcribe(own, job.audio, **job.options)
            outcome = "done"
            job.future.set_result(result)
        except Cancelled as e:
            outcome = "cancelled"
            job.future.set_exception(e)
        except BaseException as e:
            outcome = "failed"
            job.future.set_exception(e)
        finally:
            with self.lock:
                self.counts[outcome] += 1
            b.leave()

    def stats(self) -> dict:
        b = self.batcher
        rounds = list(b.rounds) if b else []
        with self.lock:
            counts = dict(self.counts)
        return {**counts, "running": b.running if b else 0, "rounds": len(rounds),
                "windows": sum(map(sum, rounds)), "batches": sum(map(len, rounds)),
                "largest_batch": max((max(r) for r in rounds if r), default=0)}

    def close(self, timeout: float | None = None) -> None:
        """Finish the running transcriptions, then stop the engine's thread."""
        if self.batcher is not None:
            self.batcher.close()
        self.thread.join(timeout)
