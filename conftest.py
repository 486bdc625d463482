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
                     help="hypothesis 'thorough' profile: many randomized examples per property")


def pytest_configure(config):
    settings.load_profile("thorough" if config.getoption("--thorough")
                          else os.environ.get("HYPOTHESIS_PROFILE", "ci"))
