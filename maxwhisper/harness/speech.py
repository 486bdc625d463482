"""The shared speech data (`../shared/speech`, read in place): one reader for every test and tool.

`transcripts.tsv` lists each file (relative path), its subset and its exact transcript;
`longform_groups.tsv` lists groups of files that are concatenated into long recordings.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path


def speech_dir() -> Path | None:
    """The shared speech folder (holds transcripts.tsv), or None when it is not on this machine."""
    candidates = [Path(__file__).resolve().parents[2] / ".." / "shared" / "speech",
                  Path.cwd() / ".." / "shared" / "speech"]
    if os.environ.get("MAXWHISPER_SPEECH_DIR"):
        candidates.insert(0, Path(os.environ["MAXWHISPER_SPEECH_DIR"]))
    for c in candidates:
        if (c / "transcripts.tsv").is_file():
            return c.resolve()
    return None


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def transcripts(where: Path | None = None) -> list[dict[str, str]]:
    """Rows of transcripts.tsv (file, subset, text, ...); [] without the speech data."""
    where = where or speech_dir()
    return _rows(where / "transcripts.tsv") if where else []


def longform_groups(where: Path | None = None) -> dict[str, dict[str, str]]:
    """group_id -> row of longform_groups.tsv (files_in_order, text, ...); {} without the speech data."""
    where = where or speech_dir()
    return {g["group_id"]: g for g in _rows(where / "longform_groups.tsv")} if where else {}


def reference_text(path: str | os.PathLike) -> str | None:
    """The exact transcript when `path` is one of the speech folder's files, else None."""
    where = speech_dir()
    if where is None:
        return None
    try:
        rel = Path(path).resolve().relative_to(where).as_posix()
    except ValueError:
        return None
    return next((r["text"] for r in transcripts(where) if r["file"] == rel), None)


def longform_audio(group: dict[str, str], where: Path | None = None):
    """One long-form group's recording: its files' 16 kHz samples concatenated in order."""
    import numpy as np

    from maxwhisper.audio import load_audio

    where = where or speech_dir()
    return np.concatenate([load_audio(where / f) for f in group["files_in_order"].split(",")])
