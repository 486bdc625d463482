"""Will the measuring calls fit a lease? Replays a rehearsal (`gpu/measure.py` run here with --device cpu)
as a fresh GPU machine would run it: every graph the run loaded is a cold compile there the first
time any shard needs it.

  python3 gpu/budget.py check REHEARSAL_DIR      (holds call1/summary.json, call2/summary.json)
  python3 gpu/budget.py groups GRAPH_LOG.jsonl --junit XML... --out gpu/parity-groups-float32.json
      (the graph log and junit XML of an unsharded
       `MAXWHISPER_GRAPH_LOG=... pytest -k parity --dtype float32 --junitxml XML`)

The model, per call (call 2 starts with call 1's compiled graphs: the plan makes them back to back
on one machine, whose ~/.cache/modular persists between calls):
- COLD_S per graph a shard needs that no shard has finished compiling (50-60 s each on the H100,
  2026-11-26; the first compile in a process was over 60 s, hence FIRST_EXTRA_S); a graph already
  compiled costs what its load took here;
- the time between a shard's loads is what it took here (2 CPU cores, the run's own contention): an
  upper bound for the GPU machine's 16 cores and GPU, except where a shard sizes its work by device
  (bench_encoder.py times batch 1 here, 1, 4 and 16 there: milliseconds each on a GPU);
- shards of a step start together (at most JOBS at once), steps one after another.
A step fails the check when its replayed wall exceeds its cap, or when its cold graphs x COLD_S /
its processes does; a call when its steps sum past its budget; and the outputs must all appear,
each step's before the next step's.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
from maxwhisper.harness.shards import groups, junit_seconds  # noqa: E402,F401  (budget.groups: tests)

COLD_S = 60.0
FIRST_EXTRA_S = 15.0
JOBS = 16


def shard_events(summary: dict) -> dict[str, dict]:
    """shard -> {start, end, loads: [(gap before the load, key, load_s)], tail}: from the run's log."""
    out = {}
    graphs = [g for g in summary["graphs"]]
    for s in summary["shards"]:
        if s.get("skipped"):
            continue
        t0 = summary.get("started_epoch", 0) + s["start_s"]
        loads = sorted((g for g in graphs if g["shard"] == s["shard"]), key=lambda g: g["t"])
        events, last = [], t0
        for g in loads:
            begin = g["t"] - g["load_s"]
            events.append((max(0.0, begin - last), g["key"], g["load_s"]))
            last = g["t"]
        out[s["shard"]] = dict(step=s["step"], rc=s["rc"], loads=events, tail=max(0.0, t0 + s["wall_s"] - last))
    return out


def replay_step(shards: dict[str, dict], compiled: dict[str, float], start: float, jobs: int = JOBS) -> dict:
    """Discrete-event replay of one step's shards from `start`; `compiled` (key -> when done) is updated."""
    index = {name: 0 for name in shards}
    cold = {name: 0 for name in shards}
    heap = [(start, name) for name in list(shards)[:jobs]]
    queue = list(shards)[jobs:]
    ends = {}
    while heap:
        t, name = heapq.heappop(heap)
        sh = shards[name]
        if index[name] == len(sh["loads"]):
            ends[name] = t + sh["tail"]
            if queue:
                nxt = queue.pop(0)
                heapq.heappush(heap, (ends[name], nxt))
            continue
        gap, key, load_s = sh["loads"][index[name]]
        t += gap
        done = compiled.get(key)
        if done is not None and done <= t:
            t += load_s
        else:
            t += COLD_S + (FIRST_EXTRA_S if cold[name] == 0 else 0.0)
            cold[name] += 1
            compiled[key] = min(done, t) if done is not None else t
        index[name] += 1
        heapq.heappush(heap, (t, name))
    return dict(wall_s=max(ends.values(), default=start) - start, cold=cold, ends=ends)


def check(rehearsal: Path) -> tuple[list[str], list[str]]:
    """(report lines, failures) for the rehearsal's calls against the plan's caps."""
    lines, failures = [], []
    compiled: dict[str, float] = {}
    for call in measure.calls():
        path = rehearsal / f"call{call.number}" / "summary.json"
        if not path.exists():
            failures.append(f"call {call.number}: no {path}")
            continue
        summary = json.loads(path.read_text())
        if summary.get("graphs") and "started_epoch" not in summary:
            failures.append(f"call {call.number}: summary has no started_epoch")
            continue
        events = shard_events(summary)
        for name, sh in events.items():
            if sh["rc"] != 0:
                failures.append(f"call {call.number} shard {name}: rc {sh['rc']} in the rehearsal")
        t, compiled = 0.0, {k: -1.0 for k in compiled}  # an earlier call's graphs: compiled before this one
        for step in call.steps:
            prior = set(compiled)
            names = [s.name for s in step.shards]
            missing = [n for n in names if n not in events]
            if missing:
                failures.append(f"call {call.number} step {step.name}: shards did not run: {missing}")
            r = replay_step({n: events[n] for n in names if n in events}, compiled, t)
            keys = {k for n in names if n in events for _, k, _ in events[n]["loads"]}
            n_cold = sum(r["cold"].values())
            naive = len(keys - prior) * COLD_S / max(1, min(len(names), JOBS))
            lines.append(f"call {call.number} step {step.name}: {len(names)} processes, {len(keys)} graphs "
                         f"({n_cold} cold compiles, at most {max(r['cold'].values(), default=0)} in one process); "
                         f"replayed {r['wall_s']:.0f} s, graphs x {COLD_S:.0f} s / processes {naive:.0f} s; "
                         f"cap {step.cap_s} s")
            if r["wall_s"] > step.cap_s or naive > step.cap_s:
                worst = max(r["wall_s"], naive)
                failures.append(f"call {call.number} step {step.name}: {worst:.0f} s > cap {step.cap_s} s")
            t += r["wall_s"]
        lines.append(f"call {call.number}: replayed {t:.0f} s of its {call.budget_s} s (timeout_s {call.timeout_s})")
        if t > call.budget_s:
            failures.append(f"call {call.number}: {t:.0f} s > budget {call.budget_s} s")
        failures += order_failures(call, summary)
    return lines, failures


def order_failures(call: measure.Call, summary: dict) -> list[str]:
    seen = summary.get("outputs_seen_s", {})
    out = [f"call {call.number}: {o} never appeared" for o in call.outputs if o not in seen]
    if seen.get("summary.json", 1e9) > 1.0:
        out.append(f"call {call.number}: summary.json not written first")
    last_end = 0.0
    for step in call.steps:
        mine = [seen[o] for o in measure.step_outputs(step) if o in seen]
        if mine and min(mine) < last_end:
            out.append(f"call {call.number} step {step.name}: an output appeared before the previous step's")
        last_end = max([last_end, *mine])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("check")
    c.add_argument("rehearsal", type=Path)
    g = sub.add_parser("groups")
    g.add_argument("summary", type=Path, metavar="GRAPH_LOG")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--junit", type=Path, nargs="*", default=[], help="the same tests' junit XML: their seconds")
    args = ap.parse_args(argv)
    if args.what == "groups":
        log = [json.loads(x) for x in args.summary.read_text().splitlines() if x.strip()]
        args.out.write_text(json.dumps(groups({"graphs": log}, junit_seconds(args.junit)), indent=1) + "\n")
        return 0
    lines, failures = check(args.rehearsal)
    print("\n".join(lines))
    for f in failures:
        print(f"FAIL {f}")
    print("budget: " + ("fits" if not failures else f"{len(failures)} failures"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
