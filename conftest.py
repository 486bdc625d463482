"""Shared test set-up: hypothesis profiles, the speech data, tiny.en loaded once per session."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# "ci" is derandomized and small: the same examples on every run, so a red CI is reproducible.
# "thorough" (pytest --thorough) draws many more, randomized, for a change to the numerics.
# function_scoped_fixture: the only function-scoped fixture the properties take is record_parity,
# which appends to a session list, so sharing it across examples is safe.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=6, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=100, print_blob=True, **_common)


def pytest_addoption(parser):
    parser.addoption("--thorough", action="store_true",
                     help="hypothesis 'thorough' profile: many randomized examples per property")
    parser.addoption("--bench-out", metavar="DIR",
                     help="with --benchmark-only: write bench.json and bench.png (MAX vs PyTorch) to DIR")
    parser.addoption("--parity-report", metavar="PATH",
                     help="write every recorded parity comparison (errors per layer) as JSON")


def pytest_configure(config):
    # A plain run executes each benchmark once, untimed, as a smoke test; --benchmark-only times them.
    if not config.getoption("benchmark_only", False):
        config.option.benchmark_disable = True
    elif not config.getoption("benchmark_warmup", False):
        # pytest-benchmark's default is no warm-up: untimed rounds first, so no timed round pays a
        # first call's one-time costs (lazy allocation, thread pools) on either side.
        config.option.benchmark_warmup = True
        config.option.benchmark_warmup_iterations = 2
    settings.load_profile("thorough" if config.getoption("--thorough")
                          else os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    # Timed runs: every PyTorch and peer timing before the first MAX execution (see bench.max_last:
    # MAX's idle worker threads slow PyTorch in the same process by ~30% on 2 cores).
    if config.getoption("benchmark_only", False):
        from maxwhisper.bench import max_last

        items[:] = max_last(items, lambda item: getattr(item, "callspec", None)
                            and item.callspec.params.get("impl"))


@pytest.fixture(scope="session")
def speech_dir():
    from maxwhisper.audio import speech_dir as find

    path = find()
    if path is None:
        pytest.skip("speech data absent: ../shared/speech (or $MAXWHISPER_SPEECH_DIR) not found")
    return path


@pytest.fixture(scope="session")
def tiny_en():
    """(dims, state_dict) of the embedded tiny.en."""
    from maxwhisper.weights import load_weights

    return load_weights("tiny.en")


@pytest.fixture(scope="session")
def tiny_en_model(tiny_en):
    from maxwhisper import MaxWhisper

    return MaxWhisper(*tiny_en, source="tiny.en")


@pytest.fixture(scope="session")
def jfk_mel(speech_dir):
    from maxwhisper.audio import load_audio, log_mel

    return log_mel(load_audio(speech_dir / "jfk.flac"))[None]


_PARITY: list = []


class _Recorder:
    def __call__(self, comparison):
        _PARITY.append(comparison)

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return "record_parity"


@pytest.fixture
def record_parity():
    """Keep a test's measured errors for the session summary (`--parity-report PATH` writes JSON)."""
    return _Recorder()


def pytest_terminal_summary(terminalreporter, config):
    if _BENCH or _MEMORY:
        _bench_summary(terminalreporter, config)
    if not _PARITY:
        return
    worst = max(_PARITY, key=lambda c: c.max_abs / (c.tolerance.atol or 1))
    terminalreporter.write_line(
        f"parity: {len(_PARITY)} comparisons recorded; largest error relative to atol: "
        f"{worst.layer} max_abs={worst.max_abs:.2e} ({worst.tolerance})")
    path = config.getoption("--parity-report")
    if path:
        import json

        with open(path, "w") as f:
            json.dump([c.row() for c in _PARITY], f, indent=1)
        terminalreporter.write_line(f"parity: report written to {path}")


_BENCH: list[dict] = []
_MEMORY: list[dict] = []


@pytest.fixture
def bench_record(request):
    """Keep a benchmark's median for the MAX / PyTorch ratio table printed at the end."""

    def record(group, impl, benchmark, flops=None, cores_busy=None):
        if benchmark.enabled and benchmark.stats is not None:
            median = benchmark.stats.stats.median
            _BENCH.append(dict(group=group, impl=impl, median_s=median, flops=flops, cores_busy=cores_busy,
                               gflops=flops / median / 1e9 if flops else None))

    return record


@pytest.fixture
def memory_record():
    """Keep a row that is not a timing for the summary: a configuration's peak RSS (from
    `python -m maxwhisper.bench rss`), or a graph's cold and warm compile (kind="compile")."""
    return _MEMORY.append


def _bench_summary(terminalreporter, config):
    from maxwhisper.bench import memory_lines, ratio_rows, write_report

    rows = ratio_rows(_BENCH)
    terminalreporter.write_sep("-", "MAX / PyTorch (median time ratio, same run)")
    for r in rows:
        terminalreporter.write_line(r["line"])
    memory = [r for r in _MEMORY if r.get("kind") != "compile"]
    if memory:
        terminalreporter.write_sep("-", "peak RSS per configuration (each in a fresh process)")
        for line in memory_lines(memory):
            terminalreporter.write_line(line)
    compiles = [r for r in _MEMORY if r.get("kind") == "compile"]
    if compiles:
        terminalreporter.write_sep("-", "compile per graph (empty MAX cache, then warm)")
        for r in compiles:
            terminalreporter.write_line(f"{r['graph']:12s} cold {r['cold_s']:6.1f} s  warm {r['warm_s']:5.1f} s")
    if config.getoption("--bench-out"):
        for path in write_report(_BENCH, rows, config.getoption("--bench-out"), _MEMORY):
            terminalreporter.write_line(f"bench: wrote {path}")
