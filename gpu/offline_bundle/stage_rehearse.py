"""Rehearse the device calls on this machine, in a scratch folder, with Python 3.12.

Each planned call is replayed as the device tool would make it: the working tree that travels
(tracked + untracked-not-ignored files) is laid in scratch/repo with the call's `carry` folders,
the call's command runs there verbatim with `python3` meaning python3.12, and the carried folders
vanish afterwards (the tool lays the repo copy anew on every call). /tmp/mw-stage and /tmp/mw-site
become scratch/stage and scratch/site (MW_STAGE, MW_SITE). The last batch's `bash gpu/run.sh stage`
runs as planned: the rejoin, sha256 check and pip install. The measuring calls (`bash gpu/run.sh 1|2`)
need the GPU and torch for 3.12: `stage.py rehearse-calls` runs them here on the CPU instead. Then
env_check.py (imports + a 4x4 MAX matmul on the CPU) runs on the result, with the packages the GPU
image has and python3.12 here lacks installed beside it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def find_python312(given: str | None) -> str:
    cands = [given] if given else []
    cands += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
    cands += [shutil.which("python3.12")]
    for c in filter(None, cands):
        # a pyenv shim exists on PATH even when it refuses to run: ask the interpreter itself
        p = subprocess.run([c, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                           capture_output=True, text=True)
        if p.returncode == 0 and p.stdout.strip() == "True":
            return str(Path(c).resolve()) if "/shims/" not in c else c
    raise SystemExit("no python3.12 found: pass --python PATH")


def lay_tree(root: Path, dest: Path) -> int:
    """Copy what a device call sends besides `carry`; returns its size in bytes."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, check=True, capture_output=True).stdout
    total = 0
    for rel in filter(None, out.decode().split("\0")):
        src = root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
            total += src.stat().st_size
    return total


def run(cmd: str, cwd: Path, env: dict, log: list) -> tuple[int, float]:
    t = time.perf_counter()
    p = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    log.append(f"$ {cmd}\n{p.stdout}{p.stderr}rc={p.returncode} wall={wall:.1f}s\n")
    return p.returncode, wall


def rehearse(root: Path, stage_dir: Path, python: str, keep: bool = False) -> int:
    plan = json.loads((stage_dir / "plan.json").read_text())
    scratch = Path(tempfile.mkdtemp(prefix="mw-rehearse-"))
    try:
        return _rehearse(root, stage_dir, python, plan, scratch)
    finally:
        if keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)  # ~1.3 GB of parts, files and site


def _rehearse(root: Path, stage_dir: Path, python: str, plan: dict, scratch: Path) -> int:
    repo, bindir, out = scratch / "repo", scratch / "bin", scratch / "out"
    for d in (repo, bindir, out):
        d.mkdir()
    (bindir / "python3").symlink_to(python)  # `python3` in the commands: 3.12, as on the GPU
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{bindir}:{env['PATH']}", MW_STAGE=str(scratch / "stage"),
               MW_SITE=str(scratch / "site"), OUT=str(out))
    log, rows, failed = [], [], 0
    print(f"scratch {scratch}; python3 = {python}")
    tree = lay_tree(root, repo)
    for i, call in enumerate(plan["calls"], 1):
        if call["command"].startswith("bash gpu/run.sh ") and not call["command"].endswith(" stage"):
            rows.append(f"call {i}: not here (measuring: `stage.py rehearse-calls`): {call['command']}")
            continue
        for c in call["carry"]:
            shutil.copytree(stage_dir / Path(c).relative_to("gpu/stage"), repo / c)
        sent = tree + sum(f.stat().st_size for c in call["carry"] for f in (repo / c).iterdir())
        cmd = call["command"]
        rc, wall = run(cmd, repo, env, log)
        left = [f.name for c in call["carry"] for f in (repo / c).iterdir()
                if f.name != "manifest.json"]
        ok = rc == 0 and not left  # every part moved out of the repo copy
        failed += not ok
        rows.append(f"call {i}: rc={rc} {'ok' if ok else 'FAILED'} {wall:6.1f}s  "
                    f"sent {sent / 2**20:6.2f} MiB  {cmd}")
        shutil.rmtree(repo / "gpu" / "stage", ignore_errors=True)  # the tool re-lays the copy
    stage = json.loads((out / "stage.json").read_text()) if (out / "stage.json").exists() else {}
    rows.append(f"run.sh stage step: {stage or 'no stage.json'}")
    failed += stage.get("rc") != 0

    # What the GPU image brings and python3.12 here lacks (numpy, click, rich, ...), installed
    # into its own folder, after the staged site on the path as the image's site-packages would be.
    base = scratch / "base"
    wheels = sorted(str(w) for w in (stage_dir / "rehearsal-wheels").glob("*.whl"))
    t = time.perf_counter()
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--target", str(base), *wheels], check=True)
    rows.append(f"rehearsal-only wheels ({len(wheels)}) installed in {time.perf_counter() - t:.1f}s")
    env["PYTHONPATH"] = f"{scratch / 'site'}:{base}:{repo}"
    rc, wall = run(f"python3 gpu/env_check.py --need cpu --json {out}/env.json", repo, env, log)
    failed += rc != 0
    rows.append(f"env_check --need cpu: rc={rc} {wall:.1f}s")
    if (out / "env.json").exists():
        r = json.loads((out / "env.json").read_text())
        rows += [f"  imports (s): {r['imports']}", f"  skipped: {r['skipped']}",
                 f"  errors: {r['errors']}", f"  max matmul: {r['max_matmul']}",
                 f"  versions: {r['versions']}"]
    (stage_dir / "rehearsal.log").write_text("\n".join(log))
    print("\n".join(rows))
    print(f"full log: {stage_dir / 'rehearsal.log'}")
    print("REHEARSAL " + ("PASSED" if not failed else f"FAILED ({failed} checks)"))
    return 1 if failed else 0
