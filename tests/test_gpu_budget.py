"""The GPU run's measuring calls (gpu/measure.py) and their budget (gpu/budget.py): the runner's
parallel shards, caps and 8-file limit with fake commands; the replay's arithmetic on logs built to
fit and to overflow; the parity shards; and the committed rehearsal (gpu/rehearsal/) checked
against today's plan, so a plan changed without a new rehearsal fails here."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "gpu"))

import budget  # noqa: E402
import measure  # noqa: E402


def _call(steps, budget_s=60):
    return measure.Call(9, 60, budget_s, steps)


def _sleep(name, seconds, output=None):
    cmd = [sys.executable, "-c", f"import time, pathlib; time.sleep({seconds})"
           + (f"; pathlib.Path('{{out}}/{output}').write_text('x')" if output else "")]
    return measure.Shard(name, [cmd], [output] if output else [])


def _run(tmp_path, call, jobs=4, caps=True):
    runner = measure.Runner(call, "cpu", tmp_path / "out", sys.executable, jobs, caps)
    runner.scratch = tmp_path / "scratch"
    t0 = time.time()
    rc = runner.run()
    return rc, time.time() - t0, json.loads((tmp_path / "out" / "summary.json").read_text())


def test_shards_of_a_step_run_at_once_and_steps_in_order(tmp_path):
    call = _call([measure.Step("a", 30, [_sleep(f"s{i}", 1.0, f"s{i}.json") for i in range(4)]),
                  measure.Step("b", 30, [_sleep("late", 0.1, "late.json")])])
    rc, wall, summary = _run(tmp_path, call)
    assert rc == 0 and summary["finished"] is True
    assert wall < 3.5  # 4 x 1 s in parallel, not 4 s in a row
    seen = summary["outputs_seen_s"]
    assert seen["summary.json"] <= 0.5 and max(seen[f"s{i}.json"] for i in range(4)) <= seen["late.json"]
    assert budget.order_failures(call, summary) == []


def test_a_shard_past_its_cap_is_stopped_and_the_next_step_still_runs(tmp_path):
    call = _call([measure.Step("slow", 1, [_sleep("stuck", 30)]),
                  measure.Step("after", 30, [_sleep("next", 0.1, "next.json")])])
    rc, wall, summary = _run(tmp_path, call)
    rcs = {s["shard"]: s["rc"] for s in summary["shards"]}
    assert rc == 1 and rcs["stuck"] != 0 and rcs["next"] == 0 and wall < 10


def test_the_call_budget_skips_steps_it_has_no_room_for(tmp_path):
    call = _call([measure.Step("one", 30, [_sleep("a", 3)]), measure.Step("two", 30, [_sleep("b", 0.1)])],
                 budget_s=12)  # 9 s left after step one: under the 10 s a step needs
    rc, _, summary = _run(tmp_path, call)
    assert [s.get("skipped", False) for s in summary["shards"]] == [False, True]


def test_out_keeps_at_most_8_files_folding_the_least_valued(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ranked = ["run.log", "summary.json", *(f"r{i}.json" for i in range(8))]
    for name in [*ranked, "stray.txt"]:
        (out / name).write_text(name)
    folded = measure.fold(out, ranked)
    assert sorted(folded) == ["r5.json", "r6.json", "r7.json", "stray.txt"]  # 7 kept + extra.tgz
    (out / "r8.json").write_text("later")  # a later step's fold keeps the first fold's files
    measure.fold(out, [*ranked, "r8.json"])
    import tarfile

    with tarfile.open(out / "extra.tgz") as tar:
        assert sorted(tar.getnames()) == ["r5.json", "r6.json", "r7.json", "r8.json", "stray.txt"]
    assert len([p for p in out.iterdir()]) == 8


def test_plan_covers_every_precision_and_fits_the_device_tool():
    from maxwhisper.precision import PRECISIONS

    one, two = measure.calls()
    assert {f"verify-{d}.json" for d, r in PRECISIONS.items() if "gpu" in r.products} <= set(one.outputs)
    assert not any("q4_0" in o for o in one.outputs)  # CPU-only: a GPU verify of it is a ValueError
    assert {"probe_tf32.json", "env.json"} <= set(one.outputs)
    assert {"parity-float32.json", "bench-gpu.json", "pipeline-gpu.json"} <= set(two.outputs)
    for c in (one, two):
        assert len(["run.log", *c.outputs]) <= 8
        assert c.budget_s < c.timeout_s <= 300 and sum(s.cap_s for s in c.steps) <= c.budget_s
        assert len({sh.name for s in c.steps for sh in s.shards}) == sum(len(s.shards) for s in c.steps)
    assert one.timeout_s + two.timeout_s <= 600


def _summary(shards, t0=1000.0):
    """A rehearsal's summary: shards = {name: (step, [(gap_s, key, load_s), ...], tail_s)}."""
    out = dict(started_epoch=t0, shards=[], graphs=[], outputs_seen_s={})
    for name, (step, loads, tail) in shards.items():
        t = t0
        for gap, key, load_s in loads:
            t += gap + load_s
            out["graphs"].append(dict(shard=name, key=key, load_s=load_s, t=t))
        out["shards"].append(dict(step=step, shard=name, rc=0, start_s=0.0, wall_s=t + tail - t0))
    return out


