"""Compiled graphs that call a custom op (int8's kernel), kept as MAX artifacts (MEF files).

MAX's own cache serves a graph with a custom op in ~1-1.5 s a graph here (it handles the kernel
package at every compile), against ~0.05 s for a float32 unit; a MEF written by `export_mef` loads
in ~0.0 s. The file's name is a digest of everything the artifact is built from: the graph's text
(its ops, shapes, dtypes and kernel parameters such as the int8 path), the bytes of each kernel
library, MAX's version and this CPU's model and flags, so a changed graph, kernel, MAX or machine
is a new file and never a stale one. `$MAXWHISPER_ARTIFACTS=off` compiles through MAX's cache alone.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from importlib import metadata
from pathlib import Path

from max import engine
from max.graph import Graph

ENV = "MAXWHISPER_ARTIFACTS"


def folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "maxwhisper" / "artifacts"


def _cpu() -> bytes:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return b""
    return "\n".join(dict.fromkeys(ln for ln in lines if ln.startswith(("model name", "flags")))).encode()


def key(graph: Graph) -> str:
    """The digest naming `graph`'s artifact; call it before the graph is loaded (loading changes its text)."""
    h = hashlib.sha256(str(graph).encode())
    for path in graph._kernel_library.library_paths():
        h.update(Path(path).read_bytes())
    h.update(metadata.version("max").encode() + _cpu())
    return h.hexdigest()[:32]


def uses_custom_ops(graph: Graph) -> bool:
    return bool(graph._kernel_library.library_paths())


def compiled(session: engine.InferenceSession, graph: Graph) -> engine.CompiledModel:
    """`graph` compiled: from its artifact where one is stored, else compiled and its artifact stored."""
    if os.environ.get(ENV) == "off" or not uses_custom_ops(graph):
        return session.compile(graph)
    path = folder() / f"{graph.name}.{key(graph)}.mef"
    if path.exists():
        try:
            return session.compile(path)
        except (RuntimeError, ValueError) as e:  # a damaged file (writes are atomic, so a disk's fault): replaced, and said
            warnings.warn(f"{path}: unreadable MAX artifact ({e}); compiling the graph again", stacklevel=2)
    model = session.compile(graph)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".{os.getpid()}.part")
    model.export_mef(staging)
    os.replace(staging, path)  # atomic: a reader never sees half a file
    return model
