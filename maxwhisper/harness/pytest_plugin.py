"""The harness's pytest plugin: options, shared fixtures and the parity report.

Registered by the project's conftest. Measured comparisons are kept on a plugin object (one per run)
and summarised at the end; `--parity-report PATH` writes them all as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NAME = "maxwhisper-parity"


class ParityRecorder:
    def __init__(self):
        self.comparisons: list = []

    def __call__(self, comparison):
        self.comparisons.append(comparison)

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return "record_parity"

    def pytest_terminal_summary(self, terminalreporter, config):
        if hasattr(config, "_device_deselected"):
            kind, names, count = config._device_deselected
            terminalreporter.write_line(f"--device {config.getoption('--device')}: {count} tests of "
                                        f"{', '.join(names)} deselected (no {kind} form: a CPU-only precision)")
        if not self.comparisons:
            return
        judged = [c for c in self.comparisons if c.ratios and not c.layer.startswith("mutant ")]
        line = f"parity: {len(self.comparisons)} comparisons recorded"
        if judged:
            worst = max(judged, key=lambda c: max(c.verdict.needed.values()))
            line += (f"; largest MAX/torch error ratio: {worst.layer} "
                     + " ".join(f"{f} {r:.2f}" for f, r in worst.ratios.items()) + f" (k: {worst.check.rule})")
        terminalreporter.write_line(line)
        from reference.yardstick import describe
        from maxwhisper.precision import mode

        device = config.getoption("--device")
        for dtype in dict.fromkeys(c.check.dtype for c in judged):  # what each side ran in
            try:
                how = mode(dtype, device)
            except ValueError:  # a CPU-only precision's record from a test that runs no MAX graph
                how = mode(dtype) + f" (a CPU-only precision: not on {device})"
            terminalreporter.write_line(f"parity {dtype}: MAX {how}; yardstick {describe(dtype, device)}")
        path = config.getoption("--parity-report")
        if path:
            with open(path, "w") as f:
                json.dump([c.row() for c in self.comparisons], f, indent=1)
            terminalreporter.write_line(f"parity: report written to {path}")


def pytest_addoption(parser):
    parser.addoption("--parity-report", metavar="PATH",
                     help="write every recorded parity comparison (errors per layer) as JSON")
    parser.addoption("--device", default="cpu", metavar="cpu|gpu|gpu:N",
                     help="where the MAX graphs under test run (default cpu); tests that run MAX skip, "
                          "saying why, where MAX sees no accelerator")
    parser.addoption("--dtype", metavar="NAME", default=None,
                     help="only the tests of this precision (a test without a `dtype` parameter is float32's)")
    parser.addoption("--shard", metavar="I/N", default=None,
                     help="the I-th (0-based) of N shards of the selected tests: N processes compile N graphs at once")
    parser.addoption("--shard-groups", metavar="PATH", default=None,
                     help="with --shard: tests that share graphs, from a run's graph log (gpu/budget.py groups), "
                          "kept in one shard, the groups balanced by graph count; else every N-th test")


def precision_of(item) -> str:
    """The precision a test runs in: its `dtype` parameter, else its `precision` marker, else float32."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "dtype" in callspec.params:
        return callspec.params["dtype"]
    marker = item.get_closest_marker("precision")
    return marker.args[0] if marker else "float32"


@pytest.hookimpl(trylast=True)  # after -k and -m: shards split what is selected
def pytest_collection_modifyitems(config, items):
    """--dtype, --device and --shard: deselected items are counted in pytest's summary and named in a
    line at its end, never skipped. On a device other than the CPU the tests of a precision that device
    cannot run (q4_0: MAX's quantized kernels are CPU kernels) are deselected."""
    from maxwhisper.device import parse_device
    from maxwhisper.precision import PRECISIONS

    dtype, shard = config.getoption("--dtype"), config.getoption("--shard")
    keep = list(items)
    if dtype is not None:
        if dtype not in PRECISIONS:
            raise pytest.UsageError(f"--dtype {dtype!r}: not a precision (one of {', '.join(PRECISIONS)})")
        keep = [i for i in keep if precision_of(i) == dtype]
    try:
        kind = parse_device(config.getoption("--device")).kind
    except ValueError as e:
        raise pytest.UsageError(f"--device: {e}") from None
    # a `dtype` that names no precision (the float64 reference's own tests) runs no MAX graph
    unable = [i for i in keep if precision_of(i) in PRECISIONS and kind not in PRECISIONS[precision_of(i)].products]
    if unable:
        config._device_deselected = (kind, sorted({precision_of(i) for i in unable}), len(unable))
        keep = [i for i in keep if i not in unable]
    if shard is not None:
        try:
            index, count = (int(x) for x in shard.split("/"))
            assert 0 <= index < count
        except (ValueError, AssertionError):
            raise pytest.UsageError(f"--shard {shard!r}: expected I/N with 0 <= I < N") from None
        path = config.getoption("--shard-groups")
        from maxwhisper.harness.shards import shard_of

        keep = shard_of(keep, index, count, json.loads(Path(path).read_text()) if path else None)
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def pytest_configure(config):
    config.pluginmanager.register(ParityRecorder(), NAME)


@pytest.fixture(autouse=True)
def _sdpa_left_on():
    """openai-whisper's SDPA switch is one class flag for the process: a test that leaves it off
    (word alignment raced across threads once did) changes every later PyTorch attention, and reference
    modules that use SDPA's causal switch fail far from the cause. The test that left it off fails here."""
    import whisper

    yield
    mha = whisper.model.MultiHeadAttention
    if not mha.use_sdpa:
        mha.use_sdpa = True
        pytest.fail("this test left openai-whisper's MultiHeadAttention.use_sdpa False")


