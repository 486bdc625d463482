"""Stage the GPU run's missing Python packages for the device tool, and plan its calls.

  python3 gpu/offline_bundle/stage.py download   cp312 wheels the GPU machine lacks -> gpu/stage/wheels/
  python3 gpu/offline_bundle/stage.py plan       split them into batches under the per-call budget, write
                                  gpu/stage/manifest.json and plan.json, print the device calls
  python3 gpu/offline_bundle/stage.py rehearse   replay those calls here with python3.12 (see stage_rehearse.py)
  python3 gpu/offline_bundle/stage.py speech     jfk.flac and 16 LibriSpeech files -> gpu/stage/speech/ (carried by
                                  the measuring calls: ../shared/speech does not travel)
  python3 gpu/offline_bundle/stage.py rehearse-calls   the two measuring calls here (--device cpu), then the budget
                                  check (gpu/budget.py); run it with the project's environment
  python3 gpu/offline_bundle/stage.py all        download, plan, rehearse

gpu/stage/ holds a .gitignore of '*' (written here), so nothing staged travels uncarried.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import stage_pack
import stage_wheels

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / "gpu" / "stage"


def ensure_ignored() -> None:
    # Until the root .gitignore names gpu/stage/, this keeps ~300 MB of wheels and parts out of
    # the working tree that every device call sends (and out of `git status`).
    STAGE.mkdir(parents=True, exist_ok=True)
    gi = STAGE / ".gitignore"
    if not gi.exists():
        gi.write_text("# written by gpu/offline_bundle/stage.py: everything here is generated\n*\n")


def cmd_download(args) -> int:
    ensure_ignored()
    wheels = stage_wheels.download(STAGE / "wheels", with_shmem=args.with_shmem)
    if not args.no_rehearsal:
        stage_wheels.download_rehearsal(STAGE / "rehearsal-wheels")
    total = 0
    for w in wheels:
        total += w.stat().st_size
        print(f"{w.stat().st_size / 2**20:8.2f} MiB  {w.name}")
    print(f"{total / 2**20:8.2f} MiB  {len(wheels)} wheels in {STAGE / 'wheels'}")
    unmet = stage_wheels.check_closure(wheels)
    if unmet:
        print(f"UNMET requirements (neither staged nor on the GPU image): {unmet}")
        return 1
    return 0


def cmd_plan(args) -> int:
    ensure_ignored()
    files = sorted((STAGE / "wheels").glob("*.whl"))
    if not files:
        print("no wheels in gpu/stage/wheels: run `python3 gpu/offline_bundle/stage.py download` first")
        return 1
    unmet = stage_wheels.check_closure(files)
    if unmet:
        print(f"WARNING: unmet requirements: {unmet}")
    tree = stage_pack.tree_bytes(ROOT)
    margin = int(args.margin * stage_pack.MIB)
    budget = stage_pack.budget_for(tree, margin=margin)
    manifest = stage_pack.write_batches(files, STAGE, budget, tree)
    speech = STAGE / "speech"
    if not (speech / "transcripts.tsv").exists():
        print("WARNING: no gpu/stage/speech: run `python3 gpu/offline_bundle/stage.py speech` (verify falls back to eSpeak NG "
              "and the pipeline step has no files)")
    calls = stage_pack.calls(manifest, merge_last=not args.separate_run,
                             speech_bytes=stage_pack.folder_bytes(speech) if speech.exists() else 0)
    for b in manifest["batches"]:  # what is on disk, not what was intended
        on_disk = stage_pack.folder_bytes(STAGE / b["dir"])
        if on_disk + tree > stage_pack.LIMIT - margin:
            raise SystemExit(f"{b['dir']}: {on_disk} bytes + tree {tree} over the budget")
    (STAGE / "plan.json").write_text(json.dumps({"id": manifest["id"], "tree_bytes": tree,
                                                 "calls": calls}, indent=1))
    text = stage_pack.describe(manifest, calls, tree)
    (STAGE / "plan.txt").write_text(text + "\n")
    print(text)
    return 0


def cmd_rehearse(args) -> int:
    import stage_rehearse

    if not (STAGE / "plan.json").exists():
        print("no gpu/stage/plan.json: run `python3 gpu/offline_bundle/stage.py plan` first")
        return 1
    python = stage_rehearse.find_python312(args.python)
    return stage_rehearse.rehearse(ROOT, STAGE, python, keep=args.keep)


SPEECH_FILES = 16  # LibriSpeech utterances carried: the 7 test-clean ones, then test-other's first


def cmd_speech(args) -> int:
    """Copy jfk.flac and SPEECH_FILES LibriSpeech utterances with their transcripts.tsv rows: a speech
    folder `maxwhisper.harness.speech` accepts (MAXWHISPER_SPEECH_DIR), a few MiB of the 64 a call carries."""
    import csv
    import shutil

    sys.path.insert(0, str(ROOT))
    from maxwhisper.harness.speech import speech_dir

    src = speech_dir()
    if src is None:
        print("no ../shared/speech here (or $MAXWHISPER_SPEECH_DIR)")
        return 1
    with open(src / "transcripts.tsv", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows, fields = list(reader), reader.fieldnames
    chosen = [r for r in rows if r["subset"] == "jfk"] + [r for r in rows if r["subset"] == "test-clean"]
    chosen += [r for r in rows if r["subset"] == "test-other"][:SPEECH_FILES - len(chosen) + 1]
    dest = STAGE / "speech"
    shutil.rmtree(dest, ignore_errors=True)
    for r in chosen:
        (dest / r["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / r["file"], dest / r["file"])
    with open(dest / "transcripts.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(chosen)
    # the long-form groups need all 100 test-other files: the header alone says there are none here
    header = (src / "longform_groups.tsv").read_text().splitlines()[0]
    (dest / "longform_groups.tsv").write_text(header + "\n")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"{len(chosen)} files ({len(chosen) - 1} LibriSpeech + jfk.flac), {size / 2**20:.2f} MiB in {dest}")
    return 0


def cmd_rehearse_calls(args) -> int:
    """The measuring calls on this CPU, caps off (the budget check replays them against the caps)."""
    import subprocess

    import budget

    if not (STAGE / "speech" / "transcripts.tsv").exists() and cmd_speech(args):
        return 1
    out = STAGE / "rehearsal"
    env = dict(__import__("os").environ, MAXWHISPER_SPEECH_DIR=str(STAGE / "speech"))
    for n in args.only or (1, 2):
        env["MW_SCRATCH"] = str(out / f"scratch{n}")
        cmd = [args.python or sys.executable, str(ROOT / "gpu" / "measure.py"), str(n), "--device", "cpu",
               "--out", str(out / f"call{n}"), "--jobs", str(args.jobs), "--no-caps"]
        print("+ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, env=env, cwd=ROOT)
    lines, failures = budget.check(out)
    text = "\n".join([*lines, *(f"FAIL {f}" for f in failures), "budget: " + ("fits" if not failures else
                                                                             f"{len(failures)} failures")])
    (out / "budget.txt").write_text(text + "\n")
    print(text)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(
        __doc__.splitlines()[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="fetch the cp312 wheels the GPU machine lacks")
    d.add_argument("--with-shmem", action="store_true",
                   help="also stage max-shmem-libs (NVSHMEM: multi-GPU only, ~29 MB)")
    d.add_argument("--no-rehearsal", action="store_true",
                   help="skip the wheels only the rehearsal here needs (numpy, click, ...)")
    p = sub.add_parser("plan", help="split into batches, write the manifest, print the calls")
    p.add_argument("--margin", type=float, default=stage_pack.MARGIN / stage_pack.MIB,
                   metavar="MIB", help="room left for the tree to grow (default %(default)s)")
    p.add_argument("--separate-run", action="store_true",
                   help="run.sh in a call of its own instead of with the last batch")
    r = sub.add_parser("rehearse", help="replay the planned calls here with python3.12")
    r.add_argument("--python", help="the 3.12 interpreter (default: python3.12 or pyenv's)")
    r.add_argument("--keep", action="store_true", help="keep the scratch folder")
    sub.add_parser("speech", help="the speech files the measuring calls carry -> gpu/stage/speech")
    rc = sub.add_parser("rehearse-calls", help="the measuring calls here on the CPU, then the budget check")
    rc.add_argument("--jobs", type=int, default=2, help="shards at once here (default 2: 24 GiB of memory)")
    rc.add_argument("--python", help="the project's interpreter (default: this one)")
    rc.add_argument("--only", type=int, action="append", choices=[1, 2],
                    help="rehearse this call again, keeping the other's last rehearsal")
    a = sub.add_parser("all", help="download, plan, rehearse")
    a.add_argument("--with-shmem", action="store_true")
    a.add_argument("--no-rehearsal", action="store_true")
    a.add_argument("--margin", type=float, default=stage_pack.MARGIN / stage_pack.MIB)
    a.add_argument("--separate-run", action="store_true")
    a.add_argument("--python")
    a.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "all":
        return cmd_download(args) or cmd_plan(args) or cmd_rehearse(args)
    return {"download": cmd_download, "plan": cmd_plan, "rehearse": cmd_rehearse, "speech": cmd_speech,
            "rehearse-calls": cmd_rehearse_calls}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
