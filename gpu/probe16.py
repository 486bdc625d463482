"""Probe MAX's 16-bit floats on a device: does each op Whisper's encoder uses compile in bfloat16 and
float16, and how far is it from a float64 reference, next to PyTorch in the same dtype there?

  python gpu/probe16.py --device gpu --json $OUT/probe16.json    (run.sh's probe16 step)
  python gpu/probe16.py --device cpu --json /tmp/probe16.json    (rehearsal on this machine)

Each dtype is one MAX graph (one compile: a cold MAX compile costs seconds to a minute per graph)
holding every op, each with float32 inputs and output and the op itself in the dtype between two
casts; should it fail to compile, each op is compiled alone to name the one that fails. The casts
keep 16-bit buffers off the host (numpy has no bfloat16). The inputs are rounded to the dtype first
(by torch), so MAX, PyTorch and the float64 reference all see the same values; the `cast` row
instead feeds unrounded float32 and measures the rounding. PyTorch runs the same op in the same
dtype on the same kind of device (cuda for --device gpu). Reported per row: compiled (or the error's
text), max and RMS absolute error of MAX and of PyTorch against the float64 reference, and
MAX/PyTorch ratios. The JSON is rewritten after every dtype, so a run cut short by its timeout keeps
what it had; --deadline-s stops starting new ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from max.dtype import DType  # noqa: E402
from max.graph import ops  # noqa: E402

from maxwhisper.device import parse_device  # noqa: E402
from maxwhisper.runtime import Compiled, device_ref, functional_graph  # noqa: E402

N_CTX, D, D_MLP = 1500, 384, 1536  # tiny.en's encoder: 1500 frames, width 384, MLP 1536
DTYPES = {"bfloat16": (DType.bfloat16, torch.bfloat16), "float16": (DType.float16, torch.float16),
          "float32": (DType.float32, torch.float32)}


def _inputs(rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """float32 inputs per op, in the scale the encoder sees them."""
    f = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(np.float32)  # noqa: E731
    return {
        "matmul": {"x": f(N_CTX, D), "weight": f(D, D, scale=D ** -0.5)},
        "layer_norm": {"x": f(N_CTX, D, scale=2.0) + 0.5, "weight": 1 + f(D, scale=0.1),
                       "bias": f(D, scale=0.1)},
        "softmax": {"x": f(N_CTX, N_CTX, scale=3.0)},  # one head's attention logits
        "gelu": {"x": f(N_CTX, D_MLP, scale=2.0)},
        "cast": {"x": f(N_CTX, D, scale=4.0)},
    }


def _max_fn(op: str, dt: DType):
    """The op in `dt` between casts from and to float32 (parameters cast as they are looked up)."""
    def fn(xs, s):
        c = lambda v: ops.cast(v, dt)  # noqa: E731
        x = c(xs["x"])
        if op == "matmul":  # as maxwhisper.layers.linear: x @ W.T, W in torch's (out, in) layout
            y = x @ ops.transpose(c(s("weight")), 0, 1)
        elif op == "layer_norm":
            y = ops.layer_norm(x, c(s("weight")), c(s("bias")), epsilon=1e-5)
        elif op == "softmax":
            y = ops.softmax(x, axis=-1)
        elif op == "gelu":
            y = ops.gelu(x, approximate="none")
        else:  # cast: the round trip alone
            y = x
        return ops.cast(y, DType.float32)
    return fn


def _torch_op(op: str, a: dict[str, torch.Tensor]) -> torch.Tensor:
    x = a["x"]
    if op == "matmul":
        return x @ a["weight"].T
    if op == "layer_norm":
        return F.layer_norm(x, (x.shape[-1],), a["weight"], a["bias"], eps=1e-5)
    if op == "softmax":
        return torch.softmax(x, dim=-1)
    if op == "gelu":
        return F.gelu(x, approximate="none")
    return x


def _errors(out: np.ndarray, ref: np.ndarray) -> dict:
    e = np.abs(out.astype(np.float64) - ref)
    return {"max_abs": float(e.max()), "rms": float(np.sqrt(np.mean(e * e))),
            "finite": bool(np.isfinite(out).all())}


def _prepare(op: str, dname: str, raw: dict[str, np.ndarray], tdev: str) -> tuple[dict, dict, np.ndarray]:
    """(row with PyTorch's errors, the inputs MAX gets, the float64 reference)."""
    tdt = DTYPES[dname][1]
    row: dict = {"op": op, "dtype": dname, "shape": {k: list(v.shape) for k, v in raw.items()}}
    # Inputs rounded to the dtype (except for `cast`, which measures that rounding).
    if op == "cast":
        vals = dict(raw)
    else:
        vals = {k: torch.from_numpy(v).to(tdt).to(torch.float32).numpy() for k, v in raw.items()}
    with torch.no_grad():
        ref = _torch_op(op, {k: torch.from_numpy(v).double() for k, v in vals.items()}).numpy()
        row["ref_rms"] = float(np.sqrt(np.mean(ref * ref)))
        t0 = time.perf_counter()
        try:  # PyTorch in the dtype, on the same kind of device
            tin = {k: torch.from_numpy(v).to(tdev).to(tdt) for k, v in vals.items()}
            row["torch"] = _errors(_torch_op(op, tin).double().cpu().numpy(), ref)
        except Exception as e:  # e.g. an op with no kernel for the dtype on CPU
            row["torch"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        row["torch_s"] = round(time.perf_counter() - t0, 3)
    return row, vals, ref


def _err_text(e: Exception) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()[-2000:]


def _finish(row: dict, out: np.ndarray, ref: np.ndarray) -> None:
    row["max"] = _errors(out, ref)
    m, t = row["max"], row["torch"]
    if "error" not in t:
        row["ratio_max"] = m["max_abs"] / t["max_abs"] if t["max_abs"] else None
        row["ratio_rms"] = m["rms"] / t["rms"] if t["rms"] else None


def _graph(ops_: list[str], dname: str, data: dict, device: str):
    """One MAX graph computing every op in `ops_` in the dtype (inputs named op.input)."""
    dt = DTYPES[dname][0]
    inputs = {f"{op}.x": list(data[op]["x"].shape) for op in ops_}
    params = {f"{op}.{k}": tuple(v.shape) for op in ops_ for k, v in data[op].items() if k != "x"}

    def fn(xs, s):
        return {op: _max_fn(op, dt)({"x": xs[f"{op}.x"]}, s.sub(op)) for op in ops_}

    g, names = functional_graph(f"probe16_{dname}_{'_'.join(ops_)}", fn, inputs, params,
                                device_ref(device))
    feed = [data[n.split(".")[0]]["x"] for n in inputs] + [data[n.split(".")[0]][n.split(".")[1]]
                                                            for n in params]
    return Compiled(g, device), names, feed


def probe_dtype(ops_: list[str], dname: str, data: dict, device: str, tdev: str,
                fallback: bool, deadline) -> list[dict]:
    """Every op of one dtype in one graph (one compile); should that fail, one graph per op, so
    the op that does not compile is named (while `deadline()` allows)."""
    prepared = {op: _prepare(op, dname, data[op], tdev) for op in ops_}
    vals = {op: p[1] for op, p in prepared.items()}
    rows = [prepared[op][0] for op in ops_]
    t0 = time.perf_counter()
    try:
        model, names, feed = _graph(ops_, dname, vals, device)
        compile_s = round(time.perf_counter() - t0, 2)
        t1 = time.perf_counter()
        outs = dict(zip(names, model(*feed)))
        execute_s = round(time.perf_counter() - t1, 3)
        for op, row in zip(ops_, rows):
            row.update(compiled=True, graph="combined", compile_s=compile_s, execute_s=execute_s)
            _finish(row, outs[op], prepared[op][2])
        return rows
    except Exception as e:
        combined_error = _err_text(e)
        compile_s = round(time.perf_counter() - t0, 2)
    for op, row in zip(ops_, rows):
        row["combined_error"], row["combined_s"] = combined_error, compile_s
        if not fallback or len(ops_) == 1:
            row.update(compiled=False, error=combined_error)
            continue
        if deadline():
            row.update(compiled=None, error="not tried alone: out of time")
            continue
        t0 = time.perf_counter()
        try:
            model, names, feed = _graph([op], dname, vals, device)
            row.update(compiled=True, graph="alone", compile_s=round(time.perf_counter() - t0, 2))
            _finish(row, model(*feed)[0], prepared[op][2])
        except Exception as e:
            row.update(compiled=False, graph="alone", error=_err_text(e),
                       compile_s=round(time.perf_counter() - t0, 2))
    return rows


def table(rows: list[dict]) -> str:
    def g(v):
        return "-" if v is None else f"{v:.3g}"
    lines = ["| op | dtype | compiled | MAX max | MAX rms | torch max | torch rms | ratio max | ratio rms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        m, t = r.get("max", {}), r.get("torch", {})
        lines.append(f"| {r['op']} | {r['dtype']} | {'yes' if r.get('compiled') else 'NO'} | "
                     f"{g(m.get('max_abs'))} | {g(m.get('rms'))} | {g(t.get('max_abs'))} | "
                     f"{g(t.get('rms'))} | {g(r.get('ratio_max'))} | {g(r.get('ratio_rms'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="gpu", help="MAX device: cpu, gpu or gpu:N")
    ap.add_argument("--dtypes", default="bfloat16,float16", help="comma-separated, of %s" % list(DTYPES))
    ap.add_argument("--ops", default="matmul,layer_norm,softmax,gelu,cast")
    ap.add_argument("--json", help="write the result here (rewritten after every row)")
    ap.add_argument("--no-fallback", action="store_true",
                    help="when a dtype's combined graph fails, do not compile each op alone")
    ap.add_argument("--deadline-s", type=float, default=0, help="start no new row after this many seconds")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    tdev = parse_device(args.device).torch
    res = {"device": args.device, "torch_device": tdev, "torch": torch.__version__, "rows": [],
           "not_run": []}
    if tdev != "cpu":
        res["torch_gpu"] = torch.cuda.get_device_name(int(tdev.split(":")[1]))
    try:
        import importlib.metadata as md
        res["max"] = md.version("max")
    except Exception:
        pass
    data = _inputs(np.random.default_rng(16))
    ops_ = args.ops.split(",")
    deadline = lambda: bool(args.deadline_s) and time.perf_counter() - t_start > args.deadline_s  # noqa: E731
    for d in args.dtypes.split(","):
        if deadline():
            res["not_run"] += [f"{op}/{d}" for op in ops_]
            continue
        for row in probe_dtype(ops_, d, data, args.device, tdev, not args.no_fallback, deadline):
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
        res["wall_s"] = round(time.perf_counter() - t_start, 1)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    res["table"] = table(res["rows"])
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(res["table"])
    ok = all(r.get("compiled") and "error" not in r.get("max", {}) for r in res["rows"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
