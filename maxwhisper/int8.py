"""int8 products: weights per output channel, activations per row, an exact int32 sum, then the scales.

A Linear's weight row n is stored as codes `round-half-even(w * (127 / max|w_n|))` and a float32
scale `max|w_n| / 127` (symmetric, CTranslate2's int8 scheme); at run time each row of the activations
is quantized the same way, the codes are multiplied exactly in int32 by a Mojo kernel
(`kernels/int8/int8_matmul.mojo`: AVX-512 VNNI or AVX2, picked by `path`), and the sum is scaled:
`(float32(acc) * x_scale) * w_scale + bias`, each step one float32 rounding but the last two, which
MAX fuses into one FMA. `linear_np` is that
arithmetic step for step in numpy, so a MAX graph is compared with it bit for bit
(`tests/test_int8.py`); `reference.quantized` computes the same codes' product in float64.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

CODES, SUMS, SCALES = ".int8", ".int8_sum", ".int8_scale"  # a quantized weight's parameters: its key plus these
COLUMNS = 64  # the kernel's columns per task: N is padded to a multiple
STEP = np.float32(1 / 127)  # a scale is max|x| * STEP: MAX rewrites a division by 127 so, and the graph writes it so
PATHS = ("vnni", "avx2")
PATH_ENV = "MAXWHISPER_INT8_PATH"  # forces one of PATHS
KERNELS = Path(__file__).parent / "kernels" / "int8"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


_NEEDS = {"vnni": ("avx512f", "avx512bw", "avx512_vnni"), "avx2": ("avx2",)}


def path() -> str:
    """The kernel's path on this CPU: VNNI where it has AVX-512 VNNI, else AVX2; `$MAXWHISPER_INT8_PATH`
    forces one, and a CPU without its instructions is a ValueError naming them."""
    flags, forced = cpu_flags(), os.environ.get(PATH_ENV)
    if forced:
        if forced not in PATHS:
            raise ValueError(f"${PATH_ENV}={forced!r}: expected one of {', '.join(PATHS)}")
        missing = [f for f in _NEEDS[forced] if f not in flags]
        if missing:
            raise ValueError(f"${PATH_ENV}={forced}: this CPU lacks {', '.join(missing)}")
        return forced
    for p in PATHS:
        if all(f in flags for f in _NEEDS[p]):
            return p
    raise ValueError("int8 needs a CPU with AVX2 or AVX-512 VNNI; this one has neither")


def library() -> Path:
    """The kernels compiled once per source (`mojo precompile`, 15-30 s here), kept under
    ~/.cache/maxwhisper: MAX itself recompiles a source folder at every graph build."""
    sources = sorted(KERNELS.glob("*.mojo"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "maxwhisper" / "kernels" / digest
    out = cache / "int8.mojoc"  # the compiler names the module after the file
    if not out.exists():
        from mojo.paths import subprocess_run_mojo

        staging = cache / f".staging.{os.getpid()}"
        staging.mkdir(parents=True, exist_ok=True)
        subprocess_run_mojo(["precompile", str(KERNELS), "-o", str(staging / out.name)], capture_output=True, check=True)
        os.replace(staging / out.name, out)  # atomic: a reader never sees half a file
        staging.rmdir()
    return out


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of float32 `x` (..., K) as (int8 codes, float32 scales (...)): codes
    round-half-even(x * (127 / max|x|)) within [-127, 127], scale max|x| * float32(1 / 127); a zero row:
    codes 0, scale 0."""
    x = np.asarray(x, np.float32)
    if not np.isfinite(x).all():
        raise ValueError("int8 quantization: the values hold NaN or infinite entries")
    top = np.abs(x).max(axis=-1, keepdims=True)
    inv = np.divide(np.float32(127), top, out=np.zeros_like(top), where=top != 0)
    codes = np.clip(np.rint(x * inv), -127, 127).astype(np.int8)
    return codes, (top * STEP)[..., 0]


def padded(n: int) -> int:
    return -(-n // COLUMNS) * COLUMNS


def pack(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) int8 codes as the kernel reads them: (Np / 16, K / 4, 16, 4), Np = N padded with zero rows
    to a multiple of 64, and 128 * each row's sum (int32, (Np,)), which the VNNI path subtracts."""
    n, k = codes.shape
    if k % 4:
        raise ValueError(f"int8 weights need K a multiple of 4, got shape {codes.shape}")
    c = np.zeros((padded(n), k), np.int8)
    c[:n] = codes
    sums = 128 * c.astype(np.int32).sum(axis=1, dtype=np.int32)
    return np.ascontiguousarray(c.reshape(-1, 16, k // 4, 4).transpose(0, 2, 1, 3)), sums


def eligible(key: str, shape) -> bool:
    """A Linear weight (or the logits' tied embedding): 2-D (out x in) with K a multiple of 4."""
    return key.endswith("weight") and len(shape) == 2 and shape[1] % 4 == 0 and shape[1] > 0


def with_codes(weights, quantizes) -> dict:
    """`weights` plus, for each eligible weight `quantizes(key)` selects, its packed codes, sums and
    scales under its key plus CODES, SUMS (both zero-padded to `padded` rows) and SCALES."""
    out = dict(weights)
    for k, v in weights.items():
        if eligible(k, np.shape(v)) and quantizes(k):
            codes, scale = quantize(v)
            out[k + CODES], out[k + SUMS] = pack(codes)
            out[k + SCALES] = scale
    return out


def param_shapes(key: str, shape) -> dict:
    n, k = shape
    return {key + CODES: (padded(n) // 16, k // 4, 16, 4), key + SUMS: (padded(n),), key + SCALES: (n,)}


def linear_np(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x @ w.T + bias as MAX's int8 product computes it, bit for bit (float32 `x` (..., K), `w` (N, K))."""
    wc, ws = quantize(w)
    xc, xs = quantize(x)
    acc = xc.reshape(-1, xc.shape[-1]).astype(np.int64) @ wc.astype(np.int64).T
    t = acc.astype(np.int32).astype(np.float32) * xs.reshape(-1, 1)
    if bias is None:
        y = t * ws[None, :]
    else:  # MAX fuses the bias into an FMA: the product exact in float64, one rounding of the sum (twice, at
        # odds of ~2^-29 an element differing from one rounding: none seen)
        y = (t.astype(np.float64) * ws[None, :] + np.asarray(bias, np.float32)).astype(np.float32)
    return y.reshape(*x.shape[:-1], len(w))


def extensions(quantizes) -> list[Path]:
    """A graph's custom extensions: the int8 kernels where `quantizes` (`precision.Quantizer`) is int8's."""
    return [library()] if getattr(quantizes, "scheme", None) == "int8" else []
