"""The shard runner the README's test command uses: every selected test runs once, in one of the
processes, and one failing shard fails the run (pytest's exit code)."""

from __future__ import annotations

import io
import re

from maxwhisper.harness import shards


def test_worst_rc_is_pytests_for_the_whole_run():
    assert shards.worst_rc([0, 0]) == 0
    assert shards.worst_rc([0, 5]) == 0  # a shard that drew no test is not a failure
    assert shards.worst_rc([5, 5]) == 5  # no shard ran a test
    assert shards.worst_rc([5, 1]) == 1 and shards.worst_rc([0, 2]) == 2


def test_shards_run_every_test_once_and_a_failure_fails_the_run(tmp_path):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["maxwhisper.harness.pytest_plugin"]\n')
    (tmp_path / "test_x.py").write_text("import os\n" + "".join(
        f"def test_{i}():\n    print('ran {i} in shard', os.environ['MAXWHISPER_SHARD'])\n    assert {i} != 3\n"
        for i in range(4)))
    out = io.StringIO()
    rc = shards.run(["-q", "-s", "-p", "no:cacheprovider", str(tmp_path)], 2, None, out)
    text = out.getvalue()
    ran = re.findall(r"ran (\d) in shard (\d)", text)
    assert sorted(int(i) for i, _ in ran) == [0, 1, 2, 3], text
    assert {s for _, s in ran} == {"0", "1"}, text
    assert rc == 1 and "1 failed" in text and "test_3" in text, text


def test_groups_join_tests_through_graphs_loaded_or_reused():
    log = [dict(test="m.py::a", key="k1"), dict(test="m.py::b", key="k1"),  # b reuses a's graph
           dict(test="n.py::c", key="k2"), dict(test="n.py::d", key="k3"), dict(test="o.py::e", key="k2")]
    g = shards.groups({"graphs": log}, cold={"k1": 150.0})
    t = g["tests"]
    assert t["m.py::a"] == t["m.py::b"] and t["n.py::c"] == t["o.py::e"] != t["n.py::d"]
    assert g["cost"][t["m.py::a"]] == 150.0 and g["cost"][t["n.py::d"]] == shards.GRAPH_S
    # the end-to-end tier: one group per module (its fixtures), whatever graphs it shares
    g = shards.groups({"graphs": log}, {"n.py::f": 30.0}, by_module=True)
    assert g["modules"] == {m: m for m in ("m.py", "n.py", "o.py")} and g["tests"] == {}
    assert g["cost"]["n.py"] == 2 * shards.GRAPH_S + 30.0  # its two graphs and f's own seconds
    items = [_Item(t) for t in ("n.py::f", "m.py::a", "n.py::c", "n.py::new[x]", "o.py::e")]
    where = {i.nodeid: k for k in range(2) for i in shards.shard_of(items, k, 2, g)}
    assert where["n.py::f"] == where["n.py::c"] == where["n.py::new[x]"] != where["m.py::a"]


class _Item:
    def __init__(self, nodeid):
        self.nodeid = nodeid


def test_committed_groups_name_tests_that_exist():
    """tests/shard-groups.json (`shards groups` from a gate run's logs): a test renamed since only
    costs balance, but a file of mostly stale names would shard by every N-th test in disguise."""
    import json

    groups = json.loads(shards.GROUPS.read_text())
    root = shards.GROUPS.parents[1]
    stale = [t for t in groups["tests"] if f"def {t.split('::')[1].split('[')[0]}("
             not in (root / t.split("::")[0]).read_text()]
    assert not stale, f"regenerate tests/shard-groups.json (docs/testing.md): {stale}"
