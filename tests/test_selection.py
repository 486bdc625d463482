"""The harness's pytest options select what a user asked for: `--device gpu` on a machine without a GPU
skips every MAX test, saying so, and on any GPU selection the tests of a CPU-only precision (q4_0) are
deselected and named, never run on the CPU instead nor failing the run (issue 31: exit 1, a ValueError)."""

from __future__ import annotations

import subprocess
import sys

from maxwhisper.harness.fixture import repo_file

ROOT = repo_file(".")


def _pytest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_a_gpu_selection_deselects_cpu_only_precisions():
    run = _pytest("--device", "gpu", "--co", "-q", "tests/test_parity_quant.py", "tests/test_quant.py",
                  "tests/test_judge.py")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    listed = [line for line in run.stdout.splitlines() if "::" in line and not line.startswith("run with")]
    assert listed and all(line.startswith("tests/test_judge.py::") for line in listed), listed
    assert "--device gpu:" in run.stdout and "of q4_0 deselected (no gpu form: a CPU-only precision)" in run.stdout


def test_dtype_keeps_a_precision_marked_test():
    """`--dtype q4_0` keeps the q4_0 tests without a dtype parameter (the `precision` marker); `--dtype
    float32` drops them."""
    names = {d: {line for line in _pytest("--dtype", d, "--co", "-q", "tests/test_quant.py").stdout.splitlines()
                 if "::" in line} for d in ("q4_0", "float32")}
    assert names["q4_0"] and not names["float32"]


def test_a_gpu_selection_without_a_gpu_skips_saying_so(tmp_path):
    """Every MAX test skips with the reason, and no graph is loaded on the CPU instead (the graph log);
    the golden fixture's own checks, which run no MAX graph, still run."""
    import os

    from maxwhisper.runtime import device_ref

    try:
        device_ref("gpu")
        has_gpu = True
    except ValueError:
        has_gpu = False
    log = tmp_path / "graphs.jsonl"
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--device", "gpu", "-q", "-rs",
                          "tests/test_golden.py", "-k", "not axis"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "MAXWHISPER_GRAPH_LOG": str(log)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    if has_gpu:  # then the same selection runs there
        return
    skipped = [line for line in run.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped and all("--device gpu:" in line for line in skipped), skipped
    assert not log.exists() or not log.read_text().strip(), log.read_text()


def test_a_gpu_selection_collects_the_whole_suite():
    """Every test's precision is read without error, a `dtype` parameter that names no precision
    (test_api's float64, bf16, ...) included: once a KeyError stopped the collection."""
    for device in ("cpu", "gpu"):
        run = _pytest("--device", device, "--co", "-q")
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