@pytest.fixture
def record_parity(request):
    """Keep a test's measured errors for the session summary (`--parity-report PATH` writes JSON)."""
    return request.config.pluginmanager.get_plugin(NAME)


@pytest.fixture(scope="session")
def device(request) -> str:
    """The MAX device of this run (`--device`); the float64 reference stays on the CPU."""
    name = request.config.getoption("--device")
    if name != "cpu":
        from maxwhisper.runtime import device_ref

        try:
            device_ref(name)
        except ValueError as e:  # no accelerator, or a malformed name
            pytest.skip(f"--device {name}: {e}")
    return name


def fresh(check, *args) -> None:
    """Run a golden fixture's `check_fresh(*args)`; a stale fixture fails the test with its message
    (which names the reason and the command that regenerates it)."""
    from maxwhisper.harness.fixture import StaleFixtureError

    try:
        check(*args)
    except StaleFixtureError as e:
        pytest.fail(str(e), pytrace=False)


def assert_in_order(rows: list, prefix: str, record_parity, ids: list[str]) -> None:
    """A trace judged in execution order: every row recorded as `prefix:layer`, none failing (else the
    first failing one's report: where a bug starts), and one row per expected id."""
    from maxwhisper.harness.compare import first_failure

    for c in rows:
        c.layer = f"{prefix}:{c.layer}"
        record_parity(c)
    bad = first_failure(rows)
    assert bad is None, bad.report()
    assert [c.layer for c in rows] == [f"{prefix}:{i}" for i in ids]


def golden_fixtures(module, raw: str, checked: str):
    """Two module fixtures for a golden fixture module (`golden`, `golden_decoder`): `raw`, the checked-in
    file as read, fresh or not; `checked`, the same refused (every dependent test fails) unless fresh
    for tiny.en's weights."""
    from maxwhisper.checkpoints import weights_hash

    @pytest.fixture(scope="module", name=raw)
    def as_read():
        return module.load_fixture()

    @pytest.fixture(scope="module", name=checked)
    def refused_unless_fresh(request, tiny_en):
        fixture = request.getfixturevalue(raw)
        fresh(module.check_fresh, fixture, weights_hash(tiny_en[1]))
        return fixture

    return as_read, refused_unless_fresh


def require(what: str) -> None:
    """A test input is missing: skip where that is expected, fail under CI=true (CI has it all, so a
    skip there would hide the failure the test exists to catch)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and a required input is missing: {what}", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def speech_dir():
    from maxwhisper.harness.speech import speech_dir as find

    path = find()
    if path is None:
        require("speech data absent: ../shared/speech (or $MAXWHISPER_SPEECH_DIR) not found")
    return path


@pytest.fixture(scope="session")
def tiny_en():
    """(dims, state_dict) of the embedded tiny.en."""
    from maxwhisper.checkpoints import load_weights

    return load_weights("tiny.en")


@pytest.fixture(scope="session")
def tiny_en_model(tiny_en, device):
    from maxwhisper import MaxWhisper

    return MaxWhisper(*tiny_en, device=device, name="tiny.en")


@pytest.fixture(scope="session")
def pipelines(tiny_en_model):
    """(MAX pipeline, openai-whisper's PyTorch pipeline) of the embedded tiny.en, for `transcribe`."""
    from maxwhisper.transcribe import pipeline_model

    return pipeline_model(tiny_en_model, "max", "max"), pipeline_model(tiny_en_model, "torch", "torch")


ALONE_SEED = 0  # torch's global seed before each file of `max_alone` (the server's, `serve.engine.SEED`)


@pytest.fixture(scope="session")
def max_alone(speech_dir, pipelines):
    """file -> the MAX pipeline's `transcribe` result of that file alone (its defaults: greedy), torch seeded
    with ALONE_SEED first, for jfk.flac and the 107 LibriSpeech utterances: the end-to-end tests and the
    server's share the one pass (~70 s)."""
    import torch

    from maxwhisper.audio import load_audio
    from maxwhisper.harness.speech import transcripts
    from maxwhisper.transcribe import transcribe

    out = {}
    for row in transcripts(speech_dir):
        audio = load_audio(speech_dir / row["file"])
        torch.manual_seed(ALONE_SEED)
        out[row["file"]] = transcribe(pipelines[0], audio)
    return out


def axis(family: str) -> list:
    """The precisions beyond float32 that run a test family (`precision.Row.families`), as pytest params
    marked `thorough` where CI leaves them out (conftest deselects those and names them in the summary)."""
    from maxwhisper.precision import PRECISIONS

    return [pytest.param(name, marks=[] if r.families[family] else [pytest.mark.thorough], id=name)
            for name, r in PRECISIONS.items() if family in r.families]


@pytest.fixture(scope="session")
def tiny_en_in(tiny_en, tiny_en_model, device):
    """dtype -> the embedded tiny.en on MAX in that dtype, one model per dtype and session (each
    compiles its graphs on first use, so tests of one dtype share them)."""
    from maxwhisper import MaxWhisper

    models = {"float32": tiny_en_model}

    def get(dtype: str) -> MaxWhisper:
        if dtype not in models:
            models[dtype] = MaxWhisper(*tiny_en, device=device, dtype=dtype, name="tiny.en")
        return models[dtype]

    return get


@pytest.fixture(scope="session")
def jfk_mel(speech_dir):
    from maxwhisper.audio import load_audio, log_mel

    return log_mel(load_audio(speech_dir / "jfk.flac"))[None]
