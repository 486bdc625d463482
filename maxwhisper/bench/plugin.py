"""The benchmark suite's pytest plugin: timing order, result collection and the end-of-run report.

Registered by the project's conftest. Results live on this plugin object (one per run), reached
through the `bench_record` / `memory_record` fixtures; nothing is kept in module globals.
"""

from __future__ import annotations

import pytest

from maxwhisper.bench.report import ratio_rows, summary_sections, write_report

NAME = "maxwhisper-bench"


def max_last(items: list, impl_of) -> list:
    """`items` with every MAX timing moved after all the others, each side in its own order.

    Once MAX has executed a graph, its runtime's worker threads keep polling (0.47 cores busy in a
    process that sleeps right after, 0.14 three seconds later), and on this 2-core machine they
    slow every later PyTorch call in that process: the tiny.en encoder took 148 ms before the first
    MAX execution and 189-197 ms after it, while MAX took ~195 ms in either order. So all the
    PyTorch (and peer) timings run before the first MAX execution.
    """
    runs_max = lambda i: str(impl_of(i)).startswith("max")  # noqa: E731  ("max", "max-lowp", ...)
    return [i for i in items if not runs_max(i)] + [i for i in items if runs_max(i)]


class BenchPlugin:
    def __init__(self):
        self.results: list[dict] = []  # one per timed benchmark: group, impl, median, FLOPs, cores
        self.rows: list[dict] = []     # untimed rows, told apart by "kind": see report.summary_sections

    def pytest_collection_modifyitems(self, config, items):
        if config.getoption("benchmark_only", False):
            items[:] = max_last(items, lambda item: getattr(item, "callspec", None)
                                and item.callspec.params.get("impl"))

    def record(self, group, impl, benchmark, flops=None, cores_busy=None):
        if benchmark.enabled and benchmark.stats is not None:
            median = benchmark.stats.stats.median
            self.results.append(dict(group=group, impl=impl, median_s=median, flops=flops,
                                     cores_busy=cores_busy, gflops=flops / median / 1e9 if flops else None))

    def pytest_terminal_summary(self, terminalreporter, config):
        if not (self.results or self.rows):
            return
        rows = ratio_rows(self.results)
        for title, lines in summary_sections(rows, self.rows):
            terminalreporter.write_sep("-", title)
            for line in lines:
                terminalreporter.write_line(line)
        if config.getoption("--bench-out"):
            for path in write_report(self.results, rows, config.getoption("--bench-out"), self.rows):
                terminalreporter.write_line(f"bench: wrote {path}")


def pytest_addoption(parser):
    parser.addoption("--bench-out", metavar="DIR",
                     help="with --benchmark-only: write bench.json and bench.png (MAX vs PyTorch) to DIR")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config):
    # A plain run executes each benchmark once, untimed, as a smoke test; --benchmark-only times them.
    if not config.getoption("benchmark_only", False):
        config.option.benchmark_disable = True
    elif not config.getoption("benchmark_warmup", False):
        # pytest-benchmark's default is no warm-up: untimed rounds first, so no timed round pays a
        # first call's one-time costs (lazy allocation, thread pools) on either side.
        config.option.benchmark_warmup = True
        config.option.benchmark_warmup_iterations = 2
    config.pluginmanager.register(BenchPlugin(), NAME)


@pytest.fixture
def bench_record(request):
    """Keep a benchmark's median for the MAX / PyTorch ratio table printed at the end."""
    return request.config.pluginmanager.get_plugin(NAME).record


@pytest.fixture
def memory_record(request):
    """Keep a row that is not a timing for the summary: a configuration's peak RSS (from
    `python -m maxwhisper.bench rss`), or a graph's cold and warm compile (kind="compile")."""
    return request.config.pluginmanager.get_plugin(NAME).rows.append
