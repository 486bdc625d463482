"""The GPU run's two measuring calls, each a list of steps run one after another; the shards of a step
run as parallel processes (16 cores there: a MAX compile keeps ~1.3 cores busy), sharing
~/.cache/modular, so a step costs its longest shard's compiles, not their sum.

  python3 gpu/measure.py 1 --device gpu --out $OUT      verify per precision + the TF32 probe (< 300 s)
  python3 gpu/measure.py 2 --device gpu --out $OUT      parity (float32 first), encoder bench, pipeline
  python3 gpu/measure.py plan                           print the calls, their steps, shards and files

Results first: `summary.json` is written before any shard starts and rewritten whenever a shard ends
(rc, wall, the graphs each shard loaded with their load seconds, each output file's first sighting);
every shard writes its own JSON as soon as it has one. A step past its cap is interrupted (SIGINT,
then SIGKILL 15 s later) and the next step still runs; the call ends within `--budget-s`.
The same calls run on this CPU with `--device cpu` (`gpu/offline_bundle/stage.py rehearse-calls`), and `gpu/budget.py`
turns that run's graph log into the cold-GPU estimate each step's cap is checked against.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _precisions() -> list[str]:
    """The precision table's rows that run on a GPU (maxwhisper/__init__ imports lazily: no MAX, no torch
    here); a quantized row is CPU-only (MAX's quantized kernels)."""
    sys.path.insert(0, str(ROOT))
    from maxwhisper.precision import PRECISIONS

    return [name for name, r in PRECISIONS.items() if "gpu" in r.products]


PARITY_SHARDS = 12  # float32's parity tests over 12 processes (+1 beside them, on 16 cores): 15 graphs, at most 2 each


@dataclass
class Shard:
    name: str
    commands: list[list[str]]  # run one after another; {py} {device} {out} {scratch} filled in
    outputs: list[str] = field(default_factory=list)  # files under --out this shard writes, in order


@dataclass
class Step:
    name: str
    cap_s: int
    shards: list[Shard]
    outputs: list[str] = field(default_factory=list)  # written by measure.py from the shards' files


@dataclass
class Call:
    number: int
    timeout_s: int  # the device call's timeout_s
    budget_s: int  # measure.py's own end: timeout_s less the stage check and the transfer back
    steps: list[Step]

    @property
    def outputs(self) -> list[str]:
        return ["summary.json", *(o for s in self.steps for o in step_outputs(s))]


def step_outputs(step: Step) -> list[str]:
    """A step's files in $OUT: its shards' own, then what measure.py merges from them."""
    return [*(o for sh in step.shards for o in sh.outputs), *step.outputs]


def _verify(dtype: str) -> Shard:
    return Shard(f"verify-{dtype}", [["{py}", "-m", "maxwhisper.cli", "verify", "--device", "{device}", "--dtype",
                                      dtype, "--no-transcripts", "--json", f"{{out}}/verify-{dtype}.json"]],
                 [f"verify-{dtype}.json"])


def _warm_decoder(dtype: str) -> Shard:
    # verify compiles the encoder's two graphs first, then the decoder's two; this shard compiles the
    # decoder's meanwhile (last used first), so verify's process finds them in the cache
    return Shard(f"warm-{dtype}", [["{py}", "gpu/warm.py", "--device", "{device}", "--dtype", dtype,
                                    "decoder-trace", "decoder-cross"]])


def _parity(dtype: str, i: int, n: int) -> Shard:
    return Shard(f"parity-{dtype}-{i}", [["{py}", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-k", "parity",
                                          "--device", "{device}", "--dtype", dtype, "--shard", f"{i}/{n}",
                                          "--shard-groups", f"gpu/parity-groups-{dtype}.json",
                                          "--junitxml", f"{{scratch}}/parity-{dtype}-{i}.xml"]])


def calls() -> list[Call]:
    probe = Shard("probe", [["{py}", "gpu/env_check.py", "--need", "{device}", "--json", "{out}/env.json"],
                            ["{py}", "gpu/probe_tf32.py", "--device", "{device}", "--json", "{out}/probe_tf32.json"]],
                  ["env.json", "probe_tf32.json"])
    dtypes = _precisions()
    first = Step("verify", 255, [probe, *(_verify(d) for d in dtypes), *(_warm_decoder(d) for d in dtypes)])
    parity = Step("parity-float32", 180, [
        *(_parity("float32", i, PARITY_SHARDS) for i in range(PARITY_SHARDS)),
        Shard("warm-pipeline", [["{py}", "gpu/pipeline.py", "warm", "--device", "{device}"]])],
                  ["parity-float32.json"])
    bench = Step("bench", 40, [Shard("bench", [["{py}", "gpu/bench_encoder.py", "--device", "{device}", "--batches",
                                                "{batches}", "--json", "{out}/bench-gpu.json"]], ["bench-gpu.json"])])
    pipeline = Step("pipeline", 60, [Shard("pipeline", [["{py}", "gpu/pipeline.py", "run", "--device", "{device}",
                                                         "--json", "{out}/pipeline-gpu.json"]], ["pipeline-gpu.json"])])
    return [Call(1, 300, 280, [first]), Call(2, 300, 290, [parity, bench, pipeline])]


def plan_text() -> str:
    lines = []
    for c in calls():
        lines.append(f"call {c.number}: timeout_s {c.timeout_s}, ends itself by {c.budget_s} s; "
                     f"returns {', '.join(['run.log', *c.outputs])}")
        for s in c.steps:
            lines.append(f"  step {s.name} (cap {s.cap_s} s): {len(s.shards)} processes: "
                         + ", ".join(sh.name for sh in s.shards))
    return "\n".join(lines)


class Runner:
    """Runs one call's steps; summary.json after every event, so a call cut short still says what ran."""

    def __init__(self, call: Call, device: str, out: Path, python: str, jobs: int, caps: bool = True):
        self.call, self.device, self.out, self.python, self.jobs, self.caps = call, device, out, python, jobs, caps
        self.scratch = Path(os.environ.get("MW_SCRATCH", "/tmp/mw-measure"))
        self.graph_log = self.scratch / f"graphs-call{call.number}.jsonl"
        self.t0 = time.time()
        self.shards: list[dict] = []
        self.seen: dict[str, float] = {}

    def fill(self, arg: str) -> str:
        # the rehearsal times batch 1 only: the graphs are the same (symbolic batch), the CPU ~100x slower
        batches = "1" if self.device == "cpu" else "1,4,16"
        return arg.format(py=self.python, device=self.device, out=self.out, scratch=self.scratch, batches=batches)

    def graphs(self) -> list[dict]:
        if not self.graph_log.exists():
            return []
        return [json.loads(x) for x in self.graph_log.read_text().splitlines() if x.strip()]

    def write_summary(self, finished: bool) -> None:
        for name in self.call.outputs:
            if name not in self.seen and (self.out / name).exists():
                self.seen[name] = round(time.time() - self.t0, 1)
        doc = dict(call=self.call.number, device=self.device, jobs=self.jobs, budget_s=self.call.budget_s,
                   started_epoch=round(self.t0, 3),
                   elapsed_s=round(time.time() - self.t0, 1), finished=finished, shards=self.shards,
                   outputs_seen_s=self.seen, graphs=self.graphs())
        tmp = self.out / ".summary.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(self.out / "summary.json")  # never a half-written file in $OUT
        self.seen.setdefault("summary.json", round(time.time() - self.t0, 1))

    def run_step(self, step: Step) -> None:
        left = self.call.budget_s - (time.time() - self.t0)
        cap = min(step.cap_s, left) if self.caps else float("inf")
        if cap < 10:
            print(f"=== step {step.name}: skipped ({left:.0f} s of {self.call.budget_s} s left)", flush=True)
            self.shards += [dict(step=step.name, shard=s.name, rc=None, skipped=True) for s in step.shards]
            self.write_summary(False)
            return
        print(f"=== step {step.name}: {len(step.shards)} shards, cap {cap:.0f} s", flush=True)
        cap = min(cap, 1e6)
        deadline = time.time() + cap
        waiting, running = list(step.shards), {}
        while waiting or running:
            while waiting and len(running) < self.jobs:
                shard = waiting.pop(0)
                running[shard.name] = (shard, self.start(shard, len(step.shards)), time.time())
            time.sleep(0.2)
            for name, (shard, proc, t) in list(running.items()):
                rc = proc.poll()
                if rc is None and time.time() > deadline:
                    rc = self.stop(proc)
                    print(f"=== {name}: TIMED OUT at the step's cap ({cap:.0f} s)", flush=True)
                if rc is not None:
                    del running[name]
                    self.shards.append(dict(step=step.name, shard=name, rc=rc, start_s=round(t - self.t0, 1),
                                            wall_s=round(time.time() - t, 1), cap_s=step.cap_s))
                    print(f"=== {name}: rc={rc} wall={time.time() - t:.1f}s", flush=True)
                    self.write_summary(False)
            if waiting and time.time() > deadline:
                self.shards += [dict(step=step.name, shard=s.name, rc=None, skipped=True) for s in waiting]
                waiting = []

    def start(self, shard: Shard, beside: int) -> subprocess.Popen:
        # each shard's share of the cores for torch's CPU work (the float64 reference): 13 processes
        # with 16 torch threads each would oversubscribe the device's 16 cores
        threads = str(max(1, (os.cpu_count() or 1) // min(beside, self.jobs)))
        env = dict(os.environ, MAXWHISPER_GRAPH_LOG=str(self.graph_log), MAXWHISPER_SHARD=shard.name,
                   PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        script = " && ".join(" ".join(_quote(self.fill(a)) for a in cmd) for cmd in shard.commands)
        log = open(self.scratch / f"{shard.name}.log", "w")
        # a new session per shard: the cap's SIGINT reaches the shard's whole process group
        return subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    @staticmethod
    def stop(proc: subprocess.Popen) -> int:
        os.killpg(proc.pid, signal.SIGINT)  # pytest still writes its junit XML on SIGINT
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        self.write_summary(False)
        for step in self.call.steps:
            self.run_step(step)
            merge_parity(self.scratch, self.out)
            fold(self.out, ["run.log", *self.call.outputs])
            for s in step.shards:  # each shard's log into run.log, after the step, in plan order
                p = self.scratch / f"{s.name}.log"
                if p.exists():
                    print(f"--- {s.name} log (last 60 lines)\n" + "\n".join(p.read_text().splitlines()[-60:]),
                          flush=True)
        self.write_summary(True)
        print(f"=== call {self.call.number} done in {time.time() - self.t0:.0f} s", flush=True)
        return 0 if all(s.get("rc") == 0 for s in self.shards) else 1


def merge_parity(scratch: Path, out: Path) -> None:
    """parity-<dtype>.json from the shards' junit XML: counts, and each failure's test and message."""
    import xml.etree.ElementTree as ET

    per: dict[str, dict] = {}
    for xml in sorted(scratch.glob("parity-*-*.xml")):
        dtype = xml.stem.rsplit("-", 1)[0].removeprefix("parity-")
        d = per.setdefault(dtype, dict(dtype=dtype, shards=0, tests=0, passed=0, failed=0, skipped=0, failures=[]))
        d["shards"] += 1
        for case in ET.parse(xml).getroot().iter("testcase"):
            d["tests"] += 1
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                d["failed"] += 1
                d["failures"].append(dict(test=f"{case.get('classname')}::{case.get('name')}",
                                          message=(bad.get("message") or "")[:2000]))
            elif case.find("skipped") is not None:
                d["skipped"] += 1
            else:
                d["passed"] += 1
    for dtype, d in per.items():
        (out / f"parity-{dtype}.json").write_text(json.dumps(d, indent=1) + "\n")


def fold(out: Path, ranked: list[str], most: int = 8) -> list[str]:
    """The device tool returns at most `most` files: past that, the files not in `ranked` and then the
    lowest-ranked go into extra.tgz (itself one of the `most`). Returns what was folded."""
    import io
    import tarfile

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "extra.tgz"
                   and not p.name.startswith("."))
    if len(files) + (out / "extra.tgz").exists() <= most:
        return []
    order = sorted(files, key=lambda f: ranked.index(f) if f in ranked else len(ranked))
    extra = order[most - 1:]
    archive = out / "extra.tgz"
    old = {}
    if archive.exists():  # an earlier step's fold: keep its files
        with tarfile.open(archive) as tar:
            old = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in old.items():
            if name not in extra:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for f in extra:
            tar.add(out / f, arcname=f)
    for f in extra:
        (out / f).unlink()
    print(f"=== more than {most} files: {extra} folded into extra.tgz", flush=True)
    return extra


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("call", choices=["1", "2", "plan"])
    ap.add_argument("--device", default="gpu", help="gpu on the device machine; cpu for the rehearsal here")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/mw-out"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="shards at once (default: one per core)")
    ap.add_argument("--no-caps", action="store_true",
                    help="run every step to its end (the rehearsal: gpu/budget.py replays it against the caps)")
    args = ap.parse_args(argv)
    if args.call == "plan":
        print(plan_text())
        return 0
    call = calls()[int(args.call) - 1]
    if os.environ.get("MW_BUDGET_S"):
        call.budget_s = int(os.environ["MW_BUDGET_S"])
    return Runner(call, args.device, Path(args.out), args.python, args.jobs, caps=not args.no_caps).run()


if __name__ == "__main__":
    sys.exit(main())
