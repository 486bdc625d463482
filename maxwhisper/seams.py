"""Named seams: the product's functions where a test may put a bug in for a `with` block.

`@seam` wraps a function once; the wrapper calls the function, or the override `inject` set. The
override is found through the wrapper itself, so it reaches every caller however it imported the
function (graph builders, the decoder's state, the `Inference` adapter, the batcher), and nothing
outside this module is patched. The mutation catalog (`tests/mutants.py`) uses only these.
A name is the function's module, less `maxwhisper.`, and its qualified name: `layers.gelu`,
`decoder.DecoderState.reorder`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

_functions: dict[str, Callable] = {}
_overrides: dict[str, Callable] = {}


def seam(fn: Callable) -> Callable:
    name = f"{fn.__module__.removeprefix('maxwhisper.')}.{fn.__qualname__}"
    _functions[name] = fn

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return _overrides.get(name, fn)(*args, **kwargs)

    call.seam = name
    return call


def names() -> list[str]:
    """Every seam of the modules imported so far."""
    return sorted(_functions)


@contextlib.contextmanager
def inject(name: str, make: Callable[[Callable], Callable]) -> Iterator[None]:
    """Within the block, calls to seam `name` go to `make(original)`; nested injections stack."""
    if name not in _functions:
        raise ValueError(f"no seam {name!r}; seams: {', '.join(names())}")
    before = _overrides.get(name)
    _overrides[name] = make(before or _functions[name])
    try:
        yield
    finally:
        if before is None:
            del _overrides[name]
        else:
            _overrides[name] = before
