"""Shared test set-up: hypothesis profiles, the speech data, tiny.en loaded once per session."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# "ci" is derandomized and small: the same examples on every run, so a red CI is reproducible.
# "thorough" (pytest --thorough) draws many more, randomized, for a change to the numerics.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=6, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=100, print_blob=True, **_common)


def pytest_addoption(parser):
    parser.addoption("--thorough", action="store_true",
                     help="hypothesis 'thorough' profile: many randomized examples per property")
    parser.addoption("--parity-report", metavar="PATH",
                     help="write every recorded parity comparison (errors per layer) as JSON")


def pytest_configure(config):
    settings.load_profile("thorough" if config.getoption("--thorough")
                          else os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


@pytest.fixture
def record_parity():
    """Keep a test's measured errors for the session summary (`--parity-report PATH` writes JSON)."""
    return _PARITY.append


def pytest_terminal_summary(terminalreporter, config):
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
