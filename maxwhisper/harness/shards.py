"""Run the selected tests as N pytest processes at once, each a shard that shares no graph with another.

A cold MAX compile keeps about 1.35 of 2 cores busy (measured on 2 cores, see docs/testing.md), so one
process leaves the rest idle; two processes compiling different graphs use it. Tests that load a graph
in common stay in one shard (else both would compile it), as `--shard-groups` says.

  python -m maxwhisper.harness.shards run [--jobs N] [--groups PATH] -- PYTEST_ARGS
      every shard's output in full as it ends; the exit code is pytest's, the worst shard's
  python -m maxwhisper.harness.shards groups GRAPH_LOG --junit XML... --out tests/shard-groups.json
      the groups, from the graph log ($MAXWHISPER_GRAPH_LOG) and junit XML of one unsharded run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRAPH_S = 60.0  # a group's cost per graph it compiles, where the caller gives none
GROUPS = Path(__file__).resolve().parents[2] / "tests" / "shard-groups.json"


def shard_of(items: list, index: int, count: int, groups: dict | None) -> list:
    """Shard `index` of `count`. With `groups` ({"tests": nodeid -> group, "graphs": group -> graphs,
    "cost": group -> seconds, else 60 per graph; "modules": module -> group, for all its tests),
    a test absent from it (it loaded no graph of its own: it reused one) joins the group of a test of
    its module with the same first parameter, else of the test before it in its function; groups go
    to the least-loaded shard, costliest first. Without `groups`, every count-th test."""
    if groups is None:
        return items[index::count]

    def param(nodeid: str) -> tuple[str, str]:  # (module, first token of the id): `[mlp-normal]` -> mlp
        return nodeid.split("::")[0], nodeid.partition("[")[2].split("-")[0].rstrip("]")

    by_param = {param(t): g for t, g in groups["tests"].items() if "[" in t}
    of, last = [], {}
    for item in items:
        function = item.nodeid.split("[")[0]
        g = (groups["tests"].get(item.nodeid) or groups.get("modules", {}).get(item.nodeid.split("::")[0])
             or ("[" in item.nodeid and by_param.get(param(item.nodeid))) or last.get(function) or item.nodeid)
        last[function] = g
        of.append(g)
    cost = {g: groups.get("cost", {}).get(g, 60.0 * groups["graphs"].get(g, 1)) for g in of}
    load, where = [0.0] * count, {}
    for g in sorted(dict.fromkeys(of), key=lambda g: -cost[g]):
        where[g] = load.index(min(load))
        load[where[g]] += cost[g]
    return [item for item, g in zip(items, of) if where[g] == index]


def groups(summary: dict, seconds: dict[str, float] | None = None, graph_s: float = GRAPH_S,
           cold: dict[str, float] | None = None, by_module: bool = False) -> dict:
    """Tests that load a graph in common, in one group (union-find on graph keys); per group its graphs
    and its cost: per graph, its compile seconds in `cold` (key -> s, from a cold run's log), else
    `graph_s`; plus its tests' seconds in `seconds` (nodeid -> s, from junit XML; a test that loaded
    no graph counts in the group of the test before it in its function).

    With `by_module`, one group per module instead (`modules`): the end-to-end tier's tests share a
    module's fixtures (its transcribed corpus) more than graphs; two shards compiling one graph at once
    cost about one compile's time, a shard transcribing the corpus again would cost minutes."""
    log = [g for g in summary["graphs"] if g.get("test")]
    if by_module:
        of = {t: t.split("::")[0] for t in [*(g["test"] for g in log), *(seconds or {})]}
        keys: dict[str, set] = {}
        for g in log:
            keys.setdefault(of[g["test"]], set()).add(g["key"])
        cost = {m: sum((cold or {}).get(k, graph_s) for k in keys.get(m, ())) for m in set(of.values())}
        for t, s in (seconds or {}).items():
            cost[of[t]] += s
        return dict(tests={}, modules={m: m for m in sorted(cost)},
                    graphs={m: len(v) for m, v in sorted(keys.items())},
                    cost={m: round(v, 1) for m, v in sorted(cost.items())})
    parent: dict[str, str] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    owner: dict[str, str] = {}
    for g in log:
        find(g["test"])
        if g["key"] in owner:
            parent[find(g["test"])] = find(owner[g["key"]])
        else:
            owner[g["key"]] = g["test"]
    keys: dict[str, set] = {}
    for g in log:
        keys.setdefault(find(g["test"]), set()).add(g["key"])
    tests = {t: find(t) for t in parent}
    cost = {g: sum((cold or {}).get(k, graph_s) for k in v) for g, v in keys.items()}
    last: dict[str, str] = {}
    for t, s in (seconds or {}).items():  # in run order
        g = tests.get(t) or last.get(t.split("[")[0])
        if g is not None:
            last[t.split("[")[0]] = g
            cost[g] += s
    return dict(tests=tests, graphs={k: len(v) for k, v in sorted(keys.items())},
                cost={k: round(v, 1) for k, v in sorted(cost.items())})


def junit_seconds(paths: list[Path]) -> dict[str, float]:
    """nodeid -> seconds of each test case in pytest junit XML files."""
    import xml.etree.ElementTree as ET

    out = {}
    for p in paths:
        for case in ET.parse(p).getroot().iter("testcase"):
            module = case.get("classname", "").replace(".", "/")
            out[f"{module}.py::{case.get('name')}"] = float(case.get("time", 0))
    return out


def shard_commands(pytest_args: list[str], jobs: int, groups: Path | None) -> list[list[str]]:
    """One pytest command line per shard (the same arguments, `--shard i/N`, the groups if any)."""
    extra = ["--shard-groups", str(groups)] if groups is not None else []
    return [[sys.executable, "-m", "pytest", *pytest_args, "--shard", f"{i}/{jobs}", *extra] for i in range(jobs)]


def worst_rc(rcs: list[int]) -> int:
    """pytest's exit code for the whole run: 5 (no tests) only when no shard ran a test."""
    ran = [rc for rc in rcs if rc != 5]
    if not ran:
        return 5
    return next((rc for rc in ran if rc != 0), 0)


def run(pytest_args: list[str], jobs: int, groups: Path | None, out=sys.stdout) -> int:
    """The shards at once; each one's output printed whole when it ends (first finished, first printed)."""
    # torch's CPU threads: each shard its share of the cores, else N processes oversubscribe them
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="maxwhisper-shards-") as tmp:
        running = {}
        for i, cmd in enumerate(shard_commands(pytest_args, jobs, groups)):
            log = open(Path(tmp) / f"shard{i}.log", "w+")
            running[i] = (subprocess.Popen(cmd, env=dict(env, MAXWHISPER_SHARD=str(i)), stdout=log,
                                           stderr=subprocess.STDOUT), log)
        rcs, lines = {}, []
        while running:
            for i, (proc, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[i]
                rcs[i] = proc.returncode
                log.seek(0)
                took = time.time() - t0
                print(f"===== shard {i}/{jobs}: exit {proc.returncode}, {took:.0f} s =====", file=out, flush=True)
                out.write(log.read())
                out.flush()
                log.close()
                lines.append(f"shard {i}/{jobs}: exit {proc.returncode} after {took:.0f} s")
            time.sleep(0.5)
    rc = worst_rc([rcs[i] for i in sorted(rcs)])
    print("===== " + "; ".join(lines) + f"; exit {rc} =====", file=out, flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="the shards at once")
    r.add_argument("--jobs", type=int, default=2, help="processes (default 2: this project's CI has 2 cores)")
    r.add_argument("--groups", type=Path, default=GROUPS if GROUPS.exists() else None,
                   help=f"tests that share graphs (default {GROUPS.relative_to(GROUPS.parents[1])})")
    r.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: pytest's arguments, for every shard")
    g = sub.add_parser("groups", help="the groups file from one unsharded run")
    g.add_argument("graph_log", type=Path)
    g.add_argument("--junit", type=Path, nargs="*", default=[], help="the same run's junit XML: its tests' seconds")
    g.add_argument("--graph-s", type=float, default=GRAPH_S, help="a cold compile's cost in seconds")
    g.add_argument("--uses", type=Path, help="the same run's $MAXWHISPER_GRAPH_USES: tests that ran a graph "
                                             "another test loaded")
    g.add_argument("--by-module", action="store_true", help="a module's tests in one group (they share fixtures)")
    g.add_argument("--cold", type=Path, help="a cold run's graph log: each graph's own compile seconds")
    g.add_argument("--merge", action="store_true", help="add to --out's groups (another run's tests)")
    g.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.what == "groups":
        log = [json.loads(x) for path in (args.graph_log, args.uses) if path
               for x in path.read_text().splitlines() if x.strip()]
        cold = {}
        for x in (args.cold.read_text().splitlines() if args.cold else []):
            if x.strip():
                cold.setdefault(json.loads(x)["key"], json.loads(x)["load_s"])  # a key's first load: its compile
        found = groups({"graphs": log}, junit_seconds(args.junit), args.graph_s, cold, args.by_module)
        if args.merge and args.out.exists():
            old = json.loads(args.out.read_text())
            found = {part: {**old.get(part, {}), **found.get(part, {})} for part in {*old, *found}}
        args.out.write_text(json.dumps(found, indent=1) + "\n")
        return 0
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: expected at least 1")
    rest = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    return run(rest, args.jobs, args.groups)


if __name__ == "__main__":
    sys.exit(main())
