"""Shard groups (`maxwhisper.harness.shards`): tests that load or reuse a graph in common share a group,
so N processes at once (the GPU run) compile each graph once."""

from __future__ import annotations

from maxwhisper.harness import shards


def test_groups_join_tests_through_graphs_loaded_or_reused():
    log = [dict(test="m.py::a", key="k1"), dict(test="m.py::b", key="k1"),  # b reuses a's graph
           dict(test="n.py::c", key="k2"), dict(test="n.py::d", key="k3"), dict(test="o.py::e", key="k2")]
    g = shards.groups({"graphs": log}, cold={"k1": 150.0})
    t = g["tests"]
    assert t["m.py::a"] == t["m.py::b"] and t["n.py::c"] == t["o.py::e"] != t["n.py::d"]
    assert g["cost"][t["m.py::a"]] == 150.0 and g["cost"][t["n.py::d"]] == shards.GRAPH_S
    items = [_Item(n) for n in ("m.py::a", "n.py::c", "m.py::b", "o.py::e", "n.py::d")]
    where = {i.nodeid: k for k in range(2) for i in shards.shard_of(items, k, 2, g)}
    assert where["m.py::a"] == where["m.py::b"] and where["n.py::c"] == where["o.py::e"]
    assert len(where) == 5


class _Item:
    def __init__(self, nodeid):
        self.nodeid = nodeid
