"""gpu/: splitting wheels into transfer batches, rejoining and verifying them, planning the calls.

Fast and offline: small files in tmp_path, no pip, no downloads.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpu" / "offline_bundle"))

import rejoin  # noqa: E402
import stage_pack  # noqa: E402
from rejoin import StageError  # noqa: E402

RESERVE = stage_pack.MANIFEST_RESERVE
PAYLOAD = 4096  # bytes of parts per batch in these tests


def make(dirpath: Path, sizes: dict[str, int], seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    dirpath.mkdir(parents=True, exist_ok=True)
    out = []
    for name, size in sizes.items():
        p = dirpath / name
        p.write_bytes(rng.randbytes(size))
        out.append(p)
    return out


def stage_all(tmp_path: Path, sizes: dict[str, int], payload: int = PAYLOAD):
    files = make(tmp_path / "wheels", sizes)
    out = tmp_path / "gpu" / "stage"
    manifest = stage_pack.write_batches(files, out, payload + RESERVE)
    return files, out, manifest


def receive_all(out: Path, stage: Path, manifest: dict, skip: tuple[int, ...] = ()) -> None:
    for b in manifest["batches"]:
        if b["n"] not in skip:
            rejoin.receive(out / b["dir"], stage)


def test_pack_file_exactly_at_budget_is_one_part_and_one_byte_over_is_two():
    assert stage_pack.pack([("a", PAYLOAD)], PAYLOAD) == [[("a", 0, PAYLOAD)]]
    assert stage_pack.pack([("a", PAYLOAD + 1)], PAYLOAD) == [[("a", 0, PAYLOAD)],
                                                              [("a", PAYLOAD, 1)]]
    assert stage_pack.pack([("e", 0)], PAYLOAD) == [[("e", 0, 0)]]


@pytest.mark.parametrize("sizes", [
    {"exact.whl": PAYLOAD},
    {"over.whl": PAYLOAD + 1},
    {"exact.whl": PAYLOAD, "over.whl": PAYLOAD + 1, "empty.whl": 0, "small.whl": 10,
     "big.whl": 5 * PAYLOAD + 17},
])
def test_split_and_rejoin_round_trip_bytes_exactly(tmp_path, sizes):
    files, out, manifest = stage_all(tmp_path, sizes)
    n_parts = {f["name"]: len(f["parts"]) for f in manifest["files"]}
    if sizes == {"exact.whl": PAYLOAD}:
        assert n_parts == {"exact.whl": 1} and len(manifest["batches"]) == 1
    if sizes == {"over.whl": PAYLOAD + 1}:
        assert n_parts == {"over.whl": 2} and len(manifest["batches"]) == 2
    stage = tmp_path / "mw-stage"
    receive_all(out, stage, manifest)
    joined = rejoin.join(stage)
    assert sorted(p.name for p in joined) == sorted(sizes)
    for f in files:
        assert (stage / "files" / f.name).read_bytes() == f.read_bytes()
    # receiving moved every part out of the carried folder (the repo copy), leaving the manifest
    for b in manifest["batches"]:
        assert [p.name for p in (out / b["dir"]).iterdir()] == ["manifest.json"]
    assert rejoin.join(stage) == joined  # idempotent: a rerun of run.sh finds the files ready


def test_batches_respect_the_budget_and_are_as_few_as_possible(tmp_path):
    rng = random.Random(1)
    sizes = {f"w{i}.whl": rng.randrange(0, 3 * PAYLOAD) for i in range(12)}
    sizes["huge.whl"] = 7 * PAYLOAD + 3
    _, out, manifest = stage_all(tmp_path, sizes)
    total = sum(sizes.values())
    assert len(manifest["batches"]) == -(-total // PAYLOAD)
    for b in manifest["batches"]:
        on_disk = stage_pack.folder_bytes(out / b["dir"])
        assert on_disk <= PAYLOAD + RESERVE and on_disk == b["bytes"]
    parts = [p for f in manifest["files"] for p in f["parts"]]
    assert max(p["size"] for p in parts) <= PAYLOAD
    for f in manifest["files"]:  # parts tile each file exactly
        offs = sorted((p["offset"], p["size"]) for p in f["parts"])
        assert offs[0][0] == 0 and sum(s for _, s in offs) == f["size"]
        assert all(a + s == b for (a, s), (b, _) in zip(offs, offs[1:]))


def test_even_payload_spreads_bytes_over_the_fewest_batches():
    assert stage_pack.even_payload(100, 60) == 50
    assert stage_pack.even_payload(120, 60) == 60
    assert stage_pack.even_payload(0, 60) == 1


def test_corrupted_part_is_refused_on_receive(tmp_path):
    _, out, manifest = stage_all(tmp_path, {"a.whl": 3 * PAYLOAD})
    part = out / "batch-2" / manifest["files"][0]["parts"][1]["name"]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 1
    part.write_bytes(bytes(data))
    stage = tmp_path / "mw-stage"
    rejoin.receive(out / "batch-1", stage)
    with pytest.raises(StageError, match="sha256 mismatch"):
        rejoin.receive(out / "batch-2", stage)
    assert rejoin.status(stage)["missing"] == [2, 3]


def test_part_corrupted_after_receive_is_caught_by_join(tmp_path):
    _, out, manifest = stage_all(tmp_path, {"a.whl": 2 * PAYLOAD, "b.whl": 100})
    stage = tmp_path / "mw-stage"
    receive_all(out, stage, manifest)
    name = manifest["files"][0]["parts"][0]["name"]
    p = stage / "parts" / name
    data = bytearray(p.read_bytes())
    data[0] ^= 0xFF  # same size: only the checksum can tell
    p.write_bytes(bytes(data))
    with pytest.raises(StageError, match=name.replace(".", r"\.")):
        rejoin.join(stage)


def test_missing_batch_is_named(tmp_path, capsys):
    _, out, manifest = stage_all(tmp_path, {"a.whl": 3 * PAYLOAD})
    stage = tmp_path / "mw-stage"
    receive_all(out, stage, manifest, skip=(2,))
    with pytest.raises(StageError, match=r"\[2\]"):
        rejoin.join(stage)
    assert rejoin.main(["--stage", str(stage), "join"]) == 3
    assert "batches missing" in capsys.readouterr().err
    with pytest.raises(StageError, match="nothing received"):
        rejoin.join(tmp_path / "fresh")


def test_stage_from_another_plan_is_cleared(tmp_path):
    _, out, manifest = stage_all(tmp_path / "one", {"a.whl": 2 * PAYLOAD})
    stage = tmp_path / "mw-stage"
    rejoin.receive(out / "batch-1", stage)
    _, out2, manifest2 = stage_all(tmp_path / "two", {"b.whl": PAYLOAD})
    assert manifest2["id"] != manifest["id"]
    st = rejoin.receive(out2 / "batch-1", stage)
    assert st == {"id": manifest2["id"], "batches": 1, "have": [1], "missing": []}
    assert [p.name for p in (stage / "parts").iterdir()] == ["b.whl.part00"]


def test_install_is_skipped_when_the_site_holds_this_plan(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / ".mw-stage-id").write_text("abc")
    assert rejoin.install([], site, python="/nonexistent/python", stage_id="abc") is False


def test_plan_carries_existing_batches_and_commands_fit(tmp_path):
    _, out, manifest = stage_all(tmp_path, {"a.whl": 3 * PAYLOAD, "b.whl": 10})
    for merge in (True, False):
        plan = stage_pack.calls(manifest, merge_last=merge)
        staging, measuring = plan[:-2], plan[-2:]
        assert len(staging) == len(manifest["batches"]) + (0 if merge else 1)
        for call in staging:
            assert len(call["command"]) <= 2000 and len(call["carry"]) <= 8
            for c in call["carry"]:
                assert (tmp_path / c).is_dir() and (tmp_path / c / "manifest.json").is_file()
                assert f"recv {c}" in call["command"]
        assert staging[-1]["command"].endswith("bash gpu/run.sh stage")
        assert [c["carry"] for c in staging if c["carry"]] == [[f"gpu/stage/batch-{b['n']}"]
                                                               for b in manifest["batches"]]
        assert [c["command"] for c in measuring] == ["bash gpu/run.sh 1", "bash gpu/run.sh 2"]
        assert all(c["carry"] == ["gpu/stage/speech"] and c["timeout_s"] <= 300 for c in measuring)
    text = stage_pack.describe(manifest, stage_pack.calls(manifest), tree=1000)
    assert text.count("command: ") == len(manifest["batches"]) + 2


def test_tree_bytes_counts_what_travels(tmp_path):
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("ignored/\n")
    (tmp_path / "tracked.txt").write_bytes(b"x" * 100)
    subprocess.run(git + ["add", "."], cwd=tmp_path, check=True)
    (tmp_path / "untracked.txt").write_bytes(b"y" * 50)
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "big.bin").write_bytes(b"z" * 10_000)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "s.bin").write_bytes(b"s" * 7)  # shared/ travels even if ignored
    (tmp_path / ".gitignore").write_text("ignored/\nshared/\n")
    expected = 100 + 50 + 7 + os.path.getsize(tmp_path / ".gitignore")
    assert stage_pack.tree_bytes(tmp_path) == expected
    assert stage_pack.budget_for(expected) == stage_pack.LIMIT - expected - stage_pack.MARGIN
    with pytest.raises(SystemExit):
        stage_pack.budget_for(stage_pack.LIMIT)


FAKE_PYTHON = r"""#!/usr/bin/env bash
# stands in for the GPU machine's python3: answers at once, and says what it was asked
case "$*" in
  *"rejoin.py install"*) exit "${FAKE_INSTALL_RC:-0}" ;;
