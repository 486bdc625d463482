"""`maxwhisper transcribe --ray` on a local Ray cluster (2 CPUs): the 107 LibriSpeech utterances with
two workers, one of them killed mid-run, and undecodable files in the manifest; an interrupted job
resumed; a worker whose build fails the start-up check refusing work. Texts are compared with the
one-machine pipeline's with the same options (greedy; `max_alone`)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

try:
    import pyarrow.parquet as pq
    import ray
except ImportError as e:
    if os.environ.get("CI", "").lower() == "true":  # CI installs the extra: a skip there would hide the failure
        raise
    pytest.skip(f"the ray extra is not installed: pip install 'maxwhisper[ray]' ({e.name})", allow_module_level=True)

from maxwhisper.corpus import job  # noqa: E402
from maxwhisper.harness.speech import transcripts  # noqa: E402

pytestmark = pytest.mark.precision("float32")
GREEDY = ["--beam_size", "None", "--best_of", "None", "--temperature_increment_on_fallback", "None"]
OPTIONS = dict(beam_size=None, best_of=None, temperature=(0.0,), verbose=None)  # greedy, for job.run


@pytest.fixture(scope="module")
def local_ray(device):
    if device != "cpu":
        pytest.skip("the corpus job's tests run on the CPU")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def utterances(speech_dir):
    return [str(speech_dir / r["file"]) for r in transcripts(speech_dir) if r["subset"] != "jfk"]


@pytest.fixture(scope="module")
def one_machine(utterances, speech_dir, max_alone):
    """path -> text of the one-machine pipeline with the same options: greedy, each file alone
    (`max_alone`, the pass the end-to-end tests share; batching equals it there)."""
    return {p: max_alone[str(Path(p).relative_to(speech_dir))]["text"] for p in utterances}


def _table(out: Path) -> list[dict]:
    return pq.read_table(out / job.TABLE).to_pylist()


def _bad_files(tmp_path: Path, speech_dir: Path) -> list[str]:
    cut = tmp_path / "cut.flac"
    cut.write_bytes((speech_dir / "jfk.flac").read_bytes()[:3000])  # a FLAC cut short
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    return [str(cut), str(text), str(tmp_path / "missing.flac")]


def _kill_one_worker_after_first_part(out: Path, killed: list) -> None:
    """Once the first batch is in, SIGKILL the process of the worker that wrote it (its rows name it,
    host:pid): a worker lost mid-run."""
    deadline = time.monotonic() + 600
    while not (parts := sorted((out / job.PARTS).glob("part-*.parquet"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    if parts:
        pid = int(pq.read_table(parts[0]).column("worker")[0].as_py().rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


def test_107_utterances_two_workers_one_killed_and_bad_files(local_ray, utterances, one_machine, speech_dir, tmp_path):
    from maxwhisper.cli import main

    out = tmp_path / "out"
    bad = _bad_files(tmp_path, speech_dir)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path\n" + "\n".join(utterances[:50] + bad + utterances[50:]) + "\n")
    killed: list = []
    killer = threading.Thread(target=_kill_one_worker_after_first_part, args=(out, killed), daemon=True)
    killer.start()
    rc = main(["transcribe", "--manifest", str(manifest), "--workers", "2", "--batch-size", "8", "--output_dir", str(out),
               "--output_format", "txt", *GREEDY, "--ray"])
    killer.join(5)
    assert rc == 2  # files failed, as the CLI exits when one does
    assert killed, "no worker was alive to kill"
    rows = _table(out)
    assert sorted(r["path"] for r in rows) == sorted(utterances + bad)  # every file once
    errors = {r["path"]: r["error"] for r in rows if r["error"]}
    assert sorted(errors) == sorted(bad), errors
    assert [why in errors[b] for b, why in zip(bad, ("cannot decode audio", "cannot decode audio", "no such file"))] == [True] * 3
    differ = [p for p in utterances if next(r["text"] for r in rows if r["path"] == p) != one_machine[p]]
    assert not differ, f"{len(differ)} texts differ from the one-machine CLI's: {differ[:5]}"
    workers = {r["worker"] for r in rows if not r["error"]}
    assert len(workers) >= 2 and all(json.loads(r["check"])["passed"] for r in rows)
    assert all((out / (Path(p).stem + ".txt")).is_file() for p in utterances)  # named by stem, as the CLI's
    assert not (out / job.PARTS).exists()  # merged into the table


def test_interrupted_job_resumes_each_file_once(local_ray, utterances, one_machine, tmp_path):
    from maxwhisper.cli import main

    files = utterances[:24]
    out = tmp_path / "out"
    manifest = tmp_path / "files.txt"
    manifest.write_text("\n".join(files) + "\n")
    args = ["transcribe", "--manifest", str(manifest), "--batch-size", "4", "--output_dir", str(out),
            "--output_format", "txt", *GREEDY]
    address = ray.get_runtime_context().gcs_address  # this module's cluster
    proc = subprocess.Popen([sys.executable, "-m", "maxwhisper.cli", *args, "--ray", address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list((out / job.PARTS).glob("part-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C after the first batch
    proc.wait(120)
    first = len(job.done_paths(out))
    assert 0 < first < len(files), f"the interrupted run had {first} of {len(files)} files"
    assert main([*args, "--ray"]) == 0
    rows = _table(out)
    assert sorted(r["path"] for r in rows) == sorted(files)  # each file once
    assert all(r["text"] == one_machine[r["path"]] for r in rows)
    assert len({r["worker"] for r in rows}) == 2  # the interrupted run's worker and the resumed run's


def test_a_worker_whose_build_fails_the_check_refuses_work(local_ray, utterances, tmp_path):
    from maxwhisper.harness.check import misloaded

    with pytest.raises(Exception, match=r"refused work: start-up check failed .*first layer over tolerance: encoder\.blocks\.1\.mlp"):
        job.run(utterances[:4], str(tmp_path / "out"), batch_size=4, options=OPTIONS, factory=functools.partial(misloaded))
    assert not (tmp_path / "out" / job.TABLE).exists()  # nothing transcribed


def test_bad_corpus_input_is_one_line_and_exit_2(tmp_path, capsys):
    from maxwhisper.cli import main

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    for argv, what in ((["--manifest", str(empty)], "lists no file"),
                       ([str(tmp_path / "*.flac")], "matches no file"),
                       (["--manifest", str(tmp_path / "nope.csv")], "no such manifest")):
        assert main(["transcribe", *argv, "--output_dir", str(tmp_path), "--ray"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0], err
    assert main(["transcribe", "--manifest", str(empty)]) == 2  # --manifest without --ray
    assert "go with --ray" in capsys.readouterr().err
