"""Shared test set-up: hypothesis profiles, and the harness's and benchmarks' pytest plugins
(options, fixtures, end-of-run reports: `maxwhisper.harness.pytest_plugin`, `maxwhisper.bench.plugin`)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["maxwhisper.harness.pytest_plugin", "maxwhisper.bench.plugin"]

# "ci" is derandomized and small: the same examples on every run, so a red CI is reproducible.
# "thorough" (pytest --thorough) draws many more, randomized, for a change to the numerics.
# function_scoped_fixture: the only function-scoped fixture the properties take is record_parity,
# which only appends to the run's list, so sharing it across examples is safe.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=6, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=100, print_blob=True, **_common)


def pytest_addoption(parser):
    parser.addoption("--thorough", action="store_true",
                     help="hypothesis 'thorough' profile: many randomized examples per property; "
                          "also runs the tests marked `thorough`")


def pytest_collection_modifyitems(config, items):
    """Tests marked `thorough` (whole-pipeline runs in a second 16-bit dtype, see their reasons) run
    with --thorough only; without it they are deselected, counted in pytest's summary and named in
    one line, never skipped as if they had run."""
    if config.getoption("--thorough"):
        return
    chosen = [i for i in items if i.get_closest_marker("thorough") is None]
    dropped = [i for i in items if i.get_closest_marker("thorough") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = chosen
        config._thorough_only = [i.nodeid for i in dropped]


def pytest_terminal_summary(terminalreporter, config):
    names = getattr(config, "_thorough_only", [])
    if names:
        per_test: dict[str, int] = {}
        for n in names:
            per_test[n.split("[")[0]] = per_test.get(n.split("[")[0], 0) + 1
        terminalreporter.write_line(f"run with --thorough only ({len(names)} deselected): "
                                    + ", ".join(f"{t} x{k}" for t, k in per_test.items()))


def pytest_configure(config):
    settings.load_profile("thorough" if config.getoption("--thorough")
                          else os.environ.get("HYPOTHESIS_PROFILE", "ci"))
