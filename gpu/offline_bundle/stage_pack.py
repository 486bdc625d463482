"""Split staged files into parts, group the parts into transfer batches, write the manifest, and
lay out the device calls that carry them.

One device call sends the working tree (tracked + untracked-not-ignored files, shared/) plus the
`carry` paths, 64 MiB in all. So a batch may hold at most 64 MiB minus the tree minus a margin
(the tree grows while others edit it). Files are laid end to end and cut at batch boundaries: the
fewest batches (the fewest device calls) for the bytes, and no part is larger than a batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from rejoin import CHUNK, sha256_file

MIB = 1 << 20
LIMIT = 64 * MIB            # the device tool's per-call limit on what travels
MARGIN = 2 * MIB            # least room left for the tree to grow between `plan` and the calls
MANIFEST_RESERVE = 64 << 10  # every batch carries the manifest; kept out of the payload budget
MAX_COMMAND = 2000           # the device tool's limit on one command's length
BATCH_TIMEOUT_S = 120        # a batch call moves and hashes <64 MiB: seconds, plus the transfer
STAGE_TIMEOUT_S = 180        # the last batch, then run.sh's rejoin + install (7 s on the H100)


def tree_bytes(root: Path) -> int:
    """Bytes of what a device call sends besides `carry`: the files git does not ignore, and
    shared/ inside the checkout (it travels even where ignored)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, check=True, capture_output=True).stdout
    listed = {p for p in out.decode().split("\0") if p}
    shared = root / "shared"
    if shared.is_dir():
        listed |= {str(p.relative_to(root)) for p in shared.rglob("*") if not p.is_dir()}
    total = 0
    for rel in listed:
        try:  # a tracked file deleted in the work tree does not travel
            total += os.lstat(root / rel).st_size
        except FileNotFoundError:
            pass
    return total


def budget_for(tree: int, limit: int = LIMIT, margin: int = MARGIN) -> int:
    """Bytes one batch folder may hold (its manifest copy included)."""
    room = limit - tree - margin
    if room <= MANIFEST_RESERVE + MIB:
        raise SystemExit(f"the working tree ({tree / MIB:.1f} MiB) leaves no room under "
                         f"{limit / MIB:.0f} MiB: ignore or remove large files first")
    return room


def pack(sizes: list[tuple[str, int]], payload: int) -> list[list[tuple[str, int, int]]]:
    """(name, offset, size) parts per batch: files in the given order, end to end, cut where a
    batch is full. An empty file still gets one (empty) part, so it is rejoined too."""
    if payload <= 0:
        raise ValueError("payload budget must be positive")
    batches: list[list[tuple[str, int, int]]] = [[]]
    room = payload
    for name, size in sizes:
        off = 0
        while True:
            if room == 0:
                batches.append([])
                room = payload
            take = min(room, size - off)
            batches[-1].append((name, off, take))
            off, room = off + take, room - take
            if off >= size:
                break
    return [b for b in batches if b]