esac
echo "fake $*"
"""


def _run_sh(tmp_path, *args, **env):
    """gpu/run.sh ARGS with FAKE_PYTHON as its python: (the finished process, its $OUT)."""
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), MW_PYTHON=str(fake), MW_STAGE=str(tmp_path / "stage"),
               MW_SITE=str(tmp_path / "site"), **env)
    script = Path(__file__).resolve().parent.parent / "gpu" / "run.sh"
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60), out


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_run_sh_stage_installs_and_reports_the_machine(tmp_path):
    p, out = _run_sh(tmp_path, "stage")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads((out / "stage.json").read_text())["rc"] == 0
    assert "=== stage: rc=0" in (out / "run.log").read_text()


def test_run_sh_measuring_call_hands_over_to_measure_on_the_gpu(tmp_path):
    p, out = _run_sh(tmp_path, "2")
    log = (out / "run.log").read_text()
    assert p.returncode == 0 and f"fake gpu/measure.py 2 --device gpu --out {out}" in log
    assert not (out / "stage.json").exists()  # its line is in run.log: $OUT keeps 8 files for measure.py


def test_run_sh_measures_nothing_on_a_failed_stage_and_refuses_a_bad_call(tmp_path):
    p, out = _run_sh(tmp_path, "1", FAKE_INSTALL_RC="3")
    assert p.returncode == 3 and "measure.py" not in (out / "run.log").read_text()
    assert _run_sh(tmp_path, "3")[0].returncode == 2
