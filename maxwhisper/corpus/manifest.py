"""The inputs of a corpus job: files and globs as `maxwhisper transcribe` takes them, plus manifests
(a text file with one path or URL per line, a CSV/TSV with a `path` column or paths in its first,
a Parquet table with a `path` column)."""

from __future__ import annotations

import csv
import glob
from pathlib import Path


def read_manifest(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such manifest")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        if "path" not in table.column_names:
            raise ValueError(f"{path}: a Parquet manifest needs a 'path' column, it has {table.column_names}")
        return [str(x) for x in table.column("path").to_pylist() if x]
    if p.suffix in (".csv", ".tsv"):
        with p.open(newline="") as f:
            rows = [r for r in csv.reader(f, delimiter="\t" if p.suffix == ".tsv" else ",") if r]
        if rows and "path" in rows[0]:
            i = rows[0].index("path")
            return [r[i] for r in rows[1:] if len(r) > i and r[i]]
        return [r[0] for r in rows if r[0]]
    return [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]


def inputs(audio: list[str], manifests: list[str] | None = None) -> list[str]:
    """Every input in order, each once: files, globs (expanded where not a file), then the manifests'."""
    out: list[str] = []
    for a in audio:
        if not Path(a).exists() and glob.has_magic(a):
            found = sorted(glob.glob(a, recursive=True))
            if not found:
                raise ValueError(f"{a}: the pattern matches no file")
            out.extend(found)
        else:
            out.append(a)
    for m in manifests or []:
        found = read_manifest(m)
        if not found:
            raise ValueError(f"{m}: the manifest lists no file")
        out.extend(found)
    if not out:
        raise ValueError("no input: give audio files, globs or --manifest")
    return list(dict.fromkeys(out))