def even_payload(total: int, most: int) -> int:
    """The fewest batches of at most `most` bytes, then the bytes spread evenly over them: no
    small last batch, and whatever the count leaves spare becomes margin on every call."""
    n = max(1, -(-total // most))
    return max(1, -(-total // n))


def copy_range(src: Path, dst: Path, offset: int, size: int) -> str:
    """Write src[offset:offset+size] to dst; return its sha256."""
    h = hashlib.sha256()
    with open(src, "rb") as r, open(dst, "wb") as w:
        r.seek(offset)
        left = size
        while left:
            block = r.read(min(CHUNK, left))
            if not block:
                raise IOError(f"{src} ended early at {offset + size - left}")
            h.update(block)
            w.write(block)
            left -= len(block)
    return h.hexdigest()


def write_batches(files: list[Path], out: Path, budget: int, tree: int = 0) -> dict:
    """Split `files` into out/batch-N/ folders (each <= budget bytes with its manifest copy) and
    write the manifest to out/manifest.json and into every batch."""
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ValueError("staged files must have distinct names")
    for old in out.glob("batch-*"):
        shutil.rmtree(old)
    out.mkdir(parents=True, exist_ok=True)
    # Largest first: the big wheels are cut anyway; the small ones then fill the last batch whole.
    order = sorted(files, key=lambda f: (-f.stat().st_size, f.name))
    layout = pack([(f.name, f.stat().st_size) for f in order], even_payload(
        sum(f.stat().st_size for f in files), budget - MANIFEST_RESERVE))
    by_name = {f.name: f for f in files}
    entries = {f.name: {"name": f.name, "size": f.stat().st_size, "sha256": sha256_file(f),
                        "parts": []} for f in order}
    batches = []
    for n, parts in enumerate(layout, 1):
        folder = out / f"batch-{n}"
        folder.mkdir()
        names_here = []
        for name, off, size in parts:
            entry = entries[name]
            pname = f"{name}.part{len(entry['parts']):02d}"
            digest = copy_range(by_name[name], folder / pname, off, size)
            entry["parts"].append({"name": pname, "batch": n, "offset": off, "size": size,
                                   "sha256": digest})
            names_here.append(pname)
        batches.append({"n": n, "dir": folder.name, "parts": names_here,
                        "bytes": sum(s for _, _, s in parts)})
    listing = list(entries.values())
    ident = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:16]
    manifest = {"format": 1, "id": ident, "limit": LIMIT, "budget": budget, "tree_bytes": tree,
                "files": listing, "batches": batches}
    text = json.dumps(manifest, indent=1)
    if len(text) > MANIFEST_RESERVE:
        raise ValueError(f"manifest is {len(text)} bytes, over its {MANIFEST_RESERVE} reserve")
    (out / "manifest.json").write_text(text)
    for b in batches:
        (out / b["dir"] / "manifest.json").write_text(text)
        b["bytes"] += len(text)
    return manifest


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def calls(manifest: dict, stage_rel: str = "gpu/stage", merge_last: bool = True,
          speech_bytes: int = 0) -> list[dict]:
    """The device calls, in order: one per batch (moves it to /tmp/mw-stage, checks its parts), the
    last batch sharing its call with `bash gpu/run.sh stage` (rejoin, install) unless merge_last is
    off; then the measuring calls of `gpu/measure.py`, each carrying the speech folder."""
    import measure

    out = []
    for b in manifest["batches"]:
        carry = f"{stage_rel}/{b['dir']}"
        out.append({"carry": [carry], "command": f"python3 gpu/offline_bundle/rejoin.py recv {carry}",
                    "timeout_s": BATCH_TIMEOUT_S, "batch_bytes": b["bytes"]})
    run = "bash gpu/run.sh stage"
    if merge_last and out:
        # `;` not `&&`: a failed receive still leaves run.sh to report the machine and the stage.
        out[-1]["command"] += f"; {run}"
        out[-1]["timeout_s"] = STAGE_TIMEOUT_S
    else:
        out.append({"carry": [], "command": run, "timeout_s": STAGE_TIMEOUT_S, "batch_bytes": 0})
    for c in measure.calls():
        out.append({"carry": [f"{stage_rel}/speech"], "command": f"bash gpu/run.sh {c.number}",
                    "timeout_s": c.timeout_s, "batch_bytes": speech_bytes})
    for c in out:
        if len(c["command"]) > MAX_COMMAND or len(c["carry"]) > 8:
            raise ValueError(f"call exceeds the device tool's limits: {c}")
    return out


def describe(manifest: dict, plan: list[dict], tree: int) -> str:
    """The plan as printed: what to pass to the device tool's `run`, call by call."""
    total = sum(f["size"] for f in manifest["files"])
    slack = LIMIT - tree - max(c["batch_bytes"] for c in plan)
    lines = [f"working tree {tree / MIB:.2f} MiB; limit {LIMIT / MIB:.0f} MiB per call -> batch "
             f"budget {manifest['budget'] / MIB:.2f} MiB; the fullest call leaves "
             f"{slack / MIB:.2f} MiB: re-run `plan` if the tree grows by more",
             f"{len(manifest['files'])} files, {total / MIB:.1f} MiB -> "
             f"{len(manifest['batches'])} batches; plan id {manifest['id']}",
             "Make the calls back to back: the machine is given back after 30 s idle, and with "
             "it the stage (each recv prints which batches the machine holds).", ""]
    for i, c in enumerate(plan, 1):
        sent = (c["batch_bytes"] + tree) / MIB
        lines += [f"call {i}/{len(plan)}: sends {sent:.2f} MiB (batch {c['batch_bytes'] / MIB:.2f}"
                  f" + tree {tree / MIB:.2f}), timeout_s {c['timeout_s']}",
                  f"  carry:   {json.dumps(c['carry'])}", f"  command: {c['command']}"]
    return "\n".join(lines)
