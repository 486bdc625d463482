"""Which float32 products does MAX compute in TF32 on this device, and are the operands truncated or
rounded? What the precision table's `TF32_PRODUCTS` assumes, measured (issue 17's GPU probe).

  python gpu/probe_tf32.py --device gpu --json $OUT/probe_tf32.json
  python gpu/probe_tf32.py --device cpu --json /tmp/probe_tf32.json   (here: every product IEEE)

One MAX graph (one compile) holds every product Whisper's float32 graph computes: a Linear (x @ W^T),
the conv stem's im2col matmul (cols @ F, K = 3 x 80), batched q.k^T and p.v at head_dim 64, and the
fused attention core softmax(q k^T / 8) v. Two inputs per product:
- bits: one operand holds chosen values whose low 13 mantissa bits are set, the other is exactly 1 in
  one place, so each output is one product, which is the value itself (IEEE), its truncation to TF32,
  or its round-to-nearest: the probe names which, for each operand side;
- random: normal data at Whisper's scale; MAX's relative RMS error against float64, beside PyTorch's in
  IEEE and in its own TF32 mode (on CUDA) and the truncation emulated in numpy.
The attention core is fused, so only its random row is read (its error level says IEEE or TF32).
`linear 3xtf32` is the Linear's random product as float32's GPU form computes it (`tf32.split_product`):
IEEE-grade (~1e-7) if MAX's compiler keeps the three TF32 products apart, TF32-grade (~1e-3) if not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from max.dtype import DType  # noqa: E402
from max.graph import Graph, TensorType, ops  # noqa: E402

from maxwhisper import layers, tf32  # noqa: E402
from maxwhisper.device import parse_device  # noqa: E402
from maxwhisper.runtime import Compiled, device_ref  # noqa: E402

T, D, H, K_CONV = 64, 384, 6, 240
# a with bits below TF32's 10: truncation gives 1, round-to-nearest 1 + 2^-10, IEEE a itself
LOW = np.array([1 + 2.0**-11 + 2.0**-13, -(1 + 2.0**-11 + 2.0**-13), 1.5 + 2.0**-12 + 2.0**-20], np.float32)
SHAPES = {"linear": ([T, D], [D, D]), "conv": ([T, K_CONV], [K_CONV, D]),
          "qk": ([1, H, T, 64], [1, H, 64, T]), "pv": ([1, H, T, T], [1, H, T, 64])}


def tf32_trunc(a: np.ndarray) -> np.ndarray:
    return (np.asarray(a, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def tf32_round(a: np.ndarray) -> np.ndarray:
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0xFFF + ((u >> 13) & 1)) & 0xFFFFE000).astype(np.uint32).view(np.float32)


def _product(name: str, a, b):
    return a @ ops.transpose(b, 0, 1) if name == "linear" else a @ b


def build(device: str) -> Compiled:
    ref = device_ref(device)
    types = [TensorType(DType.float32, s, ref) for n in SHAPES for s in SHAPES[n] for _ in (0, 1)]
    types += [TensorType(DType.float32, [1, T, D], ref)] * 3  # q, k, v for the fused core
    with Graph("probe_tf32", input_types=types) as g:
        xs, outs = [v.tensor for v in g.inputs], []
        for i, name in enumerate(SHAPES):  # per product: (bits a, bits b), (random a, random b)
            a_bits, a_rand, b_bits, b_rand = xs[4 * i:4 * i + 4]
            outs += [_product(name, a_bits, b_bits), _product(name, a_rand, b_rand)]
        outs.append(layers.qkv_attention(*xs[-3:], H))
        outs.append(tf32.split_product(xs[1], ops.transpose(xs[3], 0, 1)))  # the Linear's random operands
        g.output(*outs)
    return Compiled(g, device)


def _bits_case(name: str, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Operands whose product's output [.., i, 0] is LOW[i] times exactly 1, LOW on `side`."""
    (sa, sb), (ta, tb) = SHAPES[name], (np.zeros(SHAPES[name][0], np.float32), np.zeros(SHAPES[name][1], np.float32))
    lo, one = (ta, tb) if side == "a" else (tb, ta)
    n = len(LOW)
    if side == "a":
        lo[..., :n, 0] = LOW
        one[..., 0, 0] = 1.0
    elif name == "linear":  # b is W (out, in): W[0, 0:n] = LOW gives out[0, 0] = sum... one per output column
        lo[:n, 0] = LOW
        one[..., 0, 0] = 1.0
    else:
        lo[..., 0, :n] = LOW
        one[..., 0, 0] = 1.0
    return ta, tb


