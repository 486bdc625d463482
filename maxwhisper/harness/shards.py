"""Shards of the selected tests that share no graph: `pytest --shard I/N --shard-groups PATH` (the GPU
run starts N processes at once; `gpu/measure.py`), and the groups file from one unsharded run's logs:

  MAXWHISPER_GRAPH_LOG=g.jsonl MAXWHISPER_GRAPH_USES=u.jsonl pytest ... --junitxml g.xml
  python -m maxwhisper.harness.shards groups g.jsonl --uses u.jsonl --junit g.xml --out GROUPS.json

Not used on the CPU: two processes at once gained nothing on 2 cores (docs/testing.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GRAPH_S = 60.0  # a group's cost per graph it compiles, where the caller gives none


def shard_of(items: list, index: int, count: int, groups: dict | None) -> list:
    """Shard `index` of `count`. With `groups` ({"tests": nodeid -> group, "graphs": group -> graphs,
    "cost": group -> seconds, else 60 per graph}),
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
        g = (groups["tests"].get(item.nodeid) or ("[" in item.nodeid and by_param.get(param(item.nodeid)))
             or last.get(function) or item.nodeid)
        last[function] = g
        of.append(g)
    cost = {g: groups.get("cost", {}).get(g, 60.0 * groups["graphs"].get(g, 1)) for g in of}
    load, where = [0.0] * count, {}
    for g in sorted(dict.fromkeys(of), key=lambda g: -cost[g]):
        where[g] = load.index(min(load))
        load[where[g]] += cost[g]
    return [item for item, g in zip(items, of) if where[g] == index]


def groups(summary: dict, seconds: dict[str, float] | None = None, graph_s: float = GRAPH_S,
           cold: dict[str, float] | None = None) -> dict:
    """Tests that load a graph in common, in one group (union-find on graph keys); per group its graphs
    and its cost: per graph, its compile seconds in `cold` (key -> s, from a cold run's log), else
    `graph_s`; plus its tests' seconds in `seconds` (nodeid -> s, from junit XML; a test that loaded
    no graph counts in the group of the test before it in its function)."""
    log = [g for g in summary["graphs"] if g.get("test")]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    g = sub.add_parser("groups", help="the groups file from one unsharded run")
    g.add_argument("graph_log", type=Path)
    g.add_argument("--uses", type=Path, help="the same run's $MAXWHISPER_GRAPH_USES: tests that ran a graph "
                                             "another test loaded")
    g.add_argument("--junit", type=Path, nargs="*", default=[], help="the same run's junit XML: its tests' seconds")
    g.add_argument("--graph-s", type=float, default=GRAPH_S, help="a cold compile's cost in seconds")
    g.add_argument("--cold", type=Path, help="a cold run's graph log: each graph's own compile seconds")
    g.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    log = [json.loads(x) for path in (args.graph_log, args.uses) if path
           for x in path.read_text().splitlines() if x.strip()]
    cold = {}
    for x in (args.cold.read_text().splitlines() if args.cold else []):
        if x.strip():
            cold.setdefault(json.loads(x)["key"], json.loads(x)["load_s"])  # a key's first load: its compile
    args.out.write_text(json.dumps(groups({"graphs": log}, junit_seconds(args.junit), args.graph_s, cold), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
