"""Many files at once: openai-whisper's `transcribe` runs unchanged for each file, and the `decode`
calls of all files are served together, one batched decode per round.

Each file's `whisper.transcribe` runs in its own worker thread. Its `model.decode(segment, options)`
calls land in a `DecodeBatcher`; once every running transcription is waiting on one, the calling
thread (where all MAX work happens) groups the waiting calls whose options are equal (openai-whisper's `decode` takes a batch of mels
with one set of options: first windows all have the same options; later windows of long files carry
their own prompt) and decodes each group as one batch of up to `batch_size` mels, so the encoder runs
on a batch and every decoder step reads the weights once for the whole batch. Windowing with seek,
temperature fallback, timestamp rules and prompts stay openai-whisper's, per file.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import whisper
from whisper.decoding import DecodingOptions, DecodingResult

from maxwhisper import inference
from maxwhisper.seams import seam


@dataclass
class _Call:
    mel: torch.Tensor
    options: DecodingOptions
    generator: torch.Generator | None = None  # the file's own, for sampling (temperature > 0)
    cancel: threading.Event | None = None  # set when the file's caller has gone (`DecodeBatcher.cancel`)
    since: float = 0.0  # time.monotonic() when it began to wait
    result: DecodingResult | None = None
    error: BaseException | None = None
    done: bool = False


class Cancelled(Exception):
    """A transcription whose caller went away: its windows not yet decoded leave the batches."""


class DecodeBatcher:
    """Collects `decode` calls from the running transcriptions and serves them in batches.

    A round starts once every running transcription waits on a call, or (with `max_wait`, seconds)
    once the oldest waiting call has waited that long: a server's requests, which arrive at any time,
    do not wait for one that is still reading its audio."""

    def __init__(self, model: whisper.model.Whisper, batch_size: int, max_wait: float | None = None):
        self.model, self.batch_size, self.max_wait = model, batch_size, max_wait
        # openai-whisper's decode fails on several audios with beam search or best_of: ours is its code with
        # that fixed (`inference.GroupedTask`), for its PyTorch model and for the MAX decoder model alike
        own = type(model).decode
        self.grouped = own in (whisper.model.Whisper.decode, inference.decode)
        self.decode_batch = inference.decode if self.grouped else own
        self.local = threading.local()  # each worker's file generator (`transcribe_many`)
        self.cond = threading.Condition()
        self.running = 0
        self.closed = True  # `serve` returns once no transcription runs; a server sets False, `close` ends it
        self.waiting: list[_Call] = []
        self.rounds: list[list[int]] = []  # batch sizes decoded per round (for reports and tests)

    def decode(self, mel: torch.Tensor, options: DecodingOptions = DecodingOptions(), **kwargs) -> DecodingResult:
        """A worker's `model.decode`: wait until `serve` (the calling thread) has decoded this window."""
        if kwargs:
            options = replace(options, **kwargs)
        if mel.ndim != 2:  # transcribe decodes one window at a time
            raise ValueError(f"batched transcription serves single (n_mels, frames) windows, got {tuple(mel.shape)}")
        cancel = getattr(self.local, "cancel", None)
        call = _Call(mel, options, getattr(self.local, "generator", None), cancel, time.monotonic())
        with self.cond:
            if cancel is not None and cancel.is_set():
                raise Cancelled("the caller went away")
            self.waiting.append(call)
            self.cond.notify_all()
            while not call.done:
                if cancel is not None and cancel.is_set() and call in self.waiting:
                    self.waiting.remove(call)  # not yet in a round: it leaves before its rows are decoded
                    raise Cancelled("the caller went away")
                self.cond.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def enter(self) -> None:
        with self.cond:
            self.running += 1

    def leave(self) -> None:
        with self.cond:
            self.running -= 1
            self.cond.notify_all()

    def cancel(self, event: threading.Event) -> None:
        """Cancel the transcription whose worker set `local.cancel = event`: its waiting call leaves,
        and its next one raises `Cancelled` (a window already in a round is decoded with it)."""
        event.set()
        with self.cond:
            self.cond.notify_all()

    def close(self) -> None:
        """End a server's `serve` (`closed` False) once the running transcriptions have left."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _due(self) -> float | None:
        """0 when a round should start now, else how long to wait (None: until notified)."""
        if not self.waiting:
            return None
        if len(self.waiting) >= self.running:
            return 0.0
        if self.max_wait is None:
            return None
        return max(0.0, min(c.since for c in self.waiting) + self.max_wait - time.monotonic())

    def serve(self) -> None:
        """Decode rounds in this thread until every worker has left and `closed` is set. MAX builds and runs its graphs here, in the thread that called `transcribe_many` or
        started the server (a graph built in a worker thread fails: MAX's MLIR context is per
        thread). The lock is released while a round decodes, so workers may enter and cancel."""
        while True:
            with self.cond:
                while (wait := self._due()) != 0.0:
                    if not self.running and self.closed:
                        return
                    self.cond.wait(wait)
                calls, self.waiting = self.waiting, []
            sizes = self._round(calls)
            with self.cond:
                for c in calls:
                    c.done = True
                self.rounds.append(sizes)
                self.cond.notify_all()

    def _round(self, calls: list[_Call]) -> list[int]:
        groups: list[list[_Call]] = []
        for call in calls:  # equal options decode together (DecodingOptions compares by value)
            group = next((g for g in groups if g[0].options == call.options), None)
            groups.append([call]) if group is None else group.append(call)
        sizes = []
        for group in groups:
            for i in range(0, len(group), self.batch_size):
                chunk = group[i:i + self.batch_size]
                sizes.append(len(chunk))
                try:
                    mels, options = torch.stack([c.mel for c in chunk]), chunk[0].options
                    generators = [c.generator for c in chunk]
                    if self.grouped and None not in generators:
                        results = self.decode_batch(self.model, mels, options, generators)
                    else:
                        results = self.decode_batch(self.model, mels, options)
                    deliver(chunk, results)
                except BaseException as e:  # every caller of the batch gets the error
                    for c in chunk:
                        c.error = e
        return sizes


@seam
def deliver(chunk: list[_Call], results: list[DecodingResult]) -> None:
    """Each call of a decoded batch gets its own row's result."""
    for c, r in zip(chunk, results, strict=True):
        c.result = r


