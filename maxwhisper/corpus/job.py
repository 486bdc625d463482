"""The driver of a corpus job: what is left to do (a re-run skips files already in the table), the
Ray Data pipeline (decode tasks, then the actor pool), and the outputs: each file's as the CLI writes
them, and one Parquet table, `OUTPUT_DIR/transcripts.parquet`. Each batch's rows are written as a part
as soon as they arrive (`.transcripts.parts/`), so an interrupted job keeps what it finished; the parts
are merged into the table at the end.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

COLUMNS = ("path", "text", "segments", "language", "duration", "model", "dtype", "worker", "cpu", "check", "error")
TABLE, PARTS = "transcripts.parquet", ".transcripts.parts"


def _tables(out: Path) -> list:
    import pyarrow.parquet as pq

    files = ([out / TABLE] if (out / TABLE).is_file() else []) + sorted((out / PARTS).glob("part-*.parquet"))
    return [pq.read_table(f) for f in files]


def merged(out: Path):
    """Every row written so far, one per path: the last transcribed one, else the last error."""
    import pyarrow as pa

    rows: dict[str, dict] = {}
    for t in _tables(out):
        for r in t.to_pylist():
            if r["error"] is None or rows.get(r["path"], {}).get("error", "") is not None:
                rows[r["path"]] = r
    return pa.Table.from_pylist(list(rows.values())) if rows else None


def done_paths(out: Path) -> set[str]:
    t = merged(out)
    return {r["path"] for r in t.to_pylist() if r["error"] is None} if t is not None else set()


def _result(row: dict) -> dict:
    """The row as openai-whisper's result dict, for whisper's writers."""
    return {"text": row["text"], "segments": json.loads(row["segments"]), "language": row["language"]}


def run(paths: list[str], output_dir: str, *, address: str = "local", workers: int = 1, model: str = "tiny.en",
        dtype: str = "float32", device: str = "cpu", batch_size: int = 8, options: dict | None = None,
        output_format: str = "all", write_options: dict | None = None, factory=None, worker_cpus: float = 1.0,
        log=print) -> dict:
    """Transcribe `paths` not yet in `output_dir`'s table; returns counts (done, failed, skipped, seconds)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from whisper.utils import get_writer

    from maxwhisper.corpus.worker import Transcriber, decode

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTS).mkdir(exist_ok=True)
    finished = done_paths(out)
    todo = [p for p in paths if p not in finished]
    skipped = len(paths) - len(todo)
    log(f"{len(paths)} files: {skipped} already in {out / TABLE}, {len(todo)} to transcribe")
    t0 = time.perf_counter()
    counts = {"done": 0, "failed": 0, "skipped": skipped}
    if todo:
        if not ray.is_initialized():
            if address == "local":
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True)
            else:
                try:
                    ray.init(address=address)
                except (ConnectionError, ValueError, RuntimeError) as e:
                    raise ValueError(f"--ray {address}: cannot reach a Ray cluster there ({str(e).splitlines()[0]})") from None
        ds = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=max(1, len(todo) // batch_size))
        # reading and decoding: light parallel tasks that take no CPU slot, so they run beside actors holding all
        # of them (with a slot each, 2 actors on a 2-CPU node left the decode tasks waiting forever)
        ds = ds.map(decode, num_cpus=0)
        ds = ds.map_batches(Transcriber, batch_size=batch_size, batch_format="numpy", concurrency=workers,
                            num_cpus=worker_cpus, fn_constructor_kwargs=dict(model=model, dtype=dtype, device=device,
                            options=options or {}, batch_size=batch_size, factory=factory))
        write = get_writer(output_format, str(out))
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            table = batch.select(list(COLUMNS))
            part = out / PARTS / f"part-{time.time_ns()}.parquet"
            pq.write_table(table, part.with_suffix(".tmp"))
            part.with_suffix(".tmp").rename(part)  # a part is whole or absent
            for row in table.to_pylist():
                if row["error"] is None:
                    write(_result(row), row["path"], **(write_options or {}))
                    counts["done"] += 1
                else:
                    counts["failed"] += 1
                    log(f"maxwhisper: error: {row['path']}: {row['error']}")
    table = merged(out)
    if table is not None:
        pq.write_table(table, out / TABLE)
        for part in (out / PARTS).glob("part-*"):
            part.unlink()
    (out / PARTS).rmdir()
    counts["seconds"] = round(time.perf_counter() - t0, 3)
    log(f"{counts['done']} transcribed, {counts['failed']} failed, {counts['skipped']} skipped; table: {out / TABLE}")
    return counts