def test_replay_charges_a_cold_compile_once_per_graph_across_shards():
    # b needs "g1" after 100 s of its own work: a compiled it by 75 s, so b loads it warm
    events = budget.shard_events(_summary({"a": ("s", [(0, "g1", 2.0)], 5.0),
                                           "b": ("s", [(100, "g1", 2.0)], 0.0)}))
    r = budget.replay_step(events, {}, 0.0)
    assert r["cold"] == {"a": 1, "b": 0}
    assert r["wall_s"] == pytest.approx(102.0)  # b: 100 s of work + a 2 s warm load; a ends at 80 s


def test_replay_charges_two_shards_needing_a_graph_at_once_twice():
    events = budget.shard_events(_summary({"a": ("s", [(0, "g", 2.0)], 0.0), "b": ("s", [(1, "g", 2.0)], 0.0)}))
    assert budget.replay_step(events, {}, 0.0)["cold"] == {"a": 1, "b": 1}


def test_replay_counts_graphs_an_earlier_call_compiled_as_warm():
    events = budget.shard_events(_summary({"a": ("s", [(0, "g", 2.0), (0, "h", 2.0)], 0.0)}))
    r = budget.replay_step(events, {"g": -1.0}, 0.0)
    assert r["cold"] == {"a": 1} and r["wall_s"] == pytest.approx(2.0 + budget.COLD_S + budget.FIRST_EXTRA_S)


def test_replay_queues_shards_beyond_the_cores():
    events = budget.shard_events(_summary({f"s{i}": ("s", [(0, f"g{i}", 1.0)], 0.0) for i in range(3)}))
    r = budget.replay_step(events, {}, 0.0, jobs=2)
    assert r["wall_s"] == pytest.approx(2 * (budget.COLD_S + budget.FIRST_EXTRA_S))


def test_check_fails_a_step_whose_cold_graphs_overflow_its_cap(tmp_path, monkeypatch):
    step = measure.Step("s", 150, [measure.Shard("a", [])])
    monkeypatch.setattr(measure, "calls", lambda: [measure.Call(1, 300, 280, [step])])
    (tmp_path / "call1").mkdir()
    ok = _summary({"a": ("s", [(0, "g1", 2.0), (0, "g2", 2.0)], 1.0)})
    (tmp_path / "call1" / "summary.json").write_text(json.dumps(ok | {"outputs_seen_s": {"summary.json": 0.1}}))
    assert budget.check(tmp_path)[1] == []  # 2 x 60 + 15 + 1 = 136 s <= 150
    over = _summary({"a": ("s", [(0, "g1", 2.0), (0, "g2", 2.0), (0, "g3", 2.0)], 1.0)})
    (tmp_path / "call1" / "summary.json").write_text(json.dumps(over | {"outputs_seen_s": {"summary.json": 0.1}}))
    failures = budget.check(tmp_path)[1]
    assert len(failures) == 1 and "step s: 196 s > cap 150 s" in failures[0]


def test_order_check_names_an_output_that_came_out_of_order():
    call = _call([measure.Step("a", 30, [measure.Shard("x", [], ["x.json"])]),
                  measure.Step("b", 30, [measure.Shard("y", [], ["y.json"])])])
    good = dict(outputs_seen_s={"summary.json": 0.0, "x.json": 5.0, "y.json": 9.0})
    assert budget.order_failures(call, good) == []
    bad = dict(outputs_seen_s={"summary.json": 0.0, "x.json": 5.0, "y.json": 2.0})
    assert budget.order_failures(call, bad) == ["call 9 step b: an output appeared before the previous step's"]
    assert budget.order_failures(call, dict(outputs_seen_s={"summary.json": 0.0})) == [
        "call 9: x.json never appeared", "call 9: y.json never appeared"]


class _Item:
    def __init__(self, nodeid):
        self.nodeid = nodeid


def test_shards_keep_tests_sharing_a_graph_together_and_cover_every_test():
    from maxwhisper.harness.shards import shard_of

    ids = ["m.py::t[a-x]", "m.py::t[a-y]", "m.py::t[b-x]", "m.py::u[a]", "m.py::u[b]", "n.py::v[1]", "n.py::v[2]"]
    groups = {"tests": {"m.py::t[a-x]": "A", "m.py::t[b-x]": "B", "n.py::v[1]": "V"},
              "graphs": {"A": 1, "B": 1, "V": 1}}
    items = [_Item(i) for i in ids]
    shards = [[i.nodeid for i in shard_of(items, k, 3, groups)] for k in range(3)]
    assert sorted(sum(shards, [])) == sorted(ids)
    where = {i: k for k, s in enumerate(shards) for i in s}
    assert where["m.py::t[a-x]"] == where["m.py::t[a-y]"] == where["m.py::u[a]"]  # same first parameter
    assert where["m.py::t[b-x]"] == where["m.py::u[b]"] and where["n.py::v[1]"] == where["n.py::v[2]"]
    assert len({where["m.py::t[a-x]"], where["m.py::t[b-x]"], where["n.py::v[1]"]}) == 3
    assert [i.nodeid for i in shard_of(items, 1, 3, None)] == ids[1::3]


