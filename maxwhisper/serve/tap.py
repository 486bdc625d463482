"""Segments as openai-whisper's `transcribe` adds them, for streaming. With `verbose=True` it prints
each segment of a window once the window is final ("[00:00.000 --> 00:05.000] text"); nothing else in
it says when. Here `sys.stdout` routes the lines a registered thread prints to that thread's
callback, and every other thread's output to the real stream.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading

LINE = re.compile(r"^\[(\d[\d:.]*) --> (\d[\d:.]*)\] (.*)$", re.S)


class _Router:
    def __init__(self, real):
        self.real, self.taps, self.parts = real, {}, {}

    def write(self, s: str) -> int:
        me = threading.get_ident()
        tap = self.taps.get(me)
        if tap is None:
            return self.real.write(s)
        buffered = self.parts.get(me, "") + s
        *lines, self.parts[me] = buffered.split("\n")
        for line in lines:
            m = LINE.match(line)
            if m:  # "Detecting language ..." and the like are not segments
                tap(m.group(3))
        return len(s)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name):  # encoding, isatty, fileno, ... of the real stream
        return getattr(self.real, name)


_lock = threading.Lock()


@contextlib.contextmanager
def segments(callback):
    """While inside, each segment line this thread prints goes to `callback(text)` (None: no tap)."""
    if callback is None:
        yield
        return
    with _lock:
        if not isinstance(sys.stdout, _Router):
            sys.stdout = _Router(sys.stdout)
        router = sys.stdout
    me = threading.get_ident()
    router.taps[me] = callback
    try:
        yield
    finally:
        router.taps.pop(me, None)
        router.parts.pop(me, None)
