"""The golden fixtures' one format, shared by the encoder's (`golden`) and the decoder's
(`golden_decoder`): a byte-reproducible npz whose `meta/` entries say what made it (format version,
weights hash, openai-whisper and torch versions), read by `read`, refused by `StaleFixtureError`
with the command that regenerates it. Each fixture adds its own arrays and freshness reasons.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

MODEL = "tiny.en"
AUDIO = "jfk.flac"
REGENERATE = "python -m maxwhisper.harness.make_fixtures"  # + " decoder" for the decoder's
T = TypeVar("T")


class StaleFixtureError(RuntimeError):
    """A golden fixture does not match the current code, weights or input (or is unreadable)."""


def repo_file(rel: str) -> Path:
    """A file checked into the repository: beside this source tree (a checkout, an editable install),
    else under the current directory (an installed package, e.g. tox's, run from the repo root)."""
    here = Path(__file__).resolve().parents[2] / rel
    return here if here.exists() else Path.cwd() / rel


def float32_hash(a: np.ndarray) -> str:
    """sha256 hex of the float32 C-order bytes of an array (shape and dtype are checked apart)."""
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def read(path: str | Path, what: str, regenerate: str, build: Callable[[Path, np.lib.npyio.NpzFile], T]) -> T:
    """`build(path, npz)` over a fixture file; missing or unreadable: StaleFixtureError naming `regenerate`."""
    path = Path(path)
    if not path.is_file():
        raise StaleFixtureError(f"{what} {path} is missing: regenerate it with `{regenerate}`")
    try:
        with np.load(path, allow_pickle=False) as z:
            return build(path, z)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise StaleFixtureError(f"{what} {path} is unreadable or incomplete ({e}): "
                                f"regenerate it with `{regenerate}`") from e


def check_hash(array: np.ndarray, recorded: str, path: Path, what: str, name: str, regenerate: str) -> None:
    """A stored array must hash to its recorded hash: else the file is corrupt."""
    if float32_hash(array) != recorded:
        raise StaleFixtureError(f"{what} {path} is corrupt: its {name} does not hash to the recorded hash: "
                                f"regenerate it with `{regenerate}`")


def common_reasons(version: int, current: int, stored_weights: str, weights_hash: str) -> list[str]:
    """The staleness reasons every fixture checks: its format version and the weights it was made from."""
    reasons = []
    if version != current:
        reasons.append(f"format version {version} != current FORMAT_VERSION {current}")
    if stored_weights != weights_hash:
        reasons.append(f"weights hash {stored_weights[:12]}.. != current {MODEL} weights {weights_hash[:12]}..")
    return reasons


def raise_if_stale(reasons: list[str], what: str, path: Path, regenerate: str) -> None:
    if reasons:
        raise StaleFixtureError(f"{what} {path} is stale: " + "; ".join(reasons)
                                + f". Regenerate it with `{regenerate}`")


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed's format, byte-reproducible: fixed entry timestamps, insertion order.

    np.savez_compressed stamps each zip entry with the current time, so two runs differ in bytes
    even when every array is equal; np.load reads this file exactly as it reads theirs.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    Path(path).write_bytes(buf.getvalue())


def doctored_copy(module, path: Path, out_dir: Path, **changes):
    """A copy of `module`'s fixture file (`golden`, `golden_decoder`), made current in format version,
    with some entries replaced, read back by `module.load_fixture`: what the freshness tests refuse."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta/format_version"] = np.int64(module.FORMAT_VERSION)
    arrays.update({k: np.asarray(v) for k, v in changes.items()})
    out = Path(out_dir) / "doctored.npz"
    save_npz(out, arrays)
    return module.load_fixture(out)
