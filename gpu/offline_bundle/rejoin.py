"""Receive staged batches on the GPU machine, rejoin split files, verify them, install the wheels.

Stdlib only: it runs under the GPU machine's python3 before anything is installed there, and under
python3.12 here in `stage.py rehearse`, so the rehearsal exercises this very code.

The repo copy on the device machine is laid anew on every call, so each batch is moved out of it
into STAGE (default /tmp/mw-stage), which stays while the machine is up. Layout there:
  STAGE/manifest.json   the plan's manifest (every batch carries a copy)
  STAGE/parts/          the received parts, each checked against its sha256 on arrival
  STAGE/files/          the rejoined files, each checked against its sha256
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# MW_STAGE / MW_SITE move them (the rehearsal does, to a scratch folder).
STAGE = Path(os.environ.get("MW_STAGE", "/tmp/mw-stage"))
SITE = Path(os.environ.get("MW_SITE", "/tmp/mw-site"))
CHUNK = 1 << 20


class StageError(Exception):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def load_manifest(path: Path) -> dict:
    m = json.loads(path.read_text())
    if m.get("format") != 1:
        raise StageError(f"{path}: unknown manifest format {m.get('format')!r}")
    return m


def parts_of(manifest: dict, batch: int | None = None) -> list[dict]:
    return [p for f in manifest["files"] for p in f["parts"] if batch is None or p["batch"] == batch]


def receive(batch_dir: Path, stage: Path = STAGE) -> dict:
    """Move one batch's parts into the stage and check each one's sha256; returns status()."""
    manifest = load_manifest(batch_dir / "manifest.json")
    n = int(batch_dir.name.rsplit("-", 1)[1])
    held = stage / "manifest.json"
    if held.exists() and load_manifest(held)["id"] != manifest["id"]:
        # A stage from another plan: its parts would not match this manifest's checksums.
        print(f"stage {stage} holds plan {load_manifest(held)['id']}, not {manifest['id']}: cleared")
        shutil.rmtree(stage)
    (stage / "parts").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(batch_dir / "manifest.json", held)
    bad = []
    for part in parts_of(manifest, n):
        src, dst = batch_dir / part["name"], stage / "parts" / part["name"]
        if src.exists():
            shutil.move(str(src), str(dst))
        if not dst.exists():
            bad.append(f"{part['name']}: absent from {batch_dir}")
        elif sha256_file(dst) != part["sha256"]:
            dst.unlink()  # a corrupt part must not pass the size check of status() later
            bad.append(f"{part['name']}: sha256 mismatch (removed)")
    if bad:
        raise StageError(f"batch {n}: " + "; ".join(bad))
    return status(stage)


def status(stage: Path = STAGE) -> dict:
    """Which batches the stage holds (every part present at its size); cheap, no hashing."""
    held = stage / "manifest.json"
    if not held.exists():
        return {"id": None, "batches": 0, "have": [], "missing": None}
    m = load_manifest(held)
    ok = {b["n"]: True for b in m["batches"]}
    for part in parts_of(m):
        p = stage / "parts" / part["name"]
        if not (p.exists() and p.stat().st_size == part["size"]):
            ok[part["batch"]] = False
    return {"id": m["id"], "batches": len(ok), "have": sorted(n for n, v in ok.items() if v),
            "missing": sorted(n for n, v in ok.items() if not v)}


def join(stage: Path = STAGE) -> list[Path]:
    """Rejoin every file from its parts into STAGE/files and check its sha256 (idempotent)."""
    st = status(stage)
    if st["id"] is None:
        raise StageError(f"{stage}: nothing received (fresh machine?): send every batch")
    if st["missing"]:
        raise StageError(f"batches missing on this machine: {st['missing']} (machine recycled? "
                         "send those again, or all if the stage was fresh)")
    m = load_manifest(stage / "manifest.json")
    files = stage / "files"
    files.mkdir(exist_ok=True)
    out = []
    for f in m["files"]:
        dst = files / f["name"]
        if not (dst.exists() and dst.stat().st_size == f["size"] and sha256_file(dst) == f["sha256"]):
            tmp, h = dst.with_suffix(dst.suffix + ".tmp"), hashlib.sha256()
            with open(tmp, "wb") as w:
                for part in sorted(f["parts"], key=lambda p: p["offset"]):
                    with open(stage / "parts" / part["name"], "rb") as r:
                        while block := r.read(CHUNK):
                            h.update(block)
                            w.write(block)
            if h.hexdigest() != f["sha256"]:
                tmp.unlink()
                culprits = [p["name"] for p in f["parts"]
                            if sha256_file(stage / "parts" / p["name"]) != p["sha256"]]
                raise StageError(f"{f['name']}: rejoined sha256 mismatch; bad parts: {culprits}")
            tmp.replace(dst)
        out.append(dst)
    return out


def install(files: list[Path], site: Path = SITE, python: str = sys.executable,
            stage_id: str = "") -> bool:
    """pip-install the wheels into an empty site; False when site already holds this plan's set."""
    mark = site / ".mw-stage-id"
    if stage_id and mark.exists() and mark.read_text() == stage_id:
        return False
    # pip --target skips (or, with --upgrade, replaces) a top-level folder that already exists,
    # and max-core, mojo-compiler and max-mojo-libs all write into modular/: so one pip call into
    # an empty folder, where pip merges them itself.
    shutil.rmtree(site, ignore_errors=True)
    wheels = [str(p) for p in files if p.name.endswith(".whl")]
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--disable-pip-version-check", "--target", str(site),
                    *wheels], check=True)
    mark.write_text(stage_id)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", type=Path, default=STAGE, help=f"default {STAGE}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv", help="move a carried batch folder into the stage, verify its parts")
    r.add_argument("batch_dir", type=Path)
    sub.add_parser("status", help="which batches the stage holds")
    sub.add_parser("join", help="rejoin and verify every file (fails listing missing batches)")
    i = sub.add_parser("install", help="join, then pip-install the wheels into --site")
    i.add_argument("--site", type=Path, default=SITE, help=f"default {SITE}")
    i.add_argument("--python", default=sys.executable, help="interpreter whose pip installs")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "recv":
            st = receive(args.batch_dir, args.stage)
        elif args.cmd == "status":
            st = status(args.stage)
        elif args.cmd == "join":
            print("\n".join(f"ok {p.name}" for p in join(args.stage)))
            st = status(args.stage)
        else:
            files = join(args.stage)
            sid = load_manifest(args.stage / "manifest.json")["id"]
            fresh = install(files, args.site, args.python, sid)
            print(f"{'installed' if fresh else 'already installed'}: {len(files)} wheels in {args.site}")
            st = status(args.stage)
    except StageError as e:
        print(f"STAGE ERROR: {e}", file=sys.stderr)
        print(json.dumps(status(args.stage)))
        return 3
    print(json.dumps(st))
    return 0


if __name__ == "__main__":
    sys.exit(main())