def classify(out: np.ndarray) -> str:
    got = np.asarray(out, np.float32)
    for label, want in (("ieee", LOW), ("tf32 truncated", tf32_trunc(LOW)), ("tf32 rounded", tf32_round(LOW))):
        if np.array_equal(got, want):
            return label
    return f"other: {got.tolist()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="gpu")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    dev = parse_device(args.device)
    rng = np.random.default_rng(0)
    rand = {n: (rng.standard_normal(sa).astype(np.float32), (rng.standard_normal(sb) * D**-0.5).astype(np.float32))
            for n, (sa, sb) in SHAPES.items()}
    qkv = [rng.standard_normal((1, T, D)).astype(np.float32) for _ in range(3)]
    compiled = build(dev.name)
    res = {"device": dev.name, "rows": {}}
    for side in ("a", "b"):
        feeds = []
        for n in SHAPES:
            a, b = _bits_case(n, side)
            feeds += [a, rand[n][0], b, rand[n][1]]
        outs = compiled(*feeds, *qkv)
        for i, n in enumerate(SHAPES):
            bits = outs[2 * i][..., :len(LOW), 0] if side == "a" else outs[2 * i][..., 0, :len(LOW)]
            row = res["rows"].setdefault(n, {})
            row[f"operand {side}"] = classify(bits.reshape(-1, len(LOW))[0])
            a64, b64 = (x.astype(np.float64) for x in rand[n])
            exact = _np_product(n, a64, b64)
            row["rel_rms"] = {"max": _rel(outs[2 * i + 1], exact),
                              "emulated tf32": _rel(_np_product(n, tf32_trunc(rand[n][0]).astype(np.float64),
                                                                tf32_trunc(rand[n][1]).astype(np.float64)), exact)}
    core, split = outs[-2], outs[-1]
    res["rows"]["attention core"] = {"rel_rms": {"max": _rel(core, _np_core(*(x.astype(np.float64) for x in qkv)))}}
    exact = _np_product("linear", *(x.astype(np.float64) for x in rand["linear"]))
    res["rows"]["linear 3xtf32"] = {"rel_rms": {"max": _rel(split, exact)}}
    res["torch"] = _torch_side(dev, rand)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


def _np_product(name, a, b):
    return a @ np.swapaxes(b, -1, -2) if name == "linear" else a @ b


def _np_core(q, k, v):
    def heads(t):
        return t.reshape(1, T, H, 64).transpose(0, 2, 1, 3)
    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) / 8.0
    p = np.exp(s - s.max(-1, keepdims=True))
    return ((p / p.sum(-1, keepdims=True)) @ heads(v)).transpose(0, 2, 1, 3).reshape(1, T, D)


def _rel(x, ref) -> float:
    return float(np.sqrt(np.mean((np.asarray(x, np.float64) - ref) ** 2) / np.mean(ref**2)))


def _torch_side(dev, rand) -> dict:
    """PyTorch's own products on the same random data: IEEE, and (on CUDA) its TF32 mode."""
    import torch

    out = {}
    modes = ["ieee", "tf32"] if dev.kind == "gpu" and torch.cuda.is_available() else ["ieee"]
    for mode in modes:
        torch.backends.cuda.matmul.fp32_precision = mode
        for n, (a, b) in rand.items():
            ta, tb = (torch.from_numpy(x).to(dev.torch if len(modes) == 2 else "cpu") for x in (a, b))
            y = (ta @ tb.transpose(-1, -2) if n == "linear" else ta @ tb).cpu().numpy()
            out.setdefault(n, {})[mode] = _rel(y, _np_product(n, a.astype(np.float64), b.astype(np.float64)))
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    return out


if __name__ == "__main__":
    sys.exit(main())