class SdpaSwitch:
    """openai-whisper's `disable_sdpa`, safe across threads. Whisper's saves the class flag and restores
    it on exit: two workers aligning at once leave it False for the whole process (the second saves the
    first's False), and every later PyTorch attention takes the slow path (reference modules that rely
    on SDPA's causal switch then fail). This one counts who is inside and restores once, on the last exit."""

    def __init__(self):
        self.lock, self.depth, self.saved = threading.Lock(), 0, True

    @contextlib.contextmanager
    def __call__(self):
        mha = whisper.model.MultiHeadAttention
        with self.lock:
            if self.depth == 0:
                self.saved = mha.use_sdpa
            self.depth += 1
            mha.use_sdpa = False
        try:
            yield
        finally:
            with self.lock:
                self.depth -= 1
                if self.depth == 0:
                    mha.use_sdpa = self.saved


@contextlib.contextmanager
def _threadsafe_sdpa_switch():
    """`whisper.model.disable_sdpa` (which `timing.find_alignment` imports at each call) made a
    `SdpaSwitch` while the workers run."""
    original = whisper.model.disable_sdpa
    whisper.model.disable_sdpa = SdpaSwitch()
    try:
        yield
    finally:
        whisper.model.disable_sdpa = original


def _own_decoder(view: whisper.model.Whisper) -> whisper.model.Whisper:
    """`view` with a decoder of its own: the MAX one's call wrapper anew (the graphs are shared),
    openai-whisper's PyTorch one copied."""
    from maxwhisper.inference import MaxTextDecoder

    own = copy.copy(view)
    own._modules = dict(view._modules)  # copy.copy shares the table of submodules
    d = view.decoder
    own.decoder = MaxTextDecoder(d.max_decoder) if isinstance(d, MaxTextDecoder) else copy.deepcopy(d)
    return own


def transcribe_many(model: whisper.model.Whisper, audios: Sequence[np.ndarray], batch_size: int = 8,
                    rounds: list | None = None, **options) -> list[dict]:
    """`maxwhisper.transcribe.transcribe` of every audio, their decodes batched `batch_size` at a time.

    Returns one openai-whisper result dict per audio, in order; each equals that file's own
    sequential transcription (the tests check it token for token), for every decoding option. Sampling
    (best_of, the temperature fallback) draws each file's tokens from a generator of its own, started
    from torch's global state at this call: a file gets what `transcribe` gives it alone from that state,
    and the global generator is not advanced. `rounds`, if given, receives the batch sizes decoded in
    each round. `model` is not modified.
    """
    from maxwhisper.transcribe import torch_beside_max, transcribe

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for i, a in enumerate(audios):  # every input is checked before any work starts
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
            raise ValueError(f"audio {i} must be non-empty, finite, 1-D float32 samples at 16 kHz")
    batcher = DecodeBatcher(model, batch_size)
    if options.get("word_timestamps") and hasattr(model.decoder, "max_decoder"):
        model.decoder.max_decoder.compile("trace")  # the workers align; MAX builds graphs on this thread
    start = torch.get_rng_state()
    # whisper.transcribe calls model.decode: the workers get a shallow copy (same modules and weights)
    # whose decode is the batcher's, so the caller's model is never patched
    view = copy.copy(model)
    view.decode = batcher.decode
    results: list[dict | None] = [None] * len(audios)
    errors: list[BaseException] = []
    queue = list(range(len(audios)))[::-1]
    lock = threading.Lock()

    def work() -> None:
        # openai-whisper's word alignment hooks the decoder's blocks for one call: a decoder per worker
        own = _own_decoder(view) if options.get("word_timestamps") else view
        try:
            while True:
                with lock:
                    if not queue or errors:
                        return
                    i = queue.pop()
                batcher.local.generator = torch.Generator().set_state(start)
                try:
                    results[i] = transcribe(own, audios[i], **options)
                except BaseException as e:
                    with lock:
                        errors.append(e)
        finally:
            batcher.leave()

    workers = [threading.Thread(target=work, daemon=True) for _ in range(min(batch_size, len(audios)))]
    switch = _threadsafe_sdpa_switch() if options.get("word_timestamps") else contextlib.nullcontext()
    # this thread decodes the batches: its per-token torch work goes on one thread too (while it kept
    # two, they fought MAX's workers: docs/architecture.md)
    with switch, torch_beside_max(model):
        for w in workers:
            batcher.enter()
        for w in workers:
            w.start()
        batcher.serve()
        for w in workers:
            w.join()
    if rounds is not None:
        rounds.extend(batcher.rounds)
    if errors:
        raise errors[0]
    return results