def test_graph_groups_are_built_from_shared_graph_keys():
    log = [dict(test="a", key="k1"), dict(test="b", key="k1"), dict(test="b", key="k2"), dict(test="c", key="k3"),
           dict(test="", key="k4")]
    g = budget.groups({"graphs": log})
    assert g["tests"]["a"] == g["tests"]["b"] != g["tests"]["c"]
    assert g["graphs"] == {g["tests"]["a"]: 2, g["tests"]["c"]: 1}


def test_committed_rehearsal_is_of_todays_plan_and_fits():
    """gpu/rehearsal/ holds `stage.py rehearse-calls`'s summaries (graphs counted from that run): every
    planned shard must be in them (a new shard needs a new rehearsal) and the replay must fit."""
    where = ROOT / "gpu" / "rehearsal"
    for call in measure.calls():
        summary = json.loads((where / f"call{call.number}" / "summary.json").read_text())
        ran = {s["shard"] for s in summary["shards"]}
        planned = {sh.name for s in call.steps for sh in s.shards}
        assert ran == planned, f"call {call.number}: rehearse again (python gpu/offline_bundle/stage.py rehearse-calls)"
    lines, failures = budget.check(where)
    assert failures == [], "\n".join(lines + failures)


def test_dtype_option_selects_one_precisions_tests_and_refuses_an_unknown_one():
    import subprocess

    def collect(*args):
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                               "-k", "parity_axis or tiny_en_parity", *args], capture_output=True, text=True, cwd=ROOT)

    ids = [line for line in collect("--dtype", "bfloat16").stdout.splitlines() if line.startswith("tests/")]
    assert ids and all("bfloat16" in i for i in ids)
    f32 = [line for line in collect("--dtype", "float32").stdout.splitlines() if line.startswith("tests/")]
    assert f32 and not any("bfloat16" in i or "float16" in i for i in f32)
    bad = collect("--dtype", "float64")
    assert bad.returncode != 0 and "--dtype 'float64': not a precision" in bad.stderr


def test_graph_log_lines_name_the_graph_its_key_and_the_test_and_uses_share_the_key(tmp_path, monkeypatch):
    """The load line and every test's first use of the graph carry one key and one use line per test:
    the shard groups join tests by it. (Keys computed twice once split 16 of a gate run's 23 graphs;
    this small graph prints the same twice, so the test guards the contract, not that instability.)"""
    import numpy as np
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType

    from maxwhisper.runtime import Compiled

    log, uses = tmp_path / "graphs.jsonl", tmp_path / "uses.jsonl"
    with Graph("add_one", input_types=[TensorType(DType.float32, [4], DeviceRef.CPU())]) as g:
        g.output(g.inputs[0].tensor + 1)
    monkeypatch.setenv("MAXWHISPER_GRAPH_LOG", str(log))
    monkeypatch.setenv("MAXWHISPER_GRAPH_USES", str(uses))
    monkeypatch.setenv("MAXWHISPER_SHARD", "s1")
    compiled = Compiled(g, "cpu")
    x = np.zeros(4, np.float32)
    compiled(x), compiled(x)  # one use line per test
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/x.py::other (call)")
    compiled(x)
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["graph"] == "add_one" and line["shard"] == "s1" and len(line["key"]) == 12
    assert line["test"].startswith("tests/test_gpu_budget.py::test_graph_log_lines")
    used = [json.loads(x) for x in uses.read_text().splitlines()]
    assert [(u["key"], u["test"]) for u in used] == [(line["key"], line["test"]), (line["key"], "tests/x.py::other")]


def test_graphs_compiled_together_each_run_their_own_and_log_the_unit_once(tmp_path, monkeypatch):
    """`Compiled.together`: one compile for the graphs of a `Module` (the encoder's two, the decoder's
    three); each answers with its own outputs and weights, and the unit's seconds are logged once."""
    import numpy as np
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, Module, TensorType, Weight

    from maxwhisper.runtime import Compiled

    module, t = Module(), TensorType(DType.float32, [4], DeviceRef.CPU())
    graphs = []
    for name, op in (("plus_w", lambda x, w: x + w), ("times_w", lambda x, w: x * w)):
        with Graph(name, input_types=[t], module=module) as g:
            g.output(op(g.inputs[0].tensor, Weight("w", DType.float32, (4,), DeviceRef.CPU())))
        graphs.append((g, [name]))
    log = tmp_path / "graphs.jsonl"
    monkeypatch.setenv("MAXWHISPER_GRAPH_LOG", str(log))
    plus, times = Compiled.together(graphs, module, "cpu", {"w": np.full(4, 3.0, np.float32)})
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(plus(x)[0], x + 3)
    np.testing.assert_array_equal(times(x)[0], x * 3)
    assert (plus.output_names, times.output_names) == (["plus_w"], ["times_w"])
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["graph"] for x in lines] == ["plus_w", "times_w"]
    assert lines[0]["load_s"] > 0 and lines[1]["load_s"] == 0.0
